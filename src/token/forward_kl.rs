//! Forward KL per token, the classic distillation divergence.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;

use super::tokens::{Softening, TokenDivergence, TokenReduction};
use crate::error::DistillError;
use crate::fused::{self, Divergence, TokenKernel};
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};

/// Per-element forward-KL terms `p_t,v (log p_t,v − log p_s,v)` from log-probabilities
/// `[N, V]`; their sum over `v` is `KL(p_t ‖ p_s)`. A teacher probability that underflows to
/// 0 contributes exactly 0.
pub fn forward_kl_elements(log_ps: Tensor<2>, log_pt: Tensor<2>) -> Tensor<2> {
    log_pt.clone().exp() * (log_pt - log_ps)
}

/// The cross-entropy form `−p_t,v log p_s,v` (torchtune's `ForwardKLLoss`): the KL plus the
/// teacher's entropy, with the same student gradient.
pub fn teacher_cross_entropy_elements(log_ps: Tensor<2>, log_pt: Tensor<2>) -> Tensor<2> {
    -(log_pt.exp() * log_ps)
}

/// Configuration of [`ForwardKl`].
#[derive(Config, Debug)]
pub struct ForwardKlConfig {
    /// The softmax temperature `T` (> 0).
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Multiply by `T²` (DistillKit does; TRL, Liger and torchtune do not).
    #[config(default = false)]
    pub t_squared: bool,
    /// How per-token values become the total.
    #[config(default = "TokenReduction::TokenMean")]
    pub reduction: TokenReduction,
    /// The cross-entropy `−Σ p_t log p_s` instead of the KL (torchtune's `ForwardKLLoss`):
    /// the same student gradient, a value larger by the teacher's entropy, and a teacher
    /// gradient of its own.
    #[config(default = false)]
    pub cross_entropy: bool,
    /// Compute the KL with the [fused kernel](crate::fused) (KD's, at the token level) where
    /// the device supports it: the same values and gradients as the composed tensor ops, on
    /// every core, several times faster; `false` forces the composed version. The
    /// cross-entropy form is always composed.
    #[config(default = true)]
    pub fused: bool,
}

impl ForwardKlConfig {
    /// Validates the configuration and builds the objective.
    pub fn init(&self) -> Result<ForwardKl, DistillError> {
        Ok(ForwardKl {
            soft: Softening::new(
                ForwardKl::NAME,
                self.temperature,
                self.t_squared,
                self.reduction,
            )?,
            cross_entropy: self.cross_entropy,
            fused: self.fused,
        })
    }
}

/// Forward KL per token:
///
/// `L = [T²] · reduce_tokens KL(softmax(z_t/T) ‖ softmax(z_s/T))`
///
/// over the rows the input's mask (or labels) admits. Mass-covering: the student is pushed to
/// put probability wherever the teacher does. One term, `"forward_kl"`.
///
/// # Shapes
/// - student and teacher logits `[N, V]`; mask `[N]` (optional)
#[derive(Debug, Clone)]
pub struct ForwardKl {
    soft: Softening,
    cross_entropy: bool,
    fused: bool,
}

crate::loss::objective!(ForwardKl, "forward_kl");

impl Loss for ForwardKl {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let elements = match self.cross_entropy {
            true => teacher_cross_entropy_elements,
            false => forward_kl_elements,
        };
        let fused = self.fused && !self.cross_entropy;
        self.soft.forward(Self::NAME, input, |s, t| {
            // the logits arrive divided by T: KD's kernel at T = 1 is the token's KL
            let rows = fused.then(|| fused::kd_rows(&s, &t, 1.0)).flatten();
            rows.unwrap_or_else(|| {
                elements(log_softmax(s, 1), log_softmax(t, 1))
                    .sum_dim(1)
                    .squeeze_dim(1)
            })
        })
    }
}

impl TokenDivergence for ForwardKl {
    fn token_kernel(&self) -> Option<TokenKernel> {
        let fused = self.fused && !self.cross_entropy;
        fused.then(|| self.soft.kernel(Divergence::Kl)).flatten()
    }
}

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["ForwardKl"],
    paper: "KL(p_t ‖ p_s) per token (TRL, torchtune, DistillKit)",
    doc: "token.md",
    example: Some(|_| Ok(ForwardKlConfig::new().with_temperature(2.0).init()?.boxed())),
    learnable: None,
    method: Some(crate::registry::method!(token ForwardKl = token::ForwardKlConfig())),
    golden: crate::registry::golden!["torchtune_forward_kl" => golden::torchtune, "torchtune_forward_kl_chunked" => golden::torchtune, "distillkit_kl" => golden::distillkit],
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
                loss: ForwardKlConfig::new()
                    .with_cross_entropy(true)
                    .with_reduction(reduction)
                    .init()
                    .map_err(e)?
                    .boxed(),
                divergence: PerToken::Forward {
                    cross_entropy: true,
                },
                temperature: 1.0,
                t_squared: false,
                divide: &divide,
            },
        )
    }

    /// DistillKit's dense loss (`T²`, the sum over the masked tokens over their number); a sparse
    /// signal goes to `TopK`'s runner.
    pub(crate) fn distillkit(case: &Case) -> Result<(), String> {
        distillkit_dense(
            case,
            |temperature| {
                Ok(ForwardKlConfig::new()
                    .with_temperature(temperature)
                    .with_t_squared(true)
                    .init()?
                    .boxed())
            },
            PerToken::Forward {
                cross_entropy: false,
            },
        )
    }
}
