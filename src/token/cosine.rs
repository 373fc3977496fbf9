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
        self.soft.forward(Self::NAME, BOUND, input, |s, t| {
            cosine_distance_rows(s, t, self.eps)
        })
    }
}

impl TokenDivergence for LogitCosine {}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e15;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["LogitCosine"],
    paper: "1 − cos(z_s, z_t) per token",
    doc: "token.md",
    bound: Some(BOUND),
    example: Some(|_| Ok(LogitCosineConfig::new().init()?.boxed())),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(token LogitCosine = token::LogitCosineConfig())),
    golden: crate::registry::golden!["liger_fused_linear_cosine" => golden::liger_fused_linear],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::super::lm_head::golden::{liger_grads, liger_heads};
    use super::*;
    use crate::golden::*;
    use crate::token::{Aligned, FusedLinearConfig, LmHeads, TeacherHead, VocabAlignment};

    /// Liger's `LigerFusedLinearCosineSimilarityLoss`, configured like Liger: its soft part
    /// sums `β·(1 − cos)` over **every** row, ignored ones included (the crate's default counts
    /// only the valid ones), over the number of valid rows; the hard part is the mean
    /// cross-entropy over the valid rows. So: one `FusedLinear` for the soft part without a
    /// mask, `DivideBy(max(valid, 1))`, and one for the hard part with the labels. The
    /// temperature cancels in the cosine; a smaller student vocabulary is padded with 0.
    pub(crate) fn liger_fused_linear(case: &Case) -> Result<(), String> {
        let (hard, soft, beta) = (
            case.param("weight_hard_loss")?,
            case.param("weight_soft_loss")?,
            case.param("beta")?,
        );
        if hard > 0.0 && case.dtype == DType::F64 {
            // the reference's cross-entropy is float32 (README-set3: 2e-6)
            case.tolerance.set(Some((2e-6, 2e-6)));
        }
        let h = liger_heads(case)?;
        let (_, labels) = case.input("true_labels")?;
        let valid = labels.iter().filter(|&&y| y as i64 != h.ignore).count() as f64;
        let cosine = || -> Result<_, String> {
            let inner = LogitCosineConfig::new()
                .with_eps(1e-12)
                .with_reduction(TokenReduction::None)
                .init()
                .map_err(e)?;
            Aligned::new(inner, VocabAlignment::Pad { logit: 0.0 }).map_err(e)
        };
        let chunk = case.opt("chunk_size").map(|c| c as usize);
        let soft_part = FusedLinearConfig::new()
            .with_chunk_size(chunk)
            .with_soft_weight(soft * beta)
            .with_hard_weight(0.0)
            .with_reduction(TokenReduction::DivideBy(valid.max(1.0)))
            .init(cosine()?)
            .map_err(e)?;
        let hard_part = FusedLinearConfig::new()
            .with_chunk_size(chunk)
            .with_soft_weight(0.0)
            .with_hard_weight(hard)
            .init(cosine()?)
            .map_err(e)?;
        let heads = LmHeads {
            student: h.student,
            teacher: TeacherHead::Head(h.teacher),
        };
        let every_row = DistillInput::features_only().with(heads.clone());
        let labelled = every_row.clone().labels(h.labels, h.ignore);
        let total = soft_part.forward(&every_row).map_err(e)?.total
            + hard_part.forward(&labelled).map_err(e)?.total;
        case.expect_loss(values(total.clone())[0], None)?;
        let grads = total.backward();
        liger_grads(case, &h.leaves, &grads)
    }
}
