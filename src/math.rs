//! Shared numerics, in log space: every objective builds on these, so the stable forms live in
//! one place.

use burn::config::Config;
use burn::tensor::{Bool, FloatDType, Int, Tensor};

/// A softmax temperature: a fixed number, or a learned scalar tensor `[1]` (CTKD) through which
/// gradients flow.
#[allow(clippy::large_enum_variant)] // built once per forward pass, never stored in bulk
#[derive(Debug, Clone)]
pub enum Temperature {
    /// A constant temperature.
    Fixed(f64),
    /// A differentiable temperature of shape `[1]` (cast to the logits' float type when used).
    Learned(Tensor<1>),
}

impl From<f64> for Temperature {
    fn from(t: f64) -> Self {
        Temperature::Fixed(t)
    }
}

impl Temperature {
    /// `z / T` (rows of logits `[N, C]`).
    ///
    /// A fixed `T` multiplies by `1/T`: in burn 0.22.1 the backward of a division by a scalar
    /// uses the scalar in f32 even on f64 tensors (`d(x/3)/dx = 0.333333343`), which costs
    /// f64 gradients 8 digits. Nothing in this crate divides a tracked tensor by a scalar.
    pub fn scale(&self, z: Tensor<2>) -> Tensor<2> {
        match self {
            Temperature::Fixed(t) if *t == 1.0 => z,
            Temperature::Fixed(t) => z * (1.0 / *t),
            Temperature::Learned(t) => {
                let t = t.clone().cast(FloatDType::from(z.dtype()));
                z / t.unsqueeze_dim::<2>(0)
            }
        }
    }

    /// `x · T²`, the factor that keeps distillation gradients independent of `T`.
    pub fn times_squared(&self, x: Tensor<1>) -> Tensor<1> {
        match self {
            Temperature::Fixed(t) => x * (t * t),
            Temperature::Learned(t) => {
                let t = t.clone().cast(FloatDType::from(x.dtype()));
                x * (t.clone() * t)
            }
        }
    }
}

/// `[1]`: 0, or NaN when `x` holds a NaN or an infinity (`Σ 0·x`, detached: no gradient, no
/// overflow). Added to a loss whose inputs reach it only through comparisons in places
/// (activation boundaries, margins), where a NaN fails every comparison and would vanish: the
/// crate's non-finite policy is to propagate it.
pub fn nan_if_non_finite<const D: usize>(x: &Tensor<D>) -> Tensor<1> {
    (x.clone().detach() * 0.0).sum()
}

/// Per-row `KL(p ‖ q) = Σⱼ pⱼ (log pⱼ − log qⱼ)` from log-probabilities `[N, C]`, giving `[N]`.
///
/// Works in log space throughout: a teacher probability that underflows to 0 contributes
/// `0 · finite = 0`, never `0 · log 0`.
pub fn kl_rows(log_p: Tensor<2>, log_q: Tensor<2>) -> Tensor<1> {
    (log_p.clone().exp() * (log_p - log_q))
        .sum_dim(1)
        .squeeze_dim(1)
}

/// `log Σⱼ exp xⱼ` over dim 1, shifted by the (detached) row maximum: `[N, C]` → `[N, 1]`.
/// A row all at −∞ (an empty support) gives `ln(f32::MIN_POSITIVE) ≈ −87.3`, finite and with
/// zero gradients, instead of NaN.
pub fn logsumexp(x: Tensor<2>) -> Tensor<2> {
    let m = x.clone().detach().max_dim(1);
    let m = m.clone().mask_fill(m.equal_elem(f64::NEG_INFINITY), 0.0);
    m.clone()
        + (x - m)
            .exp()
            .sum_dim(1)
            .clamp_min(f32::MIN_POSITIVE as f64)
            .log()
}

/// `log(exp a + exp b)` element by element, shifted by the (detached) larger of the two: exact
/// for log-probabilities of any magnitude (the log of a mixture of two distributions).
pub fn log_add_exp<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    let m = a.clone().max_pair(b.clone()).detach();
    m.clone() + ((a - m.clone()).exp() + (b - m).exp()).log()
}

/// [`logsumexp`] over the entries where `mask` is false (an exact mask: the masked entries
/// contribute exactly 0 and get zero gradient). Each row needs one unmasked entry.
pub fn masked_logsumexp(x: Tensor<2>, mask: Tensor<2, Bool>) -> Tensor<2> {
    logsumexp(x.mask_fill(mask, f64::NEG_INFINITY))
}

/// Each row's Euclidean norm clamped below at `eps`, `[N, D]` → `[N, 1]`, computed as
/// `sqrt(max(‖x‖², eps²))`: the same value as `max(‖x‖, eps)`, and a zero row gets a zero
/// gradient instead of sqrt's infinite one at 0.
pub fn row_norms(x: Tensor<2>, eps: f64) -> Tensor<2> {
    x.square().sum_dim(1).clamp_min(eps * eps).sqrt()
}

/// Rows scaled to unit length, `x / max(‖x‖, eps)` (`torch.nn.functional.normalize`).
pub fn l2_normalize(x: Tensor<2>, eps: f64) -> Tensor<2> {
    x.clone() / row_norms(x, eps)
}

/// Cosine similarity of every row of `a` `[N, D]` with every row of `b` `[M, D]`: `[N, M]`.
pub fn cosine_matrix(a: Tensor<2>, b: Tensor<2>, eps: f64) -> Tensor<2> {
    l2_normalize(a, eps).matmul(l2_normalize(b, eps).transpose())
}

/// Euclidean distances between the rows of `x` `[N, D]`: `[N, N]` with an exact zero
/// diagonal; `squared` skips the square root. Squared distances are clamped below at `eps`
/// off the diagonal (RKD's `_pdist`).
pub fn pairwise_distances(x: Tensor<2>, squared: bool, eps: f64) -> Tensor<2> {
    let (n, device) = (x.dims()[0], x.device());
    let sq = x.clone().square().sum_dim(1);
    let d = (sq.clone() + sq.transpose() - x.clone().matmul(x.transpose()) * 2.0).clamp_min(eps);
    let d = if squared { d } else { d.sqrt() };
    d.mask_fill(eye(n, &device), 0.0)
}

/// The `[n, n]` identity mask.
pub fn eye(n: usize, device: &burn::tensor::Device) -> Tensor<2, Bool> {
    let i = Tensor::<1, Int>::arange(0..n as i64, device);
    i.clone()
        .unsqueeze_dim::<2>(1)
        .equal(i.unsqueeze_dim::<2>(0))
}

/// Pearson correlation of each row of `a` with the same row of `b` (`[N, C]` → `[N]`): the
/// cosine similarity of the mean-centred rows, each norm clamped below at `eps` (as
/// `torch.nn.functional.cosine_similarity`).
pub fn pearson_rows(a: Tensor<2>, b: Tensor<2>, eps: f64) -> Tensor<1> {
    let a = a.clone() - a.mean_dim(1);
    let b = b.clone() - b.mean_dim(1);
    ((a.clone() * b.clone()).sum_dim(1) / (row_norms(a, eps) * row_norms(b, eps))).squeeze_dim(1)
}

/// The `[N, C]` mask that is true at each row's target class.
pub fn target_mask(targets: Tensor<1, Int>, classes: usize) -> Tensor<2, Bool> {
    targets.one_hot::<2>(classes).equal_elem(1)
}

/// DKD's decomposition of one set of logits `z` (already divided by the temperature) around
/// the targets.
pub struct Decoupled {
    /// `log b = [log p_t, log Σ_{j≠t} p_j]`, shape `[N, 2]`: the binary target / non-target
    /// distribution.
    pub log_binary: Tensor<2>,
    /// `log p̂ⱼ = zⱼ − log Σ_{k≠t} exp z_k` for `j ≠ t`, and exactly 0 at the target, shape
    /// `[N, C]`: the distribution over non-target classes. The 0 makes the target's term of
    /// [`kl_rows`] exactly `exp 0 · (0 − 0) = 0` for any pair.
    pub log_non_target: Tensor<2>,
}

impl Decoupled {
    /// Splits `z` around the targets marked by `mask` (see [`target_mask`]), in log space:
    /// both parts come from the gap between the target's logit and the others' log-sum-exp,
    /// never from `log(1 − p_t)`, so they stay finite and exact for logits of any magnitude.
    pub fn new(z: Tensor<2>, mask: Tensor<2, Bool>) -> Self {
        let lse_other = masked_logsumexp(z.clone(), mask.clone());
        let z_target = z.clone().mask_fill(mask.clone().bool_not(), 0.0).sum_dim(1);
        // each side from the gap alone, `log b = −softplus(∓gap)`: exact when one side is tiny
        // (a difference of two log-sum-exps of large logits would lose it)
        let gap = z_target - lse_other.clone();
        let log_binary = Tensor::cat(vec![-softplus(-gap.clone()), -softplus(gap)], 1);
        let log_non_target = (z - lse_other).mask_fill(mask, 0.0);
        Self {
            log_binary,
            log_non_target,
        }
    }
}

/// Where a decoupled objective's target-class part gets its target mass `b*_t`, for samples
/// the student already classifies correctly (for the others it is always the teacher's `bᵀ`):
/// DKD uses `Teacher`, DCKD any of them.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum JointTarget {
    /// `max(bᵀ_t, sg(bˢ_t))`: a correct student is never pulled back below its own confidence.
    Max,
    /// The teacher's `bᵀ` alone (DKD).
    Teacher,
    /// `w · bᵀ + (1 − w) · sg(bˢ)`, the teacher's share `w ∈ [0, 1]`.
    Mix(f64),
}

/// A counter-based generator (SplitMix64): the same numbers on every platform and backend.
pub(crate) struct SplitMix(u64);

impl SplitMix {
    /// The generator of `stream` (an objective's name and what it draws) for `seed` at `key`
    /// (a step counter, or [`SplitMix::progress_key`]): every seeded draw of the crate is keyed
    /// here, so two streams never share numbers and a rerun draws the same ones.
    pub(crate) fn keyed(seed: u64, stream: &str, key: u64) -> Self {
        // FNV-1a of the stream's name, then the key spread over the word
        let name = stream.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
        });
        Self(seed ^ name ^ key.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// The key of a point in training: its epoch and its step within the epoch.
    pub(crate) fn progress_key(epoch: usize, step: usize) -> u64 {
        ((epoch as u64) << 32) ^ step as u64
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Each row's `p`-norm `(Σ |x|^p)^(1/p)`, `[N, D]` → `[N, 1]`, floored at `eps` (a zero row
/// gets `eps` and a zero gradient, never `0/0`).
pub fn p_norms(x: Tensor<2>, p: f64, eps: f64) -> Tensor<2> {
    match p {
        1.0 => x.abs().sum_dim(1).clamp_min(eps),
        2.0 => row_norms(x, eps),
        p => x
            .abs()
            .powf_scalar(p)
            .sum_dim(1)
            .clamp_min(eps.powf(p).max(f64::MIN_POSITIVE))
            .powf_scalar(1.0 / p),
    }
}

/// Each row's Euclidean norm `[N, 1]` of rows `[N, D]`, exactly 0 with a zero gradient for an
/// all-zero row (where `√` has no derivative, 0 is a subgradient of the norm): no floor, so
/// `x / (‖x‖ + ε)` keeps its exact value and gradient on every row.
pub fn exact_row_norms(x: Tensor<2>) -> Tensor<2> {
    let squares = x.square().sum_dim(1);
    let zero = squares.clone().equal_elem(0.0);
    squares
        .mask_fill(zero.clone(), 1.0)
        .sqrt()
        .mask_fill(zero, 0.0)
}

/// `log(1 + eˣ)` element by element, exact for any `x`: `log1p(eˣ)` at or below 0 and
/// `x + log1p(e⁻ˣ)` above it (no overflow, no `log(1 + tiny)`), each branch on its side's
/// clamped input.
pub fn softplus<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let above = x.clone().greater_elem(0.0);
    let low = x.clone().clamp_max(0.0).exp().log1p();
    let high = x.clamp_min(0.0);
    let high = high.clone() + high.neg().exp().log1p();
    low.mask_where(above, high)
}

/// `log(1 − eˣ)` for `x ≤ 0` (the log of a missing mass from the log of the mass present),
/// accurate on both sides of `−ln 2` (Mächler 2012, *Accurately Computing log(1 − exp(−|a|))*):
/// `log(−expm1 x)` above it, with `expm1 x = 2 tanh(x/2) / (1 − tanh(x/2))` (exact where `eˣ`
/// rounds to 1: `x = −1e-8` gives `ln 1e-8` in f32 too), and `log1p(−eˣ)` below it. Each branch
/// reads its input clamped to its side, so the other never sends a NaN gradient through.
pub fn log1mexp<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let cut = -std::f64::consts::LN_2;
    let near = x.clone().greater_elem(cut);
    let half = (x.clone().clamp_min(cut) * 0.5).tanh();
    let above = (half.clone() * -2.0 / (half.neg() + 1.0)).log();
    let below = x.clamp_max(cut).exp().neg().log1p();
    below.mask_where(near, above)
}

/// The logistic function `1 / (1 + e^{−x})`, with the exponent capped at 80 (below `x = −80`
/// the value is under 2e-35 and the gradient is taken as 0: `e^{80}` is still finite in f32).
/// Used instead of burn's `sigmoid`, which is accurate to only ~1e-9 in f64 on the ndarray
/// backend.
pub fn logistic<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    (x.neg().clamp_max(80.0).exp() + 1.0).recip()
}

/// The lower Cholesky factor `L` of a symmetric positive-definite `a` `[n, n]` (`a = L Lᵀ`),
/// column by column in tensor ops (differentiable through autodiff): `n` sequential steps, for
/// the small matrices of batch statistics. A pivot below `f32::MIN_POSITIVE` is clamped there.
pub fn cholesky(a: Tensor<2>) -> Tensor<2> {
    let [n, _] = a.dims();
    let rows = Tensor::<1, Int>::arange(0..n as i64, &a.device()).reshape([n, 1]);
    let mut factor: Option<Tensor<2>> = None;
    for j in 0..n {
        let mut column = a.clone().slice([0..n, j..j + 1]);
        if let Some(l) = &factor {
            let row = l.clone().slice([j..j + 1, 0..j]);
            column = column - l.clone().matmul(row.transpose());
        }
        let pivot = column
            .clone()
            .slice([j..j + 1, 0..1])
            .clamp_min(f32::MIN_POSITIVE as f64)
            .sqrt();
        let column = (column / pivot).mask_fill(rows.clone().lower_elem(j as i64), 0.0);
        factor = Some(match factor {
            Some(l) => Tensor::cat(vec![l, column], 1),
            None => column,
        });
    }
    factor.unwrap_or(a)
}

/// `L⁻¹ b` for a lower-triangular `l` `[n, n]` with a non-zero diagonal and `b` `[n, m]`, by
/// forward substitution in tensor ops (`n` sequential steps, differentiable).
pub fn solve_lower(l: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    let [n, m] = b.dims();
    let mut solved: Option<Tensor<2>> = None;
    for i in 0..n {
        let mut row = b.clone().slice([i..i + 1, 0..m]);
        if let Some(y) = &solved {
            row = row - l.clone().slice([i..i + 1, 0..i]).matmul(y.clone());
        }
        let row = row / l.clone().slice([i..i + 1, i..i + 1]);
        solved = Some(match solved {
            Some(y) => Tensor::cat(vec![y, row], 0),
            None => row,
        });
    }
    solved.unwrap_or(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Tolerance};

    #[test]
    fn log1mexp_is_accurate_on_both_sides_and_in_f32() {
        let dev = Device::flex().autodiff();
        let xs: [f64; 8] = [-1e-12, -1e-8, -1e-3, -0.5, -0.7, -1.0, -30.0, -700.0];
        let x = Tensor::<1>::from_data(xs, (&dev, burn::tensor::DType::F64)).require_grad();
        let y = log1mexp(x.clone());
        let got = y.clone().into_data().try_to_vec::<f64>().unwrap();
        let grad = x.grad(&y.sum().backward()).unwrap();
        let grad = grad.into_data().try_to_vec::<f64>().unwrap();
        for (i, &v) in xs.iter().enumerate() {
            // std's expm1 and ln_1p in f64, each where it is exact
            let want = match v > -std::f64::consts::LN_2 {
                true => (-v.exp_m1()).ln(),
                false => (-v.exp()).ln_1p(),
            };
            assert!(
                (got[i] - want).abs() <= 1e-14 * want.abs(),
                "{v}: {} vs {want}",
                got[i]
            );
            // d/dx log(1 − eˣ) = −eˣ / (1 − eˣ) = 1 / (1 − e^{−x})... = −1 / expm1(−x)
            let slope = -1.0 / (-v).exp_m1();
            assert!(
                (grad[i] - slope).abs() <= 1e-12 * slope.abs(),
                "{v}: {} vs {slope}",
                grad[i]
            );
        }
        // in f32, e^(−1e-8) rounds to 1: a naive log1p(−eˣ) is −inf
        let x = Tensor::<1>::from_data([-1e-8f32], (&dev, burn::tensor::DType::F32));
        let got = log1mexp(x).into_data().try_to_vec::<f32>().unwrap()[0];
        assert!((got - 1e-8f32.ln()).abs() < 1e-5, "{got}");
    }

    #[test]
    fn exact_row_norms_are_zero_with_zero_gradient_on_zero_rows() {
        let dev = Device::flex().autodiff();
        let x = Tensor::<2>::from_data([[3.0, 4.0], [0.0, 0.0]], (&dev, burn::tensor::DType::F64))
            .require_grad();
        let n = exact_row_norms(x.clone());
        assert_eq!(
            n.clone().into_data().try_to_vec::<f64>().unwrap(),
            [5.0, 0.0]
        );
        let g = x
            .grad(&n.sum().backward())
            .unwrap()
            .into_data()
            .try_to_vec::<f64>()
            .unwrap();
        let want = [0.6, 0.8, 0.0, 0.0];
        assert!(
            g.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-15),
            "{g:?}"
        );
    }

    #[test]
    fn logistic_by_hand_and_finite_far_out() {
        let dev = Device::flex().autodiff();
        let x = Tensor::<1>::from_floats([-2.0, 0.0, 3.0, -1e4, 1e4], &dev).require_grad();
        let y = logistic(x.clone());
        let got: Vec<f32> = y.clone().into_data().try_to_vec().unwrap();
        let want = [-2.0f32, 0.0, 3.0, -1e4, 1e4].map(|v| 1.0 / (1.0 + (-v.max(-80.0)).exp()));
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-7, "{g} vs {w}");
        }
        let grad: Vec<f32> = x
            .grad(&y.sum().backward())
            .unwrap()
            .into_data()
            .try_to_vec()
            .unwrap();
        assert!(grad.iter().all(|g| g.is_finite()), "{grad:?}");
        assert!((grad[1] - 0.25).abs() < 1e-7);
    }

    #[test]
    fn masked_logsumexp_is_exact() {
        let dev = Device::flex();
        let x = Tensor::<2>::from_floats([[1.0, 2.0, 3.0], [0.0, 5.0, -1.0]], &dev);
        let y = Tensor::<1, Int>::from_ints([2, 0], &dev);
        let got = masked_logsumexp(x, target_mask(y, 3));
        let want = [
            (1f64.exp() + 2f64.exp()).ln(),
            (5f64.exp() + (-1f64).exp()).ln(),
        ];
        got.into_data().assert_approx_eq::<f32>(
            &Tensor::<2>::from_floats([[want[0]], [want[1]]], &dev).into_data(),
            Tolerance::default(),
        );
    }

    #[test]
    fn decoupled_parts_are_distributions() {
        let dev = Device::flex();
        let z = Tensor::<2>::from_floats([[1.0, -2.0, 3.0, 0.5], [1e4, -1e4, 0.0, 2.0]], &dev);
        let y = Tensor::<1, Int>::from_ints([2, 0], &dev);
        let d = Decoupled::new(z, target_mask(y.clone(), 4));
        let b: Vec<f32> = d
            .log_binary
            .exp()
            .sum_dim(1)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(b.iter().all(|v| (v - 1.0).abs() < 1e-6), "{b:?}");
        // non-target mass sums to 1 once the target's placeholder (exp 0 = 1) is removed
        let nt = d.log_non_target.exp().mask_fill(target_mask(y, 4), 0.0);
        let s: Vec<f32> = nt.sum_dim(1).into_data().try_to_vec::<f32>().unwrap();
        assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-6), "{s:?}");
    }
}
