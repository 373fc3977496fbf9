use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::{Int, Tensor};

use super::decoupled::{Decoupling, split};
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput, Tempered};
use crate::math::{JointTarget, Temperature, kl_rows};

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
            Dkd::NAME,
            [self.alpha, self.beta],
            self.temperature,
            self.warmup_epochs,
            JointTarget::Teacher,
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

crate::loss::objective!(Dkd, "dkd");

impl Loss for Dkd {
    fn name(&self) -> &str {
        Self::NAME
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
        self.0.forward(Self::NAME, input, temperature)
    }
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

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Dkd"],
    paper: "Zhao et al., CVPR 2022, *Decoupled Knowledge Distillation*",
    doc: "dkd.md",
    bound: Some(super::decoupled::BOUND),
    example: Some(|_| Ok(DkdConfig::new().with_warmup_epochs(0).init()?.boxed())),
    learnable: None,
    twins: Some(|fused| {
        let dkd = DkdConfig::new()
            .with_warmup_epochs(0)
            .with_beta(8.0)
            .with_temperature(4.0)
            .with_fused(fused)
            .init()?;
        Ok(vec![("DKD".into(), 8.0 * 16.0, dkd.boxed())])
    }),
    method: Some(crate::registry::method!(loss Dkd = logit::DkdConfig())),
    golden: crate::registry::golden!["dkd" => golden::dkd],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    pub(crate) fn dkd(case: &Case) -> Result<(), String> {
        let (s, t) = logits(case)?;
        let (alpha, beta, temperature) = (
            case.param("alpha")?,
            case.param("beta")?,
            case.param("temperature")?,
        );
        let dkd = DkdConfig::new()
            .with_alpha(alpha)
            .with_beta(beta)
            .with_temperature(temperature)
            .with_warmup_epochs(0)
            .init()
            .map_err(e)?;
        let input = DistillInput::new(s.clone(), t.clone())
            .targets(case.targets("target")?)
            .attach_teacher();
        let out = dkd.forward(&input).map_err(e)?;
        let (sv, tv) = (
            &case.input("logits_student")?.1,
            &case.input("logits_teacher")?.1,
        );
        let y: Vec<usize> = case
            .input("target")?
            .1
            .iter()
            .map(|&v| v as usize)
            .collect();
        let c = case.input("logits_student")?.0[1];
        let exact = |s: &[f64], t: &[f64]| exact::dkd(s, t, &y, c, [alpha, beta], temperature);
        case.expect_loss(out.value(), Some(exact(sv, tv)))?;
        let grads = out.total.backward();
        let fd_s = || numeric_grad(&|v| exact(&v, tv), sv, 1e-5);
        case.expect_grad("logits_student", s.grad(&grads).map(values), Some(&fd_s))?;
        // the reference's teacher gradient is NaN (not recorded): ours must be finite
        let gt = values(t.grad(&grads).ok_or("no teacher gradient")?);
        if gt.iter().any(|v| !v.is_finite()) {
            return Err("teacher gradient is not finite".into());
        }
        Ok(())
    }
}
