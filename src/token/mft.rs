//! Minifinetuning: distillation from a teacher whose distribution is corrected towards the
//! label by a margin.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Int, Tensor};

use super::forward_kl::forward_kl_elements;
use super::tokens::{TokenReduction, outside_zero, uncounted};
use crate::check::{check_fraction, check_temperature};
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};
use crate::math::{Temperature, target_mask};

/// The teacher's distribution `p` `[N, V]` corrected towards the labels `[N]` (MFT): with `a`
/// its arg-max and `m` the mixing weight,
///
/// ```text
/// a ≠ y:  m = (p_a − p_y + θ) / (1 + p_a − p_y + 1e-7)
/// a = y:  m = (c − p_a) / (1 − p_a + 1e-7),  c = 1 if p_y > 1 − θ else p_y + θ
/// p' = (1 − m)·p + m·onehot(y)
/// ```
///
/// so where the teacher's arg-max is not the label, the label comes to lead it by θ, and where
/// it is, the label's probability rises by θ (to 1 past `1 − θ`), up to the `1e-7` guard
/// against `p_a = 1`. No gradient.
pub fn mft_target(p: Tensor<2>, labels: Tensor<1, Int>, threshold: f64) -> Tensor<2> {
    let p = p.detach();
    let [n, v] = p.dims();
    let onehot = target_mask(labels.clone(), v).float().cast(p.dtype());
    let p_y = (p.clone() * onehot.clone()).sum_dim(1);
    let p_a = p.clone().max_dim(1);
    let leads = p.clone().argmax(1).equal(labels.reshape([n, 1]));
    let wrong =
        (p_a.clone() - p_y.clone() + threshold) / (p_a.clone() - p_y.clone() + (1.0 + 1e-7));
    let confident = p_y.clone().greater_elem(1.0 - threshold);
    let c = (p_y + threshold).mask_fill(confident, 1.0);
    let right = (c - p_a.clone()) / (-p_a + (1.0 + 1e-7));
    let m = wrong.mask_where(leads, right);
    p * (-m.clone() + 1.0) + onehot * m
}

/// Configuration of [`Mft`].
#[derive(Config, Debug)]
pub struct MftConfig {
    /// The margin θ ∈ [0, 1] by which the corrected teacher moves towards the label.
    #[config(default = 0.2)]
    pub threshold: f64,
    /// The temperature `T` of both softmaxes.
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Multiply by `T²` (Model-Optimizer does).
    #[config(default = true)]
    pub t_squared: bool,
    /// How per-token values become the total.
    #[config(default = "TokenReduction::TokenMean")]
    pub reduction: TokenReduction,
}

impl MftConfig {
    /// Validates the configuration and builds the objective.
    pub fn init(&self) -> Result<Mft, DistillError> {
        check_fraction(Mft::NAME, "threshold", self.threshold, true)?;
        self.reduction.check(Mft::NAME)?;
        Ok(Mft {
            config: MftConfig {
                temperature: check_temperature(self.temperature)?,
                ..self.clone()
            },
        })
    }
}

/// Minifinetuning distillation (Belcak et al., 2025, *Minifinetuning: Low-Data Generation
/// Domain Adaptation through Corrective Self-Distillation*,
/// [arXiv:2506.15702](https://arxiv.org/abs/2506.15702); NVIDIA Model-Optimizer's `MFTLoss`):
/// the forward KL to the teacher's softened distribution moved towards the label by θ
/// ([`mft_target`]),
///
/// ```text
/// L = [T²] · reduce_tokens KL(p'_t ‖ softmax(z_s / T)),   p'_t = mft_target(softmax(z_t / T), y, θ)
/// ```
///
/// The corrected target is a constant. Model-Optimizer's labels have no ignore index; here
/// labels with one mask their rows (`DistillInput::labels`). One term, `"mft"`.
///
/// # Shapes
/// - student and teacher logits `[N, V]`; labels `[N]`
#[derive(Debug, Clone)]
pub struct Mft {
    config: MftConfig,
}

crate::loss::objective!(Mft, "mft");

impl Loss for Mft {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let input = input.of(Self::NAME).masked();
        let (zs, zt) = input.logits()?;
        let [n, v] = zs.dims();
        let mask = input.mask(n)?;
        let y = input.targets(n, v)?;
        let temperature = Temperature::Fixed(c.temperature);
        let scaled = |z: Tensor<2>| temperature.scale(uncounted(z, mask.as_ref(), 0.0));
        let target = mft_target(softmax(scaled(zt.clone()), 1), y, c.threshold);
        let zero = target.clone().equal_elem(0.0);
        let rows = outside_zero(
            log_softmax(scaled(zs.clone()), 1),
            target.log(),
            &zero,
            forward_kl_elements,
        )
        .sum_dim(1)
        .squeeze_dim(1);
        let total = c.reduction.apply(rows, mask, v);
        let out = LossOutput::single(
            Self::NAME,
            match c.t_squared {
                true => temperature.times_squared(total),
                false => total,
            },
        );
        input.settle_logits(BOUND, out, &zs, &zt)
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e38;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Mft"],
    paper: "Belcak et al., 2025 (Minifinetuning; Model-Optimizer's MFTLoss)",
    doc: "token.md",
    bound: Some(BOUND),
    example: Some(|_| Ok(MftConfig::new().with_temperature(2.0).init()?.boxed())),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss Mft = token::MftConfig())),
    golden: crate::registry::golden!["modelopt_mft" => golden::modelopt],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// Model-Optimizer's `MFTLoss(T, threshold, reduction)`: `batchmean` divides by every
    /// position, `mean` by every element, `none` gives the `[N, V]` elements (compared by
    /// row); the teacher detached.
    pub(crate) fn modelopt(case: &Case) -> Result<(), String> {
        let (s, _, _) = token_leaf(case, "logits_s")?;
        let (t, _, _) = token_leaf(case, "logits_t")?;
        let reduction = match case.params["reduction"].as_str() {
            Some("batchmean") => TokenReduction::TokenMean,
            Some("mean") => TokenReduction::ElementMean,
            Some("sum") => TokenReduction::Sum,
            Some("none") => TokenReduction::None,
            r => return Err(format!("reduction {r:?}")),
        };
        let loss = MftConfig::new()
            .with_threshold(case.param("threshold")?)
            .with_temperature(case.param("temperature")?)
            .with_reduction(reduction)
            .init()
            .map_err(e)?;
        let input = DistillInput::new(s.clone(), t).targets(case.targets("labels")?);
        let out = loss.forward(&input).map_err(e)?;
        if reduction == TokenReduction::None {
            let v = *case.input("logits_s")?.0.last().ok_or("no V")?;
            let want: Vec<f64> = case
                .loss
                .as_deref()
                .ok_or("no loss")?
                .chunks(v)
                .map(|r| r.iter().sum())
                .collect();
            let (rel, abs) = case.tolerance();
            close(
                "per-position loss",
                &values(out.total.clone()),
                &want,
                rel,
                abs,
            )?;
            let grads = out.total.sum().backward();
            return case.expect_grad("logits_s", s.grad(&grads).map(values), None);
        }
        case.check(out, &[("logits_s", crate::input::Feature::Embedding(s))])
            .map(drop)
    }
}
