//! Hidden-state distillation: student layers matched to teacher layers, token by token.

use crate::registry::{Descriptor, moved};
use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use super::cosine::cosine_distance_rows;
use super::tokens::TokenReduction;
use crate::check::{check_count, check_positive};
use crate::error::DistillError;
use crate::input::{DistillInput, Feature};
use crate::loss::{Loss, LossOutput};

/// Per-token mean squared error over the width, `[N, H]` → `[N]`.
pub fn mse_rows(student: Tensor<2>, teacher: Tensor<2>) -> Tensor<1> {
    (student - teacher).square().mean_dim(1).squeeze_dim(1)
}

/// How [`HiddenState`] compares a pair of layers.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum HiddenLoss {
    /// Mean squared error over the width (DistillKit's `HiddenStateMSELoss`).
    Mse,
    /// `1 − cos` per token (DistillKit's `HiddenStateCosineLoss`).
    Cosine,
}

/// Configuration of [`HiddenState`].
#[derive(Config, Debug)]
pub struct HiddenStateConfig {
    /// Width of the student's hidden states.
    pub student_width: usize,
    /// Width of the teacher's hidden states.
    pub teacher_width: usize,
    /// The layer mapping: (student tap, teacher tap) pairs, each tap a feature of the input
    /// holding hidden states `[N, H]` (one row per token).
    pub layers: Vec<(String, String)>,
    /// MSE or cosine.
    #[config(default = "HiddenLoss::Mse")]
    pub loss: HiddenLoss,
    /// A learnable projection `Linear(student_width → teacher_width, no bias)` per pair
    /// (needed when the widths differ; DistillKit's `HiddenStateMapping`).
    #[config(default = true)]
    pub projection: bool,
    /// How per-token values become each pair's loss (the pairs are then averaged).
    #[config(default = "TokenReduction::TokenMean")]
    pub reduction: TokenReduction,
    /// Floor of the norms in the cosine.
    #[config(default = 1e-8)]
    pub eps: f64,
}

impl HiddenStateConfig {
    /// Validates the configuration and builds the projections on `device`.
    pub fn init(&self, device: &Device) -> Result<HiddenState, DistillError> {
        check_count(HiddenState::NAME, "student_width", self.student_width, 1)?;
        check_count(HiddenState::NAME, "teacher_width", self.teacher_width, 1)?;
        check_count(HiddenState::NAME, "layers", self.layers.len(), 1)?;
        check_positive(HiddenState::NAME, "eps", self.eps)?;
        if !self.projection && self.student_width != self.teacher_width {
            return Err(DistillError::config(
                HiddenState::NAME,
                "projection",
                false,
                "the widths differ: a projection is needed",
            ));
        }
        self.reduction.check(HiddenState::NAME)?;
        let projections = match self.projection {
            true => self
                .layers
                .iter()
                .map(|_| {
                    LinearConfig::new(self.student_width, self.teacher_width)
                        .with_bias(false)
                        .init(device)
                })
                .collect(),
            false => Vec::new(),
        };
        Ok(HiddenState {
            projections,
            config: self.clone(),
        })
    }
}

/// Hidden-state distillation (DistillKit's hidden-state losses): for each mapped pair of a
/// student layer `i` and a teacher layer `j`, with `P` the pair's learnable projection,
///
/// `Lᵢⱼ = reduce_tokens d(P·hˢᵢ, hᵗⱼ)`, `d` = MSE over the width or `1 − cos`,
///
/// over the tokens the mask admits, and `L = mean over the pairs`. The projections are part
/// of this module: put it beside the student in the module the optimizer updates. One term,
/// `"hidden_state"`.
///
/// # Shapes
/// - every tap `[N, H]` (student `student_width`, teacher `teacher_width`); mask `[N]`
#[derive(Module, Debug)]
pub struct HiddenState {
    /// One projection per pair of layers (empty without projections).
    pub projections: Vec<Linear>,
    #[module(skip)]
    config: HiddenStateConfig,
}

crate::loss::objective!(HiddenState, "hidden_state");

impl Loss for HiddenState {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let input = input.of(Self::NAME).masked().within(BOUND).for_module(self);
        let mut total: Option<Tensor<1>> = None;
        for (i, (ts, tt)) in c.layers.iter().enumerate() {
            let (s, t) = input.mapped(ts, tt)?;
            let (s, t) = (Feature::flatten(s), Feature::flatten(t));
            let ([ns, ws], [nt, wt]) = (s.dims(), t.dims());
            if ns == 0 || nt == 0 {
                return Err(DistillError::EmptyBatch {
                    objective: Self::NAME.into(),
                    what: format!("taps `{ts}` (student) and `{tt}` (teacher)"),
                });
            }
            if ws != c.student_width || wt != c.teacher_width || ns != nt {
                return Err(DistillError::ShapeMismatch {
                    objective: Self::NAME.into(),
                    what: format!("taps `{ts}` (student) and `{tt}` (teacher)"),
                    expected: vec![ns, c.student_width, ns, c.teacher_width],
                    actual: vec![ns, ws, nt, wt],
                });
            }
            let mask = input.mask(ns)?;
            let (s, t) = match &mask {
                Some(m) => {
                    let out = |w: usize| m.clone().bool_not().unsqueeze_dim::<2>(1).expand([ns, w]);
                    (s.mask_fill(out(ws), 0.0), t.mask_fill(out(wt), 0.0))
                }
                None => (s, t),
            };
            let s = match self.projections.get(i) {
                Some(p) => p.forward(s),
                None => s,
            };
            let rows = match c.loss {
                HiddenLoss::Mse => mse_rows(s, t),
                HiddenLoss::Cosine => cosine_distance_rows(s, t, c.eps),
            };
            let pair = c.reduction.apply(rows, mask, 1);
            total = Some(match total {
                None => pair,
                Some(acc) => acc + pair,
            });
        }
        let total =
            total.expect("at least one pair (checked at init)") * (1.0 / c.layers.len() as f64);
        Ok(LossOutput::single(Self::NAME, total))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e15;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["HiddenState"],
    paper: "hidden-state MSE / cosine with learnable projections (DistillKit)",
    doc: "token.md",
    bound: Some(BOUND),
    example: None,
    learnable: Some(|r, dev, dtype| {
        Ok(moved(
            HiddenStateConfig::new(4, 5, vec![("embedding".into(), "embedding".into())]).init(r)?,
            dev,
            dtype,
        ))
    }),
    twins: None,
    method: Some(
        crate::registry::method!(learnable HiddenState = token::HiddenStateConfig(student_width = 16, teacher_width = 32, layers = [["layer4", "layer8"]])),
    ),
    golden: crate::registry::golden!["distillkit_hs_mse" => golden::distillkit_hidden, "distillkit_hs_cosine" => golden::distillkit_hidden, "modelopt_mcore_mse" => golden::modelopt_megatron, "modelopt_mcore_cosine" => golden::modelopt_megatron],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// DistillKit's hidden-state MSE and cosine over a layer mapping, with the case's projections
    /// (torch layout `[Ht, Hs]`, no bias) and token mask.
    pub(crate) fn distillkit_hidden(case: &Case) -> Result<(), String> {
        let pairs: Vec<(usize, usize)> = case.params["layer_mapping"]
            .as_array()
            .ok_or("no layer_mapping")?
            .iter()
            .map(|p| Some((p[0].as_u64()? as usize, p[1].as_u64()? as usize)))
            .collect::<Option<_>>()
            .ok_or("a bad layer_mapping")?;
        let width = |name: &str| -> Result<usize, String> {
            Ok(*case.input(name)?.0.last().ok_or("a scalar hidden state")?)
        };
        let (hs, ht) = (width("student_hidden_0")?, width("teacher_hidden_0")?);
        let config = HiddenStateConfig::new(
            hs,
            ht,
            pairs
                .iter()
                .map(|(i, j)| (format!("student_hidden_{i}"), format!("teacher_hidden_{j}")))
                .collect(),
        )
        .with_loss(match case.method.as_str() {
            "distillkit_hs_cosine" => HiddenLoss::Cosine,
            _ => HiddenLoss::Mse,
        })
        .with_projection(case.has("projection_0_weight"));
        let mut hidden = config.init(&device()).map_err(e)?;
        for (i, p) in hidden.projections.iter_mut().enumerate() {
            let (_, w) = case.input(&format!("projection_{i}_weight"))?;
            // torch [Ht, Hs] → burn [Hs, Ht]
            let wt: Vec<f64> = (0..hs * ht).map(|k| w[(k % ht) * hs + k / ht]).collect();
            p.weight = Param::from_tensor(tensor(wt, [hs, ht], case.dtype));
        }
        let mut input = DistillInput::features_only().attach_teacher();
        let mut leaves = Vec::new();
        for name in case.inputs.keys() {
            let side = if name.starts_with("student_hidden_") {
                true
            } else if name.starts_with("teacher_hidden_") {
                false
            } else {
                continue;
            };
            let (leaf, _, _) = token_leaf(case, name)?;
            input = match side {
                true => input.student_feature(name.clone(), leaf.clone()),
                false => input.teacher_feature(name.clone(), leaf.clone()),
            };
            leaves.push((name.clone(), leaf));
        }
        if let Some(m) = token_mask(case)? {
            input = input.mask(bools(&m));
        }
        let out = hidden.forward(&input).map_err(e)?;
        case.expect_loss(out.value(), None)?;
        let grads = out.total.backward();
        for (name, leaf) in &leaves {
            case.expect_grad(name, leaf.grad(&grads).map(values), None)?;
        }
        let gp = GradientsParams::from_grads(grads, &hidden);
        for (i, p) in hidden.projections.iter().enumerate() {
            let g = gp.get::<2>(p.weight.id).map(|g| values(g.transpose()));
            case.expect_grad(&format!("projection_{i}_weight"), g, None)?;
        }
        Ok(())
    }

    /// A Megatron-layout `[s, b, h]` input as rows `[b·s, h]` (the order of the plugin's
    /// `[b, s]` outputs), from a tracked leaf in the case's layout.
    pub(crate) fn megatron_rows(case: &Case, name: &str) -> Result<(Tensor<3>, Tensor<2>), String> {
        let (shape, data) = case.input(name)?;
        let shape: [usize; 3] = shape.as_slice().try_into().map_err(|_| "not [s, b, h]")?;
        let leaf = tensor(data.clone(), shape, case.dtype);
        // the student's side is a leaf to differentiate; the teacher's a constant
        let leaf = match name {
            "predictions" => leaf.require_grad(),
            _ => leaf,
        };
        let [s, b, h] = leaf.dims();
        let rows = leaf.clone().swap_dims(0, 1).reshape([b * s, h]);
        Ok((leaf, rows))
    }

    /// The plugin's per-position `[b, s]` values against the reference, and the gradient of
    /// their sum with respect to the predictions (the `leaf` of [`megatron_rows`]).
    pub(crate) fn megatron_check(
        case: &Case,
        leaf: &Tensor<3>,
        rows: Tensor<1>,
    ) -> Result<(), String> {
        let want = case.loss.as_deref().ok_or("no loss")?;
        let (rel, abs) = case.tolerance();
        close("per-position loss", &values(rows.clone()), want, rel, abs)?;
        let grads = rows.sum().backward();
        case.expect_grad("predictions", leaf.grad(&grads).map(values), None)
    }

    /// Model-Optimizer's Megatron plugin `MSELoss` (mean over `h` of the squared difference)
    /// and `HiddenStateCosineLoss` (`1 − cos`), per position `[b, s]`, the teacher detached.
    pub(crate) fn modelopt_megatron(case: &Case) -> Result<(), String> {
        let (p, ps) = megatron_rows(case, "predictions")?;
        let (_, ts) = megatron_rows(case, "targets")?;
        let h = ps.dims()[1];
        let loss = HiddenStateConfig::new(h, h, vec![("s".into(), "t".into())])
            .with_loss(match case.method.as_str() {
                "modelopt_mcore_cosine" => HiddenLoss::Cosine,
                _ => HiddenLoss::Mse,
            })
            .with_projection(false)
            .with_reduction(TokenReduction::None)
            .init(&device())
            .map_err(e)?;
        let input = DistillInput::features_only()
            .student_feature("s", ps)
            .teacher_feature("t", ts);
        let rows = loss.forward(&input).map_err(e)?.total;
        megatron_check(case, &p, rows)
    }
}
