//! What the softened token divergences share: one configuration, their own options beside the
//! temperature, the `T²` switch and the reduction, and one objective type, generic over the
//! divergence.

use std::fmt::Debug;

use burn::config::Config;
use burn::tensor::Tensor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::tokens::masked_vocabulary;
use super::tokens::{Softening, TokenDivergence, TokenReduction};
use crate::error::DistillError;
use crate::fused::{Divergence, TokenKernel};
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};

/// A softened token divergence's own options and its math: the per-token values of the
/// student's and the teacher's logits already divided by the temperature. Implemented by the
/// options of [`ForwardKl`](super::ForwardKl), [`ReverseKl`](super::ReverseKl),
/// [`Jsd`](super::Jsd), [`SymmetricKl`](super::SymmetricKl), [`SkewKl`](super::SkewKl) and
/// [`Tvd`](super::Tvd).
pub trait PerToken: Debug + Clone + Send + Sync + 'static {
    /// The objective's name.
    const NAME: &'static str;

    /// The largest input magnitude it promises finite values and gradients for (its
    /// [`Descriptor::bound`](crate::Descriptor::bound)).
    const BOUND: f64;

    /// Validates the options (at `init`).
    fn check(&self) -> Result<(), DistillError> {
        Ok(())
    }

    /// The per-token values `[N]` of the student's and the teacher's logits `[N, V]`, both
    /// already divided by the temperature.
    fn rows(&self, student: Tensor<2>, teacher: Tensor<2>) -> Tensor<1>;

    /// The fused row kernel that computes the same values, when there is one and the options
    /// ask for it (`None` by default).
    fn kernel(&self) -> Option<Divergence> {
        None
    }
}

/// The configuration of a softened token divergence: its own options `D` (written beside the
/// shared fields in a loss spec or a JSON file) and the temperature, the `T²` switch and the
/// reduction every one of them has. `XConfig::new()` gives the defaults: the options' own,
/// `T = 1`, no `T²`, the mean over the valid tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoftenedConfig<D> {
    /// The divergence's own options.
    #[serde(flatten)]
    pub options: D,
    /// The softmax temperature `T` (> 0).
    pub temperature: f64,
    /// Multiply by `T²` (DistillKit does; TRL, Liger and torchtune do not).
    pub t_squared: bool,
    /// How per-token values become the total.
    pub reduction: TokenReduction,
}

impl<D: Default> Default for SoftenedConfig<D> {
    fn default() -> Self {
        Self {
            options: D::default(),
            temperature: 1.0,
            t_squared: false,
            reduction: TokenReduction::TokenMean,
        }
    }
}

impl<D: Default> SoftenedConfig<D> {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<D> SoftenedConfig<D> {
    /// With the temperature `T`.
    pub fn with_temperature(mut self, temperature: f64) -> Self {
        self.temperature = temperature;
        self
    }

    /// With (or without) the `T²` factor.
    pub fn with_t_squared(mut self, t_squared: bool) -> Self {
        self.t_squared = t_squared;
        self
    }

    /// With the reduction.
    pub fn with_reduction(mut self, reduction: TokenReduction) -> Self {
        self.reduction = reduction;
        self
    }
}

impl<D: PerToken> SoftenedConfig<D> {
    /// Validates the configuration and builds the objective.
    pub fn init(&self) -> Result<Softened<D>, DistillError> {
        self.options.check()?;
        Ok(Softened {
            options: self.options.clone(),
            soft: Softening::new(D::NAME, self.temperature, self.t_squared, self.reduction)?,
        })
    }
}

impl<D: Debug + Serialize + DeserializeOwned> Config for SoftenedConfig<D> {}

/// A softened token divergence: `[T²] · reduce_tokens D(softmax(z_s/T), softmax(z_t/T))` over
/// the rows the input's mask (or labels) admits, with `D` the options' per-token math. One
/// term, named after the divergence.
///
/// # Shapes
/// - student and teacher logits `[N, V]`; mask `[N]` (optional)
#[derive(Debug, Clone)]
pub struct Softened<D> {
    options: D,
    soft: Softening,
}

impl<D: PerToken> Loss for Softened<D> {
    fn name(&self) -> &str {
        D::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        self.soft.forward(D::NAME, D::BOUND, input, |s, t| {
            let (s, t) = masked_vocabulary(s, t);
            self.options.rows(s, t)
        })
    }
}

impl<D: PerToken> TokenDivergence for Softened<D> {
    fn token_kernel(&self) -> Option<TokenKernel> {
        self.options.kernel().and_then(|d| self.soft.kernel(d))
    }
}
