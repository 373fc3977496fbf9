//! The CPU kernels of the fused logit objectives: one row at a time, in three short passes over
//! an L1-resident row (maximum; exponentials and sums; probabilities and residuals), with a
//! vectorised `exp`. Generic over `f32` and `f64`; on x86-64 the `f32` code is compiled a
//! second time for AVX2 + FMA and picked at run time.

// burn 0.22 deprecates its ndarray backend, which this crate still serves
#![cfg_attr(feature = "ndarray", allow(deprecated))]

use num_traits::Float;

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Divergence, Joint};

/// Threads the kernels use: 0 = every core (the default), else at most this many.
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// A call below this many logits runs on one thread (handing a block to another thread costs
/// about as much as the kernel on a few thousand logits, and the blocks must be large enough
/// to amortise the first touch of their gradient plane).
const MIN_PER_THREAD: usize = 1 << 16;

/// Sets the threads the fused kernels split their rows over: `0` (the default) uses every
/// core for calls large enough to pay (64K logits a thread); `n ≥ 1` uses at most `n`
/// threads whatever the size (`1`: single-threaded). The results do not depend on it: each
/// row is computed by one thread, in the same order of operations.
pub fn set_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// How many threads a call over `rows` rows of `c` logits uses.
fn threads_for(rows: usize, c: usize) -> usize {
    let want = match THREADS.load(Ordering::Relaxed) {
        0 => {
            let cores = rayon::current_num_threads();
            cores.min((rows * c / MIN_PER_THREAD).max(1))
        }
        n => n,
    };
    want.clamp(1, rows.max(1))
}

/// A float the kernels run in: `f32` (vectorised polynomial `exp`) or `f64` (the standard
/// library's `exp`, for reference-precision runs).
pub trait Real: Float + Copy + Send + Sync + core::fmt::Debug + 'static {
    /// `exp` of 8 lanes; exactly 0 below the smallest normal result (`x < −87.3`), saturating
    /// at `exp(88)` above (the kernels only take `x ≤ 0`).
    fn exp8<const FMA: bool>(x: [Self; 8]) -> [Self; 8];
    /// Converts from `f64`.
    fn of(x: f64) -> Self;
    /// The contiguous buffer of a flex tensor of this type.
    #[cfg(feature = "flex")]
    fn flex_slice(t: &burn::backend::flex::FlexTensor) -> Option<&[Self]>;
    /// The buffer of a uniquely owned flex tensor of this type, for writing in place.
    #[cfg(feature = "flex")]
    fn flex_slice_mut(t: &mut burn::backend::flex::FlexTensor) -> Option<&mut [Self]>;
    /// The buffer of an ndarray tensor of this type in standard layout.
    #[cfg(feature = "ndarray")]
    fn ndarray_slice(t: &burn::backend::ndarray::NdArrayTensor) -> Option<&[Self]>;
}

/// The backend accessors of [`Real`], for one concrete type and its ndarray variant.
macro_rules! backend_access {
    ($variant:ident) => {
        #[cfg(feature = "ndarray")]
        fn ndarray_slice(t: &burn::backend::ndarray::NdArrayTensor) -> Option<&[Self]> {
            match t {
                burn::backend::ndarray::NdArrayTensor::$variant(s) => s.view().to_slice(),
                _ => None,
            }
        }

        #[cfg(feature = "flex")]
        fn flex_slice(t: &burn::backend::flex::FlexTensor) -> Option<&[Self]> {
            t.as_slice::<Self>()
        }

        #[cfg(feature = "flex")]
        fn flex_slice_mut(t: &mut burn::backend::flex::FlexTensor) -> Option<&mut [Self]> {
            match t.is_contiguous() && t.layout().start_offset() == 0 {
                true => t.try_storage_mut::<Self>(),
                false => None,
            }
        }
    };
}

impl Real for f32 {
    #[inline(always)]
    fn exp8<const FMA: bool>(x: [f32; 8]) -> [f32; 8] {
        // x = n·ln2 + r, |r| ≤ ln2/2; exp(r) by a degree-6 polynomial; 2ⁿ through the exponent
        // bits. n is rounded with the 1.5·2²³ float-add trick, so baseline SSE2 vectorises it.
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        const MAGIC: f32 = 12_582_912.0;
        const P: [f32; 7] = [
            0.001_388_889,
            0.008_333_334,
            0.041_666_668,
            0.166_666_67,
            0.5,
            1.0,
            1.0,
        ];
        let mad = |a: f32, b: f32, c: f32| if FMA { a.mul_add(b, c) } else { a * b + c };
        let mut out = [0.0; 8];
        for i in 0..8 {
            // max/min vectorise to maxps/minps; clamp's NaN rule would cost a blend
            #[allow(clippy::manual_clamp)]
            let v = x[i].max(-87.3).min(88.0);
            let t = mad(v, LOG2E, MAGIC);
            let n = t - MAGIC;
            let r = mad(n, -LN2_LO, mad(n, -LN2_HI, v));
            let p = P[1..].iter().fold(P[0], |p, &c| mad(p, r, c));
            let bits = t.to_bits().wrapping_sub(MAGIC.to_bits());
            let e = p * f32::from_bits(bits.wrapping_add(127) << 23);
            // exactly 0 below the range (a NaN row is caught by the kernels' max pass)
            out[i] = if x[i] >= -87.3 { e } else { 0.0 };
        }
        out
    }

    #[inline(always)]
    fn of(x: f64) -> f32 {
        x as f32
    }

    backend_access!(F32);
}

impl Real for f64 {
    #[inline(always)]
    fn exp8<const FMA: bool>(x: [f64; 8]) -> [f64; 8] {
        x.map(f64::exp)
    }

    #[inline(always)]
    fn of(x: f64) -> f64 {
        x
    }

    backend_access!(F64);
}

/// `dst[j] = exp(scale · (src[j] − shift))`, returning `Σ dst[j]`.
#[inline(always)]
fn exp_shifted<F: Real, const FMA: bool>(src: &[F], shift: F, scale: F, dst: &mut [F]) -> F {
    let mut acc = [F::zero(); 8];
    let (chunks, tail) = (src.len() / 8, src.len() % 8);
    for (s, d) in src.chunks_exact(8).zip(dst.chunks_exact_mut(8)) {
        let mut x = [F::zero(); 8];
        for i in 0..8 {
            x[i] = (s[i] - shift) * scale;
        }
        let e = F::exp8::<FMA>(x);
        d.copy_from_slice(&e);
        for i in 0..8 {
            acc[i] = acc[i] + e[i];
        }
    }
    let mut sum = acc.iter().fold(F::zero(), |a, &b| a + b);
    if tail > 0 {
        let mut x = [F::neg_infinity(); 8];
        for i in 0..tail {
            x[i] = (src[chunks * 8 + i] - shift) * scale;
        }
        let e = F::exp8::<FMA>(x);
        for i in 0..tail {
            dst[chunks * 8 + i] = e[i];
            sum = sum + e[i];
        }
    }
    sum
}

/// A row pair's softmax pieces at scale `k`: the maxima `ms`, `mt` and the sums `ss`, `st` of
/// `exp(k·(x − max))`, whose terms go into `es` and `et`; `None` when either row holds a
/// non-finite entry.
#[inline(always)]
fn softmax_pieces<F: Real, const FMA: bool>(
    s: &[F],
    t: &[F],
    k: F,
    es: &mut [F],
    et: &mut [F],
) -> Option<[F; 4]> {
    let (ms, mt) = (max(s), max(t));
    if ms.is_nan() || mt.is_nan() {
        return None;
    }
    let ss = exp_shifted::<F, FMA>(s, ms, k, es);
    let st = exp_shifted::<F, FMA>(t, mt, k, et);
    Some([ms, mt, ss, st])
}

/// The largest entry (−∞ for an empty slice), or NaN when an entry is not finite: the
/// kernels then give the row NaN, as the composed ops would.
#[inline(always)]
#[allow(clippy::eq_op)] // v − v tests finiteness
fn max<F: Real>(x: &[F]) -> F {
    let (mut acc, mut bad) = ([F::neg_infinity(); 8], [F::zero(); 8]);
    for c in x.chunks_exact(8) {
        for i in 0..8 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
            // v − v is 0, or NaN for ±∞ and NaN
            bad[i] = bad[i] + (c[i] - c[i]);
        }
    }
    let tail = &x[x.len() / 8 * 8..];
    let m = acc
        .iter()
        .chain(tail)
        .fold(F::neg_infinity(), |m, &v| if v > m { v } else { m });
    let b = bad.iter().chain(tail).fold(F::zero(), |b, &v| b + (v - v));
    if b == F::zero() { m } else { F::nan() }
}

/// `Σ e[j] · ((t[j] − mt) − (s[j] − ms))`: the teacher-weighted logit gap, shifted by each row's
/// maximum so that it stays accurate for logits of any magnitude.
#[inline(always)]
fn weighted_gap<F: Real>(e: &[F], s: &[F], t: &[F], ms: F, mt: F) -> F {
    let mut acc = [F::zero(); 8];
    let chunks = e.len() / 8 * 8;
    for ((ec, sc), tc) in e
        .chunks_exact(8)
        .zip(s.chunks_exact(8))
        .zip(t.chunks_exact(8))
    {
        for i in 0..8 {
            acc[i] = acc[i] + ec[i] * ((tc[i] - mt) - (sc[i] - ms));
        }
    }
    let mut sum = acc.iter().fold(F::zero(), |a, &b| a + b);
    for j in chunks..e.len() {
        sum = sum + e[j] * ((t[j] - mt) - (s[j] - ms));
    }
    sum
}

/// One fused call's inputs and outputs, row-major: logits `[n, c]`, the per-sample losses,
/// and the gradient planes `[n, c]` of the student and the teacher (empty when not wanted).
pub struct Job<'a, F> {
    /// Student logits.
    pub s: &'a [F],
    /// Teacher logits.
    pub t: &'a [F],
    /// Classes per row.
    pub c: usize,
    /// `1/T`.
    pub inv_t: f64,
    /// Per-sample outputs: KD `[n]`, DKD `[n, 2]`.
    pub rows: &'a mut [F],
    /// The student's gradient plane.
    pub student: &'a mut [F],
    /// The teacher's gradient plane.
    pub teacher: &'a mut [F],
}

impl<'a, F: Send + Sync> Job<'a, F> {
    /// The job as `parts` jobs over consecutive blocks of rows (`per_row` outputs a row).
    fn split(self, parts: usize, per_row: usize) -> Vec<(usize, Job<'a, F>)> {
        let Job {
            mut s,
            mut t,
            c,
            inv_t,
            mut rows,
            mut student,
            mut teacher,
        } = self;
        let n = rows.len() / per_row;
        let mut out = Vec::with_capacity(parts);
        let mut start = 0;
        for len in block_lens(n, parts) {
            let cut = |x: &mut &'a [F]| {
                let (a, b) = x.split_at(len * c);
                *x = b;
                a
            };
            let cut_mut = |x: &mut &'a mut [F], width: usize| {
                let at = (len * width).min(x.len());
                let (a, b) = std::mem::take(x).split_at_mut(at);
                *x = b;
                a
            };
            let job = Job {
                s: cut(&mut s),
                t: cut(&mut t),
                c,
                inv_t,
                rows: cut_mut(&mut rows, per_row),
                student: cut_mut(&mut student, c),
                teacher: cut_mut(&mut teacher, c),
            };
            out.push((start, job));
            start += len;
        }
        out
    }
}

/// Runs `kernel` on `job` split over [`threads_for`] threads (tasks on rayon's pool, which
/// burn's flex shares, so the two never oversubscribe the cores; one block of rows each,
/// so every row is computed exactly as on one thread). `kernel` gets each block's first row.
fn on_threads<'a, F: Send + Sync>(
    job: Job<'a, F>,
    per_row: usize,
    kernel: impl Fn(usize, Job<'a, F>) + Sync,
) {
    let threads = threads_for(job.rows.len() / per_row, job.c);
    if threads == 1 {
        return kernel(0, job);
    }
    on_pool(job.split(threads, per_row), kernel);
}

/// The lengths of `parts` consecutive blocks of `n` rows (the first `n % parts` one longer).
fn block_lens(n: usize, parts: usize) -> impl Iterator<Item = usize> {
    (0..parts).map(move |p| n / parts + usize::from(p < n % parts))
}

/// Runs `kernel` on each `(first row, block)` as tasks on rayon's pool, the first block on
/// the calling thread.
fn on_pool<T: Send>(blocks: Vec<(usize, T)>, kernel: impl Fn(usize, T) + Sync) {
    rayon::scope(|scope| {
        let mut blocks = blocks.into_iter();
        let first = blocks.next();
        for (start, part) in blocks {
            let kernel = &kernel;
            scope.spawn(move |_| kernel(start, part));
        }
        if let Some((start, part)) = first {
            kernel(start, part);
        }
    });
}

/// Runs `$rows::<F, FMA>` with AVX2 + FMA code where the CPU has them, baseline code otherwise.
macro_rules! simd_dispatch {
    ($f:ty; $rows:ident, $avx2:ident, ($($arg:ident: $ty:ty),*)) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2<F: Real>($($arg: $ty),*) {
            $rows::<F, true>($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            return unsafe { $avx2::<$f>($($arg),*) };
        }
        $rows::<$f, false>($($arg),*)
    };
}

/// Per-sample `KL(softmax(t/T) ‖ softmax(s/T))` into `job.rows` (`[n]`), and its gradient
/// planes w.r.t. the raw logits (see [`kd_row`]).
pub fn kd<F: Real + Send + Sync>(job: Job<F>) {
    on_threads(job, 1, |_, part| kd_block(part));
}

fn kd_block<F: Real>(job: Job<F>) {
    simd_dispatch!(F; kd_rows, kd_avx2, (job: Job<F>));
}

#[inline(always)]
fn kd_rows<F: Real, const FMA: bool>(job: Job<F>) {
    let Job {
        s,
        t,
        c,
        inv_t,
        rows,
        student,
        teacher,
    } = job;
    let k = F::of(inv_t);
    let mut scratch = Scratch::new(c);
    for (n, row) in rows.iter_mut().enumerate() {
        let r = n * c..(n + 1) * c;
        let planes = [plane_row(student, &r), plane_row(teacher, &r)];
        let pair = [&s[r.clone()], &t[r]];
        *row = kd_row::<F, FMA>(pair, k, &mut scratch, F::one(), planes);
    }
}

/// Row `r` of a gradient plane, or `None` when the plane is not wanted (empty).
fn plane_row<'a, F>(plane: &'a mut [F], r: &std::ops::Range<usize>) -> Option<&'a mut [F]> {
    (!plane.is_empty()).then(|| &mut plane[r.clone()])
}

/// Per-row work space: a few rows of `c` floats, reused across rows.
struct Scratch<F>([Vec<F>; 4]);

impl<F: Real> Scratch<F> {
    fn new(c: usize) -> Self {
        Self(std::array::from_fn(|_| vec![F::zero(); c]))
    }
}

/// One row's `KL(softmax(k·t) ‖ softmax(k·s))`, and `w` times its gradient planes w.r.t. the
/// raw logits, into `gs` (the student's, `k·(p_s − p_t)`) and `gt` (the teacher's,
/// `k·p_t ⊙ (log p_t − log p_s − KL)`) where given. A row holding a non-finite entry gets NaN,
/// in its value and its planes, as the composed ops would give.
#[inline(always)]
fn kd_row<F: Real, const FMA: bool>(
    [s, t]: [&[F]; 2],
    k: F,
    scratch: &mut Scratch<F>,
    w: F,
    [gs, gt]: [Option<&mut [F]>; 2],
) -> F {
    let [es, et, ..] = &mut scratch.0;
    let Some([ms, mt, ss, st]) = softmax_pieces::<F, FMA>(s, t, k, es, et) else {
        return nan_row([gs, gt]);
    };
    // KL = Σ p_t (z_t − z_s) − lse_t + lse_s, with the maxima cancelled analytically
    let log_ratio = (ss / st).ln();
    let kl = k * weighted_gap(et, s, t, ms, mt) / st + log_ratio;
    let (a, b) = (F::one() / ss, F::one() / st);
    if let Some(g) = gs {
        for ((g, &e), &f) in g.iter_mut().zip(es.iter()).zip(et.iter()) {
            *g = w * (k * (e * a - f * b));
        }
    }
    if let Some(g) = gt {
        let shift = log_ratio - kl;
        for (j, g) in g.iter_mut().enumerate() {
            let log_ratio = k * ((t[j] - mt) - (s[j] - ms)) + shift;
            *g = w * (k * et[j] * b * log_ratio);
        }
    }
    kl
}

/// Per-sample generalized JSD(β) of `softmax(s/T)` and `softmax(t/T)`, `0 < β < 1`, into
/// `job.rows` (`[n]`), and its gradient planes w.r.t. the raw logits (see [`jsd_row`]).
pub fn jsd<F: Real + Send + Sync>(job: Job<F>, beta: f64) {
    on_threads(job, 1, |_, part| jsd_block(part, beta));
}

fn jsd_block<F: Real>(job: Job<F>, beta: f64) {
    simd_dispatch!(F; jsd_rows, jsd_avx2, (job: Job<F>, beta: f64));
}

#[inline(always)]
fn jsd_rows<F: Real, const FMA: bool>(job: Job<F>, beta: f64) {
    let Job {
        s,
        t,
        c,
        inv_t,
        rows,
        student,
        teacher,
    } = job;
    let k = F::of(inv_t);
    let mut scratch = Scratch::new(c);
    for (n, row) in rows.iter_mut().enumerate() {
        let r = n * c..(n + 1) * c;
        let planes = [plane_row(student, &r), plane_row(teacher, &r)];
        let pair = [&s[r.clone()], &t[r]];
        *row = jsd_row::<F, FMA>(pair, k, beta, &mut scratch, F::one(), planes);
    }
}

/// One row's generalized JSD `β·KL(p_t ‖ m) + (1 − β)·KL(p_s ‖ m)`, `m = (1 − β)·p_s + β·p_t`,
/// `p = softmax(k·z)`, `0 < β < 1`, and `w` times its gradient planes w.r.t. the raw logits:
/// `(1 − β)·k·p_s ⊙ (log p_s − log m − KL(p_s ‖ m))` for the student,
/// `β·k·p_t ⊙ (log p_t − log m − KL(p_t ‖ m))` for the teacher. The log-probabilities come
/// from the shifted logits (exact for logits of any magnitude), `log m` from the mixture of
/// the probabilities (an entry where both underflow to 0 contributes 0). Non-finite rows give
/// NaN, as in [`kd_row`].
#[inline(always)]
fn jsd_row<F: Real, const FMA: bool>(
    [s, t]: [&[F]; 2],
    k: F,
    beta: f64,
    scratch: &mut Scratch<F>,
    w: F,
    [gs, gt]: [Option<&mut [F]>; 2],
) -> F {
    let (ws, wt) = (F::of(1.0 - beta), F::of(beta));
    // probabilities, then the log-ratios log p − log m
    let [ps, pt, ds, dt] = &mut scratch.0;
    let Some([ms, mt, ss, st]) = softmax_pieces::<F, FMA>(s, t, k, ps, pt) else {
        return nan_row([gs, gt]);
    };
    let (a, b, ls, lt) = (F::one() / ss, F::one() / st, ss.ln(), st.ln());
    let (mut kl_s, mut kl_t) = (F::zero(), F::zero());
    for j in 0..s.len() {
        let (p, q) = (ps[j] * a, pt[j] * b);
        let m = ws * p + wt * q;
        let (dsj, dtj) = match m > F::zero() {
            true => {
                let lm = m.ln();
                (k * (s[j] - ms) - ls - lm, k * (t[j] - mt) - lt - lm)
            }
            false => (F::zero(), F::zero()),
        };
        kl_s = kl_s + p * dsj;
        kl_t = kl_t + q * dtj;
        (ps[j], pt[j], ds[j], dt[j]) = (p, q, dsj, dtj);
    }
    let plane = |g: &mut [F], p: &[F], d: &[F], v: F, kl: F| {
        for ((g, &p), &d) in g.iter_mut().zip(p).zip(d) {
            *g = w * (v * k * p * (d - kl));
        }
    };
    if let Some(g) = gs {
        plane(g, ps, ds, ws, kl_s);
    }
    if let Some(g) = gt {
        plane(g, pt, dt, wt, kl_t);
    }
    wt * kl_t + ws * kl_s
}

/// A non-finite row: NaN planes (where given) and a NaN value.
fn nan_row<F: Real>(planes: [Option<&mut [F]>; 2]) -> F {
    for g in planes.into_iter().flatten() {
        g.fill(F::nan());
    }
    F::nan()
}

/// What one chunk of the lm-head path ([`token_step`]) reads, shared by its row blocks.
pub struct Step<'a, F> {
    /// Teacher logits `[n, c]`, row-major.
    pub t: &'a [F],
    /// Classes per row.
    pub c: usize,
    /// `1/T`.
    pub inv_t: f64,
    /// The divergence.
    pub divergence: Divergence,
    /// Per-row weights `[n]`; a row of weight 0 gets value 0 and a zero gradient, whatever
    /// its logits.
    pub weights: &'a [F],
    /// The weight of the divergence (times `T²` where the objective has it).
    pub soft: F,
    /// The weight of the hard cross-entropy (at `T = 1`) on `targets`.
    pub hard: F,
    /// Per-row targets (in range) when `hard ≠ 0`, else empty.
    pub targets: &'a [usize],
}

/// The rows of `step`: per-row totals `w·(soft·D(s, t) + hard·CE(s, y))` into `rows` (`[n]`)
/// and, written over the student's logits `s` (`[n, c]`), their gradient w.r.t. them (each row
/// is copied aside first, so the kernel reads it there and writes the gradient in its place).
/// Rows are split over threads as in the other kernels: the results do not depend on the
/// thread count.
pub fn token_step<F: Real + Send + Sync>(step: &Step<F>, s: &mut [F], rows: &mut [F]) {
    let n = rows.len();
    let (mut s, mut rows, mut start) = (s, rows, 0);
    let mut blocks = Vec::new();
    for len in block_lens(n, threads_for(n, step.c)) {
        let (a, rest) = std::mem::take(&mut s).split_at_mut(len * step.c);
        let (r, rest_rows) = std::mem::take(&mut rows).split_at_mut(len);
        (s, rows) = (rest, rest_rows);
        blocks.push((start, (a, r)));
        start += len;
    }
    on_pool(blocks, |start, (s, rows)| step_block(step, start, s, rows));
}

fn step_block<F: Real>(step: &Step<F>, start: usize, s: &mut [F], rows: &mut [F]) {
    simd_dispatch!(F; step_rows, step_avx2, (step: &Step<F>, start: usize, s: &mut [F], rows: &mut [F]));
}

/// [`token_step`] on the block of rows starting at row `start`.
#[inline(always)]
fn step_rows<F: Real, const FMA: bool>(step: &Step<F>, start: usize, s: &mut [F], rows: &mut [F]) {
    let (c, soft, hard) = (step.c, step.soft, step.hard);
    let k = F::of(step.inv_t);
    let mut scratch = Scratch::new(c);
    let mut own = vec![F::zero(); c];
    for (n, (g, value)) in s.chunks_exact_mut(c).zip(rows.iter_mut()).enumerate() {
        let row = start + n;
        let w = step.weights[row];
        if w == F::zero() {
            g.fill(F::zero());
            *value = F::zero();
            continue;
        }
        own.copy_from_slice(g);
        let (s, t) = (&own[..], &step.t[row * c..(row + 1) * c]);
        let ws = w * soft;
        let mut v = match step.divergence {
            _ if soft == F::zero() => {
                g.fill(F::zero());
                F::zero()
            }
            Divergence::Kl => kd_row::<F, FMA>([s, t], k, &mut scratch, ws, [Some(g), None]),
            Divergence::ReverseKl => kd_row::<F, FMA>([t, s], k, &mut scratch, ws, [None, Some(g)]),
            Divergence::Jsd(beta) => {
                jsd_row::<F, FMA>([s, t], k, beta, &mut scratch, ws, [Some(g), None])
            }
        } * ws;
        if hard != F::zero() {
            // CE(s, y) = log Σ exp(s) − s_y; its gradient softmax(s) − onehot(y)
            let (y, wh, e) = (step.targets[row], w * hard, &mut scratch.0[0]);
            let m = max(s);
            let sum = exp_shifted::<F, FMA>(s, m, F::one(), e);
            let inv = F::one() / sum;
            for (g, &e) in g.iter_mut().zip(e.iter()) {
                *g = *g + wh * (e * inv);
            }
            g[y] = g[y] - wh;
            v = v + wh * (m + sum.ln() - s[y]);
        }
        *value = v;
    }
}

/// One row's decomposition around its target `y`, at inverse temperature `k`: the exponentials
/// of the non-target logits (relative to their maximum; the target's slot left at 0) and the
/// log-space quantities of DKD's split.
struct Split<F> {
    /// `max_{j≠y} x_j`.
    m: F,
    /// `Σ_{j≠y} e_j`.
    sum: F,
    /// `log b = [log p_y, log Σ_{j≠y} p_j]`.
    log_b: [F; 2],
    /// Whether `y` is the row's arg-max (the first maximum, as burn's `argmax`).
    top: bool,
}

impl<F: Real> Split<F> {
    /// The split of row `x` around `y` (see [`Split`]).
    #[inline(always)]
    fn new<const FMA: bool>(x: &[F], y: usize, k: F, e: &mut [F]) -> Self {
        let (lo, hi) = (max(&x[..y]), max(&x[y + 1..]));
        // NaN from either side stays NaN (`max` would drop it)
        let m = if lo.is_nan() || hi.is_nan() {
            F::nan()
        } else {
            lo.max(hi)
        };
        let sum = exp_shifted::<F, FMA>(&x[..y], m, k, &mut e[..y])
            + exp_shifted::<F, FMA>(&x[y + 1..], m, k, &mut e[y + 1..]);
        e[y] = F::zero();
        // a = z_y, b = log Σ_{j≠y} exp z_j; each side of log b from the gap alone (exact when
        // one side is tiny: a − logaddexp(a, b) would lose it at large logits)
        let gap = x[y] * k - (m * k + sum.ln());
        Split {
            m,
            sum,
            log_b: [-softplus(-gap), -softplus(gap)],
            top: x[y] > lo && x[y] >= hi,
        }
    }
}

/// `ln(1 + eˣ)`, exact for any `x` (`x = ±∞` included).
#[inline(always)]
fn softplus<F: Real>(x: F) -> F {
    match x > F::zero() {
        true => x + (-x).exp().ln_1p(),
        false => x.exp().ln_1p(),
    }
}

/// `ln(exp a + exp b)`.
#[inline(always)]
fn logaddexp<F: Real>(a: F, b: F) -> F {
    if a == F::neg_infinity() {
        return b;
    }
    let hi = a.max(b);
    hi + (-(a - b).abs()).exp().ln_1p()
}

/// What a decoupled kernel needs besides the logits.
pub struct Parts<'a, F> {
    /// Each row's target class (in range).
    pub targets: &'a [usize],
    /// The joint target-class rule.
    pub joint: Joint,
    /// The weights `(w_tc, w_nc)` of the two parts in the gradient planes.
    pub weights: [F; 2],
}

/// Per-sample `(TCKD, NCKD)` of DKD (or DCKD, through the joint rule) into `job.rows`
/// (`[n, 2]`), and the gradient planes of `w_tc·TCKD + w_nc·NCKD` w.r.t. the raw logits.
pub fn dkd<F: Real + Send + Sync>(job: Job<F>, parts: &Parts<F>) {
    on_threads(job, 2, |start, part| {
        let rows = part.rows.len() / 2;
        let block = Parts {
            targets: &parts.targets[start..start + rows],
            joint: parts.joint,
            weights: parts.weights,
        };
        dkd_block(part, &block)
    });
}

fn dkd_block<F: Real>(job: Job<F>, parts: &Parts<F>) {
    simd_dispatch!(F; dkd_rows, dkd_avx2, (job: Job<F>, parts: &Parts<F>));
}

#[inline(always)]
fn dkd_rows<F: Real, const FMA: bool>(job: Job<F>, parts: &Parts<F>) {
    let Job {
        s,
        t,
        c,
        inv_t,
        rows,
        student,
        teacher,
    } = job;
    let k = F::of(inv_t);
    let mut es = vec![F::zero(); c];
    let mut et = vec![F::zero(); c];
    for (n, &y) in parts.targets.iter().enumerate() {
        let r = n * c..(n + 1) * c;
        let (s, t) = (&s[r.clone()], &t[r.clone()]);
        let ps = Split::new::<FMA>(s, y, k, &mut es);
        let pt = Split::new::<FMA>(t, y, k, &mut et);
        if ps.m.is_nan() || pt.m.is_nan() || !(s[y] + t[y]).is_finite() {
            rows[2 * n..2 * n + 2].fill(F::nan());
            nan_row([plane_row(student, &r), plane_row(teacher, &r)]);
            continue;
        }
        // NCKD = KL(p̂_t ‖ p̂_s) over the non-target classes (the target's e is 0)
        let log_ratio = (ps.sum / pt.sum).ln();
        let nckd = k * weighted_gap(&et, s, t, ps.m, pt.m) / pt.sum + log_ratio;
        // the joint target-class distribution b* = w·b_t + (1 − w)·sg(b_s)
        let correct = ps.top;
        let w = match parts.joint {
            Joint::Teacher => 1.0,
            Joint::Max if correct && ps.log_b[0] > pt.log_b[0] => 0.0,
            Joint::Max => 1.0,
            Joint::Mix(w) if correct => w,
            Joint::Mix(_) => 1.0,
        };
        // log(w·b_t + (1 − w)·b_s); exact for w = 1 and w = 0 (ln 0 = −∞ drops a side)
        let log_joint = [0, 1].map(|i| {
            logaddexp(
                F::of(w.ln()) + pt.log_b[i],
                F::of((1.0 - w).ln()) + ps.log_b[i],
            )
        });
        let bs = ps.log_b.map(F::exp);
        let bt = pt.log_b.map(F::exp);
        let bj = log_joint.map(F::exp);
        let gap = [0, 1].map(|i| log_joint[i] - ps.log_b[i]);
        rows[2 * n] = bj[0] * gap[0] + bj[1] * gap[1];
        rows[2 * n + 1] = nckd;
        let (a, b) = (F::one() / ps.sum, F::one() / pt.sum);
        let [wt, wn] = parts.weights;
        let g = n * c..(n + 1) * c;
        if !student.is_empty() {
            // bₛ₀ − b*₀ = b*₁ − bₛ₁, from the side where both are small (exact there)
            let d = match bs[0] + bj[0] <= F::one() {
                true => bs[0] - bj[0],
                false => bj[1] - bs[1],
            };
            // NCKD: (p̂ₛⱼ − p̂ₜⱼ)/T, taken first (where p̂ₛⱼ ≈ p̂ₜⱼ ≈ 1 it is exactly 0 and the
            // TCKD part below survives whole); TCKD: −p̂ₛⱼ d/T off the target, d/T at it
            let (ns, nt, ts) = (wn * k * a, wn * k * b, wt * k * d * a);
            for ((g, &e), &f) in student[g.clone()].iter_mut().zip(&es).zip(&et) {
                *g = (e * ns - f * nt) - e * ts;
            }
            student[n * c + y] = wt * k * d;
        }
        if !teacher.is_empty() {
            // TCKD through b_t: u_i = w·b_t,i·(log b*_i − log b_s,i + 1)
            let wf = F::of(w);
            let u = [0, 1].map(|i| wf * bt[i] * (gap[i] + F::one()));
            let total = u[0] + u[1];
            // NCKD: p̂ₜⱼ (log p̂ₜⱼ − log p̂ₛⱼ − NCKD)/T
            let base = wt * k * (u[1] - bt[1] * total) * b + wn * k * b * (log_ratio - nckd);
            let slope = wn * k * b * k;
            for (j, g) in teacher[g].iter_mut().enumerate() {
                *g = et[j] * (base + slope * ((t[j] - pt.m) - (s[j] - ps.m)));
            }
            teacher[n * c + y] = wt * k * (u[0] - bt[0] * total);
        }
    }
}

/// The backward pass of a fused op: each row of its gradient plane (`[n, c]`) times the
/// incoming per-sample gradient `g` (`[n]`), in place.
pub fn combine<F: Real>(plane: &mut [F], g: &[F], c: usize) {
    // one thread: a second one made the whole call slower on this 2-core machine (one
    // streaming pass is memory-bound), see docs/performance.md
    for (row, &w) in plane.chunks_exact_mut(c).zip(g) {
        for v in row.iter_mut() {
            *v = *v * w;
        }
    }
}

/// `acc ← [acc +] op(a)·b` in place (gemm, on the kernels' threads), all row-major: `acc`
/// `[m, n]`, `b` `[k, n]`, and `op(a)` `[m, k]`: `a` itself, or `a` `[k, m]` read transposed
/// (`transpose_a`). `acc` is read only when `accumulate`. Each element of `acc` is summed
/// over `k` in the same order whatever the thread count (gemm splits the output, not the
/// sum).
pub fn gemm_into<F: Real>(
    acc: &mut [F],
    a: &[F],
    b: &[F],
    [m, k, n]: [usize; 3],
    transpose_a: bool,
    accumulate: bool,
) {
    assert!(
        acc.len() == m * n && a.len() == k * m && b.len() == k * n,
        "gemm_into shapes"
    );
    let threads = match THREADS.load(Ordering::Relaxed) {
        0 => rayon::current_num_threads(),
        t => t,
    };
    let parallelism = match threads {
        1 => gemm::Parallelism::None,
        t => gemm::Parallelism::Rayon(t),
    };
    // op(a)'s column and row strides
    let (a_cs, a_rs) = match transpose_a {
        true => (m as isize, 1),
        false => (1, k as isize),
    };
    let n_ = n as isize;
    // SAFETY: the three buffers have the asserted lengths; the strides describe row-major
    // `acc` (m × n), `op(a)` (m × k) and `b` (k × n).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            acc.as_mut_ptr(),
            1,
            n_,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            1,
            n_,
            F::one(),
            F::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Whether the CPU runs AVX2 and FMA (checked once).
#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// `exp` of every element of `x` in place, with the kernels' vectorised `exp` (AVX2 + FMA
/// when the CPU has them): the floor any fused KD or DKD runs against.
pub fn exp_in_place(x: &mut [f32]) {
    simd_dispatch!(f32; exp_slice, exp_avx2, (x: &mut [F]));
}

#[inline(always)]
fn exp_slice<F: Real, const FMA: bool>(x: &mut [F]) {
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        let e = F::exp8::<FMA>(c.try_into().unwrap());
        c.copy_from_slice(&e);
    }
    for v in chunks.into_remainder() {
        *v = v.exp();
    }
}

/// A gathered log-softmax call: `n` rows of `c` logits `z`, `kk` ids a row.
pub struct Gathered<'a, F> {
    /// Logits `[n, c]`, row-major.
    pub z: &'a [F],
    /// Classes per row.
    pub c: usize,
    /// The gathered ids `[n, kk]`, each below `c`.
    pub ids: &'a [usize],
    /// Ids per row.
    pub kk: usize,
    /// `1/T`.
    pub inv_t: f64,
}

/// `out[r, i] = k·z[r, ids[r, i]] − log Σⱼ exp(k·z[r, j])` (`[n, kk]`, `k = 1/T`): the
/// student's log-probabilities at a sparse teacher's ids, with one pass over each row and no
/// `[n, c]` plane; each row's pieces `[max, Σ exp(k·(z − max))]` go into `pieces` (`[n, 2]`)
/// for [`gather_log_softmax_backward`]. Entries at −∞ have probability 0; a row with a NaN or
/// +∞, or only −∞, gets NaN (as the composed `log_softmax` gives).
pub fn gather_log_softmax<F: Real + Send + Sync>(
    job: &Gathered<F>,
    out: &mut [F],
    pieces: &mut [F],
) {
    let n = pieces.len() / 2;
    let per = n.div_ceil(threads_for(n, job.c)).max(1);
    let blocks: Vec<_> = out
        .chunks_mut(per * job.kk)
        .zip(pieces.chunks_mut(per * 2))
        .enumerate()
        .map(|(b, part)| (b * per, part))
        .collect();
    on_pool(blocks, |start, (out, pieces)| {
        gathered_block(job, start, out, pieces)
    });
}

fn gathered_block<F: Real>(job: &Gathered<F>, start: usize, out: &mut [F], pieces: &mut [F]) {
    simd_dispatch!(F; gathered_rows, gathered_avx2, (job: &Gathered<F>, start: usize, out: &mut [F], pieces: &mut [F]));
}

#[inline(always)]
fn gathered_rows<F: Real, const FMA: bool>(
    job: &Gathered<F>,
    start: usize,
    out: &mut [F],
    pieces: &mut [F],
) {
    let (c, kk, k) = (job.c, job.kk, F::of(job.inv_t));
    let mut e = vec![F::zero(); c];
    for (n, (out, piece)) in out.chunks_mut(kk).zip(pieces.chunks_mut(2)).enumerate() {
        let r = start + n;
        let z = &job.z[r * c..(r + 1) * c];
        let m = max_or_nan(z);
        if !m.is_finite() {
            out.fill(F::nan());
            piece.fill(F::nan());
            continue;
        }
        let sum = exp_shifted::<F, FMA>(z, m, k, &mut e);
        let log_sum = sum.ln();
        for (o, &id) in out.iter_mut().zip(&job.ids[r * kk..(r + 1) * kk]) {
            *o = k * (z[id] - m) - log_sum;
        }
        piece[0] = m;
        piece[1] = sum;
    }
}

/// The largest entry, or NaN when an entry is NaN (−∞ and +∞ count as values).
#[inline(always)]
#[allow(clippy::eq_op)] // v != v tests for NaN
fn max_or_nan<F: Real>(x: &[F]) -> F {
    let (mut acc, mut nan) = ([F::neg_infinity(); 8], [false; 8]);
    for c in x.chunks_exact(8) {
        for i in 0..8 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
            nan[i] |= c[i] != c[i];
        }
    }
    let tail = &x[x.len() / 8 * 8..];
    let m = acc
        .iter()
        .chain(tail)
        .fold(F::neg_infinity(), |m, &v| if v > m { v } else { m });
    match nan.iter().any(|&b| b) || tail.iter().any(|v| v.is_nan()) {
        true => F::nan(),
        false => m,
    }
}

/// The gradient `[n, c]` of `Σ g ⊙ out` w.r.t. `z` for [`gather_log_softmax`]'s `out`, from
/// its `pieces`: `k·(scatter(g) − softmax(k·z)·Σᵢ gᵢ)` a row.
pub fn gather_log_softmax_backward<F: Real + Send + Sync>(
    job: &Gathered<F>,
    pieces: &[F],
    g: &[F],
    grad: &mut [F],
) {
    let n = pieces.len() / 2;
    let per = n.div_ceil(threads_for(n, job.c)).max(1);
    let blocks: Vec<_> = grad
        .chunks_mut(per * job.c)
        .enumerate()
        .map(|(b, part)| (b * per, part))
        .collect();
    on_pool(blocks, |start, grad| {
        gathered_back_block(job, pieces, g, start, grad)
    });
}

fn gathered_back_block<F: Real>(
    job: &Gathered<F>,
    pieces: &[F],
    g: &[F],
    start: usize,
    grad: &mut [F],
) {
    simd_dispatch!(F; gathered_back_rows, gathered_back_avx2, (job: &Gathered<F>, pieces: &[F], g: &[F], start: usize, grad: &mut [F]));
}

#[inline(always)]
fn gathered_back_rows<F: Real, const FMA: bool>(
    job: &Gathered<F>,
    pieces: &[F],
    g: &[F],
    start: usize,
    grad: &mut [F],
) {
    let (c, kk, k) = (job.c, job.kk, F::of(job.inv_t));
    for (n, row) in grad.chunks_mut(c).enumerate() {
        let r = start + n;
        let (m, sum) = (pieces[2 * r], pieces[2 * r + 1]);
        let gr = &g[r * kk..(r + 1) * kk];
        let total = gr.iter().fold(F::zero(), |a, &b| a + b);
        // softmax(k·z) into the row, then scaled by −k·Σg
        exp_shifted::<F, FMA>(&job.z[r * c..(r + 1) * c], m, k, row);
        let scale = -(k * total) / sum;
        for v in row.iter_mut() {
            *v = *v * scale;
        }
        for (&id, &gi) in job.ids[r * kk..(r + 1) * kk].iter().zip(gr) {
            row[id] = row[id] + k * gi;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomial_exp_is_accurate() {
        let mut x: Vec<f32> = (0..8000).map(|i| -90.0 + i as f32 * 0.0222).collect();
        let want: Vec<f64> = x.iter().map(|&v| (v as f64).exp()).collect();
        let mut plain = x.clone();
        exp_slice::<f32, false>(&mut plain); // without FMA
        exp_in_place(&mut x); // with FMA where the CPU has it
        for (got, want) in x.iter().chain(&plain).zip(want.iter().cycle()) {
            if *want < 1.5e-38 {
                // flushed to 0 below exp(−87.3), the edge of f32's normal range
                assert!((*got as f64 - want).abs() < 1.5e-38, "{got} vs {want}");
            } else {
                assert!(
                    ((*got as f64 - want) / want).abs() < 5e-7,
                    "{got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn kd_rows_match_the_definition() {
        let (s, t) = ([1.0f64, -2.0, 0.5, 3.0, 0.0], [0.2f64, 0.1, -1.0, 2.0, 1.5]);
        let softmax = |z: &[f64]| {
            let e: Vec<f64> = z.iter().map(|v| (v / 2.0).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.into_iter().map(|v| v / sum).collect::<Vec<_>>()
        };
        let (ps, pt) = (softmax(&s), softmax(&t));
        let want: f64 = pt.iter().zip(&ps).map(|(p, q)| p * (p / q).ln()).sum();
        let (mut rows, mut gs) = ([0.0], [0.0; 5]);
        kd(Job {
            s: &s,
            t: &t,
            c: 5,
            inv_t: 0.5,
            rows: &mut rows,
            student: &mut gs,
            teacher: &mut [],
        });
        assert!((rows[0] - want).abs() < 1e-14, "{} vs {want}", rows[0]);
        for j in 0..5 {
            assert!((gs[j] - 0.5 * (ps[j] - pt[j])).abs() < 1e-15);
        }
    }
}
