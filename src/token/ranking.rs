//! DistillKit's ranking losses from a sparse teacher: the student keeps the teacher's order
//! of its top-k tokens.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, FloatDType, Tensor};

use super::tokens::uncounted;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};
use crate::math::softplus;

/// What is ranked, and how a pair out of order costs.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum Ranking {
    /// DistillKit's `HingeLoss`: `relu(m_kl − (q_k − q_l))` on the student's probabilities
    /// `q = softmax(z_s)` at the teacher's ids, with the margin `m_kl` the teacher's gap
    /// `p_k − p_l` (`margin: None`) or a constant.
    Hinge,
    /// DistillKit's `LogisticRankingLoss`: `softplus(−(z_k − z_l))` on the student's raw logits
    /// at the teacher's ids.
    Logistic,
}

/// The pairwise terms `[N, k, k]` (pair `(k, l)` at `[n, k, l]`) and the pairs that count
/// (`p_k > p_l + eps`, `p_k > eps`, `p_l > eps`) of student values at the teacher's ids —
/// probabilities `q` for [`Ranking::Hinge`], raw logits for [`Ranking::Logistic`] — and the
/// teacher's probabilities `p` `[N, k]`; `margin` a constant hinge margin (`None`: `p_k − p_l`).
pub fn ranking_pairs(
    student: Tensor<2>,
    teacher: Tensor<2>,
    ranking: Ranking,
    margin: Option<f64>,
    eps: f64,
) -> (Tensor<3>, Tensor<3, Bool>) {
    let gap = |x: Tensor<2>| x.clone().unsqueeze_dim::<3>(2) - x.unsqueeze_dim::<3>(1);
    let (p_k, p_l) = (
        teacher.clone().unsqueeze_dim::<3>(2),
        teacher.clone().unsqueeze_dim::<3>(1),
    );
    let valid = p_k
        .clone()
        .greater(p_l.clone() + eps)
        .bool_and(p_k.greater_elem(eps))
        .bool_and(p_l.greater_elem(eps));
    let diff = gap(student);
    let terms = match ranking {
        Ranking::Hinge => {
            let margin = match margin {
                Some(m) => diff.zeros_like() + m,
                None => gap(teacher),
            };
            (margin - diff).clamp_min(0.0)
        }
        Ranking::Logistic => softplus(diff.neg()),
    };
    (terms, valid)
}

/// Configuration of [`SparseRanking`]; the defaults are DistillKit's hinge loss.
#[derive(Config, Debug)]
pub struct SparseRankingConfig {
    /// The ranking loss.
    #[config(default = "Ranking::Hinge")]
    pub ranking: Ranking,
    /// The hinge's constant margin (`None`: the teacher's own gap `p_k − p_l`, through which
    /// the teacher's values get a gradient when the teacher is attached).
    #[config(default = "None")]
    pub margin: Option<f64>,
    /// Whether the sparse teacher's values are log-probabilities (`p = eᵛ`, DistillKit's
    /// `log_values = true`) or probabilities.
    #[config(default = true)]
    pub log_values: bool,
    /// The threshold of the pair rule and the count's guard (DistillKit: 1e-8 for the hinge,
    /// 1e-9 for the logistic loss).
    #[config(default = 1e-8)]
    pub eps: f64,
}

impl SparseRankingConfig {
    /// Validates the configuration and builds the objective.
    pub fn init(&self) -> Result<SparseRanking, DistillError> {
        crate::check::check_non_negative(SparseRanking::NAME, "eps", self.eps)?;
        if let Some(m) = self.margin {
            crate::check::check_non_negative(SparseRanking::NAME, "margin", m)?;
            if self.ranking == Ranking::Logistic {
                return Err(DistillError::config(
                    SparseRanking::NAME,
                    "margin",
                    m,
                    "the logistic ranking loss has no margin",
                ));
            }
        }
        Ok(SparseRanking {
            config: self.clone(),
        })
    }
}

/// DistillKit's ranking losses from a sparse teacher (`HingeLoss`, `LogisticRankingLoss`):
/// for every ordered pair `(k, l)` of the teacher's top-k tokens that it ranks apart
/// (`p_k > p_l + ε`, both above ε), the student pays when it does not keep the order:
///
/// ```text
/// hinge:     relu(m_kl − (q_k − q_l)),  q = softmax(z_s)[ids],  m_kl = p_k − p_l or a constant
/// logistic:  softplus(−(z_k − z_l)),    z = z_s[ids]
/// L = Σ_tokens Σ_pairs term · counted / (Σ counted + ε)
/// ```
///
/// over the tokens the mask admits (all masked: 0). Neither reads a temperature: the values are
/// used as stored. The pair count is taken in f32 (`count + ε` is an f32 number, as in the
/// reference, where ε only matters for an empty count). Tied values form no pair; slots whose
/// log-probability is −∞ (probability 0) none either. One term, `"sparse_ranking"`.
///
/// # Shapes
/// - student logits `[N, V]`; sparse teacher ids and values `[N, k]`; mask `[N]` (optional)
#[derive(Debug, Clone)]
pub struct SparseRanking {
    config: SparseRankingConfig,
}

crate::loss::objective!(SparseRanking, "sparse_ranking");

impl Loss for SparseRanking {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let input = input.of(Self::NAME).masked().within(BOUND);
        let z = input.student_logits()?;
        let [n, v] = z.dims();
        let mask = input.mask(n)?;
        input.targets_if_any(n, v)?;
        let (ids, values) = input.sparse_teacher(n, v)?;
        let k = ids.dims()[1];
        // rows that do not count are constants (a uniform teacher: no pair) before anything
        let z = uncounted(z, mask.as_ref(), 0.0);
        let values = uncounted(values, mask.as_ref(), (1.0 / k as f64).ln());
        let p = match c.log_values {
            true => values.exp(),
            false => values,
        };
        let student = match c.ranking {
            Ranking::Hinge => log_softmax(z, 1).gather(1, ids).exp(),
            Ranking::Logistic => z.gather(1, ids),
        };
        let (terms, valid) = ranking_pairs(student, p, c.ranking, c.margin, c.eps);
        let valid = match &mask {
            Some(m) => valid.bool_and(m.clone().unsqueeze_dims::<3>(&[1, 2]).expand([n, k, k])),
            None => valid,
        };
        let dtype = terms.dtype();
        let counted = valid.float().cast(dtype);
        let sum = (terms * counted.clone()).sum();
        // the reference's count is f32, so `count + ε` is an f32 number
        let count = (counted.sum().cast(FloatDType::F32) + c.eps).cast(FloatDType::from(dtype));
        Ok(LossOutput::single(Self::NAME, sum / count))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = f64::MAX;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["SparseRanking"],
    paper: "DistillKit's hinge and logistic ranking losses over a sparse top-k teacher",
    doc: "token.md",
    bound: Some(BOUND),
    example: Some(|_| Ok(SparseRankingConfig::new().init()?.boxed())),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss SparseRanking = token::SparseRankingConfig())),
    golden: crate::registry::golden!["dk_hinge" => golden::distillkit, "dk_logistic_ranking" => golden::distillkit],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;
    use burn::tensor::Int;

    /// DistillKit's `HingeLoss` and `LogisticRankingLoss` on a sparse signal (the raw values,
    /// no temperature), the teacher's values attached where the reference differentiates them.
    pub(crate) fn distillkit(case: &Case) -> Result<(), String> {
        let hinge = case.method == "dk_hinge";
        let loss = SparseRankingConfig::new()
            .with_ranking(if hinge {
                Ranking::Hinge
            } else {
                Ranking::Logistic
            })
            .with_margin(case.opt("margin"))
            .with_log_values(case.params["log_values"].as_bool() != Some(false))
            .with_eps(case.opt("eps").unwrap_or(if hinge { 1e-8 } else { 1e-9 }))
            .init()
            .map_err(e)?;
        let (s, _, _) = token_leaf(case, "student_logits")?;
        let (ids_shape, ids) = case.input("target_ids")?;
        let k = *ids_shape.last().ok_or("no k")?;
        let n = ids.len() / k;
        let ids = Tensor::<2, Int>::from_data(
            burn::tensor::TensorData::new(
                ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [n, k],
            ),
            &device(),
        );
        let (_, teacher) = case.input("target_values")?;
        let teacher = tensor(teacher.clone(), [n, k], case.dtype).require_grad();
        let mut input = DistillInput::student(s.clone())
            .sparse_teacher(ids, teacher.clone())
            .attach_teacher();
        if let Some(m) = token_mask(case)? {
            input = input.mask(bools(&m));
        }
        let out = loss.forward(&input).map_err(e)?;
        case.expect_loss(out.value(), None)?;
        let grads = out.total.backward();
        case.expect_grad("student_logits", s.grad(&grads).map(values), None)?;
        case.expect_grad("target_values", teacher.grad(&grads).map(values), None)
    }
}
