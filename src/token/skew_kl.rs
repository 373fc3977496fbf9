//! DistiLLM's skew KL divergences.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

use super::forward_kl::{forward_elements, forward_kl_elements};
use super::softened::{PerToken, Softened, SoftenedConfig};
use crate::check::check_fraction;
use crate::error::DistillError;
use crate::math::log_add_exp;

/// `log(α·p + (1 − α)·q)` from log-probabilities, in log space (`α ∈ [0, 1)`).
pub fn log_skew_mixture(log_p: Tensor<2>, log_q: Tensor<2>, alpha: f64) -> Tensor<2> {
    if alpha == 0.0 {
        return log_q;
    }
    log_add_exp(log_p + alpha.ln(), log_q + (1.0 - alpha).ln())
}

/// Which distribution the skew KL matches from.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum SkewDirection {
    /// `KL(p_t ‖ α·p_t + (1 − α)·p_s)`: DistiLLM's skew forward KL.
    Forward,
    /// `KL(p_s ‖ α·p_s + (1 − α)·p_t)`: DistiLLM's skew reverse KL.
    Reverse,
}

/// [`SkewKl`]'s own options.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SkewKlOptions {
    /// Forward or reverse.
    pub direction: SkewDirection,
    /// α ∈ [0, 1): the skew, the matched distribution's own share of the mixture (DistiLLM's
    /// `lam`, 0.1 in the paper; 0 gives the plain KL).
    pub alpha: f64,
    /// The forward form as DistiLLM computes it, the cross-entropy `−Σ p_t log m` (the skew KL
    /// plus the teacher's entropy: the same student gradient). Only with `Forward`.
    pub cross_entropy: bool,
}

impl Default for SkewKlOptions {
    fn default() -> Self {
        Self {
            direction: SkewDirection::Forward,
            alpha: 0.1,
            cross_entropy: false,
        }
    }
}

/// Configuration of [`SkewKl`]: its [options](SkewKlOptions) beside the shared temperature,
/// `T²` switch and reduction.
pub type SkewKlConfig = SoftenedConfig<SkewKlOptions>;

impl SkewKlConfig {
    /// With the direction ([`SkewKlOptions::direction`]).
    pub fn with_direction(mut self, direction: SkewDirection) -> Self {
        self.options.direction = direction;
        self
    }

    /// With α ([`SkewKlOptions::alpha`]).
    pub fn with_alpha(mut self, alpha: f64) -> Self {
        self.options.alpha = alpha;
        self
    }

    /// With (or without) the cross-entropy form ([`SkewKlOptions::cross_entropy`]).
    pub fn with_cross_entropy(mut self, cross_entropy: bool) -> Self {
        self.options.cross_entropy = cross_entropy;
        self
    }
}

/// The skew KL divergences of DistiLLM (Ko et al., ICML 2024, *DistiLLM: Towards Streamlined
/// Distillation for Large Language Models*), per token:
///
/// `SKL_α(p_t ‖ p_s) = KL(p_t ‖ α·p_t + (1 − α)·p_s)`,  `SRKL_α = KL(p_s ‖ α·p_s + (1 − α)·p_t)`
///
/// with the mixture formed in log space (DistiLLM forms it in probability space, which is NaN
/// once both probabilities underflow, for logits ~1e3). Skewing bounds the divergence and
/// smooths its gradient where the student puts little mass. One term, `"skew_kl"`.
///
/// # Shapes
/// - student and teacher logits `[N, V]`; mask `[N]` (optional)
pub type SkewKl = Softened<SkewKlOptions>;

crate::loss::objective!(SkewKl, "skew_kl");

impl PerToken for SkewKlOptions {
    const NAME: &'static str = SkewKl::NAME;
    const BOUND: f64 = BOUND;

    fn check(&self) -> Result<(), DistillError> {
        if self.cross_entropy && self.direction == SkewDirection::Reverse {
            return Err(DistillError::config(
                SkewKl::NAME,
                "cross_entropy",
                true,
                "only the forward skew KL has a cross-entropy form",
            ));
        }
        check_fraction(SkewKl::NAME, "alpha", self.alpha, false).map(drop)
    }

    fn rows(&self, s: Tensor<2>, t: Tensor<2>) -> Tensor<1> {
        let (ls, lt) = (log_softmax(s, 1), log_softmax(t, 1));
        let elements = match self.direction {
            SkewDirection::Forward => {
                let log_m = log_skew_mixture(lt.clone(), ls, self.alpha);
                forward_elements(self.cross_entropy)(log_m, lt)
            }
            SkewDirection::Reverse => {
                let log_m = log_skew_mixture(ls.clone(), lt, self.alpha);
                forward_kl_elements(log_m, ls)
            }
        };
        elements.sum_dim(1).squeeze_dim(1)
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e38;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["SkewKl"],
    paper: "skew forward / reverse KL (Ko et al., ICML 2024, DistiLLM)",
    doc: "token.md",
    bound: Some(BOUND),
    example: Some(|_| Ok(SkewKlConfig::new().with_alpha(0.2).init()?.boxed())),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(token SkewKl = token::SkewKlConfig())),
    golden: crate::registry::golden!["distillm_skew_forward_kl" => golden::distillm, "distillm_skew_reverse_kl" => golden::distillm],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::exact::PerToken;
    use crate::golden::*;

    /// DistiLLM's skew forward KL (a cross-entropy against the mixture) and skew reverse KL.
    pub(crate) fn distillm(case: &Case) -> Result<(), String> {
        let alpha = case.param("lam")?;
        let forward = case.method == "distillm_skew_forward_kl";
        let loss = SkewKlConfig::new()
            .with_direction(match forward {
                true => SkewDirection::Forward,
                false => SkewDirection::Reverse,
            })
            .with_alpha(alpha)
            .with_cross_entropy(forward)
            .init()
            .map_err(e)?;
        let divergence = match forward {
            true => PerToken::SkewForward {
                alpha,
                cross_entropy: true,
            },
            false => PerToken::SkewReverse(alpha),
        };
        token_case(
            case,
            TokenCheck {
                loss: loss.boxed(),
                divergence,
                temperature: 1.0,
                t_squared: false,
                divide: &per_valid,
            },
        )
    }
}
