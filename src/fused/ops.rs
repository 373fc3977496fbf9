//! The fused ops as a burn backend extension: a forward that returns the per-sample losses
//! and, for each tracked input, the gradient planes of the backward pass; a backward that only
//! weighs those planes by the incoming gradient.
//!
//! flex and ndarray run the CPU kernels on their own buffers (see [`Io`]); the autodiff
//! implementation wraps either.

// burn 0.22 deprecates its ndarray backend, which this crate still serves
#![cfg_attr(feature = "ndarray", allow(deprecated))]
// with no CPU backend compiled in, the CPU bodies and their helpers go unused
#![cfg_attr(
    not(any(feature = "flex", feature = "ndarray")),
    allow(unused_variables, unused_macros, unused_imports, dead_code)
)]

use std::borrow::Cow;

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, ExtensionType, TensorMetadata, backend_extension,
};
use burn::tensor::{DType, Element, TensorData};

use super::cpu::{self, Parts, Real};
use super::{Divergence, Joint, TokenStep};

/// A gradient plane an op returns: kept for a tracked input, dropped for the others (an
/// `Option` that crosses burn's dispatch and fusion boundaries).
#[derive(ExtensionType, Debug)]
#[extension_type(fusion: cfg(feature = "cube"))]
pub enum Plane<B: Backend> {
    /// The plane `[N, C]`.
    Kept(FloatTensor<B>),
    /// Not asked for.
    Dropped,
}

impl<B: Backend> Plane<B> {
    pub(super) fn of(plane: Option<FloatTensor<B>>) -> Self {
        plane.map_or(Plane::Dropped, Plane::Kept)
    }

    fn kept(self) -> Option<FloatTensor<B>> {
        match self {
            Plane::Kept(plane) => Some(plane),
            Plane::Dropped => None,
        }
    }
}

/// The row ops: KD's and DKD's per-sample losses and gradient planes, on every backend with a
/// kernel (the CPU backends, and the Cube backend with feature `cube`). `keep_student` /
/// `keep_teacher` ask for the gradient plane of that input (the autodiff implementation sets
/// them from which inputs are tracked); a plane is `[N, C]`, the gradient of the op's loss
/// rows weighted by 1, and the backward pass ([`fused_combine`](RowOps::fused_combine)) scales
/// its rows by the incoming gradient.
#[backend_extension(
    Autodiff,
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(feature = "cube"),
    Fusion: cfg(feature = "cube")
)]
pub trait RowOps: Backend {
    /// A per-sample divergence's rows `[N]` (KD's `KL(p_t ‖ p_s)` or the generalized JSD)
    /// and planes.
    #[fusion(meta = kd_meta)]
    fn fused_kd(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        inv_t: f64,
        divergence: Divergence,
        keep_student: bool,
        keep_teacher: bool,
    ) -> (FloatTensor<Self>, Plane<Self>, Plane<Self>);

    /// DKD's per-sample `α·TCKD + β·NCKD` `[N]`, its parts `[N, 2]` (values, for logging), and
    /// the planes of the weighted sum.
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = dkd_meta)]
    fn fused_dkd(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        targets: IntTensor<Self>,
        inv_t: f64,
        joint: Joint,
        alpha: f64,
        beta: f64,
        keep_student: bool,
        keep_teacher: bool,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        Plane<Self>,
        Plane<Self>,
    );

    /// `k·z[r, ids[r, i]] − log Σⱼ exp(k·z[r, j])` `[N, K]` (`z` `[N, V]`, `ids` `[N, K]`,
    /// `k = inv_t`), with one pass over each row and no `[N, V]` plane, and each row's softmax
    /// pieces `[N, 2]`. Differentiable in `z`: the backward pass is
    /// [`fused_gather_log_softmax_backward`](Self::fused_gather_log_softmax_backward).
    #[fusion(meta = gather_meta)]
    fn fused_gather_log_softmax(
        z: FloatTensor<Self>,
        ids: IntTensor<Self>,
        inv_t: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The gradient `[N, V]` w.r.t. `z` of `Σ g ⊙ out`, `out` the gathered log-softmax whose
    /// `pieces` the forward pass gave. Not differentiable.
    #[fusion(meta = gather_back_meta)]
    fn fused_gather_log_softmax_backward(
        z: FloatTensor<Self>,
        ids: IntTensor<Self>,
        pieces: FloatTensor<Self>,
        g: FloatTensor<Self>,
        inv_t: f64,
    ) -> FloatTensor<Self>;

    /// The backward pass: the rows of `plane` `[N, C]` times `grad` `[N]` (the CPU backends
    /// scale in place; the others broadcast a product).
    #[fusion(default)]
    fn fused_combine(plane: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let n = grad.shape()[0];
        Self::float_mul(plane, Self::float_reshape(grad, [n, 1].into()))
    }
}

#[cfg(feature = "cube")]
use burn::backend::fusion::custom::TensorSpec;

/// A row op's rows `[N]` and planes (the logits' layout, where kept), for fusion.
#[cfg(feature = "cube")]
fn rows_and_planes(s: &TensorSpec, keep: [bool; 2]) -> (TensorSpec, [PlaneMetadata; 2]) {
    let rows = TensorSpec::new([s.shape[0]].into(), s.dtype);
    let planes = keep.map(|k| match k {
        true => PlaneMetadata::Kept(s.clone()),
        false => PlaneMetadata::Dropped,
    });
    (rows, planes)
}

/// The output layout of [`RowOps::fused_kd`], for fusion.
#[cfg(feature = "cube")]
fn kd_meta(
    s: &TensorSpec,
    _: &TensorSpec,
    _: &f64,
    _: &Divergence,
    keep_s: &bool,
    keep_t: &bool,
) -> (TensorSpec, PlaneMetadata, PlaneMetadata) {
    let (rows, [ps, pt]) = rows_and_planes(s, [*keep_s, *keep_t]);
    (rows, ps, pt)
}

/// The output layout of [`RowOps::fused_dkd`], for fusion.
#[cfg(feature = "cube")]
#[allow(clippy::too_many_arguments)]
fn dkd_meta(
    s: &TensorSpec,
    _: &TensorSpec,
    _: &TensorSpec,
    _: &f64,
    _: &Joint,
    _: &f64,
    _: &f64,
    keep_s: &bool,
    keep_t: &bool,
) -> (TensorSpec, TensorSpec, PlaneMetadata, PlaneMetadata) {
    let (rows, [ps, pt]) = rows_and_planes(s, [*keep_s, *keep_t]);
    let parts = TensorSpec::new([s.shape[0], 2].into(), s.dtype);
    (rows, parts, ps, pt)
}

/// The output layouts of [`RowOps::fused_gather_log_softmax`], for fusion.
#[cfg(feature = "cube")]
fn gather_meta(z: &TensorSpec, ids: &TensorSpec, _: &f64) -> (TensorSpec, TensorSpec) {
    let n = z.shape[0];
    (
        TensorSpec::new([n, ids.shape[1]].into(), z.dtype),
        TensorSpec::new([n, 2].into(), z.dtype),
    )
}

/// The output layout of [`RowOps::fused_gather_log_softmax_backward`], for fusion.
#[cfg(feature = "cube")]
fn gather_back_meta(
    z: &TensorSpec,
    _: &TensorSpec,
    _: &TensorSpec,
    _: &TensorSpec,
    _: &f64,
) -> TensorSpec {
    z.clone()
}

/// The lm-head path's ops, on the CPU backends only (elsewhere the path runs composed ops).
#[backend_extension(Autodiff, Flex: cfg(feature = "flex"), NdArray: cfg(feature = "ndarray"))]
pub trait FusedOps: Backend {
    /// `acc + aᵀ·b` (`acc` `[M, N]`, `a` `[K, M]`, `b` `[K, N]`), written into `acc` where it
    /// is uniquely owned: an accumulation that allocates nothing the size of `acc`. Not
    /// differentiable.
    fn fused_add_product(
        acc: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `h·w + b` (`h` `[M, K]`, `w` `[K, N]`, `b` `[N]` or empty for none) written into `out`
    /// `[M, N]` where it is uniquely owned (its contents are overwritten): logits without a new
    /// buffer. A `w` that is not row-major takes the backend's own matmul. Not
    /// differentiable.
    fn fused_logits(
        out: FloatTensor<Self>,
        h: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// One chunk of the lm-head path (`fused::token_step`): per-row totals `[c]` and, written
    /// over `student` `[c, V]` where it is uniquely owned, their gradient. Not
    /// differentiable.
    fn fused_token_step(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        targets: IntTensor<Self>,
        step: TokenStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// `Σ x ⊙ g` as a `[1]` tensor whose gradient with respect to `x` is `g` itself (times
    /// the incoming gradient, in place): `g` becomes the gradient instead of being copied
    /// into a new one. `g` is taken as a constant.
    fn fused_handover(x: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// How the kernels see a CPU backend's tensors.
trait Io<B: Backend> {
    /// The tensor's elements, borrowed, when they lie row-major in one buffer.
    fn slice<'a, F: Real + Element>(&self, t: &'a FloatTensor<B>) -> Option<&'a [F]>;
    /// The tensor's elements, row-major (borrowed where the layout allows).
    fn floats<'a, F: Real + Element>(&self, t: &'a FloatTensor<B>) -> Cow<'a, [F]>;
    /// A tensor of `shape` holding `v`.
    fn tensor<F: Real + Element>(&self, v: Vec<F>, shape: &[usize]) -> FloatTensor<B>;
    /// Target indices as `usize` (the caller has range-checked them).
    fn indices(&self, targets: IntTensor<B>) -> Vec<usize>;
    /// `t` after `edit` on its elements (row-major), in place where the backend allows.
    fn edit<F: Real + Element>(
        &self,
        t: FloatTensor<B>,
        edit: impl FnOnce(&mut [F]),
    ) -> FloatTensor<B> {
        let mut v = self.floats::<F>(&t).into_owned();
        edit(&mut v);
        self.tensor(v, &t.shape())
    }
}

fn indices(data: TensorData) -> Vec<usize> {
    data.convert::<i64>()
        .try_into_vec::<i64>()
        .expect("integer targets")
        .into_iter()
        .map(|v| v as usize)
        .collect()
}

/// What a fused call computes.
enum Kind<'a> {
    /// KD's KL or the generalized JSD, one value a row.
    Kd(Divergence),
    /// DKD/DCKD: the targets, the joint rule and the weights `(α, β)`.
    Dkd(&'a [usize], Joint, [f64; 2]),
}

/// A fused call's outputs: per-sample losses (KD's rows; DKD's `α·TCKD + β·NCKD`), DKD's parts
/// `[N, 2]`, and the kept planes.
struct Out<B: Backend> {
    rows: FloatTensor<B>,
    parts: Option<FloatTensor<B>>,
    student: Option<FloatTensor<B>>,
    teacher: Option<FloatTensor<B>>,
}

impl<B: Backend> Out<B> {
    /// DKD's outputs as the extension op returns them.
    fn dkd(self) -> (FloatTensor<B>, FloatTensor<B>, Plane<B>, Plane<B>) {
        (
            self.rows,
            self.parts.expect("a DKD call has parts"),
            Plane::of(self.student),
            Plane::of(self.teacher),
        )
    }
}

/// `$op::<B, F>(args)` with `F` the float type of the tensor `$of` (f64, else f32): each CPU op
/// is written once, generic over its float.
macro_rules! in_float {
    ($of:expr, $op:ident::<$b:ty>($($arg:expr),* $(,)?)) => {
        match $of.dtype() {
            DType::F64 => $op::<$b, f64>($($arg),*),
            _ => $op::<$b, f32>($($arg),*),
        }
    };
}

/// One fused call, in the logits' float type.
fn fused_in<B: Backend, F: Real + Element>(
    io: &impl Io<B>,
    s: FloatTensor<B>,
    t: FloatTensor<B>,
    inv_t: f64,
    kind: Kind,
    keep: [bool; 2],
) -> Out<B> {
    let [n, c] = [s.shape()[0], s.shape()[1]];
    let [mut gs, mut gt] = keep.map(|k| vec![F::zero(); if k { n * c } else { 0 }]);
    let (sv, tv) = (io.floats::<F>(&s), io.floats::<F>(&t));
    let per_row = match kind {
        Kind::Kd(_) => 1,
        Kind::Dkd(..) => 2,
    };
    let mut rows = vec![F::zero(); per_row * n];
    let job = cpu::Job {
        s: &sv,
        t: &tv,
        c,
        inv_t,
        rows: &mut rows,
        student: &mut gs,
        teacher: &mut gt,
    };
    let (rows, parts) = match kind {
        Kind::Kd(Divergence::Kl) => {
            cpu::kd(job);
            (rows, None)
        }
        Kind::Kd(Divergence::ReverseKl) => {
            // KD's kernel with the roles (and planes) swapped
            let (student, teacher) = (job.teacher, job.student);
            cpu::kd(cpu::Job {
                s: job.t,
                t: job.s,
                student,
                teacher,
                ..job
            });
            (rows, None)
        }
        Kind::Kd(Divergence::Jsd(beta)) => {
            cpu::jsd(job, beta);
            (rows, None)
        }
        Kind::Dkd(targets, joint, weights) => {
            let weights = weights.map(F::of);
            cpu::dkd(
                job,
                &Parts {
                    targets,
                    joint,
                    weights,
                },
            );
            let total = rows
                .chunks_exact(2)
                .map(|r| weights[0] * r[0] + weights[1] * r[1])
                .collect();
            (total, Some(io.tensor(rows, &[n, 2])))
        }
    };
    let plane = |v: Vec<F>, k: bool| k.then(|| io.tensor(v, &[n, c]));
    Out {
        rows: io.tensor(rows, &[n]),
        parts,
        student: plane(gs, keep[0]),
        teacher: plane(gt, keep[1]),
    }
}

fn combine<B: Backend, F: Real + Element>(
    io: &impl Io<B>,
    p: FloatTensor<B>,
    g: FloatTensor<B>,
) -> FloatTensor<B> {
    let c = p.shape()[1];
    let g = io.floats::<F>(&g);
    io.edit::<F>(p, |p| cpu::combine(p, &g, c))
}

fn add_product<B: Backend, F: Real + Element>(
    io: &impl Io<B>,
    acc: FloatTensor<B>,
    a: FloatTensor<B>,
    b: FloatTensor<B>,
) -> FloatTensor<B> {
    let [k, m, n] = [a.shape()[0], a.shape()[1], b.shape()[1]];
    let (a, b) = (io.floats::<F>(&a), io.floats::<F>(&b));
    io.edit::<F>(acc, |acc| {
        cpu::gemm_into(acc, &a, &b, [m, k, n], true, true)
    })
}

fn logits<B: Backend, F: Real + Element>(
    io: &impl Io<B>,
    out: FloatTensor<B>,
    h: FloatTensor<B>,
    w: FloatTensor<B>,
    b: FloatTensor<B>,
) -> FloatTensor<B> {
    let [m, k, n] = [h.shape()[0], h.shape()[1], w.shape()[1]];
    let Some(wv) = io.slice::<F>(&w) else {
        // a transposed weight (a PyTorch-layout head): the backend's matmul reads it
        let z = B::float_matmul(h, w);
        return match b.shape()[0] {
            0 => z,
            _ => B::float_add(z, B::float_reshape(b, [1, n].into())),
        };
    };
    let (hv, bv) = (io.floats::<F>(&h), io.floats::<F>(&b));
    io.edit::<F>(out, |out| {
        if !bv.is_empty() {
            for row in out.chunks_exact_mut(n) {
                row.copy_from_slice(&bv);
            }
        }
        cpu::gemm_into(out, &hv, wv, [m, k, n], false, !bv.is_empty())
    })
}

fn token_step<B: Backend, F: Real + Element>(
    io: &impl Io<B>,
    s: FloatTensor<B>,
    t: FloatTensor<B>,
    w: FloatTensor<B>,
    targets: IntTensor<B>,
    step: TokenStep,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let [n, c] = [s.shape()[0], s.shape()[1]];
    let (tv, wv) = (io.floats::<F>(&t), io.floats::<F>(&w));
    let y = match step.hard != 0.0 {
        true => io.indices(targets),
        false => Vec::new(),
    };
    let shared = cpu::Step {
        t: &tv,
        c,
        inv_t: step.kernel.inv_t,
        divergence: step.kernel.divergence,
        weights: &wv,
        soft: F::of(step.soft * step.kernel.factor),
        hard: F::of(step.hard),
        targets: &y,
    };
    let mut rows = vec![F::zero(); n];
    let grad = io.edit::<F>(s, |sv| cpu::token_step(&shared, sv, &mut rows));
    (io.tensor(rows, &[n]), grad)
}

/// [`FusedOps::fused_gather_log_softmax`] in the logits' float type.
fn gather_log_softmax<B: Backend, F: Real + Element>(
    io: &impl Io<B>,
    z: FloatTensor<B>,
    ids: IntTensor<B>,
    inv_t: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let ([n, c], kk) = ([z.shape()[0], z.shape()[1]], ids.shape()[1]);
    let (ids, zv) = (io.indices(ids), io.floats::<F>(&z));
    let job = cpu::Gathered {
        z: &zv,
        c,
        ids: &ids,
        kk,
        inv_t,
    };
    let (mut out, mut pieces) = (vec![F::zero(); n * kk], vec![F::zero(); n * 2]);
    cpu::gather_log_softmax(&job, &mut out, &mut pieces);
    (io.tensor(out, &[n, kk]), io.tensor(pieces, &[n, 2]))
}

/// [`FusedOps::fused_gather_log_softmax_backward`] in the logits' float type.
fn gather_log_softmax_backward<B: Backend, F: Real + Element>(
    io: &impl Io<B>,
    z: FloatTensor<B>,
    ids: IntTensor<B>,
    pieces: FloatTensor<B>,
    g: FloatTensor<B>,
    inv_t: f64,
) -> FloatTensor<B> {
    let ([n, c], kk) = ([z.shape()[0], z.shape()[1]], ids.shape()[1]);
    let (ids, zv) = (io.indices(ids), io.floats::<F>(&z));
    let (pv, gv) = (io.floats::<F>(&pieces), io.floats::<F>(&g));
    let job = cpu::Gathered {
        z: &zv,
        c,
        ids: &ids,
        kk,
        inv_t,
    };
    let mut grad = vec![F::zero(); n * c];
    cpu::gather_log_softmax_backward(&job, &pv, &gv, &mut grad);
    io.tensor(grad, &[n, c])
}

/// `Σ x ⊙ g` through one `[1, n]·[n, 1]` product (no temporary the size of `x`).
fn dot<B: Backend>(x: FloatTensor<B>, g: FloatTensor<B>) -> FloatTensor<B> {
    let n = x.shape().num_elements();
    let x = B::float_reshape(x, [1, n].into());
    let g = B::float_reshape(g, [n, 1].into());
    B::float_reshape(B::float_matmul(x, g), [1].into())
}

/// `impl RowOps` and `impl FusedOps` for a CPU backend, through its [`Io`].
macro_rules! cpu_backend {
    ($backend:ty, $tensor:ty, $io:expr) => {
        impl RowOps for $backend {
            fn fused_kd(
                student: $tensor,
                teacher: $tensor,
                inv_t: f64,
                divergence: Divergence,
                keep_student: bool,
                keep_teacher: bool,
            ) -> ($tensor, Plane<Self>, Plane<Self>) {
                let keep = [keep_student, keep_teacher];
                let kind = Kind::Kd(divergence);
                let out = in_float!(
                    student,
                    fused_in::<Self>(&$io, student, teacher, inv_t, kind, keep)
                );
                (out.rows, Plane::of(out.student), Plane::of(out.teacher))
            }

            fn fused_dkd(
                student: $tensor,
                teacher: $tensor,
                targets: $tensor,
                inv_t: f64,
                joint: Joint,
                alpha: f64,
                beta: f64,
                keep_student: bool,
                keep_teacher: bool,
            ) -> ($tensor, $tensor, Plane<Self>, Plane<Self>) {
                let y = Io::<Self>::indices(&$io, targets);
                let kind = Kind::Dkd(&y, joint, [alpha, beta]);
                let keep = [keep_student, keep_teacher];
                in_float!(
                    student,
                    fused_in::<Self>(&$io, student, teacher, inv_t, kind, keep)
                )
                .dkd()
            }

            fn fused_gather_log_softmax(
                z: $tensor,
                ids: $tensor,
                inv_t: f64,
            ) -> ($tensor, $tensor) {
                in_float!(z, gather_log_softmax::<Self>(&$io, z, ids, inv_t))
            }

            fn fused_gather_log_softmax_backward(
                z: $tensor,
                ids: $tensor,
                pieces: $tensor,
                g: $tensor,
                inv_t: f64,
            ) -> $tensor {
                in_float!(
                    z,
                    gather_log_softmax_backward::<Self>(&$io, z, ids, pieces, g, inv_t)
                )
            }

            fn fused_combine(plane: $tensor, grad: $tensor) -> $tensor {
                in_float!(plane, combine::<Self>(&$io, plane, grad))
            }
        }

        impl FusedOps for $backend {
            fn fused_add_product(acc: $tensor, a: $tensor, b: $tensor) -> $tensor {
                in_float!(acc, add_product::<Self>(&$io, acc, a, b))
            }

            fn fused_logits(out: $tensor, h: $tensor, w: $tensor, b: $tensor) -> $tensor {
                in_float!(out, logits::<Self>(&$io, out, h, w, b))
            }

            fn fused_token_step(
                student: $tensor,
                teacher: $tensor,
                weights: $tensor,
                targets: $tensor,
                step: TokenStep,
            ) -> ($tensor, $tensor) {
                in_float!(
                    student,
                    token_step::<Self>(&$io, student, teacher, weights, targets, step)
                )
            }

            fn fused_handover(x: $tensor, g: $tensor) -> $tensor {
                dot::<Self>(x, g)
            }
        }
    };
}

#[cfg(feature = "ndarray")]
mod ndarray {
    //! ndarray: the kernels read the logits in place (standard layout); results are new arrays.
    //! (Through `into_data`, which copies a shared array element by element, the fused path
    //! was 4× slower than the composed one.)
    use burn::backend::NdArray;
    use burn::backend::ndarray::NdArrayTensor;
    use burn::backend::ops::{FloatTensorOps, IntTensorOps};
    use burn::tensor::read_sync;

    use super::*;

    struct View;

    impl Io<NdArray> for View {
        fn slice<'a, F: Real + Element>(&self, t: &'a NdArrayTensor) -> Option<&'a [F]> {
            F::ndarray_slice(t)
        }

        fn floats<'a, F: Real + Element>(&self, t: &'a NdArrayTensor) -> Cow<'a, [F]> {
            match F::ndarray_slice(t) {
                Some(s) => Cow::Borrowed(s),
                // strided: through burn's own read (element by element, but rare)
                None => Cow::Owned(
                    read_sync(NdArray::float_into_data(t.clone()))
                        .expect("ndarray reads synchronously")
                        .try_into_vec::<F>()
                        .expect("float data"),
                ),
            }
        }

        fn tensor<F: Real + Element>(&self, v: Vec<F>, shape: &[usize]) -> NdArrayTensor {
            NdArrayTensor::from_data(TensorData::new(v, shape.to_vec()))
        }

        fn indices(&self, targets: NdArrayTensor) -> Vec<usize> {
            indices(
                read_sync(NdArray::int_into_data(targets)).expect("ndarray reads synchronously"),
            )
        }
    }

    cpu_backend!(NdArray, NdArrayTensor, View);
}

#[cfg(feature = "flex")]
mod flex {
    //! flex: the kernels read the logits and write their outputs in flex's own buffers.
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;

    use super::*;

    struct InPlace;

    impl Io<Flex> for InPlace {
        fn slice<'a, F: Real + Element>(&self, t: &'a FlexTensor) -> Option<&'a [F]> {
            F::flex_slice(t)
        }

        fn floats<'a, F: Real + Element>(&self, t: &'a FlexTensor) -> Cow<'a, [F]> {
            match F::flex_slice(t) {
                Some(s) => Cow::Borrowed(s),
                None => Cow::Owned(
                    F::flex_slice(&t.to_contiguous())
                        .expect("contiguous")
                        .to_vec(),
                ),
            }
        }

        fn tensor<F: Real + Element>(&self, v: Vec<F>, shape: &[usize]) -> FlexTensor {
            FlexTensor::from_data(TensorData::new(v, shape.to_vec()))
        }

        fn indices(&self, targets: FlexTensor) -> Vec<usize> {
            indices(targets.into_data())
        }

        fn edit<F: Real + Element>(
            &self,
            mut t: FlexTensor,
            edit: impl FnOnce(&mut [F]),
        ) -> FlexTensor {
            match F::flex_slice_mut(&mut t) {
                Some(v) => {
                    edit(v);
                    t
                }
                None => {
                    let mut v = self.floats::<F>(&t).into_owned();
                    edit(&mut v);
                    self.tensor(v, &t.shape())
                }
            }
        }
    }

    cpu_backend!(Flex, FlexTensor, InPlace);
}

/// The backward step of a fused loss: each tracked input's gradient is its plane scaled by
/// the incoming per-sample gradient.
#[derive(Debug)]
struct Weigh;

impl<B: RowOps> Backward<B, 2> for Weigh {
    type State = [Option<FloatTensor<B>>; 2];

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        for (node, plane) in ops.parents.into_iter().zip(ops.state) {
            if let (Some(node), Some(plane)) = (node, plane) {
                grads.register::<B>(node.id, B::fused_combine(plane, grad.clone()));
            }
        }
    }
}

impl<B: RowOps, C: CheckpointStrategy> RowOps for Autodiff<B, C> {
    fn fused_gather_log_softmax(
        z: FloatTensor<Self>,
        ids: IntTensor<Self>,
        inv_t: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        match (GatherLogSoftmax { inv_t })
            .prepare::<C>([z.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let z = z.into_primitive();
                let (out, pieces) = B::fused_gather_log_softmax(z.clone(), ids.clone(), inv_t);
                let out = prep.finish((z, ids, pieces.clone()), out);
                (out, Self::from_inner(pieces))
            }
            OpsKind::UnTracked(prep) => {
                let (out, pieces) = B::fused_gather_log_softmax(z.into_primitive(), ids, inv_t);
                (prep.finish(out), Self::from_inner(pieces))
            }
        }
    }

    fn fused_gather_log_softmax_backward(
        z: FloatTensor<Self>,
        ids: IntTensor<Self>,
        pieces: FloatTensor<Self>,
        g: FloatTensor<Self>,
        inv_t: f64,
    ) -> FloatTensor<Self> {
        let [z, pieces, g] = [z, pieces, g].map(Self::inner);
        Self::from_inner(B::fused_gather_log_softmax_backward(
            z, ids, pieces, g, inv_t,
        ))
    }

    fn fused_kd(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        inv_t: f64,
        divergence: Divergence,
        _: bool,
        _: bool,
    ) -> (FloatTensor<Self>, Plane<Self>, Plane<Self>) {
        let keep = [student.is_tracked(), teacher.is_tracked()];
        let rows = match Weigh
            .prepare::<C>([student.node(), teacher.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (rows, ps, pt) = B::fused_kd(
                    student.into_primitive(),
                    teacher.into_primitive(),
                    inv_t,
                    divergence,
                    keep[0],
                    keep[1],
                );
                prep.finish([ps.kept(), pt.kept()], rows)
            }
            OpsKind::UnTracked(prep) => {
                let (rows, _, _) = B::fused_kd(
                    student.into_primitive(),
                    teacher.into_primitive(),
                    inv_t,
                    divergence,
                    false,
                    false,
                );
                prep.finish(rows)
            }
        };
        (rows, Plane::Dropped, Plane::Dropped)
    }

    fn fused_dkd(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        targets: IntTensor<Self>,
        inv_t: f64,
        joint: Joint,
        alpha: f64,
        beta: f64,
        _: bool,
        _: bool,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        Plane<Self>,
        Plane<Self>,
    ) {
        let keep = [student.is_tracked(), teacher.is_tracked()];
        let op = Weigh
            .prepare::<C>([student.node(), teacher.node()])
            .compute_bound()
            .stateful();
        let (s, t) = (student.into_primitive(), teacher.into_primitive());
        let (total, parts) = match op {
            OpsKind::Tracked(prep) => {
                let (total, parts, ps, pt) =
                    B::fused_dkd(s, t, targets, inv_t, joint, alpha, beta, keep[0], keep[1]);
                (prep.finish([ps.kept(), pt.kept()], total), parts)
            }
            OpsKind::UnTracked(prep) => {
                let (total, parts, _, _) =
                    B::fused_dkd(s, t, targets, inv_t, joint, alpha, beta, false, false);
                (prep.finish(total), parts)
            }
        };
        // the parts are values for logging, outside the graph: a tracked output that no
        // backward pass reaches would keep its graph alive
        (
            total,
            Self::from_inner(parts),
            Plane::Dropped,
            Plane::Dropped,
        )
    }

    fn fused_combine(plane: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        // not differentiable itself (no gradient of a gradient in burn 0.22)
        Self::from_inner(B::fused_combine(Self::inner(plane), Self::inner(grad)))
    }
}

impl<B: FusedOps + RowOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_add_product(
        acc: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let [acc, a, b] = [acc, a, b].map(Self::inner);
        Self::from_inner(B::fused_add_product(acc, a, b))
    }

    fn fused_logits(
        out: FloatTensor<Self>,
        h: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let [out, h, w, b] = [out, h, w, b].map(Self::inner);
        Self::from_inner(B::fused_logits(out, h, w, b))
    }

    fn fused_token_step(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        targets: IntTensor<Self>,
        step: TokenStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let [s, t, w] = [student, teacher, weights].map(Self::inner);
        let (rows, grad) = B::fused_token_step(s, t, w, targets, step);
        (Self::from_inner(rows), Self::from_inner(grad))
    }

    fn fused_handover(x: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        let g = Self::inner(g);
        match Handover.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let value = B::fused_handover(x.into_primitive(), g.clone());
                prep.finish(g, value)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_handover(x.into_primitive(), g)),
        }
    }
}

/// The backward step of [`RowOps::fused_gather_log_softmax`]: the gradient w.r.t. the
/// logits, from the kept logits, ids and softmax pieces.
#[derive(Debug)]
struct GatherLogSoftmax {
    inv_t: f64,
}

impl<B: RowOps> Backward<B, 1> for GatherLogSoftmax {
    type State = (FloatTensor<B>, IntTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [node] = ops.parents;
        if let Some(node) = node {
            let (z, ids, pieces) = ops.state;
            let g = B::fused_gather_log_softmax_backward(z, ids, pieces, grad, self.inv_t);
            grads.register::<B>(node.id, g);
        }
    }
}

/// The backward step of [`FusedOps::fused_handover`]: the kept `g`, scaled by the incoming
/// `[1]` gradient in place, is the input's gradient.
#[derive(Debug)]
struct Handover;

impl<B: FusedOps + RowOps> Backward<B, 1> for Handover {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [node] = ops.parents;
        if let Some(node) = node {
            let shape = ops.state.shape();
            let flat = B::float_reshape(ops.state, [1, shape.num_elements()].into());
            let grad = B::fused_combine(flat, grad);
            grads.register::<B>(node.id, B::float_reshape(grad, shape));
        }
    }
}
