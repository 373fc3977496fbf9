//! CC: correlation congruence between the samples of a batch.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::Tensor;

use crate::check::check_positive;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};
use crate::math::row_norms;

/// How CC relates two samples' embeddings.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum CcKernel {
    /// `k(a, b) = aᵀb` (torchdistill's `bilinear`).
    Bilinear,
    /// The order-`order` (at most 16) Taylor expansion of the Gaussian RBF `exp(−γ‖a − b‖²)`
    /// for unit vectors: `e^{−2γ} Σ_{p=0..order} (2γ)^p / p! · (aᵀb)^p` (torchdistill's `gaussian`;
    /// the paper's choice, with γ = 0.4, order 2).
    Gaussian {
        /// γ.
        gamma: f64,
        /// The expansion's order `P`.
        order: usize,
    },
    /// RepDistiller's `Correlation` (the authors' shared code): no matrix, the mean over
    /// consecutive sample pairs of `Σ_d |δₙ| ⊙ |δₙ₊₁|`, `δ = fˢ − fᵗ`.
    Consecutive,
}

/// The correlation matrix `[N, N]` of embeddings `[N, D]` under a matrix kernel (`None` for
/// [`CcKernel::Consecutive`], which has none).
pub fn correlation_matrix(x: Tensor<2>, kernel: CcKernel) -> Option<Tensor<2>> {
    let dots = x.clone().matmul(x.transpose());
    match kernel {
        CcKernel::Bilinear => Some(dots),
        CcKernel::Gaussian { gamma, order } => {
            let (mut sum, mut power, mut coef) = (dots.ones_like(), dots.ones_like(), 1.0);
            for p in 1..=order {
                power = power * dots.clone();
                coef *= 2.0 * gamma / p as f64;
                sum = sum + power.clone() * coef;
            }
            Some(sum * (-2.0 * gamma).exp())
        }
        CcKernel::Consecutive => None,
    }
}

/// CC between student and teacher embeddings `[N, D]` (already through their heads):
/// `‖Kˢ − Kᵗ‖_F`, divided by `N²` with `batch_mean`; for [`CcKernel::Consecutive`],
/// `meanₙ Σ_d |δₙ,d| |δₙ₊₁,d|`.
pub fn cc_loss(s: Tensor<2>, t: Tensor<2>, kernel: CcKernel, batch_mean: bool) -> Tensor<1> {
    let n = s.dims()[0];
    match (
        correlation_matrix(s.clone(), kernel),
        correlation_matrix(t.clone(), kernel),
    ) {
        (Some(ks), Some(kt)) => {
            let norm = row_norms((ks - kt).reshape([1, n * n]), 1e-12).reshape([1]);
            match batch_mean {
                true => norm * (1.0 / (n * n) as f64),
                false => norm,
            }
        }
        _ => {
            let delta = (s - t).abs();
            (delta.clone().slice(0..n - 1) * delta.slice(1..n))
                .sum_dim(1)
                .mean()
                .reshape([1])
        }
    }
}

/// Configuration of [`Cc`]; the defaults are the paper's and torchdistill's example (Gaussian,
/// γ = 0.4, order 2, divided by `N²`).
#[derive(Config, Debug)]
pub struct CcConfig {
    /// The kernel.
    #[config(default = "CcKernel::Gaussian { gamma: 0.4, order: 2 }")]
    pub kernel: CcKernel,
    /// Divide the matrix distance by `N²` (torchdistill's `batchmean`).
    #[config(default = true)]
    pub batch_mean: bool,
    /// The feature tap (maps are flattened per sample).
    #[config(default = "\"embedding\".to_string()")]
    pub feature: String,
}

impl CcConfig {
    /// Validates the kernel.
    pub fn init(&self) -> Result<Cc, DistillError> {
        if let CcKernel::Gaussian { gamma, order } = self.kernel {
            check_positive(Cc::NAME, "kernel.gamma", gamma)?;
            // (aᵀb)^P of embeddings of magnitude 100 is 1e32 at P = 16, the edge of f32
            if order > 16 {
                return Err(DistillError::config(
                    Cc::NAME,
                    "kernel.order",
                    order,
                    "must be at most 16 (the paper's is 2)",
                ));
            }
        }
        Ok(Cc {
            config: self.clone(),
        })
    }
}

/// Correlation congruence (Peng et al., ICCV 2019, *Correlation Congruence for Knowledge
/// Distillation*; torchdistill's `CCKDLoss`, RepDistiller's `Correlation`): the student's
/// sample-to-sample correlations match the teacher's,
///
/// ```text
/// K_ij = k(fᵢ, fⱼ)      L = ‖Kˢ − Kᵗ‖_F / N²
/// ```
///
/// The paper squares the Frobenius norm; torchdistill does not (`torch.dist`), and the crate
/// follows torchdistill (its gradient is floored where the matrices agree). The paper feeds
/// L2-normalised embeddings of a learned head (torchdistill's `Linear4CCKD`); this objective
/// reads the tap as given, so put the head and the normalisation in the model. One term `"cc"`.
///
/// # Shapes
/// - the tap: student and teacher embeddings `[N, D]` (any widths for a matrix kernel; one
///   width for `Consecutive`), `N ≥ 2`
#[derive(Debug, Clone)]
pub struct Cc {
    config: CcConfig,
}

crate::loss::objective!(Cc, "cc");

impl Loss for Cc {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let checked = input.of(Self::NAME).within(BOUND);
        let name = &self.config.feature;
        let (s, t) = match self.config.kernel {
            CcKernel::Consecutive => checked.paired_rows(name)?,
            _ => checked.rows(name, 2)?,
        };
        if s.dims()[0] < 2 {
            return Err(DistillError::BatchTooSmall {
                objective: Cc::NAME.into(),
                min: 2,
                got: s.dims()[0],
            });
        }
        Ok(LossOutput::single(
            Self::NAME,
            cc_loss(s, t, self.config.kernel, self.config.batch_mean),
        ))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e4;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Cc"],
    paper: "Peng et al., ICCV 2019, *Correlation Congruence for Knowledge Distillation*",
    doc: "cc.md",
    bound: Some(BOUND),
    example: Some(|_| Ok(CcConfig::new().init()?.boxed())),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss Cc = relation::CcConfig())),
    golden: crate::registry::golden!["cckd" => golden::cckd, "cc" => golden::cc],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// torchdistill's `CCKDLoss` on the outputs of its linear heads.
    pub(crate) fn cckd(case: &Case) -> Result<(), String> {
        let kernel = &case.params["kernel_config"];
        let kernel = match kernel["type"].as_str() {
            Some("bilinear") => CcKernel::Bilinear,
            Some("gaussian") => CcKernel::Gaussian {
                gamma: number(&kernel["gamma"])?,
                order: number(&kernel["max_p"])? as usize,
            },
            other => return Err(format!("{NOT_YET}CCKD kernel {other:?}")),
        };
        let loss = CcConfig::new()
            .with_kernel(kernel)
            .with_batch_mean(case.params["reduction"].as_str() == Some("batchmean"))
            .with_feature("tap".into())
            .init()
            .map_err(e)?;
        on_tap(
            case,
            &loss,
            "student_linear_output",
            "teacher_linear_output",
        )
    }

    /// RepDistiller's `Correlation` (CC between consecutive samples).
    pub(crate) fn cc(case: &Case) -> Result<(), String> {
        let loss = CcConfig::new()
            .with_kernel(CcKernel::Consecutive)
            .with_feature("tap".into())
            .init()
            .map_err(e)?;
        on_tap(case, &loss, "feat_student", "feat_teacher")
    }
}
