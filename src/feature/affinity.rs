//! KTA's affinity term: per-channel spatial affinity matrices.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::Tensor;

use super::maps::unit_channels;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput, Reduction};

/// Per sample `Σ_c ‖Aˢ_c − Aᵗ_c‖_F` with `A_c = a_c a_cᵀ / (H·W)` `[H·W, H·W]` and `a_c` channel
/// `c` as a unit vector over the positions, `[N]` (torchdistill's `AffinityLoss` before its
/// reduction).
///
/// Computed without forming the `(H·W)²` matrices: for unit vectors
/// `‖aaᵀ − bbᵀ‖²_F = 2 − 2(a·b)² = ‖a − b‖² (1 + a·b)`, which is exact in floating point where
/// the first form cancels (and holds for a zero channel too); memory is `O(N·C·H·W)`, where
/// the reference's loop holds `N·(H·W)²` per channel.
pub fn affinity_per_sample(s: Tensor<4>, t: Tensor<4>) -> Tensor<1> {
    let [.., h, w] = s.dims();
    let (a, b) = (unit_channels(s), unit_channels(t));
    let dot = (a.clone() * b.clone()).sum_dim(2);
    let dist = (a - b).square().sum_dim(2);
    (dist * (dot + 1.0))
        .clamp_min(1e-24)
        .sqrt()
        .sum_dim(1)
        .flatten::<1>(0, 2)
        * (1.0 / (h * w) as f64)
}

/// Configuration of [`Affinity`].
#[derive(Config, Debug)]
pub struct AffinityConfig {
    /// Per-sample sums reduced by their mean over the batch (torchdistill's `'mean'`,
    /// [`Reduction::SampleMean`]) or their sum ([`Reduction::Sum`]).
    #[config(default = "Reduction::SampleMean")]
    pub reduction: Reduction,
    /// The feature tap: maps of one shape `[N, C, H, W]` (the student's through its affinity
    /// adapter, the teacher's through its translator).
    #[config(default = "\"feature\".to_string()")]
    pub feature: String,
}

impl AffinityConfig {
    /// Builds the objective (every field is valid).
    pub fn init(&self) -> Result<Affinity, DistillError> {
        Ok(Affinity {
            config: self.clone(),
        })
    }
}

/// KTA's affinity distillation (He et al., CVPR 2019, *Knowledge Adaptation for Efficient
/// Semantic Segmentation*; torchdistill's `AffinityLoss`): the student matches, channel by
/// channel, which positions the teacher's map relates:
///
/// ```text
/// A_c = a_c a_cᵀ / (H·W),  a_c = vec(F_c)/‖vec(F_c)‖        L = reduceₙ Σ_c ‖Aˢ_c − Aᵗ_c‖_F
/// ```
///
/// (the reference normalises without a floor, NaN on a zero channel; the crate floors the norm
/// at 1e-12, and `ElementMean` is the same as `SampleMean` here). One term `"affinity"`.
///
/// # Shapes
/// - the tap: student and teacher maps of one shape `[N, C, H, W]`
#[derive(Debug, Clone)]
pub struct Affinity {
    config: AffinityConfig,
}

crate::loss::objective!(Affinity, "affinity");

impl Loss for Affinity {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let checked = input.of(Self::NAME).within(BOUND);
        let name = &self.config.feature;
        let (s, t) = checked.maps(name)?;
        if s.dims() != t.dims() {
            return Err(checked.shape(
                format!("teacher tap `{name}`"),
                s.dims().to_vec(),
                t.dims().to_vec(),
            ));
        }
        let per_sample = affinity_per_sample(s, t);
        // each sample's value is one number: `ElementMean` and `SampleMean` coincide
        Ok(LossOutput::single(
            Self::NAME,
            self.config.reduction.apply(per_sample, 1),
        ))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = f64::MAX;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Affinity"],
    paper: "He et al., CVPR 2019, *Knowledge Adaptation for Efficient Semantic Segmentation* (its affinity term)",
    doc: "kta.md",
    bound: Some(BOUND),
    example: Some(|_| {
        Ok(AffinityConfig::new()
            .with_feature("paired".into())
            .init()?
            .boxed())
    }),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss Affinity = feature::AffinityConfig())),
    golden: crate::registry::golden!["kta_affinity" => golden::affinity],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// torchdistill's `AffinityLoss`.
    pub(crate) fn affinity(case: &Case) -> Result<(), String> {
        let loss = AffinityConfig::new()
            .with_reduction(reduction(case, Reduction::SampleMean)?)
            .with_feature("tap".into())
            .init()
            .map_err(e)?;
        on_tap(case, &loss, "student_output", "teacher_output")
    }
}
