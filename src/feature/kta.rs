//! KTA: knowledge translation and adaptation (the feature term).

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::Tensor;

use crate::check::check_power;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput, Reduction};
use crate::math::p_norms;

/// KTA's per-sample distance between flattened features `[N, D]`, each scaled to unit
/// `q`-norm: `Σ_d |a − b|` for `p = 1` (reduce it with [`Reduction::ElementMean`] for
/// `F.l1_loss`'s mean over all elements), else `‖a − b‖_p`, `[N]`.
pub fn kta_per_sample(s: Tensor<2>, t: Tensor<2>, p: f64, q: f64) -> Tensor<1> {
    let unit = |x: Tensor<2>| x.clone() / p_norms(x, q, 1e-12);
    let d = unit(s) - unit(t);
    match p {
        1.0 => d.abs().sum_dim(1),
        p => p_norms(d, p, 1e-12),
    }
    .squeeze_dim(1)
}

/// Configuration of [`Kta`]; the defaults are torchdistill's (`p = 1`, `q = 2`, mean).
#[derive(Config, Debug)]
pub struct KtaConfig {
    /// The norm of the difference, `p`.
    #[config(default = 1.0)]
    pub p: f64,
    /// The norm each feature is scaled by, `q`.
    #[config(default = 2.0)]
    pub q: f64,
    /// How the per-sample distances are reduced: torchdistill's `'mean'` is
    /// [`Reduction::ElementMean`] for `p = 1` (its `l1_loss` averages every element) and
    /// [`Reduction::SampleMean`] otherwise; `'sum'` is [`Reduction::Sum`].
    #[config(default = "Reduction::ElementMean")]
    pub reduction: Reduction,
    /// The feature tap: the student's adapted feature and the teacher's translated one (the
    /// factor of FT's [`Paraphraser`](crate::feature::Paraphraser)), of one shape.
    #[config(default = "\"feature\".to_string()")]
    pub feature: String,
}

impl KtaConfig {
    /// Validates the norms.
    pub fn init(&self) -> Result<Kta, DistillError> {
        check_power(Kta::NAME, "p", self.p)?;
        check_power(Kta::NAME, "q", self.q)?;
        Ok(Kta {
            config: self.clone(),
        })
    }
}

/// KTA's feature term (He et al., CVPR 2019, *Knowledge Adaptation for Efficient Semantic
/// Segmentation*; torchdistill's `KTALoss`): the teacher's feature, compressed by a
/// pre-trained auto-encoder (FT's [`Paraphraser`](crate::feature::Paraphraser) is the same
/// stage), and the student's, through an adapter, are compared after scaling each sample to
/// unit `q`-norm:
///
/// ```text
/// a = vec(Fˢ)/‖vec(Fˢ)‖_q,  b = vec(Fᵗ)/‖vec(Fᵗ)‖_q,   L = reduce ‖a − b‖_p   (p = 1: Σ|a − b|)
/// ```
///
/// The norms are floored at 1e-12 (the reference divides a zero feature by 0). One term
/// `"kta"`; its affinity term is [`Affinity`](crate::feature::Affinity).
///
/// # Shapes
/// - the tap: student and teacher of one shape `[N, …]` (flattened per sample)
#[derive(Debug, Clone)]
pub struct Kta {
    config: KtaConfig,
}

crate::loss::objective!(Kta, "kta");

impl Loss for Kta {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let checked = input.of(Self::NAME).within(BOUND);
        let (s, t) = checked.paired_rows(&self.config.feature)?;
        let d = s.dims()[1];
        let per_sample = kta_per_sample(s, t, self.config.p, self.config.q);
        Ok(LossOutput::single(
            Self::NAME,
            self.config.reduction.apply(per_sample, d),
        ))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = f64::MAX;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Kta"],
    paper: "He et al., CVPR 2019, *Knowledge Adaptation for Efficient Semantic Segmentation*",
    doc: "kta.md",
    bound: Some(BOUND),
    example: Some(|_| {
        Ok(KtaConfig::new()
            .with_feature("paired".into())
            .init()?
            .boxed())
    }),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss Kta = feature::KtaConfig())),
    golden: crate::registry::golden!["kta" => golden::kta],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// torchdistill's `KTALoss`: its `'mean'` averages every element for `p = 1`, samples otherwise.
    pub(crate) fn kta(case: &Case) -> Result<(), String> {
        let p = case.param("p")?;
        let mean = if p == 1.0 {
            Reduction::ElementMean
        } else {
            Reduction::SampleMean
        };
        let loss = KtaConfig::new()
            .with_p(p)
            .with_q(case.param("q")?)
            .with_reduction(reduction(case, mean)?)
            .with_feature("tap".into())
            .init()
            .map_err(e)?;
        on_tap(case, &loss, "feature_adapter_output", "paraphraser_output")
    }
}
