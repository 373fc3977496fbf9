//! FSP: the flow of solution procedure between consecutive stages.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::Tensor;

use super::maps::pool_to_smaller;
use crate::check::{check_non_negative, check_taps};
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};

/// The FSP matrix of two maps of one network, `bottom` `[N, Cb, H, W]` and `top`
/// `[N, Ct, H', W']` (the larger pooled to the smaller): `G = top · bottomᵀ / (H·W)`,
/// `[N, Ct, Cb]` (RepDistiller's `compute_fsp`).
pub fn fsp_matrix(bottom: Tensor<4>, top: Tensor<4>) -> Tensor<3> {
    let (bottom, top) = pool_to_smaller(bottom, top);
    let [n, cb, h, w] = bottom.dims();
    let ct = top.dims()[1];
    let bottom = bottom.reshape([n, cb, h * w]);
    let top = top.reshape([n, ct, h * w]);
    top.matmul(bottom.swap_dims(1, 2)) * (1.0 / (h * w) as f64)
}

/// Configuration of [`Fsp`]; the weight is RepDistiller's CIFAR-100 setting.
#[derive(Config, Debug)]
pub struct FspConfig {
    /// The feature taps in network order (at least two); each consecutive pair gives one FSP
    /// matrix.
    pub features: Vec<String>,
    /// Weight of the summed loss (RepDistiller: 50).
    #[config(default = 50.0)]
    pub weight: f64,
}

impl FspConfig {
    /// Validates the taps (at least two) and the weight.
    pub fn init(&self) -> Result<Fsp, DistillError> {
        check_taps(Fsp::NAME, &self.features, &[])?;
        if self.features.len() < 2 {
            return Err(DistillError::config(
                Fsp::NAME,
                "features",
                format!("{:?}", self.features),
                "names at least two taps (an FSP matrix joins consecutive stages)",
            ));
        }
        check_non_negative(Fsp::NAME, "weight", self.weight)?;
        Ok(Fsp {
            config: self.clone(),
        })
    }
}

/// FSP (Yim et al., CVPR 2017, *A Gift from Knowledge Distillation: Fast Optimization,
/// Network Minimization and Transfer Learning*; RepDistiller's `FSP.py`): the student matches
/// the teacher's "flow" between consecutive stages `i, i+1`, the Gram matrix of their
/// channels over the spatial positions:
///
/// ```text
/// Gᵢ = Fᵢ₊₁ Fᵢᵀ / (H·W)   [N, Cᵢ₊₁, Cᵢ]        L = w · Σᵢ mean (Gᵢˢ − Gᵢᵗ)²
/// ```
///
/// The student's and teacher's channels must match stage by stage (the reference raises
/// otherwise: so does this, a typed error); the paper weights each pair and sums over
/// elements, the reference (and the crate) averages. One term `"fsp"`.
///
/// # Shapes
/// - each tap: maps `[N, Cᵢ, Hᵢ, Wᵢ]`, the same channels for student and teacher
#[derive(Debug, Clone)]
pub struct Fsp {
    config: FspConfig,
}

crate::loss::objective!(Fsp, "fsp");

impl Loss for Fsp {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let checked = input.of(Self::NAME).within(BOUND);
        let mut maps = Vec::new();
        for name in &self.config.features {
            let (s, t) = checked.maps(name)?;
            if s.dims()[1] != t.dims()[1] {
                return Err(checked.shape(
                    format!("teacher channels of tap `{name}`"),
                    vec![s.dims()[1]],
                    vec![t.dims()[1]],
                ));
            }
            maps.push((s, t));
        }
        let total = maps
            .windows(2)
            .map(|w| {
                let gs = fsp_matrix(w[0].0.clone(), w[1].0.clone());
                let gt = fsp_matrix(w[0].1.clone(), w[1].1.clone());
                (gs - gt).square().mean()
            })
            .reduce(|a, b| a + b)
            .expect("two taps, checked at init");
        Ok(LossOutput::single(Self::NAME, total * self.config.weight))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e8;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Fsp"],
    paper: "Yim et al., CVPR 2017, *A Gift from Knowledge Distillation*",
    doc: "fsp.md",
    bound: Some(BOUND),
    example: Some(|_| {
        Ok(FspConfig::new(vec!["paired".into(), "paired".into()])
            .init()?
            .boxed())
    }),
    learnable: None,
    twins: None,
    method: Some(
        crate::registry::method!(loss Fsp = feature::FspConfig(features = ["block1", "block2"])),
    ),
    golden: crate::registry::golden!["fsp" => golden::fsp],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// RepDistiller's `FSP` (the returned per-pair list summed: weight 1).
    pub(crate) fn fsp(case: &Case) -> Result<(), String> {
        let (input, leaves, k) = staged_input(case)?;
        let fsp = FspConfig::new(stage_names(k))
            .with_weight(1.0)
            .init()
            .map_err(e)?;
        case.check(fsp.forward(&input).map_err(e)?, &borrowed(&leaves))
            .map(drop)
    }
}
