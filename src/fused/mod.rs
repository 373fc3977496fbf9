//! Fused KD, DKD and DCKD (and, per token, forward KL and JSD): forward and analytic backward
//! in a few passes over the logits.
//!
//! [`Kd`](crate::logit::Kd), [`Dkd`](crate::logit::Dkd), [`Dckd`](crate::logit::Dckd),
//! [`ForwardKl`](crate::token::ForwardKl) and [`Jsd`](crate::token::Jsd) take this path by
//! default (their configs' `fused` switch) whenever the temperature is fixed, the logits are
//! `f32` or `f64` and the device is one of:
//!
//! | backend | fused path |
//! |---|---|
//! | flex (feature `flex`, on by default) | CPU kernels on flex's own buffers, no copies |
//! | ndarray (feature `ndarray`) | the same kernels, reading its arrays in place |
//! | Cube: wgpu, cuda (features `wgpu`, `cuda`, through `cube`) | CubeCL kernels, one cube a row, lazy under burn's fusion |
//! | any of them under `.autodiff()` | the same, with the custom backward below |
//!
//! Everything else (libtorch, a learned CTKD temperature, half-precision logits that were not
//! upcast) runs the composed tensor-op version, which stays the reference the fused one is
//! tested against. [`supported`] tells which path a device gets. The lm-head path's chunk ops
//! (`FusedLinear`) are CPU kernels only: on a Cube device it runs the composed chunk graph.
//!
//! Under fusion (on in burn's default features, and turned on by `cube`), a row op is one
//! opaque custom operation: the fusion stream records it with its output layout (the
//! `#[fusion(meta = …)]` of each method of `RowOps`), flushes the fused element-wise work
//! queued before it, and runs the CubeCL kernel when the graph executes; the backward pass's
//! row scaling is the trait's default body, plain fusion ops, so it fuses with what follows.
//!
//! ## What a fused op computes
//! Per row, with `zₛ = s/T`, `zₜ = t/T`, in three passes over an L1-resident row (maxima;
//! exponentials and sums; outputs), with a vectorised `exp` (a degree-6 polynomial, AVX2 + FMA
//! when the CPU has them, 8 lanes of SSE2 otherwise):
//! - KD: `KL(pₜ ‖ pₛ) = T⁻¹ Σⱼ pₜⱼ ((tⱼ − mₜ) − (sⱼ − mₛ)) + log Σₛ − log Σₜ`, where `m` are the
//!   row maxima and `Σ` the sums of the shifted exponentials (the maxima cancel analytically, so
//!   logits of magnitude 1e4 lose nothing), and the gradient planes
//!   `∂/∂s = (pₛ − pₜ)/T`, `∂/∂t = pₜ ⊙ (log pₜ − log pₛ − KL)/T`.
//! - DKD/DCKD: the same over the non-target classes (NCKD) and the binary split
//!   `b = [p_y, 1 − p_y]` (TCKD) from two log-sum-exps; the op returns `α·TCKD + β·NCKD`
//!   (differentiable, one plane per input) and the two parts as values for logging.
//! - JSD(β), `0 < β < 1`: `β·KL(p_t ‖ m) + (1 − β)·KL(p_s ‖ m)` with `m = (1 − β)·p_s + β·p_t`,
//!   the log-probabilities from the shifted logits and `log m` from the mixture (one `ln` an
//!   entry), and the planes `(1 − β)·p_s ⊙ (log p_s − log m − KL(p_s ‖ m))/T` and
//!   `β·p_t ⊙ (log p_t − log m − KL(p_t ‖ m))/T`. β = 0 and 1 are KD's kernel.
//!
//! The forward keeps a plane only for an input that is tracked (a frozen teacher costs
//! nothing), and the backward multiplies the plane by the incoming per-sample gradient, in
//! place on flex. Extra memory of a forward + backward: one `[N, C]` plane per tracked input,
//! which becomes its gradient (1× the logits with a frozen teacher).

mod cpu;
#[cfg(feature = "cube")]
mod cube;
mod ops;

use burn::backend::Dispatch;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

pub use cpu::{exp_in_place, set_threads};
use ops::{FusedOps, RowOps};

pub(crate) use crate::math::JointTarget as Joint;

/// A per-token divergence that a fused kernel computes, as a token objective declares it
/// ([`TokenDivergence::token_kernel`](crate::token::TokenDivergence::token_kernel)): the
/// lm-head path ([`FusedLinear`](crate::token::FusedLinear)) then runs the kernel on each chunk
/// of logits directly — no autodiff graph per chunk, the gradient written over the chunk's
/// logits.
#[derive(Debug, Clone, Copy)]
pub struct TokenKernel {
    pub(crate) divergence: Divergence,
    /// `1/T`.
    pub(crate) inv_t: f64,
    /// What the per-token values are multiplied by (`T²` or 1).
    pub(crate) factor: f64,
}

/// The per-sample divergence a fused row op computes (what a [`PerToken`](crate::token::PerToken)
/// divergence names as its kernel).
#[derive(Debug, Clone, Copy)]
pub enum Divergence {
    /// KD's `KL(p_t ‖ p_s)`.
    Kl,
    /// The reverse `KL(p_s ‖ p_t)` (KD's kernel with the roles swapped).
    ReverseKl,
    /// The generalized JSD `β·KL(p_t ‖ m) + (1 − β)·KL(p_s ‖ m)`, `m = (1 − β)·p_s + β·p_t`,
    /// `0 < β < 1`.
    Jsd(f64),
}

/// Whether the fused kernels serve tensors on `device` (otherwise the objectives run their
/// composed tensor-op version): the CPU backends, and with feature `cube` (implied by `wgpu`
/// and `cuda`) burn's Cube backend.
pub fn supported(device: &Device) -> bool {
    kernels(device).is_some()
}

/// Which kernels a device's backend has.
#[derive(PartialEq)]
enum Kernels {
    /// flex, ndarray: every fused op.
    Cpu,
    /// burn's Cube backend: the row ops.
    #[cfg(feature = "cube")]
    Cube,
}

fn kernels(device: &Device) -> Option<Kernels> {
    use burn::backend::DispatchDevice as D;
    fn walk(device: &D) -> Option<Kernels> {
        match device {
            #[cfg(feature = "flex")]
            D::Flex(_) => Some(Kernels::Cpu),
            #[cfg(feature = "ndarray")]
            D::NdArray(_) => Some(Kernels::Cpu),
            #[cfg(feature = "cube")]
            D::Cube(_) => Some(Kernels::Cube),
            D::Autodiff(inner) => walk(inner),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
    walk(device.as_dispatch())
}

/// Whether `device` is a CPU backend (every fused op, the lm-head path's included).
fn cpu(device: &Device) -> bool {
    kernels(device) == Some(Kernels::Cpu)
}

/// Whether tensors share one float type the kernels compute in (f32 or f64).
fn kernel_floats(tensors: &[&Tensor<2>]) -> bool {
    let dtype = tensors[0].dtype();
    matches!(dtype, DType::F32 | DType::F64) && tensors.iter().all(|t| t.dtype() == dtype)
}

/// Whether tensors of these float types on `device` can take a CPU op (same type, f32 or
/// f64, a CPU backend): the lm-head path's ops.
pub(crate) fn usable_all(tensors: &[&Tensor<2>]) -> bool {
    kernel_floats(tensors) && cpu(&tensors[0].device())
}

/// Zeros of `shape` in `dtype` on `device`. On the fused backends they are built from one
/// zeroed typed vector: flex's own `zeros` (like its matmul outputs) holds its buffer twice for a moment —
/// a byte vector, then the aligned copy `Bytes::from_bytes_vec` makes of it — which for an
/// accumulator the size of an lm-head is the peak of the whole lm-head path.
pub(crate) fn zeros<const D: usize>(shape: [usize; D], device: &Device, dtype: DType) -> Tensor<D> {
    let n = shape.iter().product();
    let data = match dtype {
        DType::F32 => TensorData::new(vec![0f32; n], shape),
        DType::F64 => TensorData::new(vec![0f64; n], shape),
        _ => return Tensor::zeros(shape, (device, dtype)),
    };
    match cpu(device) {
        true => Tensor::from_data(data, (device, dtype)),
        false => Tensor::zeros(shape, (device, dtype)),
    }
}

/// `acc + aᵀ·b` (`acc` `[M, N]`, `a` `[K, M]`, `b` `[K, N]`; all constants): on the fused
/// backends written into `acc` by gemm (nothing the size of `acc` is allocated when it is
/// uniquely owned), elsewhere the composed `acc + aᵀ·b`.
pub(crate) fn add_product(acc: Tensor<2>, a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    if !usable_all(&[&acc, &a, &b]) {
        return acc + a.transpose().matmul(b);
    }
    Tensor::from_dispatch(Dispatch::fused_add_product(
        acc.into_dispatch(),
        a.into_dispatch(),
        b.into_dispatch(),
    ))
}

/// `h·w + b` (`[M, N]`; `h` `[M, K]`, `w` `[K, N]`, `b` `[N]`; constants). On the fused
/// backends gemm writes it into `out` when that is an `[M, N]` buffer (overwritten; nothing new
/// is allocated when it is uniquely owned), else into a new one built from a zeroed vector
/// (see [`zeros`]); elsewhere it is the composed product (`out` unused).
pub(crate) fn logits_into(
    out: Option<Tensor<2>>,
    h: Tensor<2>,
    w: Tensor<2>,
    b: Option<Tensor<1>>,
) -> Tensor<2> {
    if !usable_all(&[&h, &w]) {
        let z = h.matmul(w);
        return match b {
            Some(b) => z + b.unsqueeze_dim(0),
            None => z,
        };
    }
    let shape = [h.dims()[0], w.dims()[1]];
    let (device, dtype) = (h.device(), h.dtype());
    let out = out
        .filter(|o| o.dims() == shape && o.dtype() == dtype)
        .unwrap_or_else(|| zeros(shape, &device, dtype));
    let b = b.unwrap_or_else(|| Tensor::zeros([0], (&device, dtype)));
    Tensor::from_dispatch(Dispatch::fused_logits(
        out.into_dispatch(),
        h.into_dispatch(),
        w.into_dispatch(),
        b.into_dispatch(),
    ))
}

/// `Σ x ⊙ g` (`[1]`; `g` a constant of `x`'s shape), whose gradient with respect to `x` is
/// `g`: on the fused backends `g` itself becomes that gradient (scaled in place), elsewhere
/// the composed [`dot`] (whose backward allocates a new one).
pub(crate) fn handover(x: Tensor<2>, g: Tensor<2>) -> Tensor<1> {
    if !usable_all(&[&x, &g]) {
        return dot(x, g);
    }
    Tensor::from_dispatch(Dispatch::fused_handover(
        x.into_dispatch(),
        g.into_dispatch(),
    ))
}

/// `Σ x ⊙ g` as one `[1, n]·[n, 1]` product: no `x ⊙ g` temporary the size of `x`.
pub(crate) fn dot(x: Tensor<2>, g: Tensor<2>) -> Tensor<1> {
    let n = x.shape().num_elements();
    x.reshape([1, n]).matmul(g.reshape([n, 1])).reshape([1])
}

/// Whether a pair of logits can take a row op: rows to compute, one float type (f32 or f64;
/// the objectives upcast half-precision logits to f32 first) and a backend with a kernel.
fn usable(student: &Tensor<2>, teacher: &Tensor<2>) -> bool {
    student.dims()[0] > 0 && kernel_floats(&[student, teacher]) && supported(&student.device())
}

/// What one [`token_step`] computes: the kernel, and the weights of its divergence and of the
/// hard-label cross-entropy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenStep {
    pub(crate) kernel: TokenKernel,
    pub(crate) soft: f64,
    pub(crate) hard: f64,
}

/// One chunk of the lm-head path through a fused kernel (the logits `f32` or `f64` on a fused
/// backend: [`usable_all`]): per-row totals `wᵢ·(soft·factor·D(sᵢ, tᵢ) + hard·CE(sᵢ, yᵢ))`,
/// `[c]`, and their gradient w.r.t. the student logits `[c, V]`, written over `student` where
/// it is uniquely owned. Rows of weight 0 give 0 and a zero gradient. `targets` (in range) are
/// read when `hard ≠ 0`. All inputs are constants; so are the outputs.
pub(crate) fn token_step(
    student: Tensor<2>,
    teacher: &Tensor<2>,
    weights: Tensor<1>,
    targets: Tensor<1, Int>,
    step: TokenStep,
) -> (Tensor<1>, Tensor<2>) {
    let (rows, grad) = Dispatch::fused_token_step(
        student.into_dispatch(),
        teacher.clone().into_dispatch(),
        weights.into_dispatch(),
        targets.into_dispatch(),
        step,
    );
    (Tensor::from_dispatch(rows), Tensor::from_dispatch(grad))
}

/// `log_softmax(z / T)` `[N, V]` gathered at `ids` `[N, K]` (each in range), through the
/// fused op — one pass over each row, no `[N, V]` plane in the forward pass; differentiable
/// in `z` — or `None` where it does not apply (a backend without kernels, a float type other
/// than f32 and f64).
pub(crate) fn gather_log_softmax(
    z: &Tensor<2>,
    ids: &Tensor<2, Int>,
    temperature: f64,
) -> Option<Tensor<2>> {
    if !(kernel_floats(&[z]) && supported(&z.device())) {
        return None;
    }
    let (out, _) = Dispatch::fused_gather_log_softmax(
        z.clone().into_dispatch(),
        ids.clone().into_dispatch(),
        1.0 / temperature,
    );
    Some(Tensor::from_dispatch(out))
}

/// Per-sample `KL(softmax(t/T) ‖ softmax(s/T))`, `[N]`, through the fused op, or `None` where
/// it does not apply.
pub(crate) fn kd_rows(
    student: &Tensor<2>,
    teacher: &Tensor<2>,
    temperature: f64,
) -> Option<Tensor<1>> {
    rows(student, teacher, temperature, Divergence::Kl)
}

/// Per-sample generalized JSD(β) of `softmax(s/T)` and `softmax(t/T)`, `[N]`, in TRL's and
/// Liger's convention (β = 0: `KL(p_t ‖ p_s)`, β = 1: `KL(p_s ‖ p_t)`, both KD's kernel),
/// through the fused op, or `None` where it does not apply.
pub(crate) fn jsd_rows(
    student: &Tensor<2>,
    teacher: &Tensor<2>,
    temperature: f64,
    beta: f64,
) -> Option<Tensor<1>> {
    match beta {
        0.0 => rows(student, teacher, temperature, Divergence::Kl),
        1.0 => rows(student, teacher, temperature, Divergence::ReverseKl),
        b => rows(student, teacher, temperature, Divergence::Jsd(b)),
    }
}

fn rows(
    student: &Tensor<2>,
    teacher: &Tensor<2>,
    temperature: f64,
    divergence: Divergence,
) -> Option<Tensor<1>> {
    if !usable(student, teacher) {
        return None;
    }
    let (rows, _, _) = Dispatch::fused_kd(
        student.clone().into_dispatch(),
        teacher.clone().into_dispatch(),
        1.0 / temperature,
        divergence,
        false,
        false,
    );
    Some(Tensor::from_dispatch(rows))
}

/// Per-sample `α·TCKD + β·NCKD` of DKD (DCKD through `joint`), `[N]`, and its parts
/// `(TCKD, NCKD)`, `[N, 2]`, through the fused op, or `None` where it does not apply. Targets
/// must be in range. The sum is differentiable (its backward is one pass over a kept plane);
/// the parts are values, for logging.
pub(crate) fn dkd_rows(
    student: &Tensor<2>,
    teacher: &Tensor<2>,
    targets: &Tensor<1, Int>,
    temperature: f64,
    joint: Joint,
    [alpha, beta]: [f64; 2],
) -> Option<(Tensor<1>, Tensor<2>)> {
    if !usable(student, teacher) {
        return None;
    }
    let (total, parts, _, _) = Dispatch::fused_dkd(
        student.clone().into_dispatch(),
        teacher.clone().into_dispatch(),
        targets.clone().into_dispatch(),
        1.0 / temperature,
        joint,
        alpha,
        beta,
        false,
        false,
    );
    Some((Tensor::from_dispatch(total), Tensor::from_dispatch(parts)))
}
