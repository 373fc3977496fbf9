//! KDSVD: knowledge distillation with singular value decomposition.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::Tensor;

use super::maps::sum_stages;
use crate::check::{check_count, check_non_negative};
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};

/// The top `k` right singular vectors `[N, W, k]` and singular values `[N, k]` of each matrix
/// of `x` `[N, R, W]`, by power iteration with deflation on `XᵀX` (`iterations` steps each).
///
/// Differentiable end to end (the unrolled iteration), where `torch.svd`'s gradient has
/// `1/(σᵢ² − σⱼ²)` terms that explode on close singular values. Each vector's sign is fixed so
/// that its largest-magnitude entry is positive: the result does not depend on an SVD
/// routine's arbitrary signs, and `X` and `QX` (any orthogonal `Q`, in particular `−X`) give
/// the same vectors.
pub fn top_singular(x: Tensor<3>, k: usize, iterations: usize) -> (Tensor<3>, Tensor<2>) {
    let [n, _, w] = x.dims();
    let device = x.device();
    let mut gram = x.clone().swap_dims(1, 2).matmul(x);
    let (mut vectors, mut values) = (Vec::new(), Vec::new());
    for j in 0..k {
        // a fixed start that no eigenvector is orthogonal to in general
        let start: Vec<f64> = (0..w)
            .map(|i| 1.0 + 0.1 * ((i * 7 + j * 3) % 11) as f64)
            .collect();
        let mut v = Tensor::<1>::from_data(
            burn::tensor::TensorData::new(start, [w]),
            (&device, gram.dtype()),
        )
        .reshape([1, w, 1])
        .expand([n, w, 1]);
        for _ in 0..iterations {
            let gv = gram.clone().matmul(v);
            // the floor before the root: √ at 0 has an infinite slope (NaN gradients on an
            // all-zero map); 1e-36 is an f32 normal, so the floor holds in f32 too
            v = gv.clone() / gv.square().sum_dim(1).clamp_min(1e-36).sqrt();
        }
        // the sign that makes the largest-magnitude entry positive (a constant)
        let at = v.clone().abs().argmax(1);
        let sign = v.clone().gather(1, at).sign().detach();
        let sign = sign.clone().mask_fill(sign.equal_elem(0.0), 1.0);
        v = v * sign;
        let lambda = v
            .clone()
            .swap_dims(1, 2)
            .matmul(gram.clone().matmul(v.clone()));
        gram = gram - v.clone().matmul(v.clone().swap_dims(1, 2)) * lambda.clone();
        values.push(lambda.reshape([n, 1]).clamp_min(1e-36).sqrt());
        vectors.push(v);
    }
    (Tensor::cat(vectors, 2), Tensor::cat(values, 1))
}

/// The student's vectors `vs` `[N, W, m]` reordered and re-signed to match the teacher's `vt`
/// `[N, W, k]`: for each teacher vector, the student vector of largest `|cosine|`, times the
/// cosine's sign (mdistiller's `align_rsv`), `[N, W, k]`.
pub fn align_vectors(vs: Tensor<3>, vt: Tensor<3>) -> Tensor<3> {
    let cosine = vs.clone().swap_dims(1, 2).matmul(vt);
    let abs = cosine.clone().abs();
    let best = abs.clone().max_dim(1).expand(abs.dims());
    let mask = cosine.clone().sign().mask_fill(abs.not_equal(best), 0.0);
    vs.matmul(mask.detach())
}

/// The RBF relation between two consecutive stages' scaled vectors `a` `[N, Wa, k]` and `b`
/// `[N, Wb, k]`: `exp(−(aᵢ − bⱼ)²/8)`, `[N, Wa, Wb, k]`.
fn relation(a: Tensor<3>, b: Tensor<3>) -> Tensor<4> {
    (a.unsqueeze_dim::<4>(2) - b.unsqueeze_dim::<4>(1))
        .square()
        .mul_scalar(-1.0 / 8.0)
        .exp()
}

/// Configuration of [`Kdsvd`]; the defaults are mdistiller's.
#[derive(Config, Debug)]
pub struct KdsvdConfig {
    /// The taps in network order (at least two: the loss relates consecutive stages).
    pub features: Vec<String>,
    /// The teacher's singular vectors kept, `k` (the student's: `k + 3`).
    #[config(default = 1)]
    pub k: usize,
    /// Power-iteration steps per singular vector.
    #[config(default = 30)]
    pub iterations: usize,
    /// Weight of the loss (mdistiller: 1).
    #[config(default = 1.0)]
    pub weight: f64,
}

impl KdsvdConfig {
    /// Validates the configuration.
    pub fn init(&self) -> Result<Kdsvd, DistillError> {
        crate::check::check_taps(Kdsvd::NAME, &self.features, &[])?;
        check_count(Kdsvd::NAME, "features", self.features.len(), 2)?;
        check_count(Kdsvd::NAME, "k", self.k, 1)?;
        check_count(Kdsvd::NAME, "iterations", self.iterations, 1)?;
        check_non_negative(Kdsvd::NAME, "weight", self.weight)?;
        Ok(Kdsvd {
            config: self.clone(),
        })
    }
}

/// KDSVD (Lee, Kim, Song, ECCV 2018, *Self-supervised Knowledge Distillation Using Singular
/// Value Decomposition*; mdistiller's `KDSVD.py`): each stage's map, as matrices
/// `X = F.view(N, C·H, W)`, is summarised by its top right singular vectors scaled by the
/// teacher's normalised singular values; the student matches how these summaries of
/// consecutive stages relate, by RBF:
///
/// ```text
/// vᵗ = V_k(Xᵗ)·ŝᵗ,  vˢ = align(V_{k+3}(Xˢ), V_k(Xᵗ))·ŝᵗ,  R(a, b)ᵢⱼ = exp(−(aᵢ − bⱼ)²/8)
/// L = w · Σ_stages Σ (R(vˢᵢ, vˢᵢ₋₁) − R(vᵗᵢ, vᵗᵢ₋₁))² / N
/// ```
///
/// **Differences from the reference**, both about the SVD: singular vectors have arbitrary
/// signs (the reference aligns the student's to the teacher's, but the teacher's own signs come
/// from LAPACK and change the relation term); the crate computes them by power iteration with
/// a fixed sign convention ([`top_singular`]), so the loss is a function of the maps alone,
/// invariant to `X → QX` for orthogonal `Q`. Its values therefore match the reference only up
/// to those sign choices, and there is no golden value; the tests check the invariants. The
/// gradient is that of the unrolled iteration, finite where `torch.svd`'s is not (the
/// reference zeroes NaNs after the fact). One term `"kdsvd"`.
///
/// # Shapes
/// - each tap: maps `[N, C, H, W]`; student and teacher may differ in `C` and `H`, and stages
///   in `W`
#[derive(Debug, Clone)]
pub struct Kdsvd {
    config: KdsvdConfig,
}

crate::loss::objective!(Kdsvd, "kdsvd");

impl Loss for Kdsvd {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let checked = input.of(Self::NAME).within(BOUND);
        let summary = |name: &str| -> Result<(Tensor<3>, Tensor<3>), DistillError> {
            let (s, t) = checked.maps(name)?;
            if s.dims()[3] != t.dims()[3] {
                return Err(DistillError::ShapeMismatch {
                    objective: Self::NAME.into(),
                    what: format!("teacher tap `{name}` width W (the singular vectors' length)"),
                    expected: vec![s.dims()[3]],
                    actual: vec![t.dims()[3]],
                });
            }
            // `maps` reads half-precision maps in f32 (their Gram matrices overflow f16) and
            // the teacher in the student's float type
            let as_matrix = |f: Tensor<4>| {
                let [n, ch, h, w] = f.dims();
                f.reshape([n, ch * h, w])
            };
            let (s, t) = (as_matrix(s), as_matrix(t));
            let (vt, st) = top_singular(t, c.k, c.iterations);
            let (vs, _) = top_singular(s, c.k + 3, c.iterations);
            let vs = align_vectors(vs, vt.clone());
            let scale = crate::math::l2_normalize(st, 1e-12).unsqueeze_dim::<3>(1);
            Ok((vs * scale.clone(), vt * scale))
        };
        // the first stage only starts the chain
        let mut previous = summary(&c.features[0])?;
        let n = previous.0.dims()[0];
        let total = sum_stages(&c.features[1..], |_, name| {
            let (vs, vt) = summary(name)?;
            let (ps, pt) = std::mem::replace(&mut previous, (vs.clone(), vt.clone()));
            let d = relation(vs, ps) - relation(vt, pt);
            Ok(d.square().sum())
        })?;
        Ok(LossOutput::single(
            Self::NAME,
            total * (c.weight / n as f64),
        ))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e15;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Kdsvd"],
    paper: "Lee et al., ECCV 2018, *Self-supervised KD Using Singular Value Decomposition*",
    doc: "kdsvd.md",
    bound: Some(BOUND),
    example: Some(|_| {
        Ok(KdsvdConfig::new(vec!["feature".into(), "paired".into()])
            .init()?
            .boxed())
    }),
    learnable: None,
    twins: None,
    method: Some(
        crate::registry::method!(loss Kdsvd = feature::KdsvdConfig(features = ["block1", "block2"])),
    ),
    golden: crate::registry::golden![],
}];
