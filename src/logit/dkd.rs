use burn::config::Config;
use burn::tensor::{Int, Tensor};

use crate::curriculum::Schedule;
use crate::error::{check_non_negative, check_temperature};
use crate::fused::{self, Joint};
use crate::math::{Decoupled, Temperature, kl_rows, logsumexp, target_mask};
use crate::{DistillError, DistillInput, Loss, LossOutput, Tempered};

/// Configuration to create a [`Dkd`] objective. The defaults are the paper's CIFAR-100 ones.
#[derive(Config, Debug)]
pub struct DkdConfig {
    /// Weight α of the target-class term TCKD.
    #[config(default = 1.0)]
    pub alpha: f64,
    /// Weight β of the non-target term NCKD (8 on CIFAR-100; 2 for res56→res20, 6 for
    /// WRN/VGG, 0.5 on ImageNet).
    #[config(default = 8.0)]
    pub beta: f64,
    /// The softmax temperature `T` (> 0).
    #[config(default = 4.0)]
    pub temperature: f64,
    /// Epochs of linear warm-up, `min((epoch + 1) / warmup, 1)` (0: none). Needs the input's
    /// [`Progress`](crate::Progress) when not 0.
    #[config(default = 20)]
    pub warmup_epochs: usize,
    /// Run the [fused kernel](crate::fused) where the device supports it; `false` forces the
    /// composed tensor-op version.
    #[config(default = true)]
    pub fused: bool,
}

impl DkdConfig {
    /// Validates the configuration and builds the objective.
    pub fn init(&self) -> Result<Dkd, DistillError> {
        Ok(Dkd(Decoupling::new(
            "dkd",
            [self.alpha, self.beta],
            self.temperature,
            self.warmup_epochs,
            Joint::Teacher,
            self.fused,
        )?))
    }
}

/// Decoupled knowledge distillation, as described in
/// [Decoupled Knowledge Distillation](https://arxiv.org/abs/2203.08679) (Zhao et al., CVPR 2022).
///
/// With target class `t`, `b = [p_t, Σ_{j≠t} pⱼ]` (target vs rest) and
/// `p̂ⱼ = pⱼ / Σ_{k≠t} p_k` over `j ≠ t` (the non-target distribution), `p = softmax(z/T)`:
///
/// `DKD = w(epoch) · T² · (1/N) Σₙ [α · KL(bᵀ ‖ bˢ) + β · KL(p̂ᵀ ‖ p̂ˢ)]`
///
/// `w` is the linear warm-up `min((epoch + 1) / warmup, 1)`. The terms are `"dkd/tckd"` and
/// `"dkd/nckd"`, each with its weights applied. On the [fused path](crate::fused) (the default
/// where the device has it) the terms are values for logging and only the total is
/// differentiable; `fused: false` makes the terms differentiable too. Add [`CrossEntropy`](super::CrossEntropy) for
/// the paper's full objective.
///
/// Numerics: both parts come from log-sum-exps over all and over non-target logits, with an
/// exact mask; the reference code takes `log` of `b` (−∞ when the non-target mass underflows)
/// and masks the target by subtracting 1000 (wrong for logits near 1e3, NaN for the teacher's
/// gradient). Here loss and gradients stay finite for logits of magnitude 1e4 in f32 and f64.
/// NCKD needs at least 3 classes.
///
/// # Shapes
/// - student and teacher logits: `[N, C]`, `C ≥ 3`; targets: `[N]`
#[derive(Debug, Clone)]
pub struct Dkd(Decoupling);

impl Loss for Dkd {
    fn name(&self) -> &str {
        "dkd"
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        self.forward_at(input, &Temperature::Fixed(self.0.temperature))
    }
}

impl Tempered for Dkd {
    fn forward_at(
        &self,
        input: &DistillInput,
        temperature: &Temperature,
    ) -> Result<LossOutput, DistillError> {
        self.0.forward("dkd", input, temperature)
    }
}

/// What DKD and DCKD share: the weights α (target part) and β (non-target part), the
/// temperature, the warm-up, the joint target-class rule, and the decoupled forward pass.
#[derive(Debug, Clone)]
pub(crate) struct Decoupling {
    alpha: f64,
    beta: f64,
    pub temperature: f64,
    warmup: Schedule,
    joint: Joint,
    fused: bool,
}

impl Decoupling {
    /// Validates the shared configuration of the objective `name`.
    pub fn new(
        name: &str,
        [alpha, beta]: [f64; 2],
        temperature: f64,
        warmup_epochs: usize,
        joint: Joint,
        fused: bool,
    ) -> Result<Self, DistillError> {
        Ok(Self {
            alpha: check_non_negative(name, "alpha", alpha)?,
            beta: check_non_negative(name, "beta", beta)?,
            temperature: check_temperature(temperature)?,
            warmup: Schedule::Warmup {
                value: 1.0,
                epochs: warmup_epochs,
            },
            joint,
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
        let (s, t) = input.logits(name)?;
        let [n, c] = s.dims();
        check_classes(name, c)?;
        let y = input.checked_targets(name, n, c)?;
        let w = match self.warmup.needs_progress() {
            true => self.warmup.value(Some(
                input.require_progress(name, "for its warm-up (or set warmup_epochs = 0)")?,
            ))?,
            false => 1.0,
        };
        let weights = [self.alpha, self.beta];
        let fused = match temperature {
            Temperature::Fixed(temp) if self.fused => {
                fused::dkd_rows(&s, &t, &y, *temp, self.joint, weights)
            }
            _ => None,
        };
        let scaled = |x: Tensor<1>, weight: f64| temperature.times_squared(x * (weight * w));
        let names = [format!("{name}/tckd"), format!("{name}/nckd")];
        Ok(match fused {
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
        })
    }
}

/// Per-sample `[KL(b* ‖ bˢ), KL(p̂ᵀ ‖ p̂ˢ)]`, each `[N]`, by composed tensor ops: the reference
/// of the fused kernel.
fn decoupled_rows(
    s: Tensor<2>,
    t: Tensor<2>,
    y: Tensor<1, Int>,
    temperature: &Temperature,
    joint: Joint,
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
    joint: Joint,
) -> Tensor<2> {
    let teacher = teacher.log_binary.clone();
    let student = student.log_binary.clone().detach();
    let own = match joint {
        Joint::Teacher => return teacher,
        Joint::Max => {
            // the student's whole binary distribution where its target mass is larger
            let larger = student
                .clone()
                .narrow(1, 0, 1)
                .greater(teacher.clone().narrow(1, 0, 1))
                .expand(teacher.dims());
            teacher.clone().mask_where(larger, student)
        }
        Joint::Mix(w) => {
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
fn split(
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

/// Checks the class count DKD-style objectives need: NCKD is vacuous below 3 classes.
pub(crate) fn check_classes(objective: &str, classes: usize) -> Result<(), DistillError> {
    if classes < 3 {
        return Err(DistillError::TooFewClasses {
            objective: objective.into(),
            min: 3,
            got: classes,
        });
    }
    Ok(())
}

/// Per-sample `(TCKD, NCKD)`, each `[N]`, without weights, `T²` or input checks: the composed
/// tensor-op version, the reference of the fused kernel.
pub fn dkd_per_sample(
    student: Tensor<2>,
    teacher: Tensor<2>,
    targets: Tensor<1, Int>,
    temperature: f64,
) -> (Tensor<1>, Tensor<1>) {
    let (s, t) = split(student, teacher, targets, &Temperature::Fixed(temperature));
    (
        kl_rows(t.log_binary, s.log_binary),
        kl_rows(t.log_non_target, s.log_non_target),
    )
}

/// `T² · batchmean (α·TCKD + β·NCKD)`, mdistiller's `dkd_loss`, as a function.
///
/// The teacher is used as given (detach it for a frozen teacher). The [`Dkd`] objective with
/// no warm-up, so fused where the device supports it and checked the same way.
pub fn dkd_loss(
    student: Tensor<2>,
    teacher: Tensor<2>,
    targets: Tensor<1, Int>,
    alpha: f64,
    beta: f64,
    temperature: f64,
) -> Result<Tensor<1>, DistillError> {
    let dkd = DkdConfig::new()
        .with_alpha(alpha)
        .with_beta(beta)
        .with_temperature(temperature)
        .with_warmup_epochs(0)
        .init()?;
    let input = DistillInput::new(student, teacher)
        .targets(targets)
        .attach_teacher();
    Ok(dkd.forward(&input)?.total)
}
