//! Forward KL per token, the classic distillation divergence.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

use super::softened::{PerToken, Softened, SoftenedConfig};
use crate::fused::{self, Divergence};

/// Per-element forward-KL terms `p_t,v (log p_t,v − log p_s,v)` from log-probabilities
/// `[N, V]`; their sum over `v` is `KL(p_t ‖ p_s)`. A teacher probability that underflows to
/// 0 contributes exactly 0.
pub fn forward_kl_elements(log_ps: Tensor<2>, log_pt: Tensor<2>) -> Tensor<2> {
    log_pt.clone().exp() * (log_pt - log_ps)
}

/// The cross-entropy form `−p_t,v log p_s,v` (torchtune's `ForwardKLLoss`): the KL plus the
/// teacher's entropy, with the same student gradient.
pub fn teacher_cross_entropy_elements(log_ps: Tensor<2>, log_pt: Tensor<2>) -> Tensor<2> {
    -(log_pt.exp() * log_ps)
}

/// [`ForwardKl`]'s own options.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardKlOptions {
    /// The cross-entropy `−Σ p_t log p_s` instead of the KL (torchtune's `ForwardKLLoss`):
    /// the same student gradient, a value larger by the teacher's entropy, and a teacher
    /// gradient of its own.
    pub cross_entropy: bool,
    /// Compute the KL with the [fused kernel](crate::fused) (KD's, at the token level) where
    /// the device supports it: the same values and gradients as the composed tensor ops, on
    /// every core, several times faster; `false` forces the composed version. The
    /// cross-entropy form is always composed.
    pub fused: bool,
}

impl Default for ForwardKlOptions {
    fn default() -> Self {
        Self {
            cross_entropy: false,
            fused: true,
        }
    }
}

/// The forward terms' elements: the KL's, or (`cross_entropy`) torchtune's and DistiLLM's
/// cross-entropy form, the KL plus the teacher's entropy.
pub(super) fn forward_elements(cross_entropy: bool) -> fn(Tensor<2>, Tensor<2>) -> Tensor<2> {
    match cross_entropy {
        true => teacher_cross_entropy_elements,
        false => forward_kl_elements,
    }
}

/// Configuration of [`ForwardKl`]: its [options](ForwardKlOptions) beside the shared
/// temperature, `T²` switch and reduction.
pub type ForwardKlConfig = SoftenedConfig<ForwardKlOptions>;

impl ForwardKlConfig {
    /// With (or without) the cross-entropy form ([`ForwardKlOptions::cross_entropy`]).
    pub fn with_cross_entropy(mut self, cross_entropy: bool) -> Self {
        self.options.cross_entropy = cross_entropy;
        self
    }

    /// With (or without) the fused kernel ([`ForwardKlOptions::fused`]).
    pub fn with_fused(mut self, fused: bool) -> Self {
        self.options.fused = fused;
        self
    }
}

/// Forward KL per token:
///
/// `L = [T²] · reduce_tokens KL(softmax(z_t/T) ‖ softmax(z_s/T))`
///
/// over the rows the input's mask (or labels) admits. Mass-covering: the student is pushed to
/// put probability wherever the teacher does. One term, `"forward_kl"`.
///
/// # Shapes
/// - student and teacher logits `[N, V]`; mask `[N]` (optional)
pub type ForwardKl = Softened<ForwardKlOptions>;

crate::loss::objective!(ForwardKl, "forward_kl");

impl PerToken for ForwardKlOptions {
    const NAME: &'static str = ForwardKl::NAME;
    const BOUND: f64 = BOUND;

    fn rows(&self, s: Tensor<2>, t: Tensor<2>) -> Tensor<1> {
        // the logits arrive divided by T: KD's kernel at T = 1 is the token's KL
        let rows = self.kernel().and_then(|_| fused::kd_rows(&s, &t, 1.0));
        rows.unwrap_or_else(|| {
            forward_elements(self.cross_entropy)(log_softmax(s, 1), log_softmax(t, 1))
                .sum_dim(1)
                .squeeze_dim(1)
        })
    }

    fn kernel(&self) -> Option<Divergence> {
        (self.fused && !self.cross_entropy).then_some(Divergence::Kl)
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e38;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["ForwardKl"],
    paper: "KL(p_t ‖ p_s) per token (TRL, torchtune, DistillKit)",
    doc: "token.md",
    bound: Some(BOUND),
    example: Some(|_| Ok(ForwardKlConfig::new().with_temperature(2.0).init()?.boxed())),
    learnable: None,
    twins: Some(|fused| {
        let kl = ForwardKlConfig::new()
            .with_temperature(2.0)
            .with_fused(fused)
            .init()?;
        Ok(vec![("forward KL".into(), 4.0, kl.boxed())])
    }),
    method: Some(crate::registry::method!(token ForwardKl = token::ForwardKlConfig())),
    golden: crate::registry::golden!["torchtune_forward_kl" => golden::torchtune, "torchtune_forward_kl_chunked" => golden::torchtune, "distillkit_kl" => golden::distillkit, "modelopt_logits_kl" => golden::modelopt, "modelopt_mcore_logits_kl" => golden::modelopt_megatron],
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
        let build = |r| {
            Ok(ForwardKlConfig::new()
                .with_cross_entropy(true)
                .with_reduction(r)
                .init()?
                .boxed())
        };
        torchtune_loss(
            case,
            build,
            PerToken::Forward {
                cross_entropy: true,
            },
        )
    }

    /// DistillKit's dense loss (`T²`, the sum over the masked tokens over their number); a sparse
    /// signal goes to `TopK`'s runner.
    pub(crate) fn distillkit(case: &Case) -> Result<(), String> {
        distillkit_dense(
            case,
            |temperature, reduction| {
                Ok(ForwardKlConfig::new()
                    .with_reduction(reduction)
                    .with_temperature(temperature)
                    .with_t_squared(true)
                    .init()?
                    .boxed())
            },
            PerToken::Forward {
                cross_entropy: false,
            },
        )
    }

    /// Model-Optimizer's `LogitsDistillationLoss`: `KL(p_t ‖ p_s)` at `T` times `T²`, the
    /// teacher detached, reduced as `F.kl_div` does: `batchmean` divides by the first
    /// dimension only (B even for `[B, S, V]`), `mean` by every element, vocabulary included.
    pub(crate) fn modelopt(case: &Case) -> Result<(), String> {
        let (s, _, _) = token_leaf(case, "logits_s")?;
        let (t, _, _) = token_leaf(case, "logits_t")?;
        let batch = case.input("logits_s")?.0[0];
        let reduction = match case.params["reduction"].as_str() {
            Some("batchmean") => TokenReduction::DivideBy(batch as f64),
            Some("mean") => TokenReduction::ElementMean,
            Some("sum") => TokenReduction::Sum,
            _ => TokenReduction::None,
        };
        let loss = ForwardKlConfig::new()
            .with_temperature(case.param("temperature")?)
            .with_t_squared(true)
            .with_reduction(reduction)
            .init()
            .map_err(e)?;
        let out = loss.forward(&DistillInput::new(s.clone(), t)).map_err(e)?;
        case.expect_loss(out.value(), None)?;
        let grads = out.total.backward();
        case.expect_grad("logits_s", s.grad(&grads).map(values), None)
    }

    /// The Megatron plugin's `LogitsKLLoss`: `Σ_v KL(p_t ‖ p_s)` at `T` per position `[b, s]`
    /// (`reverse`: `KL(p_s ‖ p_t)`), no `T²`, the teacher detached.
    pub(crate) fn modelopt_megatron(case: &Case) -> Result<(), String> {
        use super::super::hidden_state::golden::{megatron_check, megatron_rows};
        let (p, ps) = megatron_rows(case, "predictions")?;
        let (_, ts) = megatron_rows(case, "targets")?;
        let temperature = case.param("temperature")?;
        let loss: Box<dyn Loss> = match case.params["reverse"].as_bool() {
            Some(true) => Box::new(
                super::super::ReverseKlConfig::new()
                    .with_temperature(temperature)
                    .with_reduction(TokenReduction::None)
                    .init()
                    .map_err(e)?,
            ),
            _ => Box::new(
                ForwardKlConfig::new()
                    .with_temperature(temperature)
                    .with_reduction(TokenReduction::None)
                    .init()
                    .map_err(e)?,
            ),
        };
        let rows = loss.forward(&DistillInput::new(ps, ts)).map_err(e)?.total;
        megatron_check(case, &p, rows)
    }
}
