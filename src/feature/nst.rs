//! NST: neuron selectivity transfer.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::Tensor;

use super::maps::{pool_to_smaller, sum_stages, unit_channels};
use crate::check::{check_non_negative, check_taps};
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};

/// One stage of NST: the squared MMD with the polynomial kernel `k(a, b) = (aᵀb)²` between the
/// student's and the teacher's channels, each channel a unit vector over the spatial
/// positions (the larger map pooled to the smaller one's size first):
///
/// ```text
/// mean k(fᵗ, fᵗ) + mean k(fˢ, fˢ) − 2 mean k(fˢ, fᵗ)
/// ```
///
/// (means over the batch and every channel pair). Every term is differentiated: the reference
/// detaches the teacher-teacher term (harmless for a frozen teacher, a wrong gradient for an
/// [attached](crate::DistillInput::attach_teacher) one), the crate does not.
pub fn nst_stage(s: Tensor<4>, t: Tensor<4>) -> Tensor<1> {
    let (s, t) = pool_to_smaller(s, t);
    let (s, t) = (unit_channels(s), unit_channels(t));
    let kernel = |a: Tensor<3>, b: Tensor<3>| a.matmul(b.swap_dims(1, 2)).square().mean();
    kernel(t.clone(), t.clone()) + kernel(s.clone(), s.clone()) - kernel(s, t) * 2.0
}

/// Configuration of [`Nst`]; the weight is mdistiller's (and RepDistiller's) 50.
#[derive(Config, Debug)]
pub struct NstConfig {
    /// The feature taps, one per stage; their losses are summed.
    #[config(default = "vec![\"feature\".to_string()]")]
    pub features: Vec<String>,
    /// Weight of the summed loss (mdistiller's `NST.LOSS.FEAT_WEIGHT`).
    #[config(default = 50.0)]
    pub weight: f64,
}

impl NstConfig {
    /// Validates the taps and the weight.
    pub fn init(&self) -> Result<Nst, DistillError> {
        check_taps(Nst::NAME, &self.features, &[])?;
        check_non_negative(Nst::NAME, "weight", self.weight)?;
        Ok(Nst {
            config: self.clone(),
        })
    }
}

/// Neuron selectivity transfer (Huang & Wang 2017, *Like What You Like: Knowledge Distill
/// via Neuron Selectivity Transfer*, <https://arxiv.org/abs/1707.01219>; mdistiller's
/// `NST.py`): every channel of a stage's map is a sample of the layer's "selectivity"
/// distribution over spatial positions, and the student matches the teacher's distribution
/// under the maximum mean discrepancy with the polynomial kernel `(aᵀb + c)ᵈ`, `d = 2, c = 0`
/// (the paper's best and the reference's only kernel):
///
/// ```text
/// L = w · Σ_stages [mean k(fᵗ, fᵗ) + mean k(fˢ, fˢ) − 2 mean k(fˢ, fᵗ)]
/// ```
///
/// Channel counts may differ; spatial sizes are pooled to the smaller. One term `"nst"`.
///
/// # Shapes
/// - every tap: maps `[N, C, H, W]` (the same `N`)
#[derive(Debug, Clone)]
pub struct Nst {
    config: NstConfig,
}

crate::loss::objective!(Nst, "nst");

impl Loss for Nst {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let total = sum_stages(&self.config.features, |_, name| {
            let (s, t) = input.of(Self::NAME).within(BOUND).maps(name)?;
            Ok(nst_stage(s, t))
        })?;
        Ok(LossOutput::single(Self::NAME, total * self.config.weight))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = f64::MAX;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Nst"],
    paper: "Huang & Wang 2017, *Like What You Like: Neuron Selectivity Transfer*",
    doc: "nst.md",
    bound: Some(BOUND),
    example: Some(|_| Ok(NstConfig::new().init()?.boxed())),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss Nst = feature::NstConfig())),
    golden: crate::registry::golden!["nst" => golden::nst],
}];

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn zero_for_the_same_map_and_positive_otherwise() {
        let dev = Device::flex();
        let f = Tensor::<4>::from_floats(
            [[[[1.0, 2.0], [0.5, -1.0]], [[0.0, 1.0], [3.0, 1.0]]]],
            &dev,
        );
        let g = Tensor::<4>::from_floats(
            [[[[2.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, -2.0]]]],
            &dev,
        );
        let same = nst_stage(f.clone(), f.clone()).into_scalar::<f32>();
        let other = nst_stage(f, g).into_scalar::<f32>();
        assert!(same.abs() < 1e-6, "{same}");
        assert!(other > 1e-3, "{other}");
    }
}

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// mdistiller's `single_stage_nst_loss` (weight 1). The reference detaches its
    /// teacher-teacher term and the crate does not: the teacher's gradient is the reference's plus
    /// that term's, recomputed here (the two maps have one spatial size, so nothing is pooled).
    pub(crate) fn nst(case: &Case) -> Result<(), String> {
        let loss = NstConfig::new()
            .with_features(vec!["tap".into()])
            .with_weight(1.0)
            .init()
            .map_err(e)?;
        let leaves = case.taps(&["feat_student", "feat_teacher"])?;
        let input = DistillInput::features_only()
            .feature("tap", leaves[0].1.clone(), leaves[1].1.clone())
            .attach_teacher();
        let out = loss.forward(&input).map_err(e)?;
        case.expect_loss(out.value(), None)?;
        let grads = out.total.backward();
        case.expect_grad("feat_student", grad(&leaves[0].1, &grads), None)?;
        let t = case.leaf::<4>("feat_teacher")?;
        let [n, c, h, w] = t.dims();
        let f = t.clone().reshape([n, c, h * w]);
        let f = f.clone() / f.square().sum_dim(2).sqrt();
        let self_term = f.clone().matmul(f.swap_dims(1, 2)).square().mean();
        let extra = values(
            t.grad(&self_term.backward())
                .ok_or("no self-term gradient")?,
        );
        let reference = case
            .grads
            .get("feat_teacher")
            .ok_or("no teacher gradient")?;
        let want: Vec<f64> = reference.iter().zip(&extra).map(|(r, x)| r + x).collect();
        let (rel, abs) = case.tolerance();
        close(
            "d/dfeat_teacher (+ the self term)",
            &grad(&leaves[1].1, &grads).ok_or("no teacher gradient")?,
            &want,
            rel,
            abs,
        )?;
        case.checked.borrow_mut().insert("feat_teacher".into());
        Ok(())
    }
}
