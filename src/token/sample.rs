//! Sampling the next token from a causal language model's logits: temperature, top-k and
//! top-p (nucleus), seeded, so a trainer can mix student-generated sequences into distillation
//! (GKD's λ, MiniLLM, DistiLLM-2's rejected responses).

use burn::config::Config;
use burn::tensor::{Int, Tensor, TensorData};

use crate::check::check_fraction;
use crate::error::DistillError;
use crate::math::SplitMix;

/// Configuration of [`Sampler`].
#[derive(Config, Debug)]
pub struct SamplerConfig {
    /// The temperature `T ≥ 0`: the logits are divided by it; 0 is greedy (the arg-max).
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (`None`: all).
    #[config(default = "None")]
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose mass reaches `p` ∈ (0, 1]
    /// (`None`: all).
    #[config(default = "None")]
    pub top_p: Option<f64>,
    /// The seed of the draws.
    #[config(default = 0)]
    pub seed: u64,
}

impl SamplerConfig {
    /// Validates the configuration and builds the sampler.
    pub fn init(&self) -> Result<Sampler, DistillError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(DistillError::config(
                "sampler",
                "temperature",
                self.temperature,
                "must be finite and at least 0 (0: greedy)",
            ));
        }
        if self.top_k == Some(0) {
            return Err(DistillError::config(
                "sampler",
                "top_k",
                0,
                "must be at least 1",
            ));
        }
        if let Some(p) = self.top_p {
            check_fraction("sampler", "top_p", p, true)?;
            if p == 0.0 {
                return Err(DistillError::config(
                    "sampler",
                    "top_p",
                    p,
                    "must be in (0, 1]",
                ));
            }
        }
        Ok(Sampler {
            config: self.clone(),
        })
    }
}

/// Draws one token per row of next-token logits `[B, V]`: softmax at the temperature,
/// restricted to the top `k` and then to the nucleus of mass `p` (renormalised), and sampled
/// with a counter-based generator keyed by the seed and the caller's `key` (the step, say), so
/// a run repeats exactly on every backend. Logits at −∞ are never drawn; a row with no finite
/// logit is an error. The logits are read back to the host, one `[B, V]` copy per call.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplerConfig,
}

impl Sampler {
    /// The next token of each row of `logits` `[B, V]`, drawn with the generator's stream
    /// `key`.
    pub fn sample(&self, logits: Tensor<2>, key: u64) -> Result<Tensor<1, Int>, DistillError> {
        let c = &self.config;
        let [b, v] = logits.dims();
        let device = logits.device();
        let values: Vec<f64> = logits
            .into_data()
            .convert::<f64>()
            .try_to_vec::<f64>()
            .map_err(|e| DistillError::NonFinite {
                what: format!("sampler: the logits could not be read ({e:?})"),
            })?;
        let mut rng = SplitMix::keyed(c.seed, "sampler", key);
        let mut picked = Vec::with_capacity(b);
        for (row, z) in values.chunks(v.max(1)).enumerate() {
            let finite: Vec<usize> = (0..v).filter(|&j| z[j].is_finite()).collect();
            if finite.is_empty() || z.iter().any(|x| x.is_nan() || *x == f64::INFINITY) {
                return Err(DistillError::NonFinite {
                    what: format!(
                        "sampler: the logits of row {row} (no finite logit, or NaN / +∞)"
                    ),
                });
            }
            let by_logit = |a: &usize, b: &usize| z[*b].total_cmp(&z[*a]).then(a.cmp(b));
            if c.temperature == 0.0 {
                picked.push(finite.iter().copied().min_by(by_logit).unwrap_or(0) as i64);
                continue;
            }
            let mut order = finite;
            order.sort_by(by_logit);
            if let Some(k) = c.top_k {
                order.truncate(k);
            }
            let top = z[order[0]] / c.temperature;
            let mut p: Vec<f64> = order
                .iter()
                .map(|&j| (z[j] / c.temperature - top).exp())
                .collect();
            let total: f64 = p.iter().sum();
            p.iter_mut().for_each(|x| *x /= total);
            if let Some(nucleus) = c.top_p {
                let mut mass = 0.0;
                let keep = p
                    .iter()
                    .position(|&x| {
                        mass += x;
                        mass >= nucleus
                    })
                    .map_or(p.len(), |i| i + 1);
                order.truncate(keep);
                p.truncate(keep);
                let total: f64 = p.iter().sum();
                p.iter_mut().for_each(|x| *x /= total);
            }
            let u = rng.unit();
            let mut mass = 0.0;
            let index = p
                .iter()
                .position(|&x| {
                    mass += x;
                    u < mass
                })
                .unwrap_or(p.len() - 1);
            picked.push(order[index] as i64);
        }
        Ok(Tensor::from_data(TensorData::new(picked, [b]), &device))
    }
}
