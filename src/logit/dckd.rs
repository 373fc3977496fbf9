use burn::config::Config;
use burn::tensor::Tensor;

use super::dkd::{Decoupling, Split};
use crate::math::{Temperature, logsumexp};
use crate::{DistillError, DistillInput, Loss, LossOutput, Tempered};

/// Where DCKD's target-class part gets its target mass `b*_t`, for samples the student already
/// classifies correctly (for the others it is always the teacher's).
#[derive(Config, Debug, Copy, PartialEq)]
pub enum JointTarget {
    /// `max(bᵀ_t, sg(bˢ_t))`: a correct student is never pulled back below its own confidence.
    Max,
    /// The teacher's `bᵀ` alone: DCKD is then exactly DKD.
    Teacher,
    /// `w · bᵀ + (1 − w) · sg(bˢ)` with `w = mix_weight`.
    Mix,
}

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
    /// How the joint target-class distribution is formed.
    #[config(default = "JointTarget::Max")]
    pub joint: JointTarget,
    /// The teacher's share `w ∈ [0, 1]` under [`JointTarget::Mix`].
    #[config(default = 0.5)]
    pub mix_weight: f64,
}

impl DckdConfig {
    /// Validates the configuration and builds the objective.
    pub fn init(&self) -> Result<Dckd, DistillError> {
        if !(0.0..=1.0).contains(&self.mix_weight) {
            return Err(DistillError::config(
                "dckd",
                "mix_weight",
                self.mix_weight,
                "must be in [0, 1]",
            ));
        }
        Ok(Dckd {
            parts: Decoupling::new(
                "dckd",
                self.alpha,
                self.beta,
                self.temperature,
                self.warmup_epochs,
            )?,
            joint: self.joint,
            mix_weight: self.mix_weight,
        })
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
/// relational loss with `+`. Terms: `"dckd/tckd"`, `"dckd/nckd"`.
///
/// # Shapes
/// - student and teacher logits: `[N, C]`, `C ≥ 3`; targets: `[N]`
#[derive(Debug, Clone)]
pub struct Dckd {
    parts: Decoupling,
    joint: JointTarget,
    mix_weight: f64,
}

impl Dckd {
    /// `log b*` for every sample, `[N, 2]`.
    fn joint_target(&self, split: &Split) -> Tensor<2> {
        let teacher = split.teacher.log_binary.clone();
        let student = split.student.log_binary.clone().detach();
        let own = match self.joint {
            JointTarget::Teacher => return teacher,
            JointTarget::Max => {
                // the student's whole binary distribution where its target mass is larger
                let larger = student
                    .clone()
                    .narrow(1, 0, 1)
                    .greater(teacher.clone().narrow(1, 0, 1))
                    .expand(teacher.dims());
                teacher.clone().mask_where(larger, student)
            }
            JointTarget::Mix => {
                let w = self.mix_weight;
                // log(w·bᵀ + (1 − w)·bˢ), per component, as a two-term log-sum-exp
                let pair = |k: usize| {
                    Tensor::cat(
                        vec![
                            teacher.clone().narrow(1, k, 1) + w.ln(),
                            student.clone().narrow(1, k, 1) + (1.0 - w).ln(),
                        ],
                        1,
                    )
                };
                Tensor::cat(vec![logsumexp(pair(0)), logsumexp(pair(1))], 1)
            }
        };
        // only samples whose student arg-max is the target take the joint target
        let correct = split
            .student_logits
            .clone()
            .detach()
            .argmax(1)
            .equal(split.targets.clone().unsqueeze_dim(1))
            .expand(teacher.dims());
        teacher.mask_where(correct, own)
    }
}

impl Loss for Dckd {
    fn name(&self) -> &str {
        "dckd"
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        self.forward_at(input, &Temperature::Fixed(self.parts.temperature))
    }
}

impl Tempered for Dckd {
    fn forward_at(
        &self,
        input: &DistillInput,
        temperature: &Temperature,
    ) -> Result<LossOutput, DistillError> {
        self.parts.forward("dckd", input, temperature, &|split| {
            self.joint_target(split)
        })
    }
}
