//! What the token divergences share: masking, softening at a temperature, and the reduction
//! over tokens.

use burn::config::Config;
use burn::tensor::{Bool, DType, Device, Int, Tensor};

use crate::check::{check_positive, check_temperature};
use crate::error::DistillError;
use crate::fused::{Divergence, TokenKernel};
use crate::input::DistillInput;
use crate::loss::LossOutput;
use crate::loss::{Loss, Named};
use crate::math::Temperature;
use crate::registry::{Token, spec_error};

/// How per-token divergences become the total, each variant named by what the sum is divided
/// by. Rows that do not count (the mask) contribute exactly 0 under every reduction.
///
/// | reduction | total | as in |
/// |---|---|---|
/// | `TokenMean` | `Σ_tokens / max(valid tokens, 1)` (no valid token: 0, zero gradients) | TRL `batchmean`, torchtune `normalize`, DistillKit, Liger |
/// | `ElementMean` | `Σ / (max(valid tokens, 1) · V)` | TRL `mean` (PyTorch's mean over elements) |
/// | `Sum` | `Σ_tokens` | TRL `sum`, torchtune `normalize=False` |
/// | `None` | one value per token `[N]` (0 where masked) | |
/// | `DivideBy(n)` | `Σ_tokens / n` | TRL `num_items_in_batch`, DistillKit |
///
/// `DivideBy(n)` with `n` the number of valid tokens of the *whole* batch makes `k` accumulated
/// micro-batches (or `r` data-parallel ranks whose gradients are summed) give exactly the
/// gradient of the whole batch; `TokenMean` per micro-batch does not when their valid counts
/// differ.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum TokenReduction {
    /// Mean over the valid tokens.
    #[doc(alias = "Mean")]
    TokenMean,
    /// Mean over the valid tokens' vocabulary entries.
    ElementMean,
    /// Sum over the valid tokens.
    Sum,
    /// One value per token.
    None,
    /// Sum over the valid tokens divided by a caller-given count (the global number of valid
    /// tokens across micro-batches and ranks).
    #[doc(alias = "Global")]
    DivideBy(f64),
}

/// Logits `[B, T, V]` as one row per token, `[B·T, V]` (row-major: token `t` of sequence `b`
/// is row `b·T + t`).
pub fn flatten(logits: Tensor<3>) -> Tensor<2> {
    logits.flatten(0, 1)
}

/// A causal model's logits `[B, T, V]` at the positions that predict a next token: `[:, :-1]`,
/// flattened to `[B·(T−1), V]`. Sequences of one position predict nothing: `[0, V]` (which the
/// objectives refuse as an empty batch).
pub fn shift_logits(logits: Tensor<3>) -> Tensor<2> {
    let [b, t, v] = logits.dims();
    match t {
        0 | 1 => logits.reshape([b * t, v]).slice(0..0),
        _ => logits.narrow(1, 0, t - 1).reshape([b * (t - 1), v]),
    }
}

/// The labels those positions predict: `[:, 1:]`, flattened to `[B·(T−1)]` (`[0]` for
/// sequences of one position).
pub fn shift_labels(labels: Tensor<2, Int>) -> Tensor<1, Int> {
    let [b, t] = labels.dims();
    match t {
        0 | 1 => labels.reshape([b * t]).slice(0..0),
        _ => labels.narrow(1, 1, t - 1).reshape([b * (t - 1)]),
    }
}

/// A per-token divergence between the student's and the teacher's logits `[N, V]` (one row per
/// token): what [`FusedLinear`](super::FusedLinear) wraps. Built with `TokenReduction::None`, it
/// gives one value per token, which the lm-head path reduces over all chunks.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a token divergence (`TokenDivergence`), which `FusedLinear` wraps",
    note = "the token divergences are the forward and reverse KL, JSD, symmetric and skew KL, TVD, the logit cosine and `TopK` (and `Aligned` or `Named` of one); a builder that can fail returns a `Result`: take the objective out with `?` first"
)]
pub trait TokenDivergence: Loss {
    /// The fused kernel behind the per-token values, when the objective has one and computes
    /// them as configured (built with `TokenReduction::None`, its `fused` switch on): the
    /// lm-head path then runs the kernel on each chunk of logits directly. `None` by default.
    fn token_kernel(&self) -> Option<TokenKernel> {
        None
    }

    /// Whether the objective takes a teacher vocabulary of another size than the student's
    /// ([`Aligned`](super::Aligned)); `FusedLinear` then lets the two heads differ in `V`.
    fn aligns_vocabulary(&self) -> bool {
        false
    }
}

/// `x` `[N, W]` with the rows the mask does not count replaced by the constant `fill`, so
/// nothing in them (a NaN, an infinity) reaches a loss or its gradients; `x` itself without a
/// mask.
pub(crate) fn uncounted(x: Tensor<2>, mask: Option<&Tensor<1, Bool>>, fill: f64) -> Tensor<2> {
    match mask {
        Some(m) => {
            let dims = x.dims();
            x.mask_fill(
                m.clone().bool_not().unsqueeze_dim::<2>(1).expand(dims),
                fill,
            )
        }
        None => x,
    }
}

/// `terms(a, b)` element by element, 0 with zero gradients where `outside` (an entry outside
/// the support: a vocabulary entry at −∞, a sparse teacher's padding): `a` and `b` get a finite
/// stand-in there first, so no `0·∞` reaches a value or a gradient.
pub(crate) fn outside_zero(
    a: Tensor<2>,
    b: Tensor<2>,
    outside: &Tensor<2, Bool>,
    terms: impl FnOnce(Tensor<2>, Tensor<2>) -> Tensor<2>,
) -> Tensor<2> {
    let a = a.mask_fill(outside.clone(), 0.0);
    let b = b.mask_fill(outside.clone(), 0.0);
    terms(a, b).mask_fill(outside.clone(), 0.0)
}

/// The logit a masked vocabulary entry gets: finite, and low enough that its probability is
/// exactly 0 in f32 and f64 beside any logit the crate handles (±1e4) at any temperature it
/// accepts.
const MASKED_LOGIT: f64 = -1e30;

/// Vocabulary entries at −∞ in either logits `[N, V]` are masked vocabulary: out of both
/// distributions, which renormalise over the rest. Both sides get [`MASKED_LOGIT`] there
/// (probability exactly 0, finite), so every divergence's term is 0 with zero gradients, and
/// the −∞ inputs get zero gradients.
pub(crate) fn masked_vocabulary(s: Tensor<2>, t: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    // two read-only minima (and one read-back) decide whether there is anything to mask: the
    // masking itself costs several passes over `[N, V]`, which logits without −∞ skip
    let lowest = |x: &Tensor<2>| x.clone().detach().min().into_scalar::<f64>();
    if lowest(&s) != f64::NEG_INFINITY && lowest(&t) != f64::NEG_INFINITY {
        return (s, t);
    }
    let out = s.clone().min_pair(t.clone()).equal_elem(f64::NEG_INFINITY);
    (
        s.mask_fill(out.clone(), MASKED_LOGIT),
        t.mask_fill(out, MASKED_LOGIT),
    )
}

/// `divergence` as a spec's wrapper of token divergences receives it ([`Token`]).
pub(crate) fn box_divergence<L: TokenDivergence + 'static>(divergence: L) -> Token {
    Box::new(Box::new(divergence) as Box<dyn TokenDivergence>)
}

/// The token divergence inside `token`, as [`box_divergence`] boxed it.
pub(crate) fn unbox_divergence(
    token: Token,
    at: &str,
) -> Result<Box<dyn TokenDivergence>, DistillError> {
    token
        .downcast::<Box<dyn TokenDivergence>>()
        .map(|b| *b)
        .map_err(|_| spec_error(at, "not a token divergence"))
}

impl Loss for Box<dyn TokenDivergence> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        (**self).forward(input)
    }
}

impl TokenDivergence for Box<dyn TokenDivergence> {
    fn token_kernel(&self) -> Option<TokenKernel> {
        (**self).token_kernel()
    }
    fn aligns_vocabulary(&self) -> bool {
        (**self).aligns_vocabulary()
    }
}

impl<L: TokenDivergence> TokenDivergence for Named<L> {
    fn token_kernel(&self) -> Option<TokenKernel> {
        self.inner().token_kernel()
    }
    fn aligns_vocabulary(&self) -> bool {
        self.inner().aligns_vocabulary()
    }
}

/// The temperature, the `T²` switch and the reduction every token divergence has.
#[derive(Debug, Clone, Copy)]
pub(super) struct Softening {
    temperature: f64,
    t_squared: bool,
    reduction: TokenReduction,
}

impl Softening {
    /// Validates the shared settings of the objective `name`.
    pub fn new(
        name: &str,
        temperature: f64,
        t_squared: bool,
        reduction: TokenReduction,
    ) -> Result<Self, DistillError> {
        reduction.check(name)?;
        Ok(Self {
            temperature: check_temperature(temperature)?,
            t_squared,
            reduction,
        })
    }

    /// The fused kernel of `divergence` at these settings, for the lm-head path: only
    /// when the per-token values are not reduced (`TokenReduction::None`).
    pub fn kernel(&self, divergence: Divergence) -> Option<TokenKernel> {
        (self.reduction == TokenReduction::None).then(|| TokenKernel {
            divergence,
            inv_t: 1.0 / self.temperature,
            factor: match self.t_squared {
                true => self.temperature * self.temperature,
                false => 1.0,
            },
        })
    }

    /// Checks the input, replaces the rows that do not count by zeros (constants: nothing
    /// in them reaches the loss or the gradients), divides both logits by the temperature,
    /// applies `per_token` (`[N, V]` student and teacher → `[N]`) and reduces.
    pub fn forward(
        &self,
        name: &str,
        bound: f64,
        input: &DistillInput,
        per_token: impl Fn(Tensor<2>, Tensor<2>) -> Tensor<1>,
    ) -> Result<LossOutput, DistillError> {
        let input = input.of(name).masked();
        let (s, t) = input.logits()?;
        let [n, v] = s.dims();
        let mask = input.mask(n)?;
        // labels (when given) must be tokens of the vocabulary or the ignore index
        input.targets_if_any(n, v)?;
        let (s, t) = (
            uncounted(s, mask.as_ref(), 0.0),
            uncounted(t, mask.as_ref(), 0.0),
        );
        let temperature = Temperature::Fixed(self.temperature);
        let rows = per_token(temperature.scale(s.clone()), temperature.scale(t.clone()));
        let total = self.reduction.apply(rows, mask, v);
        let out = LossOutput::single(
            name,
            match self.t_squared {
                true => temperature.times_squared(total),
                false => total,
            },
        );
        input.settle_logits(bound, out, &s, &t)
    }
}

impl TokenReduction {
    /// Checks the reduction of the objective `objective`: a `DivideBy` count must be positive.
    pub(crate) fn check(self, objective: &str) -> Result<Self, DistillError> {
        if let TokenReduction::DivideBy(n) = self {
            check_positive(objective, "reduction (Global count)", n)?;
        }
        Ok(self)
    }

    /// Reduces per-token values `[N]` (each summed over `vocab` entries) over the rows `mask`
    /// admits (all when `None`); masked rows contribute exactly 0.
    pub fn apply(self, rows: Tensor<1>, mask: Option<Tensor<1, Bool>>, vocab: usize) -> Tensor<1> {
        reduce(rows, mask, vocab, self)
    }
}

fn reduce(
    rows: Tensor<1>,
    mask: Option<Tensor<1, Bool>>,
    vocab: usize,
    reduction: TokenReduction,
) -> Tensor<1> {
    let n = rows.dims()[0];
    let factor = (reduction != TokenReduction::None)
        .then(|| reduction.factor(mask.as_ref(), n, vocab, &rows.device(), rows.dtype()));
    let rows = match mask {
        Some(m) => rows.mask_fill(m.bool_not(), 0.0),
        None => rows,
    };
    match factor {
        Some(f) => rows.sum() * f,
        None => rows,
    }
}

impl TokenReduction {
    /// The factor `[1]` that turns the sum of `rows` per-token values (each over `vocab`
    /// entries) into the total: `1/max(k, 1)` for `Mean`, `1/(max(k, 1)·vocab)` for
    /// `ElementMean`, `1/n` for `DivideBy(n)`, 1 for `Sum` and `None`, where `k` counts the
    /// tokens `mask` admits (all when `None`) — a tensor, so nothing is read back.
    pub(super) fn factor(
        self,
        mask: Option<&Tensor<1, Bool>>,
        rows: usize,
        vocab: usize,
        device: &Device,
        dtype: DType,
    ) -> Tensor<1> {
        let count = match mask {
            Some(m) => m.clone().float().cast(dtype).sum(),
            None => Tensor::<1>::zeros([1], (device, dtype)) + rows as f64,
        };
        match self {
            TokenReduction::TokenMean => count.clamp_min(1.0).recip(),
            TokenReduction::ElementMean => (count.clamp_min(1.0) * vocab as f64).recip(),
            TokenReduction::DivideBy(total) => count.zeros_like() + 1.0 / total,
            TokenReduction::Sum | TokenReduction::None => count.zeros_like() + 1.0,
        }
    }
}

/// The token runners' shared parts (feature `golden`).
#[cfg(feature = "golden")]
pub(super) mod golden {
    use super::TokenReduction;
    use crate::golden::exact::PerToken;
    use crate::golden::*;

    /// torchtune's losses, plain and chunked (the chunks change nothing but the order of the
    /// sums): the objective `build` makes at torchtune's reduction (the mean over the valid
    /// tokens, `normalize`, the default; or their sum), no temperature.
    pub fn torchtune_loss(
        case: &Case,
        build: impl Fn(TokenReduction) -> Result<Box<dyn Loss>, DistillError>,
        divergence: PerToken,
    ) -> Result<(), String> {
        let (reduction, divide): (_, fn(usize) -> f64) =
            match case.params["normalize"].as_bool().unwrap_or(true) {
                true => (TokenReduction::TokenMean, per_valid),
                false => (TokenReduction::Sum, |_| 1.0),
            };
        token_case(
            case,
            TokenCheck {
                loss: build(reduction).map_err(e)?,
                divergence,
                temperature: 1.0,
                t_squared: false,
                divide: &divide,
            },
        )
    }

    /// DistillKit's reduction: the sum over the masked tokens over their number, or over
    /// `num_items_in_batch` where the case gives it.
    pub fn distillkit_reduction(case: &Case) -> TokenReduction {
        match case.opt("num_items_in_batch") {
            Some(n) => TokenReduction::DivideBy(n),
            None => TokenReduction::TokenMean,
        }
    }

    /// DistillKit's dense losses (`T²`, [`distillkit_reduction`], the objective `build` makes
    /// at the case's temperature and with that reduction); a sparse signal goes to `TopK`'s
    /// runner.
    pub fn distillkit_dense(
        case: &Case,
        build: impl Fn(f64, TokenReduction) -> Result<Box<dyn Loss>, DistillError>,
        divergence: PerToken,
    ) -> Result<(), String> {
        if case.params["signal"].as_str() == Some("sparse") {
            return super::super::top_k::golden::distillkit_sparse(case);
        }
        let temperature = case.param("temperature")?;
        let reduction = distillkit_reduction(case);
        let divide = move |valid: usize| match reduction {
            TokenReduction::DivideBy(n) => n,
            _ => per_valid(valid),
        };
        token_case(
            case,
            TokenCheck {
                loss: build(temperature, reduction).map_err(e)?,
                divergence,
                temperature,
                t_squared: true,
                divide: &divide,
            },
        )
    }

    /// Liger's pure-torch test references: per-element values of the inputs `names` given
    /// directly (log-probabilities or probabilities; gradients in those coordinates), reduced
    /// with [`TokenReduction::apply`].
    pub fn liger_elements(
        case: &Case,
        (s_name, t_name): (&str, &str),
        elements: impl Fn(Tensor<2>, Tensor<2>) -> Result<Tensor<2>, String>,
    ) -> Result<(), String> {
        let (s, _, v) = token_leaf(case, s_name)?;
        let (t, _, _) = token_leaf(case, t_name)?;
        let elements = elements(s.clone(), t.clone())?;
        let reduction = match case.params["reduction"].as_str() {
            None | Some("batchmean") => TokenReduction::TokenMean,
            Some("mean") => TokenReduction::ElementMean,
            Some("sum") => TokenReduction::Sum,
            Some(_) => TokenReduction::None,
        };
        let mask = token_mask(case)?.map(|m| bools(&m));
        let total = reduction.apply(elements.sum_dim(1).squeeze_dim(1), mask, v);
        if total.dims()[0] == 1 {
            case.expect_loss(values(total.clone())[0], None)?;
        } else {
            let want = case.loss.as_deref().ok_or("no loss")?;
            let per_token: Vec<f64> = want.chunks(v).map(|r| r.iter().sum()).collect();
            let (rel, abs) = case.tolerance();
            close("per-row loss", &values(total.clone()), &per_token, rel, abs)?;
        }
        let grads = total.sum().backward();
        case.expect_grad(s_name, s.grad(&grads).map(values), None)?;
        case.expect_grad(t_name, t.grad(&grads).map(values), None)
    }
}
