use burn::config::Config;

use super::decoupled::Decoupling;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::LossExt;
use crate::loss::{Loss, LossOutput, Tempered};
use crate::math::JointTarget;
use crate::math::Temperature;
use crate::registry::Descriptor;

/// Configuration to create a [`Dckd`] objective.
#[derive(Config, Debug)]
pub struct DckdConfig {
    /// Weight α of the target-class term.
    #[config(default = 1.0)]
    pub alpha: f64,
    /// Weight β of the non-target term.
    #[config(default = 8.0)]
    pub beta: f64,
    /// The softmax temperature `T` (> 0).
    #[config(default = 4.0)]
    pub temperature: f64,
    /// Epochs of linear warm-up (0: none), as in DKD.
    #[config(default = 20)]
    pub warmup_epochs: usize,
    /// How the joint target-class distribution is formed (`Mix(w)`: the teacher's share
    /// `w ∈ [0, 1]`).
    #[config(default = "JointTarget::Max")]
    pub joint: JointTarget,
    /// Run the [fused kernel](crate::fused) where the device supports it; `false` forces the
    /// composed tensor-op version.
    #[config(default = true)]
    pub fused: bool,
}

impl DckdConfig {
    /// Validates the configuration and builds the objective.
    pub fn init(&self) -> Result<Dckd, DistillError> {
        Ok(Dckd(Decoupling::new(
            Dckd::NAME,
            [self.alpha, self.beta],
            self.temperature,
            self.warmup_epochs,
            self.joint,
            self.fused,
        )?))
    }
}

/// Decoupled-classifier knowledge distillation (Wang, Dong, Zhu, Li, *PLoS One* 2025) —
/// **a reconstruction from the paper's abstract**; its equations are not public.
///
/// The abstract: decouple the classifier's output into non-target classes, learned by the
/// student from the teacher, and target classes obtained from both teacher and student, so as
/// to "fix the correct knowledge the student has already acquired" and let logit distillation
/// combine with feature or relational distillation without conflict. Reconstruction, on
/// [DKD](super::Dkd)'s split (`b` target vs rest, `p̂` non-target distribution, `p = softmax(z/T)`):
///
/// `DCKD = w(epoch) · T² · (1/N) Σₙ [α · KL(b* ‖ bˢ) + β · KL(p̂ᵀ ‖ p̂ˢ)]`
///
/// where, for a sample whose student arg-max is the target, `b*` follows [`JointTarget`]
/// (default `Max`: `b*_t = max(bᵀ_t, sg(bˢ_t))`), and `b* = bᵀ` otherwise. A student that is
/// right with more confidence than the teacher gets a zero target-class term (never pulled
/// back); with `JointTarget::Teacher` DCKD equals DKD exactly. Compose the companion feature or
/// relational loss with `+`. Terms: `"dckd/tckd"`, `"dckd/nckd"` (values for logging on the
/// [fused path](crate::fused), as in [`Dkd`](super::Dkd)).
///
/// # Shapes
/// - student and teacher logits: `[N, C]`, `C ≥ 3`; targets: `[N]`
#[derive(Debug, Clone)]
pub struct Dckd(Decoupling);

crate::loss::objective!(Dckd, "dckd");

impl Loss for Dckd {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        self.forward_at(input, &Temperature::Fixed(self.0.temperature))
    }
}

impl Tempered for Dckd {
    fn forward_at(
        &self,
        input: &DistillInput,
        temperature: &Temperature,
    ) -> Result<LossOutput, DistillError> {
        self.0.forward(Self::NAME, input, temperature)
    }
}

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Dckd"],
    paper: "Wang et al., PLoS One 2025 (reconstruction from the abstract)",
    doc: "dckd.md",
    bound: Some(super::decoupled::BOUND),
    example: Some(|_| Ok(DckdConfig::new().with_warmup_epochs(0).init()?.boxed())),
    learnable: None,
    twins: Some(|fused| {
        [
            JointTarget::Teacher,
            JointTarget::Max,
            JointTarget::Mix(0.4),
        ]
        .into_iter()
        .map(|joint| {
            let dckd = DckdConfig::new()
                .with_warmup_epochs(0)
                .with_temperature(2.0)
                .with_joint(joint)
                .with_fused(fused)
                .init()?;
            Ok((format!("DCKD {joint:?}"), 8.0 * 4.0, dckd.boxed()))
        })
        .collect()
    }),
    method: Some(crate::registry::method!(loss Dckd = logit::DckdConfig())),
    golden: crate::registry::golden![],
}];
