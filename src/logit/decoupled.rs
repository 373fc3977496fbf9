//! What DKD and DCKD share: the split of logits around the target class, the joint target of
//! the target-class part, and the checked, weighted, warmed-up forward pass (fused or composed).

use burn::tensor::{Int, Tensor};

use crate::check::{check_classes, check_fraction, check_non_negative, check_temperature};
use crate::error::DistillError;
use crate::fused;
use crate::input::DistillInput;
use crate::loss::LossOutput;
use crate::math::{Decoupled, JointTarget, Temperature, kl_rows, logsumexp, target_mask};
use crate::schedule::Schedule;

/// The largest input magnitude DKD and DCKD promise finite values and gradients for (their
/// pages state it; `tests/range.rs` checks it at the bound and beyond).
pub(super) const BOUND: f64 = 1e30;

/// What DKD and DCKD share: the weights α (target part) and β (non-target part), the
/// temperature, the warm-up, the joint target-class rule, and the decoupled forward pass.
#[derive(Debug, Clone)]
pub(super) struct Decoupling {
    alpha: f64,
    beta: f64,
    pub temperature: f64,
    warmup: Schedule,
    joint: JointTarget,
    fused: bool,
}

impl Decoupling {
    /// Validates the shared configuration of the objective `name`.
    pub fn new(
        name: &str,
        [alpha, beta]: [f64; 2],
        temperature: f64,
        warmup_epochs: usize,
        joint: JointTarget,
        fused: bool,
    ) -> Result<Self, DistillError> {
        Ok(Self {
            joint: match joint {
                JointTarget::Mix(w) => JointTarget::Mix(check_fraction(name, "joint", w, true)?),
                other => other,
            },
            alpha: check_non_negative(name, "alpha", alpha)?,
            beta: check_non_negative(name, "beta", beta)?,
            temperature: check_temperature(temperature)?,
            warmup: Schedule::Warmup {
                value: 1.0,
                epochs: warmup_epochs,
            },
            fused,
        })
    }

    /// Checks the input and returns `w · T² · batchmean(α · KL(b* ‖ bˢ) + β · NCKD)` with terms
    /// `{name}/tckd` and `{name}/nckd`.
    pub fn forward(
        &self,
        name: &str,
        input: &DistillInput,
        temperature: &Temperature,
    ) -> Result<LossOutput, DistillError> {
        let input = input.of(name);
        let (s, t) = input.logits()?;
        let [n, c] = s.dims();
        check_classes(name, c, 3)?; // NCKD is vacuous below 3 classes
        let y = input.targets(n, c)?;
        let w = input.scheduled(&self.warmup, "for its warm-up (or set warmup_epochs = 0)")?;
        let weights = [self.alpha, self.beta];
        let fused = match temperature {
            Temperature::Fixed(temp) if self.fused => {
                fused::dkd_rows(&s, &t, &y, *temp, self.joint, weights)
            }
            _ => None,
        };
        let scaled = |x: Tensor<1>, weight: f64| temperature.times_squared(x * (weight * w));
        let names = [format!("{name}/tckd"), format!("{name}/nckd")];
        let read = (s.clone(), t.clone());
        let out = match fused {
            Some((total, parts)) => {
                let terms =
                    [0, 1].map(|i| scaled(parts.clone().narrow(1, i, 1).mean(), weights[i]));
                LossOutput::new(
                    scaled(total.mean(), 1.0),
                    names.into_iter().zip(terms).collect(),
                )
            }
            None => {
                let parts = decoupled_rows(s, t, y, temperature, self.joint);
                let terms = [0, 1].map(|i| scaled(parts[i].clone().mean(), weights[i]));
                LossOutput::from_terms(names.into_iter().zip(terms).collect())
            }
        };
        let (s, t) = read;
        input.settle_logits(BOUND, out, &s, &t)
    }
}

/// Per-sample `[KL(b* ‖ bˢ), KL(p̂ᵀ ‖ p̂ˢ)]`, each `[N]`, by composed tensor ops: the reference
/// of the fused kernel.
fn decoupled_rows(
    s: Tensor<2>,
    t: Tensor<2>,
    y: Tensor<1, Int>,
    temperature: &Temperature,
    joint: JointTarget,
) -> [Tensor<1>; 2] {
    let (student, teacher) = split(s.clone(), t, y.clone(), temperature);
    let target = joint_target(&student, &teacher, s, y, joint);
    [
        kl_rows(target, student.log_binary),
        kl_rows(teacher.log_non_target, student.log_non_target),
    ]
}

/// `log b*` for every sample, `[N, 2]`: the teacher's `log bᵀ`, except where the student's
/// arg-max is the target and `joint` says otherwise (the student's side is detached).
fn joint_target(
    student: &Decoupled,
    teacher: &Decoupled,
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    joint: JointTarget,
) -> Tensor<2> {
    let teacher = teacher.log_binary.clone();
    let student = student.log_binary.clone().detach();
    let own = match joint {
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
        JointTarget::Mix(w) => {
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
    let correct = logits
        .detach()
        .argmax(1)
        .equal(targets.unsqueeze_dim(1))
        .expand(teacher.dims());
    teacher.mask_where(correct, own)
}

/// Student and teacher logits split around the targets at `temperature`.
pub(super) fn split(
    student: Tensor<2>,
    teacher: Tensor<2>,
    targets: Tensor<1, Int>,
    temperature: &Temperature,
) -> (Decoupled, Decoupled) {
    let mask = target_mask(targets, student.dims()[1]);
    (
        Decoupled::new(temperature.scale(student), mask.clone()),
        Decoupled::new(temperature.scale(teacher), mask),
    )
}
