use burn::tensor::Tensor;

use crate::error::DistillError;
use crate::input::{DistillInput, upcast};
use crate::loss::LossExt;
use crate::loss::{Loss, LossOutput, Tempered};
use crate::math::Temperature;
use crate::registry::Descriptor;

/// `(z − mean) / (std + eps)` over each row (unbiased std; the variance is floored at 1e-30
/// so a constant row gets a finite gradient).
pub fn standardize_rows(z: Tensor<2>, eps: f64) -> Tensor<2> {
    let c = z.dims()[1];
    let centred = z.clone() - z.mean_dim(1);
    // a reciprocal product, not burn's `var`: its division by n − 1 differentiates with an
    // f32 scalar in burn 0.22.1 (see `math::Temperature::scale`)
    let var = (centred.clone() * centred.clone()).sum_dim(1) * (1.0 / (c as f64 - 1.0));
    centred / (var.clamp_min(1e-30).sqrt() + eps)
}

/// Logit standardisation, as described in [Logit Standardization in Knowledge
/// Distillation](https://arxiv.org/abs/2403.01427) (Sun et al., CVPR 2024): a pre-transform
/// for any logit objective. Each row of student and teacher logits becomes
///
/// `z ← (z − mean_c z) / (std_c z + ε)`   (unbiased std, ε = 1e-7)
///
/// before the wrapped objective (which then applies its own temperature; the paper's base is
/// `T = 2`). Only the wrapped objective sees the standardised logits: compose the task loss
/// outside, e.g. `ce.weighted(0.9) + Standardized::new(kd).weighted(0.1)` (torchdistill's
/// `LogitStdKDLoss`). It keeps the wrapped objective's name and terms.
#[derive(Debug, Clone)]
pub struct Standardized<L> {
    inner: L,
    eps: f64,
}

impl<L> Standardized<L> {
    /// Standardises the logits `inner` sees, with ε = 1e-7.
    pub fn new(inner: L) -> Self {
        Self { inner, eps: 1e-7 }
    }

    /// The same with another `ε > 0`.
    pub fn with_eps(self, eps: f64) -> Result<Self, DistillError> {
        crate::check::check_positive(Standardized::<()>::NAME, "eps", eps)?;
        Ok(Self { eps, ..self })
    }

    /// The input with standardised logits, after checking they have at least 2 classes (the
    /// standard deviation of one value is 0/0).
    fn transform(&self, input: &DistillInput) -> Result<DistillInput, DistillError> {
        let checked = input.of(Standardized::<()>::NAME).within(BOUND);
        let c = match input.has_teacher_logits() {
            true => checked.logits()?.0.dims()[1],
            false => checked.student_logits()?.dims()[1],
        };
        crate::check::check_classes(Standardized::<()>::NAME, c, 2)?;
        // half-precision rows are standardised in f32 (their variance overflows f16)
        Ok(input.map_logits(|z| standardize_rows(upcast(z), self.eps)))
    }
}

crate::loss::objective!(Standardized<L>, "standardized");

impl<L: Loss> Loss for Standardized<L> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        self.inner.forward(&self.transform(input)?)
    }
}

impl<L: Tempered> Tempered for Standardized<L> {
    fn forward_at(
        &self,
        input: &DistillInput,
        temperature: &Temperature,
    ) -> Result<LossOutput, DistillError> {
        self.inner.forward_at(&self.transform(input)?, temperature)
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e38;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Standardized"],
    paper: "Sun et al., CVPR 2024, *Logit Standardization in KD*",
    doc: "dist.md#logit-standardisation",
    bound: Some(BOUND),
    example: Some(|_| Ok(Standardized::new(super::KdConfig::new().init()?).boxed())),
    learnable: None,
    twins: None,
    method: Some(crate::registry::Method {
        name: Standardized::<()>::NAME,
        config: "logit::Standardized (eps)",
        required: &[],
        defaults: |_, _| Ok(serde_json::json!({ "eps": 1e-7 })),
        config_type: std::any::TypeId::of::<Standardized<()>>,
        check: |v| serde_json::from_value::<f64>(v["eps"].clone()).map(|_| ()),
        build: crate::registry::Build::Wrapper(|v, at, inner| {
            let eps: f64 = crate::registry::typed(&v["eps"], at)?;
            Ok(Standardized::new(inner).with_eps(eps)?.boxed())
        }),
        token: None,
    }),
    golden: crate::registry::golden!["logit_std_kd" => golden::logit_std_kd],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::cross_entropy::CrossEntropyConfig;
    use crate::golden::*;
    use crate::logit::KdConfig;

    /// torchdistill's `LogitStdKDLoss`: `alpha · CE + beta · T² · KD` on standardised logits; with
    /// `alpha: null`, the soft loss alone, without `T²`.
    pub(crate) fn logit_std_kd(case: &Case) -> Result<(), String> {
        let (s, t) = logits(case)?;
        let alpha = case.opt("alpha");
        let kd = KdConfig::new()
            .with_temperature(case.param("temperature")?)
            .with_t_squared(alpha.is_some())
            .init()
            .map_err(e)?;
        let kd = Standardized::new(kd)
            .with_eps(case.opt("eps").unwrap_or(1e-7))
            .map_err(e)?;
        let mut input = DistillInput::new(s.clone(), t.clone()).attach_teacher();
        let out = match alpha {
            Some(alpha) => {
                input = input.targets(case.targets("target")?);
                let beta = case.opt("beta").unwrap_or(1.0 - alpha);
                let ce = CrossEntropyConfig::new().init().map_err(e)?;
                (ce.weighted(alpha) + kd.weighted(beta)).forward(&input)
            }
            None => kd.forward(&input),
        };
        case.check(out.map_err(e)?, &as_taps(&s, &t)).map(drop)
    }
}
