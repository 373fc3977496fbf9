//! Token distillation through the lm-head, in chunks: the `[N, V]` logits never exist.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use std::sync::Arc;

use burn::config::Config;
use burn::tensor::{Bool, DType, FloatDType, Int, Tensor};

use super::tokens::{TokenDivergence, TokenReduction, uncounted};
use crate::check::check_non_negative;
use crate::cross_entropy::cross_entropy_per_sample;
use crate::error::DistillError;
use crate::fused;
use crate::input::{DistillInput, Extra};
use crate::loss::{Loss, LossOutput};

/// One model's last hidden states and its lm-head: `logits = hidden · weight + bias`.
#[derive(Debug, Clone)]
pub struct LmHead {
    /// The last hidden states `[N, H]`, one row per token.
    pub hidden: Tensor<2>,
    /// The lm-head weight in burn's `Linear` layout `[H, V]`.
    pub weight: Tensor<2>,
    /// The lm-head bias `[V]`, if any.
    pub bias: Option<Tensor<1>>,
    /// What the model does to the head's output before its softmax.
    pub transform: LogitTransform,
}

/// What a model does to its lm-head's output `z` before the softmax: `z·scale` (Cohere's and
/// Granite's `logit_scale`), then `cap·tanh(z / cap)` (Gemma-2's final logit soft-capping).
/// [`FusedLinear`] applies it chunk by chunk, inside each chunk's graph (the gradients go
/// through it), so the result equals the dense objective on the transformed logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogitTransform {
    /// The factor on the logits (> 0; 1: none).
    pub scale: f64,
    /// The soft cap (> 0), if any.
    pub soft_cap: Option<f64>,
}

impl LogitTransform {
    /// No change.
    pub const IDENTITY: Self = Self {
        scale: 1.0,
        soft_cap: None,
    };

    /// `z` transformed.
    pub fn apply(&self, z: Tensor<2>) -> Tensor<2> {
        let z = match self.scale {
            1.0 => z,
            s => z * s,
        };
        match self.soft_cap {
            Some(cap) => (z * (1.0 / cap)).tanh() * cap,
            None => z,
        }
    }

    fn check(&self, side: &str) -> Result<(), DistillError> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.scale) || self.soft_cap.is_some_and(|c| !positive(c)) {
            return Err(DistillError::config(
                FusedLinear::<()>::NAME,
                &format!("{side} lm-head's logit transform"),
                format!("{self:?}"),
                "the scale and the soft cap must be finite and positive",
            ));
        }
        Ok(())
    }
}

impl LmHead {
    /// Hidden states `[N, H]` and an lm-head in burn's layout (`weight` `[H, V]`, as
    /// `Linear::weight`).
    pub fn new(hidden: Tensor<2>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Self {
            hidden,
            weight,
            bias,
            transform: LogitTransform::IDENTITY,
        }
    }

    /// With the model's logit scale (`z·scale` before the softmax).
    pub fn with_logit_scale(mut self, scale: f64) -> Self {
        self.transform.scale = scale;
        self
    }

    /// With the model's final logit soft cap (`cap·tanh(z / cap)` before the softmax).
    pub fn with_soft_cap(mut self, cap: f64) -> Self {
        self.transform.soft_cap = Some(cap);
        self
    }

    /// Hidden states and an lm-head in PyTorch's layout (`weight` `[V, H]`).
    pub fn torch(hidden: Tensor<2>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Self::new(hidden, weight.transpose(), bias)
    }

    /// The logits of rows `lo..lo + len`, `[len, V]`, outside the autodiff graph, written into
    /// `out` where it is a buffer of that shape (see [`fused::logits_into`]).
    fn logits(&self, out: Option<Tensor<2>>, lo: usize, len: usize) -> Tensor<2> {
        let bias = self.bias.clone().map(constant);
        constant(fused::logits_into(
            out,
            self.rows(lo, len),
            constant(self.weight.clone()),
            bias,
        ))
    }

    /// Hidden states `lo..lo + len` as constants.
    fn rows(&self, lo: usize, len: usize) -> Tensor<2> {
        constant(self.hidden.clone().narrow(0, lo, len))
    }

    fn tracked(&self) -> bool {
        self.hidden.is_require_grad()
            || self.weight.is_require_grad()
            || self.bias.as_ref().is_some_and(|b| b.is_require_grad())
    }
}

/// A head's gradients, accumulated chunk by chunk: `dh = g·Wᵀ` per chunk, `dW += hᵀ·g`,
/// `db += Σ g` (the latter two in place, by gemm on the fused backends).
struct HeadGrads {
    gh: Vec<Tensor<2>>,
    gw: Tensor<2>,
    /// `[1, V]`, when the head has a bias.
    gb: Option<Tensor<2>>,
    /// The weight, transposed once, as a constant.
    w_t: Tensor<2>,
}

impl HeadGrads {
    fn new(head: &LmHead) -> Self {
        let (device, dtype) = (head.weight.device(), head.weight.dtype());
        let v = head.weight.dims()[1];
        Self {
            gh: Vec::new(),
            gw: fused::zeros(head.weight.dims(), &device, dtype),
            gb: head
                .bias
                .as_ref()
                .map(|_| fused::zeros([1, v], &device, dtype)),
            w_t: constant(head.weight.clone()).transpose(),
        }
    }

    /// Adds the gradient `g` `[len, V]` of the logits of rows `lo..lo + len`.
    fn add(mut self, head: &LmHead, lo: usize, len: usize, g: Tensor<2>) -> Self {
        self.gh.push(g.clone().matmul(self.w_t.clone()));
        self.gb = self.gb.map(|gb| {
            let ones = Tensor::<2>::ones([len, 1], (&g.device(), g.dtype()));
            fused::add_product(gb, ones, g.clone())
        });
        self.gw = fused::add_product(self.gw, head.rows(lo, len), g);
        self
    }

    /// `Σ ⟨x, g⟩` over the head's hidden states, weight and bias: a scalar whose gradients
    /// are the accumulated ones.
    fn surrogate(self, head: &LmHead) -> Tensor<1> {
        let s = fused::dot(head.hidden.clone(), Tensor::cat(self.gh, 0))
            + fused::handover(head.weight.clone(), self.gw);
        match (&head.bias, self.gb) {
            (Some(b), Some(gb)) => s + (b.clone() * gb.squeeze_dim(0)).sum(),
            _ => s,
        }
    }
}

/// `t` outside the autodiff graph and not requiring a gradient: burn's `detach` keeps
/// `require_grad`, and anything computed from a detached tracked leaf would be tracked again
/// (here: every chunk's `[H, V]` weight gradient would stay in a graph until the end).
fn constant<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    t.detach().set_require_grad(false)
}

/// The teacher's side: its logits, or its own hidden states and lm-head.
#[allow(clippy::large_enum_variant)] // one per input, never stored in bulk
#[derive(Debug, Clone)]
pub enum TeacherHead {
    /// The teacher's logits `[N, V]` (computed elsewhere, or cached).
    Logits(Tensor<2>),
    /// The teacher's last hidden states and lm-head: its logits are formed chunk by chunk too.
    Head(LmHead),
    /// A sparse teacher: its top-k token ids and log-probabilities `[N, k]` (a top-k cache),
    /// which the wrapped objective reads as [`DistillInput::sparse_teacher`]
    /// (e.g. [`TopK`](super::TopK) with its tail bucket); never tracked.
    TopK {
        /// Token ids `[N, k]`.
        ids: Tensor<2, Int>,
        /// Their log-probabilities `[N, k]`.
        log_probs: Tensor<2>,
    },
}

/// One chunk's teacher, as the wrapped objective reads it.
#[allow(clippy::large_enum_variant)] // one a chunk, moved, never stored in bulk
#[derive(Clone)]
enum ChunkTeacher {
    Logits(Tensor<2>),
    TopK(Tensor<2, Int>, Tensor<2>),
}

/// What a [`FusedLinear`] objective reads: the student's and the teacher's hidden states and
/// lm-heads, carried by the input as an [`Extra`] (`DistillInput::with(LmHeads { … })`).
#[derive(Debug, Clone)]
pub struct LmHeads {
    /// The student's hidden states and lm-head.
    pub student: LmHead,
    /// The teacher's logits or hidden states and lm-head.
    pub teacher: TeacherHead,
}

impl Extra for LmHeads {
    fn select_rows(&self, rows: &Tensor<1, Int>) -> Option<Arc<dyn Extra>> {
        let pick = |h: &LmHead| LmHead {
            hidden: h.hidden.clone().select(0, rows.clone()),
            ..h.clone()
        };
        Some(Arc::new(LmHeads {
            student: pick(&self.student),
            teacher: match &self.teacher {
                TeacherHead::Logits(z) => TeacherHead::Logits(z.clone().select(0, rows.clone())),
                TeacherHead::Head(h) => TeacherHead::Head(pick(h)),
                TeacherHead::TopK { ids, log_probs } => TeacherHead::TopK {
                    ids: ids.clone().select(0, rows.clone()),
                    log_probs: log_probs.clone().select(0, rows.clone()),
                },
            },
        }))
    }
}

/// Configuration of [`FusedLinear`].
#[derive(Config, Debug)]
pub struct FusedLinearConfig {
    /// Tokens per chunk; `None` picks about 4M logits per chunk (`⌈2²² / V⌉` rows). The result
    /// does not depend on it beyond floating-point summation order.
    #[config(default = "None")]
    pub chunk_size: Option<usize>,
    /// How the per-token values become the total (`None` is not available: the fused path
    /// returns one value).
    #[config(default = "TokenReduction::TokenMean")]
    pub reduction: TokenReduction,
    /// Weight of the distillation (soft) part.
    #[config(default = 1.0)]
    pub soft_weight: f64,
    /// Weight of a hard-label cross-entropy on the student's logits (before any temperature),
    /// over the same tokens, in the same pass (Liger's `weight_hard_loss`); it reads the
    /// input's labels.
    #[config(default = 0.0)]
    pub hard_weight: f64,
}

impl FusedLinearConfig {
    /// Wraps `inner`, a token objective built with `TokenReduction::None` (its per-token
    /// values are reduced here, over all chunks).
    pub fn init<L: TokenDivergence>(&self, inner: L) -> Result<FusedLinear<L>, DistillError> {
        if self.reduction == TokenReduction::None {
            return Err(DistillError::config(
                FusedLinear::<()>::NAME,
                "reduction",
                "None",
                "the fused path returns one value: use Mean, ElementMean, Sum or Global",
            ));
        }
        self.reduction.check(FusedLinear::<()>::NAME)?;
        if let Some(c) = self.chunk_size {
            crate::check::check_count(FusedLinear::<()>::NAME, "chunk_size", c, 1)?;
        }
        check_non_negative(FusedLinear::<()>::NAME, "soft_weight", self.soft_weight)?;
        check_non_negative(FusedLinear::<()>::NAME, "hard_weight", self.hard_weight)?;
        Ok(FusedLinear {
            inner,
            config: self.clone(),
        })
    }
}

/// A token objective through the lm-head, chunk by chunk (Liger-Kernel's fused linear losses,
/// on every backend): for each chunk of `c` tokens, the student's logits `h·W + b` (and the
/// teacher's, from its head) are formed `[c, V]`, the wrapped objective and its gradient with
/// respect to those logits are computed, and the gradients of the hidden states, the weight
/// and the bias are accumulated (`dh = g·Wᵀ`, `dW += hᵀ·g`, `db += Σ g`); the chunk's logits
/// are then dropped. Peak extra memory is one chunk's logits and the gradients themselves,
/// never `[N, V]`.
///
/// `L = soft_weight · reduce_tokens inner(z_s, z_t) + hard_weight · reduce_tokens CE(z_s, y)`
///
/// The returned total has the loss as its value and the accumulated gradients as its
/// gradients (in the student's hidden states, weight and bias; in the teacher's too when the
/// input [attaches](DistillInput::attach_teacher) it and they are tracked), so it composes with
/// any other objective and weight. One term, `"fused_linear"`.
///
/// # Shapes
/// - student hidden `[N, H]`, weight `[H, V]`, bias `[V]`; teacher logits `[N, V]` or hidden
///   `[N, Hₜ]`, weight `[Hₜ, V]`; mask or labels `[N]`
#[derive(Debug, Clone)]
pub struct FusedLinear<L> {
    inner: L,
    config: FusedLinearConfig,
}

crate::loss::objective!(FusedLinear<L>, "fused_linear");

/// What a chunk's graph needs of the two heads: their logit transforms, and whether the
/// teacher's gradients are wanted.
#[derive(Debug, Clone, Copy)]
struct Chunked {
    student: LogitTransform,
    teacher: LogitTransform,
    teacher_tracked: bool,
}

impl<L: TokenDivergence> FusedLinear<L> {
    /// One chunk through the wrapped objective and a small autodiff graph: the chunk's
    /// weighted, scaled value and the gradients of the student's (and, when tracked, the
    /// teacher's) logits.
    fn by_graph(
        &self,
        zs: Tensor<2>,
        teacher: ChunkTeacher,
        mask: Option<Tensor<1, Bool>>,
        targets: Option<Tensor<1, Int>>,
        scale: &Tensor<1>,
        heads: Chunked,
    ) -> Result<(Tensor<1>, Tensor<2>, Option<Tensor<2>>), DistillError> {
        let c = &self.config;
        let len = zs.dims()[0];
        // the logits of a chunk are fresh leaves of a small graph that each chunk drops; the
        // heads' logit transforms are part of that graph
        let zs = zs.require_grad();
        let (mut input, zt) = match teacher {
            ChunkTeacher::Logits(zt) => {
                let zt = match heads.teacher_tracked {
                    true => zt.require_grad(),
                    false => zt,
                };
                let input = DistillInput::new(
                    heads.student.apply(zs.clone()),
                    heads.teacher.apply(zt.clone()),
                )
                .attach_teacher();
                (input, Some(zt))
            }
            ChunkTeacher::TopK(ids, log_probs) => {
                let input = DistillInput::student(heads.student.apply(zs.clone()))
                    .sparse_teacher(ids, log_probs);
                (input, None)
            }
        };
        if let Some(m) = mask.clone() {
            input = input.mask(m);
        }
        let rows = self.inner.forward(&input)?.total;
        drop(input);
        if rows.dims() != [len] {
            return Err(DistillError::config(
                Self::NAME,
                "inner",
                self.inner.name(),
                "the wrapped objective must give one value per token (TokenReduction::None)",
            ));
        }
        // half-precision logits give f32 rows (the divergences read them in f32): the chunk's
        // value is summed in the rows' float type
        let dtype = FloatDType::from(rows.dtype());
        let mut part = rows.sum() * c.soft_weight;
        if let Some(y) = targets {
            let ce = cross_entropy_per_sample(heads.student.apply(zs.clone()).cast(dtype), y, 0.0);
            let ce = match mask {
                Some(m) => ce.mask_fill(m.bool_not(), 0.0),
                None => ce,
            };
            part = part + ce.sum().cast(dtype) * c.hard_weight;
        }
        let part = part * scale.clone().cast(dtype);
        let grads = part.backward();
        let grad_of = |z: Tensor<2>| constant(z.grad(&grads).unwrap_or_else(|| z.zeros_like()));
        let gt = zt.filter(|_| heads.teacher_tracked).map(grad_of);
        Ok((constant(part), grad_of(zs), gt))
    }
}

impl<L: TokenDivergence> Loss for FusedLinear<L> {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let checked = input.of(Self::NAME).masked();
        let heads = checked.extra::<LmHeads>("the hidden states and lm-heads (LmHeads)")?;
        let (student, teacher) = (&heads.student, &heads.teacher);
        let [n, hs] = student.hidden.dims();
        let [hw, v] = student.weight.dims();
        if hw != hs || student.bias.as_ref().is_some_and(|b| b.dims() != [v]) {
            return Err(DistillError::ShapeMismatch {
                objective: Self::NAME.into(),
                what: "student lm-head weight [H, V] and bias [V]".into(),
                expected: vec![hs, v, v],
                actual: [
                    student.weight.dims().to_vec(),
                    student.bias.as_ref().map_or(vec![], |b| b.dims().to_vec()),
                ]
                .concat(),
            });
        }
        if let TeacherHead::Head(h) = teacher {
            let ([_, ht], [hw, vt]) = (h.hidden.dims(), h.weight.dims());
            if hw != ht || h.bias.as_ref().is_some_and(|b| b.dims() != [vt]) {
                return Err(DistillError::ShapeMismatch {
                    objective: Self::NAME.into(),
                    what: "teacher lm-head weight [H, V] and bias [V]".into(),
                    expected: vec![ht, vt, vt],
                    actual: [
                        h.weight.dims().to_vec(),
                        h.bias.as_ref().map_or(vec![], |b| b.dims().to_vec()),
                    ]
                    .concat(),
                });
            }
        }
        // one float type per head: the chunk's matmuls take their operands as they are
        let heads = [
            Some(student),
            match teacher {
                TeacherHead::Head(h) => Some(h),
                TeacherHead::Logits(_) | TeacherHead::TopK { .. } => None,
            },
        ];
        for (side, head) in ["student", "teacher"].into_iter().zip(heads) {
            let Some(head) = head else { continue };
            let dtype = head.hidden.dtype();
            let other = [
                Some(head.weight.dtype()),
                head.bias.as_ref().map(|b| b.dtype()),
            ];
            if let Some(found) = other.into_iter().flatten().find(|d| *d != dtype) {
                return Err(DistillError::DtypeMismatch {
                    objective: Self::NAME.into(),
                    what: format!("the {side} lm-head's weight and bias"),
                    expected: format!("{dtype:?} (its hidden states')"),
                    actual: format!("{found:?}"),
                });
            }
        }
        let teacher_rows_vocab = match teacher {
            TeacherHead::Logits(z) => z.dims(),
            TeacherHead::Head(h) => [h.hidden.dims()[0], h.weight.dims()[1]],
            // the ids' range is checked chunk by chunk by the wrapped objective
            TeacherHead::TopK { ids, log_probs } => {
                if ids.dims() != log_probs.dims() {
                    return Err(DistillError::ShapeMismatch {
                        objective: Self::NAME.into(),
                        what: "sparse teacher log-probabilities (its ids' shape)".into(),
                        expected: ids.dims().to_vec(),
                        actual: log_probs.dims().to_vec(),
                    });
                }
                [ids.dims()[0], v]
            }
        };
        // another teacher vocabulary only where the wrapped objective aligns the two
        let [rows, vt] = teacher_rows_vocab;
        if rows != n || (vt != v && !self.inner.aligns_vocabulary()) {
            return Err(DistillError::ShapeMismatch {
                objective: Self::NAME.into(),
                what: "teacher logits (tokens, vocabulary)".into(),
                expected: vec![n, v],
                actual: teacher_rows_vocab.to_vec(),
            });
        }
        for (size, what) in [
            (n, "student hidden states"),
            (hs, "hidden width"),
            (v, "vocabulary"),
        ] {
            if size == 0 {
                return Err(DistillError::EmptyBatch {
                    objective: Self::NAME.into(),
                    what: what.into(),
                });
            }
        }
        let mask = checked.mask(n)?;
        // rows that do not count are zeroed before any product: a NaN or an infinity in an
        // ignored token's hidden state (or teacher logits) would otherwise reach the weight's
        // gradient and the surrogate as 0 · NaN
        let zeroed = |x: &Tensor<2>| uncounted(x.clone(), mask.as_ref(), 0.0);
        let head = |h: &LmHead| LmHead {
            hidden: zeroed(&h.hidden),
            ..h.clone()
        };
        let teacher = match teacher {
            TeacherHead::Head(h) => TeacherHead::Head(head(h)),
            TeacherHead::Logits(z) => TeacherHead::Logits(zeroed(z)),
            top_k => top_k.clone(),
        };
        let student = head(student);
        let (student, teacher) = (&student, &teacher);
        // labels, when given, are tokens of the vocabulary or the ignore index, whether or not
        // the hard-label term reads them (as for the dense token objectives)
        checked.targets_if_any(n, v)?;
        let targets = match c.hard_weight > 0.0 {
            true => Some(checked.targets(n, v)?),
            false => None,
        };
        let attached = input.is_teacher_attached();
        let teacher_tracked = attached
            && match teacher {
                TeacherHead::Logits(z) => z.is_require_grad(),
                TeacherHead::Head(h) => h.tracked(),
                TeacherHead::TopK { .. } => false,
            };
        let chunk = c
            .chunk_size
            .unwrap_or((1usize << 22).div_ceil(v.max(1)))
            .clamp(1, n);
        // a frozen teacher and an objective with a fused kernel: each chunk runs the kernel
        // directly (no graph), its gradient written over the chunk's logits
        let tensors = match teacher {
            TeacherHead::Logits(z) => [&student.hidden, &student.weight, z],
            TeacherHead::Head(h) => [&student.hidden, &student.weight, &h.hidden],
            TeacherHead::TopK { log_probs, .. } => [&student.hidden, &student.weight, log_probs],
        };
        let teacher_transform = match teacher {
            TeacherHead::Head(h) => h.transform,
            TeacherHead::Logits(_) | TeacherHead::TopK { .. } => LogitTransform::IDENTITY,
        };
        student.transform.check("student")?;
        teacher_transform.check("teacher")?;
        let heads = Chunked {
            student: student.transform,
            teacher: teacher_transform,
            teacher_tracked,
        };
        // the kernels read plain logits: a transform goes through the chunk's graph
        let plain =
            heads.student == LogitTransform::IDENTITY && heads.teacher == LogitTransform::IDENTITY;
        let kernel = self
            .inner
            .token_kernel()
            .filter(|_| plain && !teacher_tracked && fused::usable_all(&tensors));

        let (device, dtype) = (student.hidden.device(), student.hidden.dtype());
        // the reduction's factor, known before any chunk (a tensor: no read-back), so every
        // chunk's gradient is scaled while it is small and the accumulators hold the result
        let scale = c.reduction.factor(mask.as_ref(), n, v, &device, dtype);
        let mut grads = HeadGrads::new(student);
        // the teacher's accumulators exist only when its gradients are wanted
        let mut teacher_grads = match teacher {
            TeacherHead::Head(h) if teacher_tracked => Some(HeadGrads::new(h)),
            _ => None,
        };
        let mut teacher_g: Vec<Tensor<2>> = Vec::new();
        // the value is summed in f32 when the hidden states are in a half type (as the
        // divergences read half-precision logits)
        let wide = match dtype {
            DType::F16 | DType::BF16 => FloatDType::F32,
            d => FloatDType::from(d),
        };
        let mut value = Tensor::<1>::zeros([1], &device).cast(wide);
        // two chunk buffers, reused from chunk to chunk: the student's logits become their
        // gradient, which holds the next chunk's logits; the teacher's are rewritten in place
        let (mut spare_s, mut spare_t) = (None, None);
        for lo in (0..n).step_by(chunk) {
            let len = chunk.min(n - lo);
            let zs = student.logits(spare_s.take(), lo, len);
            let zt = match teacher {
                TeacherHead::Logits(z) => {
                    ChunkTeacher::Logits(constant(z.clone().narrow(0, lo, len)))
                }
                TeacherHead::Head(h) => ChunkTeacher::Logits(h.logits(spare_t.take(), lo, len)),
                TeacherHead::TopK { ids, log_probs } => ChunkTeacher::TopK(
                    ids.clone().narrow(0, lo, len),
                    constant(log_probs.clone().narrow(0, lo, len)),
                ),
            };
            let mask = mask.clone().map(|m| m.narrow(0, lo, len));
            let targets = targets.clone().map(|y| y.narrow(0, lo, len));
            let (part, g, gt) = match (kernel, &zt) {
                (Some(kernel), ChunkTeacher::Logits(zt)) => {
                    let weights = match mask {
                        Some(m) => m.float().cast(dtype) * scale.clone(),
                        None => scale.clone().expand([len]),
                    };
                    let targets = targets.unwrap_or_else(|| Tensor::zeros([0], &device));
                    let step = fused::TokenStep {
                        kernel,
                        soft: c.soft_weight,
                        hard: c.hard_weight,
                    };
                    let (rows, g) = fused::token_step(zs, zt, weights, targets, step);
                    (rows.sum(), g, None)
                }
                _ => self.by_graph(zs, zt.clone(), mask, targets, &scale, heads)?,
            };
            value = value + part.cast(wide);
            grads = grads.add(student, lo, len, g.clone());
            spare_s = Some(g);
            if let (TeacherHead::Head(_), ChunkTeacher::Logits(zt)) = (teacher, zt) {
                spare_t = Some(zt);
            }
            match (gt, teacher) {
                (Some(g), TeacherHead::Head(h)) => {
                    teacher_grads = teacher_grads.map(|tg| tg.add(h, lo, len, g));
                }
                (Some(g), TeacherHead::Logits(_)) => teacher_g.push(g),
                _ => {}
            }
        }
        let mut surrogate = grads.surrogate(student);
        match (teacher, teacher_grads) {
            (TeacherHead::Head(h), Some(tg)) => surrogate = surrogate + tg.surrogate(h),
            (TeacherHead::Logits(z), _) if teacher_tracked => {
                surrogate = surrogate + fused::dot(z.clone(), Tensor::cat(teacher_g, 0))
            }
            _ => {}
        }
        // value: the loss; gradient: the accumulated one
        let total = (surrogate.clone() - constant(surrogate)).cast(wide) + value;
        let out = LossOutput::single(Self::NAME, total);
        // the inputs beyond the bound, read only when the total is not finite
        let hidden = match teacher {
            TeacherHead::Head(h) => Some(("the teacher's hidden states", &h.hidden)),
            TeacherHead::Logits(t) => Some(("the teacher logits", t)),
            TeacherHead::TopK { .. } => None,
        };
        let inputs: Vec<(&str, &Tensor<2>)> =
            std::iter::once(("the student's hidden states", &student.hidden))
                .chain(hidden)
                .collect();
        checked.settle(BOUND, out, &inputs)
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e30;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["FusedLinear"],
    paper: "any token objective through the lm-head in chunks, logits never materialised (Liger-Kernel's fused linear losses)",
    doc: "token.md",
    bound: Some(BOUND),
    example: Some(|_| {
        Ok(FusedLinearConfig::new()
            .with_chunk_size(Some(4))
            .init(
                super::ForwardKlConfig::new()
                    .with_reduction(TokenReduction::None)
                    .init()?,
            )?
            .boxed())
    }),
    learnable: None,
    twins: None,
    method: Some(
        crate::registry::method!(token_wrapper FusedLinear<()> = token::FusedLinearConfig()),
    ),
    golden: crate::registry::golden!["liger_fused_linear_jsd" => golden::liger_fused_linear],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::super::tokens::TokenReduction;
    use super::*;
    use crate::golden::*;
    use crate::token::{Aligned, JsdConfig, VocabAlignment};

    /// A Liger fused-linear case's two lm-heads, the student's tracked leaves (input, weight,
    /// bias) and the labels.
    pub(crate) struct LigerHeads {
        pub student: LmHead,
        pub teacher: LmHead,
        pub leaves: (Tensor<2>, Tensor<2>, Option<Tensor<1>>),
        pub labels: Tensor<1, Int>,
        pub ignore: i64,
    }

    pub(crate) fn liger_heads(case: &Case) -> Result<LigerHeads, String> {
        let head = |x: &str,
                    w: &str,
                    b: &str|
         -> Result<(LmHead, Tensor<2>, Tensor<2>, Option<Tensor<1>>), String> {
            let (x, w) = (case.leaf::<2>(x)?, case.leaf::<2>(w)?);
            let b = match case.has(b) {
                true => Some(case.leaf::<1>(b)?),
                false => None,
            };
            Ok((LmHead::torch(x.clone(), w.clone(), b.clone()), x, w, b))
        };
        let (student, x, w, b) = head("student_input", "student_weight", "student_bias")?;
        let (teacher, ..) = head("teacher_input", "teacher_weight", "teacher_bias")?;
        let labels = case
            .input("true_labels")?
            .1
            .iter()
            .map(|&y| y as i64)
            .collect();
        Ok(LigerHeads {
            student,
            teacher,
            leaves: (x, w, b),
            labels: ints(labels),
            ignore: case.opt("ignore_index").unwrap_or(-100.0) as i64,
        })
    }

    /// Checks the gradients of the student's lm-head leaves.
    pub(crate) fn liger_grads(
        case: &Case,
        leaves: &(Tensor<2>, Tensor<2>, Option<Tensor<1>>),
        grads: &Gradients,
    ) -> Result<(), String> {
        let (x, w, b) = leaves;
        case.expect_grad("student_input", x.grad(grads).map(values), None)?;
        case.expect_grad("student_weight", w.grad(grads).map(values), None)?;
        case.expect_grad(
            "student_bias",
            b.as_ref().and_then(|b| b.grad(grads)).map(values),
            None,
        )
    }

    /// Liger's `LigerFusedLinearJSDLoss` (the pure-torch chunked path): JSD(β) at `T` through
    /// both lm-heads plus a hard-label cross-entropy, each a mean over the valid tokens, in
    /// chunks; a smaller student vocabulary padded with logit 0, as Liger does.
    pub(crate) fn liger_fused_linear(case: &Case) -> Result<(), String> {
        let (hard, soft) = (
            case.param("weight_hard_loss")?,
            case.param("weight_soft_loss")?,
        );
        if hard > 0.0 && case.dtype == DType::F64 {
            // the case says: the reference computes its cross-entropy in float32, so only ~1e-7
            // relative accuracy holds for loss and gradients
            case.tolerance.set(Some((1e-6, 1e-9)));
        }
        let jsd = JsdConfig::new()
            .with_beta(case.param("beta")?)
            .with_temperature(case.param("temperature")?)
            .with_reduction(TokenReduction::None)
            .init()
            .map_err(e)?;
        let jsd = Aligned::new(jsd, VocabAlignment::Pad { logit: 0.0 }).map_err(e)?;
        let fused = FusedLinearConfig::new()
            .with_chunk_size(case.opt("chunk_size").map(|c| c as usize))
            .with_soft_weight(soft)
            .with_hard_weight(hard)
            .init(jsd)
            .map_err(e)?;
        let h = liger_heads(case)?;
        let input = DistillInput::features_only()
            .labels(h.labels, h.ignore)
            .with(LmHeads {
                student: h.student,
                teacher: TeacherHead::Head(h.teacher),
            });
        let out = fused.forward(&input).map_err(e)?;
        case.expect_loss(out.value(), None)?;
        let grads = out.total.backward();
        liger_grads(case, &h.leaves, &grads)
    }
}
