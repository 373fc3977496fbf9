//! The generalized Jensen–Shannon divergence of GKD, in TRL's and Liger's convention.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

use super::forward_kl::forward_kl_elements;
use super::softened::{PerToken, Softened, SoftenedConfig};
use crate::check::check_fraction;
use crate::error::DistillError;
use crate::fused::{self, Divergence};
use crate::math::log_add_exp;

/// Per-element generalized-JSD terms from log-probabilities `[N, V]`, with the mixture
/// `m = (1 − β)·p_s + β·p_t` formed in log space:
/// `β·p_t (log p_t − log m) + (1 − β)·p_s (log p_s − log m)`. `β = 0` and `β = 1` are forward
/// `KL(p_t ‖ p_s)` and reverse `KL(p_s ‖ p_t)` (TRL's and Liger's special cases: the formula's
/// own limits there are 0).
pub fn jsd_elements(log_ps: Tensor<2>, log_pt: Tensor<2>, beta: f64) -> Tensor<2> {
    if beta == 0.0 {
        return forward_kl_elements(log_ps, log_pt);
    }
    if beta == 1.0 {
        return forward_kl_elements(log_pt, log_ps);
    }
    let log_m = log_add_exp(
        log_ps.clone() + (1.0 - beta).ln(),
        log_pt.clone() + beta.ln(),
    );
    forward_kl_elements(log_m.clone(), log_pt) * beta
        + forward_kl_elements(log_m, log_ps) * (1.0 - beta)
}

/// [`Jsd`]'s own options.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JsdOptions {
    /// β ∈ [0, 1]: the teacher's share of the mixture and the weight of `KL(p_t ‖ m)`
    /// (0: forward KL, 1: reverse KL, 0.5: the symmetric JSD).
    pub beta: f64,
    /// Compute it with a [fused kernel](crate::fused) where the device supports it (KD's for
    /// β = 0 and 1, a JSD kernel between): the same values and gradients as the composed
    /// tensor ops, on every core, several times faster; `false` forces the composed version.
    pub fused: bool,
}

impl Default for JsdOptions {
    fn default() -> Self {
        Self {
            beta: 0.5,
            fused: true,
        }
    }
}

/// Configuration of [`Jsd`]: its [options](JsdOptions) beside the shared temperature, `T²`
/// switch and reduction.
pub type JsdConfig = SoftenedConfig<JsdOptions>;

impl JsdConfig {
    /// With β ([`JsdOptions::beta`]).
    pub fn with_beta(mut self, beta: f64) -> Self {
        self.options.beta = beta;
        self
    }

    /// With (or without) the fused kernel ([`JsdOptions::fused`]).
    pub fn with_fused(mut self, fused: bool) -> Self {
        self.options.fused = fused;
        self
    }
}

/// The generalized Jensen–Shannon divergence per token (Agarwal et al., ICLR 2024, *On-Policy
/// Distillation of Language Models*, GKD), in TRL's `generalized_jsd_loss` and Liger's
/// convention:
///
/// `m = (1 − β)·p_s + β·p_t`,  `JSD_β = β·KL(p_t ‖ m) + (1 − β)·KL(p_s ‖ m)`
///
/// with `p = softmax(z/T)`, reduced over the valid tokens; `β = 0` / `1` are forward / reverse
/// KL. The mixture's log comes from a two-term log-sum-exp, so it is finite for logits of any
/// magnitude. DistillKit's JSD is `β = 0.5` with `T²`. One term, `"jsd"`.
///
/// # Shapes
/// - student and teacher logits `[N, V]`; mask `[N]` (optional)
pub type Jsd = Softened<JsdOptions>;

crate::loss::objective!(Jsd, "jsd");

impl PerToken for JsdOptions {
    const NAME: &'static str = Jsd::NAME;
    const BOUND: f64 = BOUND;

    fn check(&self) -> Result<(), DistillError> {
        check_fraction(Jsd::NAME, "beta", self.beta, true).map(drop)
    }

    fn rows(&self, s: Tensor<2>, t: Tensor<2>) -> Tensor<1> {
        // the logits arrive divided by T
        let rows = self.fused.then(|| fused::jsd_rows(&s, &t, 1.0, self.beta));
        rows.flatten().unwrap_or_else(|| {
            jsd_elements(log_softmax(s, 1), log_softmax(t, 1), self.beta)
                .sum_dim(1)
                .squeeze_dim(1)
        })
    }

    fn kernel(&self) -> Option<Divergence> {
        self.fused.then_some(match self.beta {
            0.0 => Divergence::Kl,
            1.0 => Divergence::ReverseKl,
            b => Divergence::Jsd(b),
        })
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e38;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Jsd"],
    paper: "generalized JSD(β) (Agarwal et al., ICLR 2024, GKD; TRL, Liger)",
    doc: "token.md",
    bound: Some(BOUND),
    example: Some(|_| Ok(JsdConfig::new().with_beta(0.3).init()?.boxed())),
    learnable: None,
    twins: Some(|fused| {
        [0.3, 0.0, 1.0]
            .into_iter()
            .map(|beta| {
                let jsd = JsdConfig::new()
                    .with_beta(beta)
                    .with_temperature(1.5)
                    .with_fused(fused)
                    .init()?;
                Ok((format!("JSD({beta})"), 1.0, jsd.boxed()))
            })
            .collect()
    }),
    method: Some(crate::registry::method!(token Jsd = token::JsdConfig())),
    golden: crate::registry::golden!["gkd_generalized_jsd" => golden::trl, "distillkit_jsd" => golden::distillkit, "liger_jsd_testref" => golden::liger_testref, "trl_full_logit_sd" => golden::trl_full_logit],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::super::tokens::TokenReduction;
    use super::super::tokens::golden::*;
    use super::*;
    use crate::golden::exact::PerToken;
    use crate::golden::*;

    /// TRL's `generalized_jsd_loss`: the mixture JSD(β), its reductions and `num_items_in_batch`.
    pub(crate) fn trl(case: &Case) -> Result<(), String> {
        let (beta, temperature) = (case.param("beta")?, case.opt("temperature").unwrap_or(1.0));
        let vocab = *case.input("student_logits")?.0.last().unwrap_or(&1) as f64;
        let items = case.opt("num_items_in_batch");
        // without labels TRL's `batchmean` divides by the batch size (B of `[B, T, V]`)
        let batch = case.input("student_logits")?.0[0] as f64;
        let labelled = token_mask(case)?.is_some();
        let reduction = match (case.params["reduction"].as_str(), items) {
            (_, Some(n)) => TokenReduction::DivideBy(n),
            (Some("batchmean"), _) if !labelled => TokenReduction::DivideBy(batch),
            (Some("batchmean"), _) => TokenReduction::TokenMean,
            (Some("mean"), _) => TokenReduction::ElementMean,
            (Some("sum"), _) => TokenReduction::Sum,
            (Some("none"), _) => TokenReduction::None,
            (r, _) => return Err(format!("reduction {r:?}")),
        };
        let divide = move |valid: usize| match reduction {
            TokenReduction::DivideBy(n) => n,
            TokenReduction::ElementMean => per_valid(valid) * vocab,
            TokenReduction::Sum | TokenReduction::None => 1.0,
            _ => per_valid(valid),
        };
        let loss = JsdConfig::new()
            .with_beta(beta)
            .with_temperature(temperature)
            .with_reduction(reduction)
            .init()
            .map_err(e)?;
        token_case(
            case,
            TokenCheck {
                loss: loss.boxed(),
                divergence: PerToken::Jsd(beta),
                temperature,
                t_squared: false,
                divide: &divide,
            },
        )
    }

    /// TRL's `compute_full_logit_self_distillation_loss`: JSD(α) per token of the raw logits,
    /// the teacher attached.
    pub(crate) fn trl_full_logit(case: &Case) -> Result<(), String> {
        let (s, _, _) = token_leaf(case, "student_logits")?;
        let (t, _, _) = token_leaf(case, "teacher_logits")?;
        let loss = JsdConfig::new()
            .with_beta(case.param("distillation_alpha")?)
            .with_reduction(TokenReduction::None)
            .init()
            .map_err(e)?;
        let input = DistillInput::new(s.clone(), t.clone()).attach_teacher();
        let rows = loss.forward(&input).map_err(e)?.total;
        case.check_elements(
            rows,
            &[
                ("student_logits", Feature::Embedding(s)),
                ("teacher_logits", Feature::Embedding(t)),
            ],
        )
    }

    /// DistillKit's dense loss (`T²`, the sum over the masked tokens over their number); a sparse
    /// signal goes to `TopK`'s runner.
    pub(crate) fn distillkit(case: &Case) -> Result<(), String> {
        distillkit_dense(
            case,
            |temperature, reduction| {
                Ok(JsdConfig::new()
                    .with_reduction(reduction)
                    .with_beta(0.5)
                    .with_temperature(temperature)
                    .with_t_squared(true)
                    .init()?
                    .boxed())
            },
            PerToken::Jsd(0.5),
        )
    }

    /// Liger's pure-torch test reference, on the elements given directly.
    pub(crate) fn liger_testref(case: &Case) -> Result<(), String> {
        liger_elements(case, ("log_q", "log_p"), |s, t| {
            Ok(jsd_elements(s, t, case.param("beta")?))
        })
    }
}
