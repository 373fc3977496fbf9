//! Cosine distance between student and teacher logits, per token.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::Tensor;

use super::tokens::{Softening, TokenDivergence, TokenReduction};
use crate::check::check_positive;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};
use crate::math::row_norms;

/// `1 − cos(aᵢ, bᵢ)` for each row of `[N, V]`, each norm clamped below at `eps`.
pub fn cosine_distance_rows(a: Tensor<2>, b: Tensor<2>, eps: f64) -> Tensor<1> {
    let dot = (a.clone() * b.clone()).sum_dim(1);
    let cos = dot / (row_norms(a, eps) * row_norms(b, eps));
    (-cos + 1.0).squeeze_dim(1)
}

/// Configuration of [`LogitCosine`].
#[derive(Config, Debug)]
pub struct LogitCosineConfig {
    /// How per-token values become the total.
    #[config(default = "TokenReduction::TokenMean")]
    pub reduction: TokenReduction,
    /// Floor of each norm.
    #[config(default = 1e-8)]
    pub eps: f64,
}

impl LogitCosineConfig {
    /// Validates the configuration and builds the objective.
    pub fn init(&self) -> Result<LogitCosine, DistillError> {
        Ok(LogitCosine {
            eps: check_positive(LogitCosine::NAME, "eps", self.eps)?,
            soft: Softening::new(LogitCosine::NAME, 1.0, false, self.reduction)?,
        })
    }
}

/// The cosine distance between the student's and the teacher's logit vectors, per token:
///
/// `L = reduce_tokens (1 − ⟨z_s, z_t⟩ / (‖z_s‖·‖z_t‖))`
///
/// Scale-free (it ignores a logit vector's length and, unlike a divergence of softmaxes, is
/// not invariant to a shift), bounded in `[0, 2]`. One term, `"logit_cosine"`.
///
/// # Shapes
/// - student and teacher logits `[N, V]`; mask `[N]` (optional)
#[derive(Debug, Clone)]
pub struct LogitCosine {
    eps: f64,
    soft: Softening,
}

crate::loss::objective!(LogitCosine, "logit_cosine");

impl Loss for LogitCosine {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        self.soft.forward(Self::NAME, input, |s, t| {
            cosine_distance_rows(s, t, self.eps)
        })
    }
}

impl TokenDivergence for LogitCosine {}

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["LogitCosine"],
    paper: "1 − cos(z_s, z_t) per token",
    doc: "token.md",
    example: Some(|_| Ok(LogitCosineConfig::new().init()?.boxed())),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(token LogitCosine = token::LogitCosineConfig())),
    golden: crate::registry::golden![],
}];
