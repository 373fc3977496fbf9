//! The fused ops as a burn backend extension: a forward that returns the per-sample losses
//! and, for each tracked input, the gradient planes of the backward pass; a backward that only
//! weighs those planes by the incoming gradient.
//!
//! flex and ndarray run the CPU kernels on their own buffers (see [`Io`]); the autodiff
//! implementation wraps either.

// burn 0.22 deprecates its ndarray backend, which this crate still serves
#![cfg_attr(feature = "ndarray", allow(deprecated))]
// with no backend compiled in, burn's dispatch routes nowhere and the bodies go unused
#![cfg_attr(
    not(any(feature = "flex", feature = "ndarray")),
    allow(unused_variables, unused_macros, dead_code)
)]

use std::borrow::Cow;

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, AutodiffBackend, Backend, TensorMetadata, backend_extension};
use burn::tensor::{DType, Element, TensorData};

use super::Joint;
use super::cpu::{self, Parts, Real};

/// The fused KD and DKD ops. `keep_student` / `keep_teacher` ask for the gradient plane of that
/// input (the autodiff implementation sets them from which inputs are tracked); a plane is
/// `[N, C]`, the gradient of the op's loss rows weighted by 1, and the backward pass
/// ([`fused_combine`](FusedOps::fused_combine)) scales its rows by the incoming gradient.
#[backend_extension(Autodiff, Flex: cfg(feature = "flex"), NdArray: cfg(feature = "ndarray"))]
pub trait FusedOps: Backend {
    /// KD's per-sample rows `[N]` and planes.
    #[allow(clippy::type_complexity)]
    fn fused_kd(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        inv_t: f64,
        keep_student: bool,
        keep_teacher: bool,
    ) -> (
        FloatTensor<Self>,
        Option<FloatTensor<Self>>,
        Option<FloatTensor<Self>>,
    );

    /// DKD's per-sample `α·TCKD + β·NCKD` `[N]`, its parts `[N, 2]` (values, for logging), and
    /// the planes of the weighted sum.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
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
        Option<FloatTensor<Self>>,
        Option<FloatTensor<Self>>,
    );

    /// The backward pass: the rows of `plane` `[N, C]` times `grad` `[N]`.
    fn fused_combine(plane: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// How the kernels see a CPU backend's tensors.
trait Io<B: Backend> {
    /// The tensor's elements, row-major (borrowed where the layout allows).
    fn floats<'a, F: Real + Element>(&self, t: &'a FloatTensor<B>) -> Cow<'a, [F]>;
    /// A tensor of `shape` holding `v`.
    fn tensor<F: Real + Element>(&self, v: Vec<F>, shape: &[usize]) -> FloatTensor<B>;
    /// Target indices as `usize` (the caller has range-checked them).
    fn indices(&self, targets: IntTensor<B>) -> Vec<usize>;
    /// `plane`'s rows times `g`, in place where the backend allows.
    fn scale_rows<F: Real + Element>(&self, plane: FloatTensor<B>, g: &[F]) -> FloatTensor<B> {
        let [n, c] = [plane.shape()[0], plane.shape()[1]];
        let mut v = self.floats::<F>(&plane).into_owned();
        cpu::combine(&mut v, g, c);
        self.tensor(v, &[n, c])
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
    /// KD.
    Kd,
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
    #[allow(clippy::type_complexity)]
    fn dkd(
        self,
    ) -> (
        FloatTensor<B>,
        FloatTensor<B>,
        Option<FloatTensor<B>>,
        Option<FloatTensor<B>>,
    ) {
        (
            self.rows,
            self.parts.expect("a DKD call has parts"),
            self.student,
            self.teacher,
        )
    }
}

/// Runs one fused call in the logits' float type (f64, else f32).
fn fused<B: Backend>(
    io: &impl Io<B>,
    s: FloatTensor<B>,
    t: FloatTensor<B>,
    inv_t: f64,
    kind: Kind,
    keep: [bool; 2],
) -> Out<B> {
    match s.dtype() {
        DType::F64 => fused_in::<B, f64>(io, s, t, inv_t, kind, keep),
        _ => fused_in::<B, f32>(io, s, t, inv_t, kind, keep),
    }
}

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
        Kind::Kd => 1,
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
        Kind::Kd => {
            cpu::kd(job);
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

fn combine<B: Backend>(
    io: &impl Io<B>,
    plane: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    match plane.dtype() {
        DType::F64 => io.scale_rows(plane, &io.floats::<f64>(&grad)),
        _ => io.scale_rows(plane, &io.floats::<f32>(&grad)),
    }
}

/// `impl FusedOps` for a CPU backend, through its [`Io`].
macro_rules! cpu_backend {
    ($backend:ty, $tensor:ty, $io:expr) => {
        impl FusedOps for $backend {
            fn fused_kd(
                student: $tensor,
                teacher: $tensor,
                inv_t: f64,
                keep_student: bool,
                keep_teacher: bool,
            ) -> ($tensor, Option<$tensor>, Option<$tensor>) {
                let keep = [keep_student, keep_teacher];
                let out = fused::<Self>(&$io, student, teacher, inv_t, Kind::Kd, keep);
                (out.rows, out.student, out.teacher)
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
            ) -> ($tensor, $tensor, Option<$tensor>, Option<$tensor>) {
                let y = Io::<Self>::indices(&$io, targets);
                let kind = Kind::Dkd(&y, joint, [alpha, beta]);
                let keep = [keep_student, keep_teacher];
                fused::<Self>(&$io, student, teacher, inv_t, kind, keep).dkd()
            }

            fn fused_combine(plane: $tensor, grad: $tensor) -> $tensor {
                combine::<Self>(&$io, plane, grad)
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

        fn scale_rows<F: Real + Element>(&self, mut plane: FlexTensor, g: &[F]) -> FlexTensor {
            let c = plane.shape()[1];
            match F::flex_slice_mut(&mut plane) {
                Some(p) => {
                    cpu::combine(p, g, c);
                    plane
                }
                None => {
                    let mut v = self.floats::<F>(&plane).into_owned();
                    cpu::combine(&mut v, g, c);
                    self.tensor(v, &[plane.shape()[0], c])
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

impl<B: FusedOps> Backward<B, 2> for Weigh {
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

impl<B: FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_kd(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        inv_t: f64,
        _: bool,
        _: bool,
    ) -> (
        FloatTensor<Self>,
        Option<FloatTensor<Self>>,
        Option<FloatTensor<Self>>,
    ) {
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
                    keep[0],
                    keep[1],
                );
                prep.finish([ps, pt], rows)
            }
            OpsKind::UnTracked(prep) => {
                let (rows, _, _) = B::fused_kd(
                    student.into_primitive(),
                    teacher.into_primitive(),
                    inv_t,
                    false,
                    false,
                );
                prep.finish(rows)
            }
        };
        (rows, None, None)
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
        Option<FloatTensor<Self>>,
        Option<FloatTensor<Self>>,
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
                (prep.finish([ps, pt], total), parts)
            }
            OpsKind::UnTracked(prep) => {
                let (total, parts, _, _) =
                    B::fused_dkd(s, t, targets, inv_t, joint, alpha, beta, false, false);
                (prep.finish(total), parts)
            }
        };
        // the parts are values for logging, outside the graph: a tracked output that no
        // backward pass reaches would keep its graph alive
        (total, Self::from_inner(parts), None, None)
    }

    fn fused_combine(plane: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        // not differentiable itself (no gradient of a gradient in burn 0.22)
        Self::from_inner(B::fused_combine(Self::inner(plane), Self::inner(grad)))
    }
}
