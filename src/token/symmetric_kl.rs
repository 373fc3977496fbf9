//! torchtune's symmetric KL: a mix of forward and reverse KL.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::activation::log_softmax;

use super::forward_kl::{forward_kl_elements, teacher_cross_entropy_elements};
use super::reverse_kl::reverse_kl_elements;
use super::tokens::{Softening, TokenDivergence, TokenReduction};
use crate::check::check_fraction;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};

/// Configuration of [`SymmetricKl`].
#[derive(Config, Debug)]
pub struct SymmetricKlConfig {
    /// λ ∈ [0, 1], the forward KL's share (torchtune's `sym_kd_ratio`).
    #[config(default = 0.5)]
    pub ratio: f64,
    /// The softmax temperature `T` (> 0).
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Multiply by `T²`.
    #[config(default = false)]
    pub t_squared: bool,
    /// How per-token values become the total.
    #[config(default = "TokenReduction::TokenMean")]
    pub reduction: TokenReduction,
    /// The forward part as the cross-entropy `−Σ p_t log p_s` (torchtune's convention; see
    /// [`ForwardKlConfig::cross_entropy`](super::ForwardKlConfig::cross_entropy)).
    #[config(default = false)]
    pub cross_entropy: bool,
}

impl SymmetricKlConfig {
    /// Validates the configuration and builds the objective.
    pub fn init(&self) -> Result<SymmetricKl, DistillError> {
        Ok(SymmetricKl {
            ratio: check_fraction(SymmetricKl::NAME, "ratio", self.ratio, true)?,
            cross_entropy: self.cross_entropy,
            soft: Softening::new(
                SymmetricKl::NAME,
                self.temperature,
                self.t_squared,
                self.reduction,
            )?,
        })
    }
}

/// The symmetric KL per token of torchtune's `SymmetricKLLoss`:
///
/// `L = λ·KL(p_t ‖ p_s) + (1 − λ)·KL(p_s ‖ p_t)`, reduced over the valid tokens.
///
/// One term, `"symmetric_kl"`.
///
/// # Shapes
/// - student and teacher logits `[N, V]`; mask `[N]` (optional)
#[derive(Debug, Clone)]
pub struct SymmetricKl {
    ratio: f64,
    cross_entropy: bool,
    soft: Softening,
}

crate::loss::objective!(SymmetricKl, "symmetric_kl");

impl Loss for SymmetricKl {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let forward = match self.cross_entropy {
            true => teacher_cross_entropy_elements,
            false => forward_kl_elements,
        };
        self.soft.forward(Self::NAME, input, |s, t| {
            let (ls, lt) = (log_softmax(s, 1), log_softmax(t, 1));
            (forward(ls.clone(), lt.clone()) * self.ratio
                + reverse_kl_elements(ls, lt) * (1.0 - self.ratio))
                .sum_dim(1)
                .squeeze_dim(1)
        })
    }
}

impl TokenDivergence for SymmetricKl {}

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["SymmetricKl"],
    paper: "λ·FKL + (1 − λ)·RKL (torchtune)",
    doc: "token.md",
    example: Some(|_| Ok(SymmetricKlConfig::new().with_ratio(0.7).init()?.boxed())),
    learnable: None,
    method: Some(crate::registry::method!(token SymmetricKl = token::SymmetricKlConfig())),
    golden: crate::registry::golden!["torchtune_symmetric_kl" => golden::torchtune, "torchtune_symmetric_kl_chunked" => golden::torchtune],
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
                loss: SymmetricKlConfig::new()
                    .with_ratio(case.param("sym_kd_ratio")?)
                    .with_cross_entropy(true)
                    .with_reduction(reduction)
                    .init()
                    .map_err(e)?
                    .boxed(),
                divergence: PerToken::Symmetric {
                    ratio: case.param("sym_kd_ratio")?,
                    cross_entropy: true,
                },
                temperature: 1.0,
                t_squared: false,
                divide: &divide,
            },
        )
    }
}
