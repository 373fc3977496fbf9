//! Reverse KL per token (mode-seeking).

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

use super::forward_kl::forward_kl_elements;
use super::softened::{PerToken, Softened, SoftenedConfig};

/// Per-element reverse-KL terms `p_s,v (log p_s,v − log p_t,v)`; their sum is `KL(p_s ‖ p_t)`.
pub fn reverse_kl_elements(log_ps: Tensor<2>, log_pt: Tensor<2>) -> Tensor<2> {
    forward_kl_elements(log_pt, log_ps)
}

/// [`ReverseKl`]'s own options: none.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReverseKlOptions {}

/// Configuration of [`ReverseKl`]: the shared temperature, `T²` switch and reduction.
pub type ReverseKlConfig = SoftenedConfig<ReverseKlOptions>;

/// Reverse KL per token (as in MiniLLM, Gu et al., ICLR 2024):
///
/// `L = [T²] · reduce_tokens KL(softmax(z_s/T) ‖ softmax(z_t/T))`
///
/// Mode-seeking: the student may ignore teacher modes it cannot represent. torchtune's
/// `ReverseKLLoss` is exactly this. One term, `"reverse_kl"`.
///
/// # Shapes
/// - student and teacher logits `[N, V]`; mask `[N]` (optional)
pub type ReverseKl = Softened<ReverseKlOptions>;

crate::loss::objective!(ReverseKl, "reverse_kl");

impl PerToken for ReverseKlOptions {
    const NAME: &'static str = ReverseKl::NAME;
    const BOUND: f64 = BOUND;

    fn rows(&self, s: Tensor<2>, t: Tensor<2>) -> Tensor<1> {
        reverse_kl_elements(log_softmax(s, 1), log_softmax(t, 1))
            .sum_dim(1)
            .squeeze_dim(1)
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e38;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["ReverseKl"],
    paper: "KL(p_s ‖ p_t) per token (MiniLLM; TRL, torchtune)",
    doc: "token.md",
    bound: Some(BOUND),
    example: Some(|_| Ok(ReverseKlConfig::new().init()?.boxed())),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(token ReverseKl = token::ReverseKlConfig())),
    golden: crate::registry::golden![
        "torchtune_reverse_kl" => golden::torchtune,
        "torchtune_reverse_kl_chunked" => golden::torchtune,
        "trl_minillm_ssd" => golden::minillm_single_step,
    ],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::super::tokens::TokenReduction;
    use super::super::tokens::golden::*;
    use super::*;
    use crate::golden::exact::PerToken;
    use crate::golden::*;

    /// torchtune's loss, plain and chunked.
    pub(crate) fn torchtune(case: &Case) -> Result<(), String> {
        let build = |r| Ok(ReverseKlConfig::new().with_reduction(r).init()?.boxed());
        torchtune_loss(case, build, PerToken::Reverse)
    }

    /// TRL MiniLLM's `_single_step_decomposition_loss` on given log-probabilities (the crate
    /// reads them as logits): `batchmean` over the mask, or over B without one (TRL's
    /// label-less `batchmean`), `sum`, `mean` over the selected elements.
    pub(crate) fn minillm_single_step(case: &Case) -> Result<(), String> {
        let (s, _, v) = token_leaf(case, "student_log_probs")?;
        let (t, _, _) = token_leaf(case, "teacher_log_probs")?;
        let mask = token_mask(case)?;
        let batch = case.input("student_log_probs")?.0[0] as f64;
        let reduction = match (case.params["reduction"].as_str(), &mask) {
            (Some("batchmean"), Some(_)) => TokenReduction::TokenMean,
            (Some("batchmean"), None) => TokenReduction::DivideBy(batch),
            (Some("sum"), _) => TokenReduction::Sum,
            (Some("mean"), _) => TokenReduction::ElementMean,
            (r, _) => return Err(format!("reduction {r:?}")),
        };
        let loss = ReverseKlConfig::new()
            .with_reduction(reduction)
            .init()
            .map_err(e)?;
        let mut input = DistillInput::new(s.clone(), t.clone()).attach_teacher();
        if let Some(m) = &mask {
            input = input.mask(bools(m));
        }
        let out = loss.forward(&input).map_err(e)?;
        // an empty mask: the reference divides 0 by 0; the crate gives 0 and zero gradients
        let empty = mask.as_ref().is_some_and(|m| m.iter().all(|&x| !x));
        case.expect_loss(out.value(), empty.then_some(0.0))?;
        let grads = out.total.backward();
        let zeros = || vec![0.0; v * s.dims()[0]];
        let exact: Option<&dyn Fn() -> Vec<f64>> = if empty { Some(&zeros) } else { None };
        case.expect_grad_through_log_softmax(
            "student_log_probs",
            s.grad(&grads).map(values),
            exact,
        )?;
        case.expect_grad_through_log_softmax("teacher_log_probs", t.grad(&grads).map(values), exact)
    }
}
