//! Total variation distance per token.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use serde::{Deserialize, Serialize};

use super::softened::{PerToken, Softened, SoftenedConfig};

/// Per-element total-variation terms `|p_t,v − p_s,v| / 2` from probabilities `[N, V]`; their
/// sum over `v` is the total variation distance, in `[0, 1]`. Where `p_s = p_t` the gradient is
/// 0 (the subgradient PyTorch's `abs` takes).
pub fn tvd_elements(ps: Tensor<2>, pt: Tensor<2>) -> Tensor<2> {
    (pt - ps).abs() * 0.5
}

/// [`Tvd`]'s own options: none.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TvdOptions {}

/// Configuration of [`Tvd`]: the shared temperature, `T²` switch (DistillKit takes it, even for
/// the TVD) and reduction.
pub type TvdConfig = SoftenedConfig<TvdOptions>;

/// The total variation distance per token (Liger's `LigerTVDLoss`, DistillKit's `TVDLoss`):
///
/// `L = [T²] · reduce_tokens ½ Σ_v |softmax(z_t/T)_v − softmax(z_s/T)_v|`
///
/// Bounded by 1 per token, whatever the logits. One term, `"tvd"`.
///
/// # Shapes
/// - student and teacher logits `[N, V]`; mask `[N]` (optional)
pub type Tvd = Softened<TvdOptions>;

crate::loss::objective!(Tvd, "tvd");

impl PerToken for TvdOptions {
    const NAME: &'static str = Tvd::NAME;
    const BOUND: f64 = BOUND;

    fn rows(&self, s: Tensor<2>, t: Tensor<2>) -> Tensor<1> {
        tvd_elements(softmax(s, 1), softmax(t, 1))
            .sum_dim(1)
            .squeeze_dim(1)
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = f64::MAX;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Tvd"],
    paper: "total variation distance per token (Liger, DistillKit)",
    doc: "token.md",
    bound: Some(BOUND),
    example: Some(|_| Ok(TvdConfig::new().with_temperature(1.5).init()?.boxed())),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(token Tvd = token::TvdConfig())),
    golden: crate::registry::golden!["distillkit_tvd" => golden::distillkit, "liger_tvd_testref" => golden::liger_testref],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::super::tokens::golden::*;
    use super::*;
    use crate::golden::exact::PerToken;
    use crate::golden::*;

    /// DistillKit's dense loss (`T²`, the sum over the masked tokens over their number); a sparse
    /// signal goes to `TopK`'s runner.
    pub(crate) fn distillkit(case: &Case) -> Result<(), String> {
        distillkit_dense(
            case,
            |temperature, reduction| {
                Ok(TvdConfig::new()
                    .with_reduction(reduction)
                    .with_temperature(temperature)
                    .with_t_squared(true)
                    .init()?
                    .boxed())
            },
            PerToken::Tvd,
        )
    }

    /// Liger's pure-torch test reference, on the elements given directly.
    pub(crate) fn liger_testref(case: &Case) -> Result<(), String> {
        liger_elements(case, ("q", "p"), |s, t| Ok(tvd_elements(s, t)))
    }
}
