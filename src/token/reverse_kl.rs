//! Reverse KL per token (mode-seeking).

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;

use super::forward_kl::forward_kl_elements;
use super::tokens::{Softening, TokenDivergence, TokenReduction};
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};

/// Per-element reverse-KL terms `p_s,v (log p_s,v − log p_t,v)`; their sum is `KL(p_s ‖ p_t)`.
pub fn reverse_kl_elements(log_ps: Tensor<2>, log_pt: Tensor<2>) -> Tensor<2> {
    forward_kl_elements(log_pt, log_ps)
}

/// Configuration of [`ReverseKl`].
#[derive(Config, Debug)]
pub struct ReverseKlConfig {
    /// The softmax temperature `T` (> 0).
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Multiply by `T²`.
    #[config(default = false)]
    pub t_squared: bool,
    /// How per-token values become the total.
    #[config(default = "TokenReduction::TokenMean")]
    pub reduction: TokenReduction,
}

impl ReverseKlConfig {
    /// Validates the configuration and builds the objective.
    pub fn init(&self) -> Result<ReverseKl, DistillError> {
        Ok(ReverseKl(Softening::new(
            ReverseKl::NAME,
            self.temperature,
            self.t_squared,
            self.reduction,
        )?))
    }
}

/// Reverse KL per token (as in MiniLLM, Gu et al., ICLR 2024):
///
/// `L = [T²] · reduce_tokens KL(softmax(z_s/T) ‖ softmax(z_t/T))`
///
/// Mode-seeking: the student may ignore teacher modes it cannot represent. torchtune's
/// `ReverseKLLoss` is exactly this. One term, `"reverse_kl"`.
///
/// # Shapes
/// - student and teacher logits `[N, V]`; mask `[N]` (optional)
#[derive(Debug, Clone)]
pub struct ReverseKl(Softening);

crate::loss::objective!(ReverseKl, "reverse_kl");

impl Loss for ReverseKl {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        self.0.forward(Self::NAME, input, |s, t| {
            reverse_kl_elements(log_softmax(s, 1), log_softmax(t, 1))
                .sum_dim(1)
                .squeeze_dim(1)
        })
    }
}

impl TokenDivergence for ReverseKl {}

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["ReverseKl"],
    paper: "KL(p_s ‖ p_t) per token (MiniLLM; TRL, torchtune)",
    doc: "token.md",
    example: Some(|_| Ok(ReverseKlConfig::new().init()?.boxed())),
    learnable: None,
    method: Some(crate::registry::method!(token ReverseKl = token::ReverseKlConfig())),
    golden: crate::registry::golden!["torchtune_reverse_kl" => golden::torchtune, "torchtune_reverse_kl_chunked" => golden::torchtune],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::super::tokens::golden::*;
    use super::*;
    use crate::golden::exact::PerToken;
    use crate::golden::*;

    /// torchtune's loss, plain and chunked (the chunks change nothing but the order of the sums).
    pub(crate) fn torchtune(case: &Case) -> Result<(), String> {
        let (reduction, divide) = torchtune_reduction(case);
        token_case(
            case,
            TokenCheck {
                loss: ReverseKlConfig::new()
                    .with_reduction(reduction)
                    .init()
                    .map_err(e)?
                    .boxed(),
                divergence: PerToken::Reverse,
                temperature: 1.0,
                t_squared: false,
                divide: &divide,
            },
        )
    }
}
