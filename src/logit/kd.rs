use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::Tensor;

use crate::check::check_temperature;
use crate::fused;
use burn::tensor::activation::log_softmax;

use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput, Reduction, Tempered};
use crate::math::{Temperature, kl_rows};

/// Per-sample `KL(softmax(z_t/T) ‖ softmax(z_s/T))`, shape `[N]`, without `T²` and without
/// input checks: the composed tensor-op version, the reference of the fused kernel.
pub fn kd_per_sample(student: Tensor<2>, teacher: Tensor<2>, temperature: f64) -> Tensor<1> {
    kd_rows(student, teacher, &Temperature::Fixed(temperature))
}

/// Per-sample KL of the softened distributions at any [`Temperature`].
fn kd_rows(student: Tensor<2>, teacher: Tensor<2>, temperature: &Temperature) -> Tensor<1> {
    kl_rows(
        log_softmax(temperature.scale(teacher), 1),
        log_softmax(temperature.scale(student), 1),
    )
}

/// Configuration to create a [`Kd`] objective.
#[derive(Config, Debug)]
pub struct KdConfig {
    /// The softmax temperature `T` (> 0). mdistiller uses 4 on CIFAR-100 and 1 on ImageNet.
    #[config(default = 4.0)]
    pub temperature: f64,
    /// Multiply by `T²`, which keeps the gradient's scale independent of `T` (Hinton et al.).
    #[config(default = true)]
    pub t_squared: bool,
    /// How per-sample divergences are reduced; `SampleMean` is the KL divergence's own scale.
    #[config(default = "Reduction::SampleMean")]
    pub reduction: Reduction,
    /// Run the [fused kernel](crate::fused) where the device supports it (same values and
    /// gradients as the composed tensor ops, a few times faster); `false` forces the composed
    /// version.
    #[config(default = true)]
    pub fused: bool,
}

impl KdConfig {
    /// Validates the configuration and builds the objective.
    pub fn init(&self) -> Result<Kd, DistillError> {
        Ok(Kd {
            temperature: check_temperature(self.temperature)?,
            t_squared: self.t_squared,
            reduction: self.reduction,
            fused: self.fused,
        })
    }
}

/// Hinton's knowledge distillation, as described in
/// [Distilling the Knowledge in a Neural Network](https://arxiv.org/abs/1503.02531)
/// (Hinton, Vinyals, Dean, 2015):
///
/// `KD = T² · (1/N) Σₙ KL(softmax(z_t/T) ‖ softmax(z_s/T))`
///
/// with the defaults (`SampleMean`, `T²` on), which is mdistiller's `kd_loss`. The KL divergence
/// is computed from two log-softmaxes, so it stays finite for logits of any magnitude.
/// Gradients: `∂KD/∂z_s = (T/N)(p_s − p_t)`; with the teacher
/// [attached](DistillInput::attach_teacher), `∂KD/∂z_t = (T/N) p_t ⊙ (a − ⟨p_t, a⟩)`,
/// `a = log p_t − log p_s`. Its term is `"kd"`.
///
/// # Shapes
/// - student and teacher logits: `[N, C]`
#[derive(Debug, Clone)]
pub struct Kd {
    temperature: f64,
    t_squared: bool,
    reduction: Reduction,
    fused: bool,
}

impl Kd {
    /// The temperature.
    pub fn temperature(&self) -> f64 {
        self.temperature
    }
}

crate::loss::objective!(Kd, "kd");

impl Loss for Kd {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        self.forward_at(input, &Temperature::Fixed(self.temperature))
    }
}

impl Tempered for Kd {
    fn forward_at(
        &self,
        input: &DistillInput,
        temperature: &Temperature,
    ) -> Result<LossOutput, DistillError> {
        let input = input.of(Kd::NAME);
        let (s, t) = input.logits()?;
        let c = s.dims()[1];
        let rows = match temperature {
            Temperature::Fixed(temp) if self.fused => fused::kd_rows(&s, &t, *temp),
            _ => None,
        };
        let per_sample = rows.unwrap_or_else(|| kd_rows(s.clone(), t.clone(), temperature));
        let loss = self.reduction.apply(per_sample, c);
        let out = LossOutput::single(
            Kd::NAME,
            match self.t_squared {
                true => temperature.times_squared(loss),
                false => loss,
            },
        );
        input.settle_logits(BOUND, out, &s, &t)
    }
}

/// `T² · batchmean KL(softmax(z_t/T) ‖ softmax(z_s/T))`, mdistiller's `kd_loss`, as a function:
/// the default [`Kd`] objective (fused where the device supports it).
///
/// The teacher is used as given (detach it for a frozen teacher).
///
/// ```
/// # use burn::tensor::{Device, Tensor};
/// let dev = Device::flex();
/// let z = Tensor::<2>::from_floats([[1.0, 2.0, 3.0]], &dev);
/// let loss = burn_distill::logit::kd_loss(z.clone(), z, 4.0).unwrap();
/// assert!(loss.into_scalar::<f32>().abs() < 1e-6);
/// ```
pub fn kd_loss(
    student: Tensor<2>,
    teacher: Tensor<2>,
    temperature: f64,
) -> Result<Tensor<1>, DistillError> {
    let kd = KdConfig::new().with_temperature(temperature).init()?;
    Ok(kd
        .forward(&DistillInput::new(student, teacher).attach_teacher())?
        .total)
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e38;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Kd"],
    paper: "Hinton, Vinyals, Dean 2015, *Distilling the Knowledge in a Neural Network*",
    doc: "kd.md",
    bound: Some(BOUND),
    example: Some(|_| Ok(KdConfig::new().with_temperature(2.0).init()?.boxed())),
    learnable: None,
    twins: Some(|fused| {
        let kd = KdConfig::new()
            .with_temperature(4.0)
            .with_fused(fused)
            .init()?;
        Ok(vec![("KD".into(), 16.0, kd.boxed())])
    }),
    method: Some(crate::registry::method!(loss Kd = logit::KdConfig())),
    golden: crate::registry::golden!["kd" => golden::kd, "kd_custom_kl" => golden::kd, "tdist_skd_instance" => golden::skd_instance],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    pub(crate) fn kd(case: &Case) -> Result<(), String> {
        let (s, t) = logits(case)?;
        let temperature = case.param("temperature")?;
        let kd = KdConfig::new()
            .with_temperature(temperature)
            .init()
            .map_err(e)?;
        let input = DistillInput::new(s.clone(), t.clone()).attach_teacher();
        let out = kd.forward(&input).map_err(e)?;
        let (sv, tv) = (
            &case.input("logits_student")?.1,
            &case.input("logits_teacher")?.1,
        );
        let c = case.input("logits_student")?.0[1];
        let exact = exact::kd(sv, tv, c, temperature);
        case.expect_loss(out.value(), Some(exact.loss))?;
        let grads = out.total.backward();
        case.expect_grad(
            "logits_student",
            s.grad(&grads).map(values),
            Some(&|| exact.ds.clone()),
        )?;
        case.expect_grad(
            "logits_teacher",
            t.grad(&grads).map(values),
            Some(&|| exact.dt.clone()),
        )
    }

    /// torchdistill's SKD instance term: `KL(p_t ‖ p_s)` at `T` over the batch (`batchmean`),
    /// no `T²`, the teacher not detached.
    pub(crate) fn skd_instance(case: &Case) -> Result<(), String> {
        let (s, t) = (
            case.leaf::<2>("student_logits")?,
            case.leaf::<2>("teacher_logits")?,
        );
        let kd = KdConfig::new()
            .with_temperature(case.param("temperature")?)
            .with_t_squared(false)
            .init()
            .map_err(e)?;
        let input = DistillInput::new(s.clone(), t.clone()).attach_teacher();
        let out = kd.forward(&input).map_err(e)?;
        case.expect_loss(out.value(), None)?;
        let grads = out.total.backward();
        case.expect_grad("student_logits", s.grad(&grads).map(values), None)?;
        case.expect_grad("teacher_logits", t.grad(&grads).map(values), None)
    }
}
