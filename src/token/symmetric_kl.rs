//! torchtune's symmetric KL: a mix of forward and reverse KL.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

use super::forward_kl::forward_elements;
use super::reverse_kl::reverse_kl_elements;
use super::softened::{PerToken, Softened, SoftenedConfig};
use crate::check::check_fraction;
use crate::error::DistillError;

/// [`SymmetricKl`]'s own options.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SymmetricKlOptions {
    /// λ ∈ [0, 1], the forward part's weight (torchtune's `sym_kd_ratio`).
    pub ratio: f64,
    /// The forward part as torchtune's cross-entropy `−Σ p_t log p_s` (its `ForwardKLLoss`).
    pub cross_entropy: bool,
}

impl Default for SymmetricKlOptions {
    fn default() -> Self {
        Self {
            ratio: 0.5,
            cross_entropy: false,
        }
    }
}

/// Configuration of [`SymmetricKl`]: its [options](SymmetricKlOptions) beside the shared
/// temperature, `T²` switch and reduction.
pub type SymmetricKlConfig = SoftenedConfig<SymmetricKlOptions>;

impl SymmetricKlConfig {
    /// With λ ([`SymmetricKlOptions::ratio`]).
    pub fn with_ratio(mut self, ratio: f64) -> Self {
        self.options.ratio = ratio;
        self
    }

    /// With (or without) the cross-entropy forward part
    /// ([`SymmetricKlOptions::cross_entropy`]).
    pub fn with_cross_entropy(mut self, cross_entropy: bool) -> Self {
        self.options.cross_entropy = cross_entropy;
        self
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
pub type SymmetricKl = Softened<SymmetricKlOptions>;

crate::loss::objective!(SymmetricKl, "symmetric_kl");

impl PerToken for SymmetricKlOptions {
    const NAME: &'static str = SymmetricKl::NAME;
    const BOUND: f64 = BOUND;

    fn check(&self) -> Result<(), DistillError> {
        check_fraction(SymmetricKl::NAME, "ratio", self.ratio, true).map(drop)
    }

    fn rows(&self, s: Tensor<2>, t: Tensor<2>) -> Tensor<1> {
        let forward = forward_elements(self.cross_entropy);
        let (ls, lt) = (log_softmax(s, 1), log_softmax(t, 1));
        (forward(ls.clone(), lt.clone()) * self.ratio
            + reverse_kl_elements(ls, lt) * (1.0 - self.ratio))
            .sum_dim(1)
            .squeeze_dim(1)
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e30;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["SymmetricKl"],
    paper: "λ·FKL + (1 − λ)·RKL (torchtune)",
    doc: "token.md",
    bound: Some(BOUND),
    example: Some(|_| Ok(SymmetricKlConfig::new().with_ratio(0.7).init()?.boxed())),
    learnable: None,
    twins: None,
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

    /// torchtune's loss, plain and chunked.
    pub(crate) fn torchtune(case: &Case) -> Result<(), String> {
        let ratio = case.param("sym_kd_ratio")?;
        let build = |r| {
            Ok(SymmetricKlConfig::new()
                .with_ratio(ratio)
                .with_cross_entropy(true)
                .with_reduction(r)
                .init()?
                .boxed())
        };
        torchtune_loss(
            case,
            build,
            PerToken::Symmetric {
                ratio,
                cross_entropy: true,
            },
        )
    }
}
