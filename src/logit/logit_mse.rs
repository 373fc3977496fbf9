//! The squared error between logits, divided by the temperature (MetaDistil's CV
//! `MSEWithTemperature` and, at `T = 1`, its NLP `logits_mse`).

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::Tensor;

use crate::check::check_temperature;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput, Tempered};
use crate::math::Temperature;

/// The mean over all `N·C` entries of `(z_s − z_t)²`, on logits already divided by the
/// temperature.
pub fn logit_mse(student: Tensor<2>, teacher: Tensor<2>) -> Tensor<1> {
    (student - teacher).square().mean()
}

/// Configuration of [`LogitMse`].
#[derive(Config, Debug)]
pub struct LogitMseConfig {
    /// The temperature `T` the logits are divided by (MetaDistil's CV scripts: 4).
    #[config(default = 1.0)]
    pub temperature: f64,
}

impl LogitMseConfig {
    /// Validates the temperature.
    pub fn init(&self) -> Result<LogitMse, DistillError> {
        Ok(LogitMse {
            temperature: check_temperature(self.temperature)?,
        })
    }
}

/// Regression on logits (Ba & Caruana, NeurIPS 2014, *Do Deep Nets Really Need to be Deep?*):
///
/// ```text
/// L = mean over N·C of (zˢ/T − zᵗ/T)²  =  mean (zˢ − zᵗ)² / T²
/// ```
///
/// MetaDistil's `MSEWithTemperature` (JetRunner/MetaDistil, `cv/distiller_zoo/MSE.py`) and, with
/// `T = 1`, its NLP `--logits_mse` soft loss (`F.mse_loss(t_logits, s_logits)`). No `T²` factor:
/// the reference divides the logits and leaves the loss as it is. One term `"logit_mse"`.
///
/// # Shapes
/// - student and teacher logits: `[N, C]`
#[derive(Debug, Clone)]
pub struct LogitMse {
    temperature: f64,
}

impl Tempered for LogitMse {
    fn forward_at(
        &self,
        input: &DistillInput,
        t: &Temperature,
    ) -> Result<LossOutput, DistillError> {
        let (s, te) = input.of(LogitMse::NAME).within(BOUND).logits()?;
        Ok(LossOutput::single(
            LogitMse::NAME,
            logit_mse(t.scale(s), t.scale(te)),
        ))
    }
}

crate::loss::objective!(LogitMse, "logit_mse");

impl Loss for LogitMse {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        self.forward_at(input, &Temperature::Fixed(self.temperature))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e15;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["LogitMse"],
    paper: "Ba & Caruana 2014; MetaDistil's `MSEWithTemperature`",
    doc: "logit_mse.md",
    bound: Some(BOUND),
    example: Some(|_| Ok(LogitMseConfig::new().with_temperature(4.0).init()?.boxed())),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss LogitMse = logit::LogitMseConfig())),
    golden: crate::registry::golden!["logit_mse_temperature" => golden::logit_mse, "logit_mse" => golden::logit_mse],
}];

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn by_hand() {
        let dev = Device::flex();
        let s = Tensor::<2>::from_floats([[1.0, 2.0], [0.0, 4.0]], &dev);
        let t = Tensor::<2>::from_floats([[3.0, 2.0], [0.0, 0.0]], &dev);
        let loss = LogitMseConfig::new()
            .with_temperature(2.0)
            .init()
            .unwrap()
            .forward(&DistillInput::new(s, t))
            .unwrap();
        // ((−2)² + 0 + 0 + 4²) / 4 entries / T² = 20 / 4 / 4
        assert!((loss.value() - 1.25).abs() < 1e-6);
    }
}

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// MetaDistil's `MSEWithTemperature`.
    pub(crate) fn logit_mse(case: &Case) -> Result<(), String> {
        let loss = LogitMseConfig::new()
            .with_temperature(case.param("temperature")?)
            .init()
            .map_err(e)?;
        on_logits(case, &loss)
    }
}
