//! The fused ops as a burn backend extension: a forward that returns the per-sample losses
//! and, for each tracked input, the gradient planes of the backward pass; a backward that only
//! weighs those planes by the incoming gradient.
//!
//! The default bodies run the CPU kernels on the host copy of the tensors (any backend; the
//! ndarray backend uses them); flex reads and writes its buffers in place.

// with no backend compiled in, burn's dispatch routes nowhere and the bodies go unused
#![cfg_attr(
    not(any(feature = "flex", feature = "ndarray")),
    allow(unused_variables, dead_code)
)]

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, AutodiffBackend, Backend, TensorMetadata, backend_extension};
use burn::tensor::{DType, Element, Shape, TensorData, read_sync};

use super::Joint;
use super::cpu::{self, Real};

/// A per-sample loss and the gradient planes kept for its backward pass.
pub type Fused<B> = (
    FloatTensor<B>,
    Option<FloatTensor<B>>,
    Option<FloatTensor<B>>,
);

/// The fused KD and DKD ops. `keep_student` / `keep_teacher` ask for the gradient planes of
/// that input (the autodiff implementation sets them from which inputs are tracked).
#[backend_extension(Autodiff, Flex: cfg(feature = "flex"), NdArray: cfg(feature = "ndarray"))]
pub trait FusedOps: Backend {
    /// Per-sample KD rows `[N]`, planes `[1, N, C]`.
    fn fused_kd(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        inv_t: f64,
        keep_student: bool,
        keep_teacher: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>, Option<FloatTensor<Self>>) {
        let shape = student.shape();
        let (s, t) = (host::<Self>(student), host::<Self>(teacher));
        let device = s.tensor.device();
        let out = match s.data.dtype() {
            DType::F64 => run_kd::<f64>(&s.data, &t.data, &shape, inv_t, keep_student, keep_teacher),
            _ => run_kd::<f32>(&s.data, &t.data, &shape, inv_t, keep_student, keep_teacher),
        };
        out.upload::<Self>(&device)
    }

    /// Per-sample `(TCKD, NCKD)` rows `[N, 2]`, planes `[2, N, C]`.
    fn fused_dkd(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        targets: IntTensor<Self>,
        inv_t: f64,
        joint: Joint,
        keep_student: bool,
        keep_teacher: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>, Option<FloatTensor<Self>>) {
        let shape = student.shape();
        let (s, t) = (host::<Self>(student), host::<Self>(teacher));
        let device = s.tensor.device();
        let y = indices(read_sync(Self::int_into_data(targets)).expect("targets readable"));
        let out = match s.data.dtype() {
            DType::F64 => run_dkd::<f64>(&s.data, &t.data, &y, &shape, inv_t, joint, keep_student, keep_teacher),
            _ => run_dkd::<f32>(&s.data, &t.data, &y, &shape, inv_t, joint, keep_student, keep_teacher),
        };
        out.upload::<Self>(&device)
    }

    /// The backward pass: `Σᵢ grad[n, i] · planes[i, n, j]`, planes `[m, N, C]`, grad `[N]`
    /// or `[N, m]`; returns `[N, C]`.
    fn fused_combine(planes: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = planes.shape();
        let p = host::<Self>(planes);
        let device = p.tensor.device();
        let g = read_sync(Self::float_into_data(grad)).expect("gradient readable");
        let (m, n, c) = (shape[0], shape[1], shape[2]);
        let data = match p.data.dtype() {
            DType::F64 => combined::<f64>(p.data, &g, m, n, c),
            _ => combined::<f32>(p.data, &g, m, n, c),
        };
        Self::float_from_data(data, &device)
    }
}

/// A tensor and its host copy.
struct Host<B: Backend> {
    tensor: FloatTensor<B>,
    data: TensorData,
}

fn host<B: Backend>(tensor: FloatTensor<B>) -> Host<B> {
    let data = read_sync(B::float_into_data(tensor.clone())).expect("logits readable");
    Host { tensor, data }
}

/// Target indices as `usize` (the caller has range-checked them).
fn indices(data: TensorData) -> Vec<usize> {
    data.convert::<i64>()
        .try_into_vec::<i64>()
        .expect("integer targets")
        .into_iter()
        .map(|v| v as usize)
        .collect()
}

/// The host result of a fused forward.
struct Out {
    rows: TensorData,
    student: Option<TensorData>,
    teacher: Option<TensorData>,
}

impl Out {
    fn upload<B: Backend>(self, device: &B::Device) -> Fused<B> {
        (
            B::float_from_data(self.rows, device),
            self.student.map(|d| B::float_from_data(d, device)),
            self.teacher.map(|d| B::float_from_data(d, device)),
        )
    }
}

fn planes<F: Real + Element>(keep: bool, len: usize) -> Vec<F> {
    vec![F::zero(); if keep { len } else { 0 }]
}

fn run_kd<F: Real + Element>(
    s: &TensorData,
    t: &TensorData,
    shape: &Shape,
    inv_t: f64,
    keep_student: bool,
    keep_teacher: bool,
) -> Out {
    let (n, c) = (shape[0], shape[1]);
    let (s, t) = (s.as_slice::<F>().expect("f32/f64"), t.as_slice::<F>().expect("same dtype"));
    let mut rows = vec![F::zero(); n];
    let (mut gs, mut gt) = (planes(keep_student, n * c), planes(keep_teacher, n * c));
    cpu::kd(s, t, c, inv_t, &mut rows, &mut gs, &mut gt);
    let plane = |v: Vec<F>, keep: bool| keep.then(|| TensorData::new(v, [1, n, c]));
    Out {
        rows: TensorData::new(rows, [n]),
        student: plane(gs, keep_student),
        teacher: plane(gt, keep_teacher),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_dkd<F: Real + Element>(
    s: &TensorData,
    t: &TensorData,
    y: &[usize],
    shape: &Shape,
    inv_t: f64,
    joint: Joint,
    keep_student: bool,
    keep_teacher: bool,
) -> Out {
    let (n, c) = (shape[0], shape[1]);
    let (s, t) = (s.as_slice::<F>().expect("f32/f64"), t.as_slice::<F>().expect("same dtype"));
    let mut rows = vec![F::zero(); 2 * n];
    let (mut gs, mut gt) = (planes(keep_student, 2 * n * c), planes(keep_teacher, 2 * n * c));
    cpu::dkd(s, t, y, c, inv_t, joint, &mut rows, &mut gs, &mut gt);
    let plane = |v: Vec<F>, keep: bool| keep.then(|| TensorData::new(v, [2, n, c]));
    Out {
        rows: TensorData::new(rows, [n, 2]),
        student: plane(gs, keep_student),
        teacher: plane(gt, keep_teacher),
    }
}

fn combined<F: Real + Element>(planes: TensorData, g: &TensorData, m: usize, n: usize, c: usize) -> TensorData {
    let mut p = planes.try_into_vec::<F>().expect("f32/f64");
    let g = g.clone().convert::<F>();
    cpu::combine(&mut p, g.as_slice::<F>().expect("converted"), m, c);
    p.truncate(n * c);
    TensorData::new(p, [n, c])
}

#[cfg(feature = "ndarray")]
impl FusedOps for burn::backend::NdArray {}

#[cfg(feature = "flex")]
mod flex {
    //! flex: the kernels read the logits and write their outputs without a copy.
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;

    use super::*;

    /// The contiguous buffer of a flex tensor (copied only when strided).
    fn view<F: Real>(t: &FlexTensor) -> std::borrow::Cow<'_, [F]> {
        match F::flex_slice(t) {
            Some(s) => s.into(),
            None => F::flex_slice(&t.to_contiguous()).expect("contiguous").to_vec().into(),
        }
    }

    fn tensor<F: Real + Element>(v: Vec<F>, shape: &[usize]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(v, shape.to_vec()))
    }

    fn kd<F: Real + Element>(s: &FlexTensor, t: &FlexTensor, inv_t: f64, ks: bool, kt: bool) -> Fused<Flex> {
        let [n, c] = [s.shape()[0], s.shape()[1]];
        let mut rows = vec![F::zero(); n];
        let (mut gs, mut gt) = (planes(ks, n * c), planes(kt, n * c));
        cpu::kd(&view::<F>(s), &view::<F>(t), c, inv_t, &mut rows, &mut gs, &mut gt);
        (
            tensor(rows, &[n]),
            ks.then(|| tensor(gs, &[1, n, c])),
            kt.then(|| tensor(gt, &[1, n, c])),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn dkd<F: Real + Element>(
        s: &FlexTensor,
        t: &FlexTensor,
        y: &[usize],
        inv_t: f64,
        joint: Joint,
        ks: bool,
        kt: bool,
    ) -> Fused<Flex> {
        let [n, c] = [s.shape()[0], s.shape()[1]];
        let mut rows = vec![F::zero(); 2 * n];
        let (mut gs, mut gt) = (planes(ks, 2 * n * c), planes(kt, 2 * n * c));
        cpu::dkd(&view::<F>(s), &view::<F>(t), y, c, inv_t, joint, &mut rows, &mut gs, &mut gt);
        (
            tensor(rows, &[n, 2]),
            ks.then(|| tensor(gs, &[2, n, c])),
            kt.then(|| tensor(gt, &[2, n, c])),
        )
    }

    fn combine<F: Real + Element>(mut planes: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let shape = planes.shape();
        let (m, n, c) = (shape[0], shape[1], shape[2]);
        let g = view::<F>(&grad);
        match F::flex_slice_mut(&mut planes) {
            Some(p) => {
                cpu::combine(p, &g, m, c);
                planes.narrow(0, 0, 1).reshape([n, c].into())
            }
            None => {
                let mut p = view::<F>(&planes).into_owned();
                cpu::combine(&mut p, &g, m, c);
                p.truncate(n * c);
                tensor(p, &[n, c])
            }
        }
    }

    impl FusedOps for Flex {
        fn fused_kd(student: FlexTensor, teacher: FlexTensor, inv_t: f64, ks: bool, kt: bool) -> (FloatTensor<Self>, Option<FloatTensor<Self>>, Option<FloatTensor<Self>>) {
            match student.dtype() {
                DType::F64 => kd::<f64>(&student, &teacher, inv_t, ks, kt),
                _ => kd::<f32>(&student, &teacher, inv_t, ks, kt),
            }
        }

        fn fused_dkd(
            student: FlexTensor,
            teacher: FlexTensor,
            targets: FlexTensor,
            inv_t: f64,
            joint: Joint,
            ks: bool,
            kt: bool,
        ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>, Option<FloatTensor<Self>>) {
            let y = indices(targets.into_data());
            match student.dtype() {
                DType::F64 => dkd::<f64>(&student, &teacher, &y, inv_t, joint, ks, kt),
                _ => dkd::<f32>(&student, &teacher, &y, inv_t, joint, ks, kt),
            }
        }

        fn fused_combine(planes: FlexTensor, grad: FlexTensor) -> FlexTensor {
            match planes.dtype() {
                DType::F64 => combine::<f64>(planes, grad),
                _ => combine::<f32>(planes, grad),
            }
        }
    }
}

/// The backward step of both fused ops: each tracked input's gradient is its planes weighed
/// by the incoming gradient.
#[derive(Debug)]
struct Weigh;

impl<B: FusedOps> Backward<B, 2> for Weigh {
    type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [node_s, node_t] = ops.parents;
        let (planes_s, planes_t) = ops.state;
        if let (Some(node), Some(p)) = (node_t, planes_t) {
            grads.register::<B>(node.id, B::fused_combine(p, grad.clone()));
        }
        if let (Some(node), Some(p)) = (node_s, planes_s) {
            grads.register::<B>(node.id, B::fused_combine(p, grad));
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
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>, Option<FloatTensor<Self>>) {
        let (ks, kt) = (student.is_tracked(), teacher.is_tracked());
        let out = match Weigh.prepare::<C>([student.node(), teacher.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (rows, ps, pt) = B::fused_kd(student.into_primitive(), teacher.into_primitive(), inv_t, ks, kt);
                prep.finish((ps, pt), rows)
            }
            OpsKind::UnTracked(prep) => {
                let (rows, _, _) = B::fused_kd(student.into_primitive(), teacher.into_primitive(), inv_t, false, false);
                prep.finish(rows)
            }
        };
        (out, None, None)
    }

    fn fused_dkd(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        targets: IntTensor<Self>,
        inv_t: f64,
        joint: Joint,
        _: bool,
        _: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>, Option<FloatTensor<Self>>) {
        let (ks, kt) = (student.is_tracked(), teacher.is_tracked());
        let out = match Weigh.prepare::<C>([student.node(), teacher.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (rows, ps, pt) =
                    B::fused_dkd(student.into_primitive(), teacher.into_primitive(), targets, inv_t, joint, ks, kt);
                prep.finish((ps, pt), rows)
            }
            OpsKind::UnTracked(prep) => {
                let (rows, _, _) =
                    B::fused_dkd(student.into_primitive(), teacher.into_primitive(), targets, inv_t, joint, false, false);
                prep.finish(rows)
            }
        };
        (out, None, None)
    }

    fn fused_combine(planes: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        // not differentiable itself (no gradient of a gradient in burn 0.22)
        Self::from_inner(B::fused_combine(Self::inner(planes), Self::inner(grad)))
    }
}
