//! MiniLLM: on-policy distillation by the reverse KL's policy gradient on the student's own
//! samples, with reward-to-go advantages and the single-step decomposition.

use std::sync::Arc;

use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Int, Tensor};

use super::reverse_kl::reverse_kl_elements;
use super::tokens::{TokenReduction, uncounted};
use crate::check::check_positive;
use crate::error::DistillError;
use crate::input::{DistillInput, Extra};
use crate::loss::{Loss, LossOutput};

/// How the reward at step `i` is discounted in the advantage at step `t ≤ i`.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Discount {
    /// `γ^(i−t)`, as the paper and LMOps write it.
    Relative,
    /// `γ^i`, the absolute index (TRL's `_compute_advantage`): without length normalisation
    /// the advantage at `t` is `γ^t` times the relative one.
    Absolute,
}

/// How an advantage is normalised by the length of the sequence left.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum LengthNormalization {
    /// None: the discounted sum of rewards.
    None,
    /// Divided by the number of counted tokens from `t` on (LMOps; at least 1).
    Count,
    /// Divided by `Σ_{i≥t} w_i·m'_i`, the discount weights of the tokens from `t` on, an
    /// uncounted token counting `masked` (TRL: 1e-4) instead of 0.
    Discounted {
        /// What an uncounted token adds to the length.
        masked: f64,
    },
}

/// The sequences' length `T` of rows flattened from `[B, T, V]` (row `b·T + t`), for the
/// objectives that read along a sequence ([`MiniLlm`]); set with `DistillInput::with`.
#[derive(Debug, Clone, Copy)]
pub struct SequenceLength(pub usize);

impl Extra for SequenceLength {
    fn select_rows(&self, _rows: &Tensor<1, Int>) -> Option<Arc<dyn Extra>> {
        // a subset of rows is no longer whole sequences
        None
    }
}

/// Configuration of MiniLLM's reward-to-go advantages ([`reward_to_go`]).
#[derive(Config, Debug)]
pub struct RewardToGoConfig {
    /// The discount γ ∈ [0, 1].
    #[config(default = 1.0)]
    pub gamma: f64,
    /// How a later reward is discounted.
    #[config(default = "Discount::Relative")]
    pub discount: Discount,
    /// How an advantage is normalised by the length left.
    #[config(default = "LengthNormalization::Count")]
    pub normalization: LengthNormalization,
}

impl RewardToGoConfig {
    fn check(&self, objective: &str) -> Result<(), DistillError> {
        crate::check::check_fraction(objective, "advantage.gamma", self.gamma, true)?;
        if let LengthNormalization::Discounted { masked } = self.normalization {
            check_positive(objective, "advantage.normalization (masked)", masked)?;
        }
        Ok(())
    }
}

/// MiniLLM's advantages `[B, T]` from the student's and the teacher's log-probabilities of the
/// sampled tokens `[B, T]`: with rewards `r_i = (log p_t(y_i) − log p_s(y_i))·m_i`,
///
/// ```text
/// A_t = Σ_{i≥t} w(i, t)·r_i / len_t      w = γ^(i−t) (Relative) or γ^i (Absolute)
/// ```
///
/// `len_t` per [`LengthNormalization`] (1 for `None`). γ = 0 gives `A = r` whatever the rest
/// (TRL skips the normalisation there). Gradients flow to both inputs (detach the result for a
/// policy gradient). Computed as one `[T, T]` product, exact for any γ.
pub fn reward_to_go(
    student: Tensor<2>,
    teacher: Tensor<2>,
    mask: Option<Tensor<2, Bool>>,
    config: &RewardToGoConfig,
) -> Tensor<2> {
    let [b, t] = student.dims();
    let (device, dtype) = (student.device(), student.dtype());
    let m = match &mask {
        Some(m) => Tensor::<2>::ones([b, t], (&device, dtype)).mask_fill(m.clone().bool_not(), 0.0),
        None => Tensor::ones([b, t], (&device, dtype)),
    };
    let rewards = (teacher - student) * m.clone();
    if config.gamma == 0.0 {
        return rewards;
    }
    // w[i, t]: the weight of reward i in the advantage at t (0 for i < t)
    let i = Tensor::<1, Int>::arange(0..t as i64, &device)
        .float()
        .cast(dtype)
        .reshape([t, 1]);
    let later = i.clone().greater_equal(i.clone().reshape([1, t]));
    let power = match config.discount {
        Discount::Relative => i.clone() - i.reshape([1, t]),
        Discount::Absolute => i.expand([t, t]),
    };
    let w = (power * config.gamma.ln())
        .exp()
        .mask_fill(later.clone().bool_not(), 0.0);
    let sums = rewards.matmul(w.clone());
    match config.normalization {
        LengthNormalization::None => sums,
        LengthNormalization::Count => sums / m.matmul(later.float().cast(dtype)).clamp_min(1.0),
        LengthNormalization::Discounted { masked } => {
            let m = m.clone() + (-m + 1.0) * masked;
            sums / m.matmul(w)
        }
    }
}

/// Configuration of [`MiniLlm`].
#[derive(Config, Debug)]
pub struct MiniLlmConfig {
    /// The advantages' discount and normalisation.
    #[config(default = "RewardToGoConfig::new()")]
    pub advantage: RewardToGoConfig,
    /// Add the single-step decomposition, the exact reverse KL of each step's distribution
    /// (MiniLLM's variance reduction; TRL's `single_step_decomposition`).
    #[config(default = true)]
    pub single_step: bool,
    /// How per-token values become the total.
    #[config(default = "TokenReduction::TokenMean")]
    pub reduction: TokenReduction,
}

impl MiniLlmConfig {
    /// Validates the configuration and builds the objective.
    pub fn init(&self) -> Result<MiniLlm, DistillError> {
        self.advantage.check(MiniLlm::NAME)?;
        self.reduction.check(MiniLlm::NAME)?;
        Ok(MiniLlm {
            config: self.clone(),
        })
    }
}

/// MiniLLM (Gu et al., ICLR 2024, *MiniLLM: Knowledge Distillation of Large Language Models*,
/// [arXiv:2306.08543](https://arxiv.org/abs/2306.08543); microsoft/LMOps, TRL's
/// `MiniLLMTrainer`): the reverse KL `KL(q_θ ‖ p)` over the student's own samples, minimised
/// by its policy gradient. On sequences `y` the student sampled (the labels), with
/// `A_t` = [`reward_to_go`] of `r_i = log p(y_i) − log q(y_i)`:
///
/// ```text
/// ℓ_t = −sg(A_t)·log q(y_t)  [+ KL(q_t ‖ p_t)]     (the bracket: single-step decomposition)
/// L   = reduce_tokens ℓ
/// ```
///
/// The first term is a score-function estimator: its value is not the KL, its gradient is the
/// policy gradient. The second is exact over the vocabulary at each step. Terms
/// `"minillm/policy"` and `"minillm/single_step"`.
///
/// # Shapes
/// - student and teacher logits `[B·T, V]` (row `b·T + t`); labels (the sampled tokens)
///   `[B·T]` with an ignore index for the prompt and the padding; [`SequenceLength`] `T`
#[derive(Debug, Clone)]
pub struct MiniLlm {
    config: MiniLlmConfig,
}

crate::loss::objective!(MiniLlm, "minillm");

impl Loss for MiniLlm {
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
        let SequenceLength(t) =
            *input.extra::<SequenceLength>("the sequences' length (SequenceLength)")?;
        if t == 0 || !n.is_multiple_of(t) {
            return Err(DistillError::ShapeMismatch {
                objective: Self::NAME.into(),
                what: "rows as [sequences, SequenceLength]".into(),
                expected: vec![n.div_ceil(t.max(1)), t],
                actual: vec![n],
            });
        }
        let log_q = |z: Tensor<2>| log_softmax(uncounted(z, mask.as_ref(), 0.0), 1);
        let (ls, lt) = (log_q(zs.clone()), log_q(zt.clone()));
        let picked = |l: &Tensor<2>| l.clone().gather(1, y.clone()).reshape([n / t, t]);
        let (ys, yt) = (picked(&ls), picked(&lt));
        let seq_mask = mask.clone().map(|m| m.reshape([n / t, t]));
        let advantages = reward_to_go(ys.clone(), yt, seq_mask, &c.advantage).detach();
        let policy = -(advantages * ys).reshape([n]);
        let policy = c.reduction.apply(policy, mask.clone(), v);
        let mut terms = vec![(format!("{}/policy", Self::NAME), policy)];
        if c.single_step {
            let rows = reverse_kl_elements(ls, lt).sum_dim(1).squeeze_dim(1);
            terms.push((
                format!("{}/single_step", Self::NAME),
                c.reduction.apply(rows, mask, v),
            ));
        }
        let out = LossOutput::from_terms(terms);
        input.settle_logits(BOUND, out, &zs, &zt)
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e15;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["MiniLlm"],
    paper: "Gu et al., ICLR 2024 (MiniLLM)",
    doc: "token.md",
    bound: Some(BOUND),
    // a score-function estimator on sequences (SequenceLength): tests/token.rs checks its
    // gradient against the policy gradient
    example: None,
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss MiniLlm = token::MiniLlmConfig())),
    golden: crate::registry::golden!["trl_minillm_advantage" => golden::advantage],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// TRL's `_compute_advantage`: the absolute-index discount and the discounted length with
    /// 1e-4 for an uncounted token; the reference's float32 powers at γ > 0 (about 1e-7).
    pub(crate) fn advantage(case: &Case) -> Result<(), String> {
        let gamma = case.param("gamma")?;
        let normalization = match case.param("length_normalization")? != 0.0 {
            true => LengthNormalization::Discounted { masked: 1e-4 },
            false => LengthNormalization::None,
        };
        let config = RewardToGoConfig::new()
            .with_gamma(gamma)
            .with_discount(Discount::Absolute)
            .with_normalization(normalization);
        let s = case.leaf::<2>("student_log_probs_on_labels")?;
        let t = case.leaf::<2>("teacher_log_probs_on_labels")?;
        let mask = match case.has("mask") {
            true => {
                let (shape, m) = case.input("mask")?;
                Some(
                    bools(&m.iter().map(|&x| x != 0.0).collect::<Vec<_>>())
                        .reshape([shape[0], shape[1]]),
                )
            }
            false => None,
        };
        if gamma > 0.0 && case.dtype == burn::tensor::DType::F64 {
            case.tolerance.set(Some((2e-6, 2e-6)));
        }
        let a = reward_to_go(s.clone(), t.clone(), mask, &config);
        case.check_elements(
            a,
            &[
                (
                    "student_log_probs_on_labels",
                    crate::input::Feature::Embedding(s),
                ),
                (
                    "teacher_log_probs_on_labels",
                    crate::input::Feature::Embedding(t),
                ),
            ],
        )
    }
}
