//! Adaptive KL: forward and reverse KL weighted per token by where the two distributions
//! differ, in the teacher's head or in its tail.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Int, Tensor};

use super::forward_kl::{forward_kl_elements, teacher_cross_entropy_elements};
use super::tokens::{TokenReduction, outside_zero, uncounted};
use crate::check::{check_fraction, check_positive};
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};

/// Which formula [`AdaptiveKl`] follows.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum AklVariant {
    /// The authors' (wutaiqiang/LLM_KD_AKL): the teacher's probabilities sorted in decreasing
    /// order, the head the shortest prefix whose mass reaches μ (at least the first token), the
    /// gaps `|p_t − sg(p_s)|` in the same order, and the true KLs.
    Official,
    /// SakanaAI/TAID's `AdaptiveKL`, reproduced with its defects: a head mask computed over the
    /// teacher's logits sorted in *increasing* order (`cumsum ≥ μ`) applied unchanged to the
    /// vocabulary's positions, weights differentiable through both distributions, and the
    /// cross-entropy `H(p_t, p_s)` in place of the forward KL.
    Taid,
}

/// Per-token weights `[N, 1]` of the forward and reverse KL, `(g_head, g_tail) / (g_head +
/// g_tail)` from the gaps and a head mask `[N, V]`; a row with no gap gets 0 and 0.
fn split_weights(gap: Tensor<2>, head: Tensor<2, Bool>) -> (Tensor<2>, Tensor<2>) {
    let head_gap = gap
        .clone()
        .mask_fill(head.clone().bool_not(), 0.0)
        .sum_dim(1);
    let tail_gap = gap.mask_fill(head, 0.0).sum_dim(1);
    let total = (head_gap.clone() + tail_gap.clone()).clamp_min(f32::MIN_POSITIVE as f64);
    (head_gap / total.clone(), tail_gap / total)
}

/// Per-token values `[N]` of the adaptive KL between student and teacher log-probabilities
/// `[N, V]` with head mass `mu`: `w_h·KL(p_t ‖ p_s) + w_t·KL(p_s ‖ p_t)` with the weights of
/// `variant` (for [`AklVariant::Taid`] the first term is `H(p_t, p_s)`). A student entry at −∞
/// is masked vocabulary: it adds nothing to either term.
pub fn adaptive_kl_rows(
    log_ps: Tensor<2>,
    log_pt: Tensor<2>,
    mu: f64,
    variant: AklVariant,
) -> Tensor<1> {
    let neg = f64::NEG_INFINITY;
    let masked = log_ps.clone().equal_elem(neg);
    let (ps, pt) = (log_ps.clone().exp(), log_pt.clone().exp());
    let (w_forward, w_reverse, forward) = match variant {
        AklVariant::Official => {
            let (sorted, order) = pt.sort_descending_with_indices(1);
            let gap = (sorted.clone() - ps.detach().gather(1, order)).abs();
            // the head: the positions whose cumulative mass is at most μ, and the first
            let [n, v] = sorted.dims();
            let first = Tensor::<1, Int>::arange(0..v as i64, &sorted.device())
                .equal_elem(0)
                .unsqueeze_dim::<2>(0)
                .expand([n, v]);
            let head = sorted
                .clone()
                .detach()
                .cumsum(1)
                .lower_equal_elem(mu)
                .bool_or(first);
            let (h, l) = split_weights(gap, head);
            let forward =
                outside_zero(log_ps.clone(), log_pt.clone(), &masked, forward_kl_elements);
            (h, l, forward)
        }
        AklVariant::Taid => {
            let head = pt.clone().detach().sort(1).cumsum(1).greater_equal_elem(mu);
            let (h, l) = split_weights((pt - ps).abs(), head);
            let forward = outside_zero(
                log_ps.clone(),
                log_pt.clone(),
                &masked,
                teacher_cross_entropy_elements,
            );
            (h, l, forward)
        }
    };
    let masked = masked.bool_or(log_pt.clone().equal_elem(neg));
    let reverse = outside_zero(log_pt, log_ps, &masked, forward_kl_elements);
    (forward.sum_dim(1) * w_forward + reverse.sum_dim(1) * w_reverse).squeeze_dim(1)
}

/// Configuration of [`AdaptiveKl`].
#[derive(Config, Debug)]
pub struct AdaptiveKlConfig {
    /// The teacher's head mass μ ∈ (0, 1).
    #[config(default = 0.5)]
    pub mu: f64,
    /// The formula.
    #[config(default = "AklVariant::Official")]
    pub variant: AklVariant,
    /// How per-token values become the total.
    #[config(default = "TokenReduction::TokenMean")]
    pub reduction: TokenReduction,
}

impl AdaptiveKlConfig {
    /// Validates the configuration and builds the objective.
    pub fn init(&self) -> Result<AdaptiveKl, DistillError> {
        check_fraction(AdaptiveKl::NAME, "mu", self.mu, false)?;
        check_positive(AdaptiveKl::NAME, "mu", self.mu)?;
        self.reduction.check(AdaptiveKl::NAME)?;
        Ok(AdaptiveKl {
            config: self.clone(),
        })
    }
}

/// Adaptive Kullback–Leibler divergence (Wu et al., COLING 2025, *Rethinking Kullback-Leibler
/// Divergence in Knowledge Distillation for Large Language Models*,
/// [arXiv:2404.02657](https://arxiv.org/abs/2404.02657)): forward KL fits the teacher's head,
/// reverse KL its tail, so each token weighs the two by where the distributions differ. With
/// the teacher's tokens sorted by decreasing probability, the head `H` the shortest prefix
/// holding mass μ, and the gaps `g = Σ_H |p_t − p_s|`, `g' = Σ_{¬H} |p_t − p_s|` (the student
/// detached):
///
/// ```text
/// AKL = g/(g + g')·KL(p_t ‖ p_s) + g'/(g + g')·KL(p_s ‖ p_t)
/// L   = reduce_tokens AKL
/// ```
///
/// [`AklVariant::Taid`] reproduces TAID's `AdaptiveKL`, whose head mask is misaligned with
/// the vocabulary, whose weights carry gradients and whose first term is a cross-entropy
/// (docs/token.md compares the two). A token with no gap (`p_s = p_t`) gets weights 0 and 0
/// (both references divide 0 by 0); a student entry at −∞ is masked vocabulary. One term,
/// `"adaptive_kl"`.
///
/// # Shapes
/// - student and teacher logits `[N, V]`; mask `[N]` (optional)
#[derive(Debug, Clone)]
pub struct AdaptiveKl {
    config: AdaptiveKlConfig,
}

crate::loss::objective!(AdaptiveKl, "adaptive_kl");

impl Loss for AdaptiveKl {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let input = input.of(Self::NAME).masked();
        let (zs, zt) = input.logits()?;
        let [n, v] = zs.dims();
        let mask = input.mask(n)?;
        input.targets_if_any(n, v)?;
        let log_p = |z: Tensor<2>| log_softmax(uncounted(z, mask.as_ref(), 0.0), 1);
        let rows = adaptive_kl_rows(log_p(zs.clone()), log_p(zt.clone()), c.mu, c.variant);
        let out = LossOutput::single(Self::NAME, c.reduction.apply(rows, mask, v));
        input.settle_logits(BOUND, out, &zs, &zt)
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e38;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["AdaptiveKl"],
    paper: "Wu et al., COLING 2025 (AKL)",
    doc: "token.md",
    bound: Some(BOUND),
    // TAID's variant: its gradient is its value's (the official weights hold the student
    // constant, which the suites' finite differences cannot see; tests/token.rs checks it)
    example: Some(|_| {
        Ok(AdaptiveKlConfig::new()
            .with_variant(AklVariant::Taid)
            .init()?
            .boxed())
    }),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss AdaptiveKl = token::AdaptiveKlConfig())),
    golden: crate::registry::golden!["taid_akl" => golden::taid],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// TAID's `AdaptiveKL` by a plain f64 transcription, the oracle where the reference is not
    /// finite: masked vocabulary entries skipped, a token with no gap 0, an empty mask 0.
    pub(crate) fn exact(s: &[f64], t: &[f64], v: usize, mask: &[bool], mu: f64) -> f64 {
        exact::masked_mean(s, t, v, mask, |rs, rt| {
            let (ls, lt) = (exact::log_softmax(rs), exact::log_softmax(rt));
            let mut sorted: Vec<f64> = lt.iter().map(|l| l.exp()).collect();
            sorted.sort_by(f64::total_cmp);
            let mut cum = 0.0;
            let head: Vec<bool> = sorted
                .iter()
                .map(|p| {
                    cum += p;
                    cum >= mu
                })
                .collect();
            let gap: Vec<f64> = ls
                .iter()
                .zip(&lt)
                .map(|(a, b)| (a.exp() - b.exp()).abs())
                .collect();
            let part = |h: bool| -> f64 {
                gap.iter()
                    .zip(&head)
                    .filter(|(_, x)| **x == h)
                    .map(|(g, _)| g)
                    .sum()
            };
            let (g, g2) = (part(true), part(false));
            let (wf, wr) = match g + g2 {
                0.0 => (0.0, 0.0),
                d => (g / d, g2 / d),
            };
            let pairs = || {
                ls.iter()
                    .zip(&lt)
                    .filter(|(a, b)| a.is_finite() && b.is_finite())
            };
            let cross: f64 = -pairs().map(|(a, b)| b.exp() * a).sum::<f64>();
            let reverse: f64 = pairs().map(|(a, b)| a.exp() * (a - b)).sum();
            wf * cross + wr * reverse
        })
    }

    /// TAID's `AdaptiveKL.forward` (its variant), both logits' gradients.
    pub(crate) fn taid(case: &Case) -> Result<(), String> {
        let mu = case.param("head_threshold")?;
        let (s, sv, v) = token_leaf(case, "logits")?;
        let (t, tv, _) = token_leaf(case, "teacher_logits")?;
        let mask: Vec<bool> = case.input("mask")?.1.iter().map(|&m| m != 0.0).collect();
        let loss = AdaptiveKlConfig::new()
            .with_mu(mu)
            .with_variant(AklVariant::Taid)
            .init()
            .map_err(e)?;
        let input = DistillInput::new(s.clone(), t.clone())
            .attach_teacher()
            .mask(bools(&mask));
        let out = loss.forward(&input).map_err(e)?;
        let exact = |s: &[f64], t: &[f64]| exact(s, t, v, &mask, mu);
        case.expect_loss(out.value(), Some(exact(&sv, &tv)))?;
        let grads = out.total.backward();
        // where the gaps are 0 the weights are 0 by definition and the loss jumps away from
        // 0 in every direction: the gradient the crate defines there is 0
        let identical = sv == tv;
        let fd = |which: bool| -> Vec<f64> {
            match identical {
                true => vec![0.0; sv.len()],
                false if which => numeric_grad(&|x| exact(&x, &tv), &sv, 1e-6),
                false => numeric_grad(&|x| exact(&sv, &x), &tv, 1e-6),
            }
        };
        let (fd_s, fd_t) = (|| fd(true), || fd(false));
        case.expect_grad("logits", s.grad(&grads).map(values), Some(&fd_s))?;
        case.expect_grad("teacher_logits", t.grad(&grads).map(values), Some(&fd_t))
    }
}
