//! Self-distillation from the sampled token alone (TRL's sampled-token estimator), with
//! importance-sampling clipping, and the tail bucket of a sparse distribution.

use std::sync::Arc;

use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

use super::tokens::{TokenReduction, uncounted};
use crate::check::check_positive;
use crate::error::DistillError;
use crate::input::{DistillInput, Extra};
use crate::loss::{Loss, LossOutput};
use crate::math::{log1mexp, logsumexp};

/// Per-token values `[N]` of the sampled-token reverse-KL estimator from the student's and the
/// teacher's log-probabilities of the sampled tokens `[N]`: `(lp_s − lp_t)·lp_s` with the
/// first factor constant, so its gradient is `(lp_s − lp_t)·∇lp_s` (REINFORCE on the reverse
/// KL with the sampled token as the one-sample estimate). The teacher gets no gradient.
pub fn sampled_token_rows(student: Tensor<1>, teacher: Tensor<1>) -> Tensor<1> {
    (student.clone() - teacher).detach() * student
}

/// Importance weights `min(exp(clamp(lp_s − lp_old, −20, 20)), c)` of tokens sampled from an
/// older policy (`lp_old`), constant (no gradient to either side).
pub fn importance_weights(student: Tensor<1>, old: Tensor<1>, clip: f64) -> Tensor<1> {
    (student - old)
        .clamp(-20.0, 20.0)
        .exp()
        .clamp_max(clip)
        .detach()
}

/// A sparse distribution's log-probabilities `[N, k]` with one more category for the rest,
/// `log(1 − Σ_k p)`, its log-mass capped at `max_log_mass` (< 0; TRL's −1e-7, so a captured
/// mass of 1 gives the finite tail `log(1 − e^{−1e-7}) ≈ −16.1` with zero gradient). Entries
/// at −∞ add no mass and stay −∞.
pub fn tail_bucket(log_probs: Tensor<2>, max_log_mass: f64) -> Tensor<2> {
    let tail = log1mexp(logsumexp(log_probs.clone()).clamp_max(max_log_mass));
    Tensor::cat(vec![log_probs, tail], 1)
}

/// The old policy's log-probabilities `[N]` of the sampled tokens, for importance-sampling
/// clipping ([`SampledTokenConfig::clip`]); set with `DistillInput::with(OldLogProbs(…))`.
#[derive(Debug, Clone)]
pub struct OldLogProbs(pub Tensor<1>);

impl Extra for OldLogProbs {
    fn select_rows(&self, rows: &Tensor<1, Int>) -> Option<Arc<dyn Extra>> {
        Some(Arc::new(Self(self.0.clone().select(0, rows.clone()))))
    }
}

/// Configuration of [`SampledToken`].
#[derive(Config, Debug)]
pub struct SampledTokenConfig {
    /// Importance-sampling clipping coefficient `c` (> 0): each token's value is weighted by
    /// `min(π_s / π_old, c)` read from the [`OldLogProbs`] extra; `None`: on-policy, no weight.
    #[config(default = "None")]
    pub clip: Option<f64>,
    /// How per-token values become the total.
    #[config(default = "TokenReduction::TokenMean")]
    pub reduction: TokenReduction,
}

impl SampledTokenConfig {
    /// Validates the configuration and builds the objective.
    pub fn init(&self) -> Result<SampledToken, DistillError> {
        if let Some(c) = self.clip {
            check_positive(SampledToken::NAME, "clip", c)?;
        }
        self.reduction.check(SampledToken::NAME)?;
        Ok(SampledToken {
            config: self.clone(),
        })
    }
}

/// Self-distillation on the sampled tokens (TRL's `compute_sampled_token_self_distillation_loss`,
/// on-policy distillation from the tokens the student generated): with
/// `lp = log_softmax(z)[y]` of each sequence's sampled token `y` (the labels),
///
/// ```text
/// ℓ = (lp_s − lp_t)·lp_s   (first factor constant: ∇ℓ = (lp_s − lp_t)·∇lp_s)
/// ℓ ← ℓ · min(exp(clamp(lp_s − lp_old, −20, 20)), c)   (clip c, from an older policy)
/// L = reduce_tokens ℓ
/// ```
///
/// an unbiased one-sample estimate of the reverse KL's gradient that reads two log-probabilities
/// a token instead of two vocabularies. Its value is not the KL (it can be negative). The
/// teacher gets no gradient. One term, `"sampled_token"`.
///
/// # Shapes
/// - student and teacher logits `[N, V]`; labels (the sampled tokens) `[N]` with an ignore
///   index or a mask; [`OldLogProbs`] `[N]` with `clip`
#[derive(Debug, Clone)]
pub struct SampledToken {
    config: SampledTokenConfig,
}

crate::loss::objective!(SampledToken, "sampled_token");

impl Loss for SampledToken {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let input = input.of(Self::NAME).masked();
        let (zs, zt) = input.logits()?;
        let [n, v] = zs.dims();
        let mask = input.mask(n)?;
        let y = input.targets(n, v)?.reshape([n, 1]);
        // rows that do not count are constants before anything is computed
        let picked = |z: Tensor<2>| -> Tensor<1> {
            let z = uncounted(z, mask.as_ref(), 0.0);
            log_softmax(z, 1).gather(1, y.clone()).reshape([n])
        };
        let (lp_s, lp_t) = (picked(zs.clone()), picked(zt.clone()));
        let mut rows = sampled_token_rows(lp_s.clone(), lp_t);
        if let Some(clip) = c.clip {
            let OldLogProbs(old) =
                input.extra::<OldLogProbs>("the old policy's log-probabilities (OldLogProbs)")?;
            if old.dims() != [n] {
                return Err(DistillError::ShapeMismatch {
                    objective: Self::NAME.into(),
                    what: "old log-probabilities".into(),
                    expected: vec![n],
                    actual: old.dims().to_vec(),
                });
            }
            let old = match &mask {
                Some(m) => old.clone().mask_fill(m.clone().bool_not(), 0.0),
                None => old.clone(),
            };
            let old = old.cast(rows.dtype());
            rows = rows * importance_weights(lp_s, old, clip);
        }
        let out = LossOutput::single(Self::NAME, c.reduction.apply(rows, mask, v));
        input.settle_logits(BOUND, out, &zs, &zt)
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e15;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["SampledToken"],
    paper: "TRL's sampled-token self-distillation with importance-sampling clipping",
    doc: "token.md",
    bound: Some(BOUND),
    // a score-function estimator: its gradient is by design not its value's, so the suites'
    // finite-difference check does not apply (tests/token.rs checks it against the estimator)
    example: None,
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss SampledToken = token::SampledTokenConfig())),
    golden: crate::registry::golden!["trl_sampled_token_sd" => golden::sampled_token, "trl_is_clipping" => golden::is_clipping, "trl_tail_bucket" => golden::tail],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// The reference's per-element output (flattened row-major) against `got`.
    /// An infinite reference value (a −∞ log-probability) must be matched exactly.
    fn expect_rows(case: &Case, got: &Tensor<1>) -> Result<(), String> {
        let want = case.loss.as_deref().ok_or("no loss")?;
        let got = values(got.clone());
        if let Some(i) =
            (0..want.len()).find(|&i| want[i].is_infinite() && got.get(i) != Some(&want[i]))
        {
            return Err(format!(
                "per-token loss[{i}]: got {:?}, expected {}",
                got.get(i),
                want[i]
            ));
        }
        let finite = |v: &[f64]| -> Vec<f64> {
            v.iter()
                .zip(want)
                .filter(|(_, w)| w.is_finite())
                .map(|(x, _)| *x)
                .collect()
        };
        let (rel, abs) = case.tolerance();
        close("per-token loss", &finite(&got), &finite(want), rel, abs)
    }

    /// TRL's `compute_sampled_token_self_distillation_loss` (α = 1), per token.
    pub(crate) fn sampled_token(case: &Case) -> Result<(), String> {
        let (s, _, _) = token_leaf(case, "student_logits")?;
        let (t, _, _) = token_leaf(case, "teacher_logits")?;
        let (_, ids) = case.input("completion_ids")?;
        let ids = ints(ids.iter().map(|&i| i as i64).collect());
        let loss = SampledTokenConfig::new()
            .with_reduction(TokenReduction::None)
            .init()
            .map_err(e)?;
        let input = DistillInput::new(s.clone(), t.detach()).targets(ids);
        let rows = loss.forward(&input).map_err(e)?.total;
        expect_rows(case, &rows)?;
        let grads = rows.sum().backward();
        case.expect_grad("student_logits", s.grad(&grads).map(values), None)
    }

    /// TRL's `apply_importance_sampling_clipping` on a given per-token loss.
    pub(crate) fn is_clipping(case: &Case) -> Result<(), String> {
        let flat = |name: &str| -> Result<Tensor<1>, String> {
            let (_, d) = case.input(name)?;
            Ok(tensor(d.clone(), [d.len()], case.dtype))
        };
        let loss = flat("per_token_loss")?.require_grad();
        let weights = importance_weights(
            flat("student_log_probs")?,
            flat("old_log_probs")?,
            case.param("clip_coeff")?,
        );
        let rows = loss.clone() * weights;
        expect_rows(case, &rows)?;
        let grads = rows.sum().backward();
        case.expect_grad("per_token_loss", loss.grad(&grads).map(values), None)
    }

    /// TRL's `add_tail_bucket` (and the server variant: −∞ entries outside the support).
    pub(crate) fn tail(case: &Case) -> Result<(), String> {
        let (lp, _, _) = token_leaf(case, "log_probs")?;
        let out = tail_bucket(lp.clone(), -1e-7);
        let got = out.clone().reshape([out.dims()[0] * out.dims()[1]]);
        expect_rows(case, &got)?;
        // the gradient of sum(out), as the reference takes it (−∞ entries pass their 1 through
        // the concatenation; their share of the tail is 0)
        let grads = out.sum().backward();
        case.expect_grad("log_probs", lp.grad(&grads).map(values), None)
    }
}
