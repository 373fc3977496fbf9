//! The row ops' CubeCL kernels, for burn's Cube backend (wgpu, cuda and the other CubeCL
//! runtimes; feature `cube`, implied by `wgpu` and `cuda`).
//!
//! One cube (workgroup) a row: its units stride over the classes, and the row's maxima and sums
//! are tree reductions in shared memory, in a fixed order (the results do not depend on how
//! the runtime schedules the units). Each kernel reads the logits in their own float type and
//! computes in `f32` (in `f64` for `f64` logits): half-precision logits keep a single-precision
//! softmax. The math is the CPU kernels' (`cpu.rs`), term for term, written per entry instead
//! of per row.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::ops::{Plane, RowOps};
use super::{Divergence, Joint};

/// Units a cube; a power of two (the reductions halve it).
const BLOCK: u32 = 256;

/// The cube's reductions (maxima or sums) of `width` values a unit, held at
/// `buf[v·B + unit]` (B units a cube): afterwards `buf[v·B]` holds the `v`-th result (read it, then
/// `sync_cube` before the next writes). Reducing a row's values together costs one tree of
/// barriers, not one a value. All units must call it.
#[cube]
fn reduce<A: Float>(buf: &mut Shared<[A]>, #[comptime] width: usize, #[comptime] take_max: bool) {
    let unit = UNIT_POS_X as usize;
    let block = CUBE_DIM_X as usize;
    sync_cube();
    let mut half = block / 2;
    while half > 0 {
        if unit < half {
            let mut i = unit;
            while i < width * block {
                let (mine, other) = (buf[i], buf[i + half]);
                let merged = if take_max {
                    A::max(mine, other)
                } else {
                    mine + other
                };
                buf[i] = merged;
                i += block;
            }
        }
        sync_cube();
        half /= 2;
    }
}

/// A row's maxima of `s` and `t` over every class but `skip` (`skip ≥ c`: every class), into
/// lanes 0 and 1 of `buf`, reduced; with `target` (`skip` the target class, `sy` the
/// student's logit there), whether any other class beats the target as the first arg-max
/// counts it, into lane 2 (1 or 0).
#[cube]
// the comptime `target` test stays apart from the runtime one: cubecl expands it away
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
fn maxima<F: Float, A: Float>(
    buf: &mut Shared<[A]>,
    s: &Tensor<F>,
    t: &Tensor<F>,
    base: usize,
    c: usize,
    skip: usize,
    sy: A,
    #[comptime] target: bool,
) {
    let unit = UNIT_POS_X as usize;
    let block = CUBE_DIM_X as usize;
    let first = select(skip == 0, 1, 0);
    let mut ms = A::cast_from(s[base + first]);
    let mut mt = A::cast_from(t[base + first]);
    let mut beaten = A::new(0.0);
    let mut j = unit;
    while j < c {
        if j != skip {
            let x = A::cast_from(s[base + j]);
            ms = A::max(ms, x);
            mt = A::max(mt, A::cast_from(t[base + j]));
            if target {
                if (j < skip && x >= sy) || (j > skip && x > sy) {
                    beaten = A::new(1.0);
                }
            }
        }
        j += block;
    }
    buf[unit] = ms;
    buf[block + unit] = mt;
    if target {
        buf[2 * block + unit] = beaten;
        reduce::<A>(buf, 3usize, true);
    } else {
        reduce::<A>(buf, 2usize, true);
    }
}

/// A row's sums of `exp(k·(x − m))` for `s` and `t` over every class but `skip`, and KL's
/// teacher-weighted logit gap `Σ e_t·((t − m_t) − (s − m_s))`, into lanes 0, 1 and 2 of
/// `buf`, reduced.
#[cube]
#[allow(clippy::too_many_arguments)]
fn sums<F: Float, A: Float>(
    buf: &mut Shared<[A]>,
    s: &Tensor<F>,
    t: &Tensor<F>,
    base: usize,
    c: usize,
    skip: usize,
    ms: A,
    mt: A,
    k: A,
) {
    let unit = UNIT_POS_X as usize;
    let block = CUBE_DIM_X as usize;
    let mut ss = A::new(0.0);
    let mut st = A::new(0.0);
    let mut gap = A::new(0.0);
    let mut j = unit;
    while j < c {
        if j != skip {
            let ds = A::cast_from(s[base + j]) - ms;
            let dt = A::cast_from(t[base + j]) - mt;
            let et = A::exp(k * dt);
            ss += A::exp(k * ds);
            st += et;
            gap += et * (dt - ds);
        }
        j += block;
    }
    buf[unit] = ss;
    buf[block + unit] = st;
    buf[2 * block + unit] = gap;
    reduce::<A>(buf, 3usize, false);
}

/// `ln(exp a + exp b)` for finite `a`, `b`.
#[cube]
fn logaddexp<A: Float>(a: A, b: A) -> A {
    let hi = A::max(a, b);
    hi + (A::new(1.0) + A::exp(A::new(0.0) - A::abs(a - b))).ln()
}

/// `ln(1 + eˣ)` for any `x`.
#[cube]
fn softplus<A: Float>(x: A) -> A {
    A::max(x, A::new(0.0)) + (A::new(1.0) + A::exp(A::new(0.0) - A::abs(x))).ln()
}

/// The row this cube serves (rows are laid over a 2-D grid: a grid dimension holds at most
/// 65,535 cubes on some GPUs).
#[cube]
fn row_index() -> usize {
    (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize
}

/// KD's `KL(p_t ‖ p_s)` a row (`jsd` false; the reverse KL is this kernel with the inputs
/// swapped) or the generalized JSD(β) (`jsd` true), and the gradient planes of the kept inputs
/// (see `cpu::kd_row` and `cpu::jsd_row`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn kd_kernel<F: Float, A: Float>(
    s: &Tensor<F>,
    t: &Tensor<F>,
    rows: &mut Tensor<F>,
    gs: &mut Tensor<F>,
    gt: &mut Tensor<F>,
    inv_t: InputScalar,
    beta: InputScalar,
    #[comptime] jsd: bool,
    #[comptime] keep_s: bool,
    #[comptime] keep_t: bool,
    #[define(F, A)] _dtypes: [ElemType; 2],
) {
    let row = row_index();
    if row >= rows.len() {
        terminate!();
    }
    let unit = UNIT_POS_X as usize;
    let block = CUBE_DIM_X as usize;
    let c = s.shape(1);
    let base = row * c;
    let k = inv_t.get::<A>();
    let mut buf = Shared::<[A]>::new_slice(3 * BLOCK as usize);

    maxima::<F, A>(&mut buf, s, t, base, c, c, A::new(0.0), false);
    let ms = buf[0];
    let mt = buf[block];
    sync_cube();
    sums::<F, A>(&mut buf, s, t, base, c, c, ms, mt, k);
    let ss = buf[0];
    let st = buf[block];
    let gap = buf[2 * block];
    sync_cube();
    let (a, b) = (A::new(1.0) / ss, A::new(1.0) / st);

    if jsd {
        let wt = beta.get::<A>();
        let ws = A::new(1.0) - wt;
        let (ls, lt) = (ss.ln(), st.ln());
        let mut kl_s = A::new(0.0);
        let mut kl_t = A::new(0.0);
        let mut j = unit;
        while j < c {
            let zs = k * (A::cast_from(s[base + j]) - ms);
            let zt = k * (A::cast_from(t[base + j]) - mt);
            let (p, q) = (A::exp(zs) * a, A::exp(zt) * b);
            let m = ws * p + wt * q;
            if m > A::new(0.0) {
                let lm = m.ln();
                kl_s += p * (zs - ls - lm);
                kl_t += q * (zt - lt - lm);
            }
            j += block;
        }
        buf[unit] = kl_s;
        buf[block + unit] = kl_t;
        reduce::<A>(&mut buf, 2usize, false);
        let kl_s = buf[0];
        let kl_t = buf[block];
        if unit == 0 {
            rows[row] = F::cast_from(wt * kl_t + ws * kl_s);
        }
        if keep_s || keep_t {
            let mut j = unit;
            while j < c {
                let zs = k * (A::cast_from(s[base + j]) - ms);
                let zt = k * (A::cast_from(t[base + j]) - mt);
                let (p, q) = (A::exp(zs) * a, A::exp(zt) * b);
                let m = ws * p + wt * q;
                let mut lm = A::new(0.0);
                let mut inside = A::new(0.0);
                if m > A::new(0.0) {
                    lm = m.ln();
                    inside = A::new(1.0);
                }
                if keep_s {
                    gs[base + j] = F::cast_from(ws * k * p * (inside * (zs - ls - lm) - kl_s));
                }
                if keep_t {
                    gt[base + j] = F::cast_from(wt * k * q * (inside * (zt - lt - lm) - kl_t));
                }
                j += block;
            }
        }
    } else {
        let log_ratio = (ss / st).ln();
        let kl = k * gap * b + log_ratio;
        if unit == 0 {
            rows[row] = F::cast_from(kl);
        }
        if keep_s || keep_t {
            let mut j = unit;
            while j < c {
                let ds = A::cast_from(s[base + j]) - ms;
                let dt = A::cast_from(t[base + j]) - mt;
                let (es, et) = (A::exp(k * ds), A::exp(k * dt));
                if keep_s {
                    gs[base + j] = F::cast_from(k * (es * a - et * b));
                }
                if keep_t {
                    gt[base + j] = F::cast_from(k * et * b * (k * (dt - ds) + log_ratio - kl));
                }
                j += block;
            }
        }
    }
}

/// DKD's `(TCKD, NCKD)` a row into `parts` and `α·TCKD + β·NCKD` into `rows`, and the planes of
/// that sum (see `cpu::dkd_rows`). `joint`: 0 the teacher's `b_t` (DKD), 1 `Max`, 2
/// `Mix(mix)`.
#[cube(launch)]
// the comptime `joint` tests stay apart from the runtime ones: cubecl expands them away
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
fn dkd_kernel<F: Float, A: Float, I: Int>(
    s: &Tensor<F>,
    t: &Tensor<F>,
    targets: &Tensor<I>,
    rows: &mut Tensor<F>,
    parts: &mut Tensor<F>,
    gs: &mut Tensor<F>,
    gt: &mut Tensor<F>,
    inv_t: InputScalar,
    alpha: InputScalar,
    beta: InputScalar,
    mix: InputScalar,
    #[comptime] joint: u32,
    #[comptime] keep_s: bool,
    #[comptime] keep_t: bool,
    #[define(F, A, I)] _dtypes: [ElemType; 3],
) {
    let row = row_index();
    if row >= rows.len() {
        terminate!();
    }
    let unit = UNIT_POS_X as usize;
    let block = CUBE_DIM_X as usize;
    let c = s.shape(1);
    let base = row * c;
    let y = u32::cast_from(targets[row]) as usize;
    let k = inv_t.get::<A>();
    let (wt, wn) = (alpha.get::<A>(), beta.get::<A>());
    let mut buf = Shared::<[A]>::new_slice(3 * BLOCK as usize);
    let (sy, ty) = (A::cast_from(s[base + y]), A::cast_from(t[base + y]));

    // the non-target maxima, and whether y is the student's (first) arg-max
    maxima::<F, A>(&mut buf, s, t, base, c, y, sy, true);
    let ms = buf[0];
    let mt = buf[block];
    let beaten = buf[2 * block];
    sync_cube();
    // the non-target sums and NCKD's teacher-weighted logit gap
    sums::<F, A>(&mut buf, s, t, base, c, y, ms, mt, k);
    let ss = buf[0];
    let st = buf[block];
    let gap = buf[2 * block];

    // the binary splits log b = [log p_y, log Σ_{j≠y} p_j], each side from the gap between
    // the target's logit and the others' log-sum-exp (exact when one side is tiny)
    let gap_s = sy * k - (ms * k + ss.ln());
    let (lbs0, lbs1) = (
        A::new(0.0) - softplus::<A>(A::new(0.0) - gap_s),
        A::new(0.0) - softplus::<A>(gap_s),
    );
    let gap_t = ty * k - (mt * k + st.ln());
    let (lbt0, lbt1) = (
        A::new(0.0) - softplus::<A>(A::new(0.0) - gap_t),
        A::new(0.0) - softplus::<A>(gap_t),
    );

    let log_ratio = (ss / st).ln();
    let nckd = k * gap / st + log_ratio;
    // the teacher's share w of the joint target b* = w·b_t + (1 − w)·sg(b_s)
    let correct = beaten == A::new(0.0);
    let mut w = A::new(1.0);
    if joint == 1 {
        if correct && lbs0 > lbt0 {
            w = A::new(0.0);
        }
    } else if joint == 2 {
        if correct {
            w = mix.get::<A>();
        }
    }
    let mut lj0 = lbt0;
    let mut lj1 = lbt1;
    if w <= A::new(0.0) {
        lj0 = lbs0;
        lj1 = lbs1;
    } else if w < A::new(1.0) {
        let (lw, lv) = (w.ln(), (A::new(1.0) - w).ln());
        lj0 = logaddexp::<A>(lw + lbt0, lv + lbs0);
        lj1 = logaddexp::<A>(lw + lbt1, lv + lbs1);
    }
    let (bs0, bs1) = (A::exp(lbs0), A::exp(lbs1));
    let (bt0, bt1) = (A::exp(lbt0), A::exp(lbt1));
    let (bj0, bj1) = (A::exp(lj0), A::exp(lj1));
    let (gap0, gap1) = (lj0 - lbs0, lj1 - lbs1);
    let tckd = bj0 * gap0 + bj1 * gap1;
    if unit == 0 {
        parts[2 * row] = F::cast_from(tckd);
        parts[2 * row + 1] = F::cast_from(nckd);
        rows[row] = F::cast_from(wt * tckd + wn * nckd);
    }

    let (a, b) = (A::new(1.0) / ss, A::new(1.0) / st);
    if keep_s {
        // bₛ₀ − b*₀ = b*₁ − bₛ₁, from the side where both are small
        let mut d = bs0 - bj0;
        if bs0 + bj0 > A::new(1.0) {
            d = bj1 - bs1;
        }
        // NCKD: (p̂ₛⱼ − p̂ₜⱼ)/T first (0 where both are 1), then TCKD: −p̂ₛⱼ d/T off the
        // target, d/T at it
        let (ns, nt, ts) = (wn * k * a, wn * k * b, wt * k * d * a);
        let mut j = unit;
        while j < c {
            let mut g = wt * k * d;
            if j != y {
                let es = A::exp(k * (A::cast_from(s[base + j]) - ms));
                let et = A::exp(k * (A::cast_from(t[base + j]) - mt));
                g = (es * ns - et * nt) - es * ts;
            }
            gs[base + j] = F::cast_from(g);
            j += block;
        }
    }
    if keep_t {
        // TCKD through b_t: u_i = w·b_t,i·(log b*_i − log b_s,i + 1); NCKD:
        // p̂ₜⱼ (log p̂ₜⱼ − log p̂ₛⱼ − NCKD)/T
        let (u0, u1) = (
            w * bt0 * (gap0 + A::new(1.0)),
            w * bt1 * (gap1 + A::new(1.0)),
        );
        let total = u0 + u1;
        let shift = wt * k * (u1 - bt1 * total) * b + wn * k * b * (log_ratio - nckd);
        let slope = wn * k * b * k;
        let mut j = unit;
        while j < c {
            let mut g = wt * k * (u0 - bt0 * total);
            if j != y {
                let ds = A::cast_from(s[base + j]) - ms;
                let dt = A::cast_from(t[base + j]) - mt;
                g = A::exp(k * dt) * (shift + slope * (dt - ds));
            }
            gt[base + j] = F::cast_from(g);
            j += block;
        }
    }
}

/// A row's log-probabilities `k·z[id] − log Σⱼ exp(k·z[j])` at its ids, and its softmax
/// pieces `[max, Σ exp(k·(z − max))]` (see `cpu::gather_log_softmax`): entries at −∞ have
/// probability 0; a row with a NaN or +∞, or only −∞, gets NaN (through its sum).
#[cube(launch)]
fn gather_kernel<F: Float, A: Float, I: Int>(
    z: &Tensor<F>,
    ids: &Tensor<I>,
    out: &mut Tensor<F>,
    pieces: &mut Tensor<F>,
    inv_t: InputScalar,
    #[define(F, A, I)] _dtypes: [ElemType; 3],
) {
    let row = row_index();
    if row >= pieces.shape(0) {
        terminate!();
    }
    let unit = UNIT_POS_X as usize;
    let block = CUBE_DIM_X as usize;
    let (c, kk) = (z.shape(1), ids.shape(1));
    let base = row * c;
    let k = inv_t.get::<A>();
    let mut buf = Shared::<[A]>::new_slice(BLOCK as usize);
    // a NaN, a +∞ or a row of −∞ makes the sum NaN (x − m is NaN), and so every output
    let mut m = A::cast_from(z[base]);
    let mut j = unit;
    while j < c {
        m = A::max(m, A::cast_from(z[base + j]));
        j += block;
    }
    buf[unit] = m;
    reduce::<A>(&mut buf, 1usize, true);
    let m = buf[0];
    sync_cube();
    let mut sum = A::new(0.0);
    let mut j = unit;
    while j < c {
        sum += A::exp(k * (A::cast_from(z[base + j]) - m));
        j += block;
    }
    buf[unit] = sum;
    reduce::<A>(&mut buf, 1usize, false);
    let sum = buf[0];
    let log_sum = sum.ln();
    let mut i = unit;
    while i < kk {
        let id = usize::cast_from(ids[row * kk + i]);
        out[row * kk + i] = F::cast_from(k * (A::cast_from(z[base + id]) - m) - log_sum);
        i += block;
    }
    if unit == 0 {
        pieces[2 * row] = F::cast_from(m);
        pieces[2 * row + 1] = F::cast_from(sum);
    }
}

/// A row's gradient `k·(scatter(g) − softmax(k·z)·Σ g)` of the gathered log-softmax, from the
/// forward pass's pieces (see `cpu::gather_log_softmax_backward`).
#[cube(launch)]
fn gather_back_kernel<F: Float, A: Float, I: Int>(
    z: &Tensor<F>,
    ids: &Tensor<I>,
    pieces: &Tensor<F>,
    g: &Tensor<F>,
    grad: &mut Tensor<F>,
    inv_t: InputScalar,
    #[define(F, A, I)] _dtypes: [ElemType; 3],
) {
    let row = row_index();
    if row >= pieces.shape(0) {
        terminate!();
    }
    let unit = UNIT_POS_X as usize;
    let block = CUBE_DIM_X as usize;
    let (c, kk) = (z.shape(1), ids.shape(1));
    let base = row * c;
    let k = inv_t.get::<A>();
    let mut buf = Shared::<[A]>::new_slice(BLOCK as usize);
    let mut total = A::new(0.0);
    let mut i = unit;
    while i < kk {
        total += A::cast_from(g[row * kk + i]);
        i += block;
    }
    buf[unit] = total;
    reduce::<A>(&mut buf, 1usize, false);
    let total = buf[0];
    let m = A::cast_from(pieces[2 * row]);
    let scale = (A::new(0.0) - k * total) / A::cast_from(pieces[2 * row + 1]);
    let mut j = unit;
    while j < c {
        grad[base + j] = F::cast_from(A::exp(k * (A::cast_from(z[base + j]) - m)) * scale);
        j += block;
    }
    // one unit adds the gathered entries' share, in order (an id may repeat)
    sync_storage();
    if unit == 0 {
        for i in 0..kk {
            let id = usize::cast_from(ids[row * kk + i]);
            let v = A::cast_from(grad[base + id]) + k * A::cast_from(g[row * kk + i]);
            grad[base + id] = F::cast_from(v);
        }
    }
}

/// How a launch covers `n` rows: one cube a row, over a 2-D grid.
fn grid(n: usize) -> (CubeCount, CubeDim) {
    let x = n.clamp(1, 65_535) as u32;
    let y = n.div_ceil(x as usize).max(1) as u32;
    (CubeCount::Static(x, y, 1), CubeDim::new_1d(BLOCK))
}

/// A new contiguous tensor of `shape` on `like`'s device.
fn empty(like: &CubeTensor, shape: &[usize], dtype: DType) -> CubeTensor {
    empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape.to_vec()),
        dtype,
    )
}

/// The kernels' compute type for logits of `dtype`.
fn accumulator(dtype: DType) -> DType {
    match dtype {
        DType::F64 => DType::F64,
        _ => DType::F32,
    }
}

/// The planes of a launch: `[n, c]` for a kept input, a one-element placeholder (never
/// written) for the other.
fn planes(like: &CubeTensor, keep: [bool; 2]) -> [CubeTensor; 2] {
    let [n, c] = [like.meta.shape()[0], like.meta.shape()[1]];
    keep.map(|k| match k {
        true => empty(like, &[n, c], like.dtype),
        false => empty(like, &[1], like.dtype),
    })
}

impl RowOps for CubeBackend {
    fn fused_kd(
        student: CubeTensor,
        teacher: CubeTensor,
        inv_t: f64,
        divergence: Divergence,
        keep_student: bool,
        keep_teacher: bool,
    ) -> (CubeTensor, Plane<Self>, Plane<Self>) {
        // the reverse KL is KD's kernel with the roles (and planes) swapped
        let (s, t, keep, beta) = match divergence {
            Divergence::Kl => (student, teacher, [keep_student, keep_teacher], None),
            Divergence::ReverseKl => (teacher, student, [keep_teacher, keep_student], None),
            Divergence::Jsd(beta) => (student, teacher, [keep_student, keep_teacher], Some(beta)),
        };
        let (s, t) = (into_contiguous(s), into_contiguous(t));
        let (dtype, acc) = (s.dtype, accumulator(s.dtype));
        let n = s.meta.shape()[0];
        let rows = empty(&s, &[n], dtype);
        let [gs, gt] = planes(&s, keep);
        let (count, dim) = grid(n);
        let scalar = |v: f64| InputScalar::new(v, dtype_to_storage_type(acc));
        kd_kernel::launch(
            &s.client.clone(),
            count,
            dim,
            s.into_tensor_arg(),
            t.into_tensor_arg(),
            rows.clone().into_tensor_arg(),
            gs.clone().into_tensor_arg(),
            gt.clone().into_tensor_arg(),
            scalar(inv_t),
            scalar(beta.unwrap_or(0.0)),
            beta.is_some(),
            keep[0],
            keep[1],
            [dtype_to_storage_type(dtype), dtype_to_storage_type(acc)],
        );
        let (gs, gt) = (
            Plane::of(keep[0].then_some(gs)),
            Plane::of(keep[1].then_some(gt)),
        );
        match divergence {
            Divergence::ReverseKl => (rows, gt, gs),
            _ => (rows, gs, gt),
        }
    }

    fn fused_dkd(
        student: CubeTensor,
        teacher: CubeTensor,
        targets: CubeTensor,
        inv_t: f64,
        joint: Joint,
        alpha: f64,
        beta: f64,
        keep_student: bool,
        keep_teacher: bool,
    ) -> (CubeTensor, CubeTensor, Plane<Self>, Plane<Self>) {
        let (s, t, y) = (
            into_contiguous(student),
            into_contiguous(teacher),
            into_contiguous(targets),
        );
        let (dtype, acc) = (s.dtype, accumulator(s.dtype));
        let n = s.meta.shape()[0];
        let rows = empty(&s, &[n], dtype);
        let parts = empty(&s, &[n, 2], dtype);
        let keep = [keep_student, keep_teacher];
        let [gs, gt] = planes(&s, keep);
        let (code, mix) = match joint {
            Joint::Teacher => (0, 1.0),
            Joint::Max => (1, 1.0),
            Joint::Mix(w) => (2, w),
        };
        let (count, dim) = grid(n);
        let scalar = |v: f64| InputScalar::new(v, dtype_to_storage_type(acc));
        let int = y.dtype;
        dkd_kernel::launch(
            &s.client.clone(),
            count,
            dim,
            s.into_tensor_arg(),
            t.into_tensor_arg(),
            y.into_tensor_arg(),
            rows.clone().into_tensor_arg(),
            parts.clone().into_tensor_arg(),
            gs.clone().into_tensor_arg(),
            gt.clone().into_tensor_arg(),
            scalar(inv_t),
            scalar(alpha),
            scalar(beta),
            scalar(mix),
            code,
            keep[0],
            keep[1],
            [
                dtype_to_storage_type(dtype),
                dtype_to_storage_type(acc),
                dtype_to_storage_type(int),
            ],
        );
        let (gs, gt) = (
            Plane::of(keep[0].then_some(gs)),
            Plane::of(keep[1].then_some(gt)),
        );
        (rows, parts, gs, gt)
    }

    fn fused_gather_log_softmax(
        z: CubeTensor,
        ids: CubeTensor,
        inv_t: f64,
    ) -> (CubeTensor, CubeTensor) {
        let (z, ids) = (into_contiguous(z), into_contiguous(ids));
        let (dtype, acc, int) = (z.dtype, accumulator(z.dtype), ids.dtype);
        let (n, kk) = (z.meta.shape()[0], ids.meta.shape()[1]);
        let out = empty(&z, &[n, kk], dtype);
        let pieces = empty(&z, &[n, 2], dtype);
        let (count, dim) = grid(n);
        gather_kernel::launch(
            &z.client.clone(),
            count,
            dim,
            z.into_tensor_arg(),
            ids.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            pieces.clone().into_tensor_arg(),
            InputScalar::new(inv_t, dtype_to_storage_type(acc)),
            [
                dtype_to_storage_type(dtype),
                dtype_to_storage_type(acc),
                dtype_to_storage_type(int),
            ],
        );
        (out, pieces)
    }

    fn fused_gather_log_softmax_backward(
        z: CubeTensor,
        ids: CubeTensor,
        pieces: CubeTensor,
        g: CubeTensor,
        inv_t: f64,
    ) -> CubeTensor {
        let (z, ids) = (into_contiguous(z), into_contiguous(ids));
        let (pieces, g) = (into_contiguous(pieces), into_contiguous(g));
        let (dtype, acc, int) = (z.dtype, accumulator(z.dtype), ids.dtype);
        let [n, c] = [z.meta.shape()[0], z.meta.shape()[1]];
        let grad = empty(&z, &[n, c], dtype);
        let (count, dim) = grid(n);
        gather_back_kernel::launch(
            &z.client.clone(),
            count,
            dim,
            z.into_tensor_arg(),
            ids.into_tensor_arg(),
            pieces.into_tensor_arg(),
            g.into_tensor_arg(),
            grad.clone().into_tensor_arg(),
            InputScalar::new(inv_t, dtype_to_storage_type(acc)),
            [
                dtype_to_storage_type(dtype),
                dtype_to_storage_type(acc),
                dtype_to_storage_type(int),
            ],
        );
        grad
    }
}
