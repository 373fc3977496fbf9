//! AB: distillation of the activation boundaries formed by hidden neurons.

use crate::registry::{Descriptor, moved};
use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::hint::ConvReg;
use super::maps::{configured_maps, halving_weight, sum_stages};
use crate::check::{check_non_negative, check_positive};
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};
use crate::math::nan_if_non_finite;

/// AB's alternative L2 (RepDistiller's `criterion_alternative_l2`) between a student
/// pre-activation `s` (already through its connector) and the teacher's `t`, summed over every
/// element:
///
/// ```text
/// Σ (s + m)² · [s > −m ∧ t ≤ 0]  +  (s − m)² · [s ≤ m ∧ t > 0]
/// ```
///
/// It pushes each student neuron to the teacher's side of the activation boundary with a
/// margin `m`, and is zero once it is there.
pub fn activation_boundary(s: Tensor<4>, t: Tensor<4>, margin: f64) -> Tensor<1> {
    let (on, off) = (t.clone().greater_elem(0.0), t.clone().lower_equal_elem(0.0));
    let below = s.clone().greater_elem(-margin).bool_and(off);
    let above = s.clone().lower_equal_elem(margin).bool_and(on);
    // both reach the value through comparisons in places, where a NaN would vanish
    let non_finite = nan_if_non_finite(&s) + nan_if_non_finite(&t);
    let zero = s.zeros_like();
    let pull_down = (s.clone() + margin)
        .square()
        .mask_where(below.bool_not(), zero.clone());
    let pull_up = (s - margin).square().mask_where(above.bool_not(), zero);
    (pull_down + pull_up).sum() + non_finite
}

/// Configuration of [`Ab`]: one `[C, H, W]` pair per tap, and RepDistiller's constants.
#[derive(Config, Debug)]
pub struct AbConfig {
    /// The taps, shallow to deep (pre-activation maps: before the ReLU).
    pub features: Vec<String>,
    /// The student's `[C, H, W]` at each tap.
    pub student: Vec<[usize; 3]>,
    /// The teacher's `[C, H, W]` at each tap.
    pub teacher: Vec<[usize; 3]>,
    /// The margin `m`.
    #[config(default = 1.0)]
    pub margin: f64,
    /// The overall weight; RepDistiller's `/1000 · 3` is the default.
    #[config(default = 3e-3)]
    pub weight: f64,
}

impl AbConfig {
    /// Validates the shapes and builds one connector per tap whose shapes differ (a
    /// [`ConvReg`] without ReLU, RepDistiller's `Connector`) on `device`.
    pub fn init(&self, device: &Device) -> Result<Ab, DistillError> {
        check_positive(Ab::NAME, "margin", self.margin)?;
        check_non_negative(Ab::NAME, "weight", self.weight)?;
        crate::check::check_taps(Ab::NAME, &self.features, &[])?;
        if self.student.len() != self.features.len() || self.teacher.len() != self.features.len() {
            return Err(DistillError::config(
                Ab::NAME,
                "student/teacher",
                format!("{} / {} shapes", self.student.len(), self.teacher.len()),
                "one student and one teacher shape per tap",
            ));
        }
        let mut connectors = Vec::new();
        for (&s, &t) in self.student.iter().zip(&self.teacher) {
            connectors.push(match s == t {
                true => None,
                false => Some(ConvReg::new(s, t, false, device).map_err(|reason| {
                    DistillError::config(Ab::NAME, "student", format!("{s:?}"), reason)
                })?),
            });
        }
        Ok(Ab {
            connectors,
            config: self.clone(),
        })
    }
}

/// Activation-boundary distillation (Heo, Lee, Yun, Choi, AAAI 2019, *Knowledge Transfer via
/// Distillation of Activation Boundaries Formed by Hidden Neurons*; RepDistiller's `ABLoss`):
/// the student learns on which side of zero each of the teacher's neurons is, from the
/// pre-activation maps of `k` stages,
///
/// ```text
/// L = w · Σᵢ 2^(i−k+1) · AB(rᵢ(Sᵢ), Tᵢ, m) / N          (deepest stage weight 1, halving)
/// ```
///
/// with `rᵢ` the stage's connector. RepDistiller uses it as an **initialisation stage**: 30
/// epochs of this loss alone (training the student's feature layers and the connectors), then
/// ordinary training with the task loss and KD; `ab.then_after(30, ce + kd)`
/// ([`LossExt::then_after`](crate::LossExt::then_after)) is that schedule. One term `"ab"`.
///
/// # Shapes
/// - tap `i`: student `[N, Cᵢ, Hᵢ, Wᵢ]`, teacher `[N, C'ᵢ, H'ᵢ, W'ᵢ]` as configured
#[derive(Module, Debug)]
pub struct Ab {
    /// One connector per tap (`None` where the shapes match).
    pub connectors: Vec<Option<ConvReg>>,
    #[module(skip)]
    config: AbConfig,
}

crate::loss::objective!(Ab, "ab");

impl Loss for Ab {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let checked = input.of(Self::NAME).within(BOUND).for_module(self);
        let k = c.features.len();
        let total = sum_stages(&c.features, |i, name| {
            let (s, t) = configured_maps(&checked, name, c.student[i], c.teacher[i])?;
            let n = s.dims()[0];
            let s = match &self.connectors[i] {
                Some(r) => r.forward(s),
                None => s,
            };
            let stage = halving_weight(i, k) / n as f64;
            Ok(activation_boundary(s, t, c.margin) * stage)
        })?;
        Ok(LossOutput::single(Self::NAME, total * c.weight))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e30;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Ab"],
    paper: "Heo et al., AAAI 2019, *Distillation of Activation Boundaries Formed by Hidden Neurons*",
    doc: "ab.md",
    bound: Some(BOUND),
    example: None,
    learnable: Some(|r, dev, dtype| {
        Ok(moved(
            AbConfig::new(vec!["feature".into()], vec![[3, 4, 4]], vec![[6, 4, 4]]).init(r)?,
            dev,
            dtype,
        ))
    }),
    twins: None,
    method: Some(
        crate::registry::method!(learnable Ab = feature::AbConfig(features = ["block1"], student = [[8, 4, 4]], teacher = [[16, 4, 4]])),
    ),
    golden: crate::registry::golden!["ab" => golden::ab],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// RepDistiller's `ABLoss` (the returned per-layer list summed): equal shapes, no connector.
    pub(crate) fn ab(case: &Case) -> Result<(), String> {
        let (input, leaves, k) = staged_input(case)?;
        if case.opt("feat_num") != Some(k as f64) {
            return Err(format!("feat_num is not the {k} stages given"));
        }
        let shapes = |side: &str| -> Result<Vec<[usize; 3]>, String> {
            (0..k)
                .map(|i| chw(case, &format!("feat_{side}_{i}")))
                .collect()
        };
        let ab = AbConfig::new(stage_names(k), shapes("student")?, shapes("teacher")?)
            .with_margin(case.param("margin")?)
            .init(&device())
            .map_err(e)?;
        case.check(ab.forward(&input).map_err(e)?, &borrowed(&leaves))
            .map(drop)
    }
}
