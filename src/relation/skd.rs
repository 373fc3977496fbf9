//! SKD's direction term: the difference of the two cosine Gram matrices, measured by a
//! Mahalanobis norm under its own covariance.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::Tensor;

use crate::check::check_positive;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};
use crate::math::{cholesky, eye, l2_normalize, solve_lower};

/// SKD's direction loss between student and teacher rows `[B, D]` (any widths, `B ≥ 2`):
/// with `n = normalize(x)` per row, `Δ = n_s n_sᵀ − n_t n_tᵀ` `[B, B]`, `Σ = cov(Δ) + λI`
/// (the rows of `Δ` the observations, unbiased), the mean Mahalanobis norm
/// `mean_i sqrt(Δ_i Σ⁻¹ Δ_iᵀ)`, through a Cholesky factor. Where `Δ_i = 0` the norm's
/// gradient is taken as 0 (its subgradient at the minimum).
pub fn skd_direction(student: Tensor<2>, teacher: Tensor<2>, tikhonov: f64) -> Tensor<1> {
    let gram = |x: Tensor<2>| {
        let n = l2_normalize(x, 1e-12);
        n.clone().matmul(n.transpose())
    };
    let delta = gram(student) - gram(teacher);
    let [b, _] = delta.dims();
    let centred = delta.clone() - delta.clone().mean_dim(0);
    let regulariser = Tensor::<2>::zeros([b, b], (&delta.device(), delta.dtype()))
        .mask_fill(eye(b, &delta.device()), tikhonov);
    // a product, not a division: burn 0.22.1 differentiates `x / c` with c rounded to f32
    let covariance =
        centred.clone().transpose().matmul(centred) * (1.0 / (b as f64 - 1.0)) + regulariser;
    let whitened = solve_lower(cholesky(covariance), delta.transpose());
    // sqrt with its infinite slope at 0 kept out of the graph: exactly 0 where Δ_i is
    let squares = whitened.square().sum_dim(0);
    let zero = squares.clone().lower_equal_elem(0.0);
    let norms = squares
        .mask_fill(zero.clone(), 1.0)
        .sqrt()
        .mask_fill(zero, 0.0);
    norms.mean()
}

/// Configuration of [`SkdDirection`].
#[derive(Config, Debug)]
pub struct SkdDirectionConfig {
    /// The Tikhonov regulariser λ > 0 added to the covariance's diagonal.
    #[config(default = 0.1)]
    pub tikhonov: f64,
    /// The feature tap compared (rows per sample); `None`: the logits (torchdistill's `fc`).
    #[config(default = "None")]
    pub feature: Option<String>,
}

impl SkdDirectionConfig {
    /// Validates the configuration and builds the objective.
    pub fn init(&self) -> Result<SkdDirection, DistillError> {
        check_positive(SkdDirection::NAME, "tikhonov", self.tikhonov)?;
        Ok(SkdDirection {
            config: self.clone(),
        })
    }
}

/// The direction term of torchdistill's SKD (`SKDDirectionLoss`): how the batch's pairwise
/// cosine similarities differ between student and teacher, whitened by the covariance of
/// those differences,
///
/// ```text
/// Δ = n_s n_sᵀ − n_t n_tᵀ,  Σ = cov(Δ) + λI,  L = mean_i sqrt(Δ_i Σ⁻¹ Δ_iᵀ)
/// ```
///
/// ([`skd_direction`]; its instance term is `logit::Kd` without `T²`, docs/rkd.md). The
/// Cholesky factor and the solve are `B` sequential tensor steps: for batches up to a few
/// hundred. torchdistill builds `λI` in float32 whatever the input (0.1 becomes
/// 0.10000000149…); the crate uses λ as given. Student equal to teacher gives 0 with zero
/// gradients (torchdistill's are NaN). One term, `"skd_direction"`.
///
/// # Shapes
/// - student and teacher logits (or the tap's rows) `[B, ·]`, `B ≥ 2`
#[derive(Debug, Clone)]
pub struct SkdDirection {
    config: SkdDirectionConfig,
}

crate::loss::objective!(SkdDirection, "skd_direction");

impl Loss for SkdDirection {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let input = input.of(Self::NAME).within(BOUND);
        let (s, t) = match &self.config.feature {
            Some(tap) => input.rows(tap, 2)?,
            None => {
                let (s, t) = input.logits()?;
                if s.dims()[0] < 2 {
                    return Err(DistillError::BatchTooSmall {
                        objective: Self::NAME.into(),
                        min: 2,
                        got: s.dims()[0],
                    });
                }
                (s, t)
            }
        };
        Ok(LossOutput::single(
            Self::NAME,
            skd_direction(s, t, self.config.tikhonov),
        ))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = f64::MAX;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["SkdDirection"],
    paper: "torchdistill's SKD direction loss",
    doc: "rkd.md",
    bound: Some(BOUND),
    example: Some(|_| Ok(SkdDirectionConfig::new().init()?.boxed())),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss SkdDirection = relation::SkdDirectionConfig())),
    golden: crate::registry::golden!["tdist_skd_direction" => golden::torchdistill],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// torchdistill's `SKDDirectionLoss` at its float32 λ, the teacher attached; where the
    /// reference's gradient is NaN (student = teacher), the crate's is 0.
    pub(crate) fn torchdistill(case: &Case) -> Result<(), String> {
        let tikhonov = case
            .opt("tikhonov_float32_value")
            .unwrap_or(case.param("tikhonov")?);
        // the README's tolerance of this method, ten times wider for gradients
        let tolerance = match case.dtype {
            burn::tensor::DType::F64 => 1e-9,
            _ => 1e-4,
        };
        case.tolerance.set(Some((tolerance, tolerance)));
        let loss = SkdDirectionConfig::new()
            .with_tikhonov(tikhonov)
            .init()
            .map_err(e)?;
        let s = case.leaf::<2>("student_logits")?;
        let t = case.leaf::<2>("teacher_logits")?;
        let out = loss
            .forward(&DistillInput::new(s.clone(), t.clone()).attach_teacher())
            .map_err(e)?;
        case.expect_loss(out.value(), None)?;
        case.tolerance
            .set(Some((10.0 * tolerance, 10.0 * tolerance)));
        let grads = out.total.backward();
        let zeros = || vec![0.0; s.dims()[0] * s.dims()[1]];
        let same = values(s.clone()) == values(t.clone());
        let exact: Option<&dyn Fn() -> Vec<f64>> = if same { Some(&zeros) } else { None };
        case.expect_grad("student_logits", s.grad(&grads).map(values), exact)?;
        let zeros = || vec![0.0; t.dims()[0] * t.dims()[1]];
        let exact: Option<&dyn Fn() -> Vec<f64>> = if same { Some(&zeros) } else { None };
        case.expect_grad("teacher_logits", t.grad(&grads).map(values), exact)
    }
}
