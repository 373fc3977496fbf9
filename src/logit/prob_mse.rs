//! The squared error between softened probabilities (MetaDistil's NLP soft loss).

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::Tensor;
use burn::tensor::activation::softmax;

use crate::check::check_temperature;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput, Tempered};
use crate::math::Temperature;

/// The mean over all `N·C` entries of `(softmax(z_t) − softmax(z_s))²`, on logits already
/// divided by the temperature.
pub fn prob_mse(student: Tensor<2>, teacher: Tensor<2>) -> Tensor<1> {
    (softmax(teacher, 1) - softmax(student, 1)).square().mean()
}

/// Configuration of [`ProbMse`].
#[derive(Config, Debug)]
pub struct ProbMseConfig {
    /// The temperature `T`.
    #[config(default = 1.0)]
    pub temperature: f64,
}

impl ProbMseConfig {
    /// Validates the temperature.
    pub fn init(&self) -> Result<ProbMse, DistillError> {
        Ok(ProbMse {
            temperature: check_temperature(self.temperature)?,
        })
    }
}

/// `L = T² · mean (softmax(zᵗ/T) − softmax(zˢ/T))²` over all `N·C` entries: the soft loss of
/// MetaDistil's NLP code (JetRunner/MetaDistil, `nlp/distillation_meta.py`, after Ba & Caruana
/// 2014's regression on logits). Bounded and with gradients that never explode, it is a
/// gentler alternative to KL for tiny students. One term `"prob_mse"`.
#[derive(Debug, Clone)]
pub struct ProbMse {
    temperature: f64,
}

impl Tempered for ProbMse {
    fn forward_at(
        &self,
        input: &DistillInput,
        t: &Temperature,
    ) -> Result<LossOutput, DistillError> {
        let (s, te) = input.of(ProbMse::NAME).within(BOUND).logits()?;
        let diff = softmax(t.scale(te), 1) - softmax(t.scale(s), 1);
        Ok(LossOutput::single(
            ProbMse::NAME,
            t.times_squared(diff.square().mean()),
        ))
    }
}

crate::loss::objective!(ProbMse, "prob_mse");

impl Loss for ProbMse {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        self.forward_at(input, &Temperature::Fixed(self.temperature))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = f64::MAX;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["ProbMse"],
    paper: "MetaDistil's NLP soft loss (squared error of softened probabilities)",
    doc: "prob_mse.md",
    bound: Some(BOUND),
    example: Some(|_| Ok(ProbMseConfig::new().with_temperature(2.0).init()?.boxed())),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss ProbMse = logit::ProbMseConfig())),
    golden: crate::registry::golden!["prob_mse_T2" => golden::prob_mse],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    pub(crate) fn prob_mse(case: &Case) -> Result<(), String> {
        let loss = ProbMseConfig::new()
            .with_temperature(case.param("temperature")?)
            .init()
            .map_err(e)?;
        on_logits(case, &loss)
    }
}
