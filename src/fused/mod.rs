//! Fused KD, DKD and DCKD: forward and analytic backward in a few passes over the logits.
//!
//! [`Kd`](crate::logit::Kd), [`Dkd`](crate::logit::Dkd) and [`Dckd`](crate::logit::Dckd) take
//! this path by default (their configs' `fused` switch) whenever the temperature is fixed, the
//! logits are `f32` or `f64` and the device is one of:
//!
//! | backend | fused path |
//! |---|---|
//! | flex (feature `flex`, on by default) | CPU kernels on flex's own buffers, no copies |
//! | ndarray (feature `ndarray`) | the same kernels, reading its arrays in place |
//! | any of them under `.autodiff()` | the same, with the custom backward below |
//!
//! Everything else (wgpu, cuda, libtorch, a learned CTKD temperature, half-precision logits
//! that were not upcast) runs the composed tensor-op version, which stays the reference the
//! fused one is tested against. [`supported`] tells which path a device gets.
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
//!
//! The forward keeps a plane only for an input that is tracked (a frozen teacher costs
//! nothing), and the backward multiplies the plane by the incoming per-sample gradient, in
//! place on flex. Extra memory of a forward + backward: one `[N, C]` plane per tracked input,
//! which becomes its gradient (1× the logits with a frozen teacher).

mod cpu;
mod ops;

use burn::backend::Dispatch;
use burn::tensor::{DType, Device, Int, Tensor};

pub use cpu::{exp_in_place, set_threads};
use ops::FusedOps;

pub(crate) use crate::math::JointTarget as Joint;

/// Whether the fused kernels serve tensors on `device` (otherwise the objectives run their
/// composed tensor-op version).
pub fn supported(device: &Device) -> bool {
    use burn::backend::DispatchDevice as D;
    fn on(device: &D) -> bool {
        match device {
            #[cfg(feature = "flex")]
            D::Flex(_) => true,
            #[cfg(feature = "ndarray")]
            D::NdArray(_) => true,
            D::Autodiff(inner) => on(inner),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
    on(device.as_dispatch())
}

/// Whether a pair of logits can take the fused path.
fn usable(student: &Tensor<2>, teacher: &Tensor<2>) -> bool {
    let dtype = student.dtype();
    matches!(dtype, DType::F32 | DType::F64)
        && teacher.dtype() == dtype
        && student.dims()[0] > 0
        && supported(&student.device())
}

/// Per-sample `KL(softmax(t/T) ‖ softmax(s/T))`, `[N]`, through the fused op, or `None` where
/// it does not apply.
pub(crate) fn kd_rows(
    student: &Tensor<2>,
    teacher: &Tensor<2>,
    temperature: f64,
) -> Option<Tensor<1>> {
    if !usable(student, teacher) {
        return None;
    }
    let (rows, _, _) = Dispatch::fused_kd(
        student.clone().into_dispatch(),
        teacher.clone().into_dispatch(),
        1.0 / temperature,
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
