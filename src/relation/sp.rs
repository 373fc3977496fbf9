//! SP: similarity-preserving distillation.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::Tensor;

use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};
use crate::math::l2_normalize;

/// SP's loss between student and teacher rows `[N, D]` (any widths):
/// `‖normalize(xᵗxᵗᵀ) − normalize(xˢxˢᵀ)‖²_F / N²`.
pub fn sp_loss(student: Tensor<2>, teacher: Tensor<2>) -> Tensor<1> {
    let gram = |x: Tensor<2>| l2_normalize(x.clone().matmul(x.transpose()), 1e-12);
    let n = student.dims()[0] as f64;
    (gram(teacher) - gram(student)).square().sum() * (1.0 / (n * n))
}

/// Configuration of [`Sp`].
#[derive(Config, Debug)]
pub struct SpConfig {
    /// The feature tap compared (a map is flattened per sample).
    #[config(default = "\"embedding\".to_string()")]
    pub feature: String,
}

impl SpConfig {
    /// Builds the objective (nothing to validate).
    pub fn init(&self) -> Result<Sp, DistillError> {
        Ok(Sp {
            feature: self.feature.clone(),
        })
    }
}

/// SP (Tung & Mori, ICCV 2019, *Similarity-Preserving Knowledge Distillation*): the
/// row-normalised Gram matrices of student and teacher, `G = normalize(x xᵀ)`, matched in
/// squared Frobenius norm over `N²`: `L = ‖Gᵗ − Gˢ‖²_F / N²` (mdistiller's
/// `similarity_loss`; sum it over layers with `+`). Needs `N ≥ 2`.
#[derive(Debug, Clone)]
pub struct Sp {
    feature: String,
}

crate::loss::objective!(Sp, "sp");

impl Loss for Sp {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let (s, t) = input.of(Sp::NAME).within(BOUND).rows(&self.feature, 2)?;
        Ok(LossOutput::single(Sp::NAME, sp_loss(s, t)))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e15;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Sp"],
    paper: "Tung & Mori, ICCV 2019, *Similarity-Preserving KD*",
    doc: "sp.md",
    bound: Some(BOUND),
    example: Some(|_| {
        Ok(SpConfig::new()
            .with_feature("feature".into())
            .init()?
            .boxed())
    }),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss Sp = relation::SpConfig())),
    golden: crate::registry::golden!["sp" => golden::sp],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// mdistiller's `sp_loss` on the embedding taps.
    pub(crate) fn sp(case: &Case) -> Result<(), String> {
        on_embedding(case, &SpConfig::new().init().map_err(e)?)
    }
}
