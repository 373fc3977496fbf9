use crate::registry::Descriptor;
use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::check::{check_non_negative, check_temperature};
use crate::error::DistillError;
use crate::input::{DistillInput, Progress};
use crate::loss::{Loss, LossOutput, Tempered};
use crate::math::{Temperature, logistic};
use crate::schedule::Schedule;

/// Configuration to create a [`Ctkd`] learnable temperature around a tempered objective.
#[derive(Config, Debug)]
pub struct CtkdConfig {
    /// The lowest temperature, `T = t_start + t_range · sigmoid(θ)` (> 0).
    #[config(default = 1.0)]
    pub t_start: f64,
    /// The span of temperatures above `t_start` (≥ 0).
    #[config(default = 20.0)]
    pub t_range: f64,
    /// The initial θ (0 gives `T = t_start + t_range / 2`).
    #[config(default = 0.0)]
    pub theta_init: f64,
    /// The gradient-reversal factor λ at the start of its cosine ramp.
    #[config(default = 0.0)]
    pub lambda_start: f64,
    /// λ at the end of the ramp and after it (−1: θ ascends the loss at full strength).
    #[config(default = -1.0)]
    pub lambda_end: f64,
    /// Epochs of the cosine ramp of λ.
    #[config(default = 10)]
    pub lambda_epochs: usize,
}

impl CtkdConfig {
    /// Validates the configuration and wraps `inner`, with θ on `device`.
    pub fn init<L: Tempered + Clone>(
        &self,
        inner: L,
        device: &Device,
    ) -> Result<Ctkd<L>, DistillError> {
        // both ends of the learned temperature's range, t_start and t_start + t_range, are
        // temperatures: in [1e-3, 1e3]
        check_temperature(self.t_start)?;
        check_non_negative(Ctkd::<()>::NAME, "t_range", self.t_range)?;
        check_temperature(self.t_start + self.t_range)?;
        let lambda = Schedule::Cosine {
            start: self.lambda_start,
            end: self.lambda_end,
            epochs: self.lambda_epochs,
        };
        lambda.validate()?;
        crate::check::check_finite(Ctkd::<()>::NAME, "theta_init", self.theta_init)?;
        let theta = Tensor::<1>::from_floats([self.theta_init], device).require_grad();
        Ok(Ctkd {
            theta: Param::from_tensor(theta),
            inner,
            t_start: self.t_start,
            t_range: self.t_range,
            lambda,
        })
    }
}

/// Curriculum temperature, as described in [Curriculum Temperature for Knowledge
/// Distillation](https://arxiv.org/abs/2211.16231) (Li et al., AAAI 2023): a learnable global
/// temperature
///
/// `T = t_start + t_range · sigmoid(GRL_λ(θ))`
///
/// fed to a [`Tempered`] objective (KD, DKD, DCKD, DIST, ...). The gradient-reversal layer is
/// the identity forward and multiplies θ's gradient by λ backward; λ follows a cosine ramp from
/// 0 to −1 over the first 10 epochs, so θ is trained by the student's optimizer to make the
/// distillation *harder* as training proceeds. λ is read at CTKD's 1-based epoch
/// (`Progress::epoch + 1`), so the input needs a [`Progress`].
///
/// `Ctkd` is a burn [`Module`]: put it beside the student in the struct the optimizer updates,
/// and call it as a [`Loss`] each step. `T` stays in `[t_start, t_start + t_range]` by
/// construction, and with DKD it stays finite where the reference code gives NaN (its DKD
/// takes `log` of probabilities that underflow at large `T`).
#[derive(Module, Debug)]
pub struct Ctkd<L> {
    theta: Param<Tensor<1>>,
    #[module(skip)]
    inner: L,
    #[module(skip)]
    t_start: f64,
    #[module(skip)]
    t_range: f64,
    #[module(skip)]
    lambda: Schedule,
}

impl<L: Tempered + Clone + 'static> Ctkd<L> {
    /// The current temperature, for logging.
    pub fn temperature(&self) -> f64 {
        self.temperature_of(self.theta.val().detach())
            .into_scalar::<f64>()
    }

    /// `t_start + t_range · sigmoid(θ)`.
    fn temperature_of(&self, theta: Tensor<1>) -> Tensor<1> {
        logistic(theta) * self.t_range + self.t_start
    }

    /// The parameter θ.
    pub fn theta(&self) -> Tensor<1> {
        self.theta.val()
    }

    /// The same objective with θ replaced (to restore it, or give it another dtype).
    ///
    /// Errors: a θ that is not of shape `[1]`.
    pub fn with_theta(mut self, theta: Tensor<1>) -> Result<Self, DistillError> {
        if theta.dims() != [1] {
            return Err(DistillError::ShapeMismatch {
                objective: Self::NAME.into(),
                what: "θ".into(),
                expected: vec![1],
                actual: theta.dims().to_vec(),
            });
        }
        self.theta = Param::from_tensor(theta.require_grad());
        Ok(self)
    }

    /// The gradient-reversal factor λ at `progress` (CTKD's epochs count from 1).
    pub fn lambda(&self, progress: Progress) -> Result<f64, DistillError> {
        self.lambda.value(Some(Progress::epoch(
            progress.epoch + 1,
            progress.total_epochs,
        )))
    }

    /// The temperature tensor `[1]` for this input, with θ behind the gradient reversal.
    fn learned(&self, input: &DistillInput) -> Result<Temperature, DistillError> {
        let lambda = match self.lambda.needs_progress() {
            true => self.lambda(input.of(Self::NAME).progress("for its λ schedule")?)?,
            false => self.lambda.value(None)?,
        };
        let theta = self.theta.val();
        // identity forward, gradient × λ backward
        let reversed = theta.clone() * lambda + (theta * (1.0 - lambda)).detach();
        Ok(Temperature::Learned(self.temperature_of(reversed)))
    }
}

crate::loss::objective!(Ctkd<L>, "ctkd");

impl<L: Tempered + Clone + 'static> Loss for Ctkd<L> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        self.inner.forward_at(input, &self.learned(input)?)
    }
}

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Ctkd"],
    paper: "Li et al., AAAI 2023, *Curriculum Temperature for KD*",
    doc: "ctkd.md",
    bound: None,
    example: None,
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(learnable Ctkd<()> = curriculum::CtkdConfig())),
    golden: crate::registry::golden!["ctkd_lambda_schedule" => golden::ctkd_lambda_schedule, "ctkd_kd" => golden::ctkd, "ctkd_dkd" => golden::ctkd],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;
    use crate::logit::{DkdConfig, KdConfig};

    /// CTKD's λ schedule: `CosineDecay(max, min, loops)` at CTKD's (1-based) epochs.
    pub(crate) fn ctkd_lambda_schedule(case: &Case) -> Result<(), String> {
        let ctkd = CtkdConfig::new()
            .with_lambda_start(case.param("decay_max")?)
            .with_lambda_end(case.param("decay_min")?)
            .with_lambda_epochs(case.param("decay_loops")? as usize)
            .init(KdConfig::new().init().map_err(e)?, &device())
            .map_err(e)?;
        let (rel, abs) = case.tolerance();
        let epochs = &case.input("epoch")?.1;
        // the input epoch is CTKD's; ours counts from 0
        let got: Vec<f64> = epochs
            .iter()
            .map(|&ep| ctkd.lambda(Progress::epoch((ep as usize).saturating_sub(1), 240)))
            .collect::<Result<_, _>>()
            .map_err(e)?;
        let want = case
            .outputs
            .get("cosine_decay")
            .ok_or("no cosine_decay output")?;
        // epoch 0 does not exist in CTKD (λ = cosine(0) = 0 there, also ours at epoch 0)
        close("lambda", &got[1..], &want[1..], rel, abs)?;
        close(
            "lambda at start",
            &[ctkd.lambda(Progress::epoch(0, 240)).map_err(e)?],
            &[want[1]],
            rel,
            abs,
        )
    }

    /// CTKD's global temperature over KD (`ctkd_kd`) or DKD (`ctkd_dkd`, α and β as given): the
    /// temperature, the loss and the gradients of both logits and of θ. Where the reference's θ
    /// gradient is NaN (DKD's inexact target mask), the case records the exact one.
    pub(crate) fn ctkd(case: &Case) -> Result<(), String> {
        match case.method.as_str() {
            "ctkd_dkd" => ctkd_over(
                case,
                DkdConfig::new()
                    .with_alpha(case.param("dkd_alpha")?)
                    .with_beta(case.param("dkd_beta")?)
                    .with_warmup_epochs(0)
                    .init()
                    .map_err(e)?,
            ),
            _ => ctkd_over(case, KdConfig::new().init().map_err(e)?),
        }
    }

    pub(crate) fn ctkd_over<L: Tempered + Clone + 'static>(
        case: &Case,
        inner: L,
    ) -> Result<(), String> {
        let (s, t) = logits(case)?;
        let theta = case.leaf::<1>("theta")?;
        let lambda = case.param("lambda")?;
        let ctkd = CtkdConfig::new()
            .with_t_start(case.param("t_start")?)
            .with_t_range(case.param("t_end")?)
            .with_lambda_start(lambda)
            .with_lambda_end(lambda)
            .init(inner, &device())
            .map_err(e)?
            .with_theta(theta.clone())
            .map_err(e)?;
        let (rel, abs) = case.tolerance();
        let want_t = case.outputs.get("temperature").ok_or("no temperature")?;
        close("temperature", &[ctkd.temperature()], want_t, rel, abs)?;
        let mut input = DistillInput::new(s.clone(), t.clone())
            .attach_teacher()
            .progress(Progress::epoch(0, 1));
        if case.has("target") {
            input = input.targets(case.targets("target")?);
        }
        let grads = case.check(ctkd.forward(&input).map_err(e)?, &as_taps(&s, &t))?;
        // the reference records θ's gradient through the reversal layer (λ applied)
        let exact = || {
            case.outputs
                .get("dloss_dtheta_exact_mask_after_reversal")
                .cloned()
                .unwrap_or_default()
        };
        case.expect_grad("theta", theta.grad(&grads).map(values), Some(&exact))
    }
}
