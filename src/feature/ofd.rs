//! OFD: a comprehensive overhaul of feature distillation.

use crate::registry::{Descriptor, moved};
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, PaddingConfig2d};
use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::{Device, Tensor, TensorData};

use super::maps::{channel_maps, halving_weight, sum_stages};
use crate::check::check_non_negative;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};
use crate::math::nan_if_non_finite;

/// OFD's margin of each channel from the teacher's batch norm before its ReLU, scale `γ` and
/// shift `β` (mdistiller's `get_margin_from_BN`): the expectation of the pre-activation
/// `x ~ N(β, γ²)` given `x < 0`,
///
/// ```text
/// m = β − |γ| φ(β/|γ|) / Φ(−β/|γ|)      where Φ(−β/|γ|) > 0.001,   else −3|γ|
/// ```
pub fn ofd_margins(gamma: &[f64], beta: &[f64]) -> Vec<f64> {
    gamma
        .iter()
        .zip(beta)
        .map(|(&g, &m)| {
            let s = g.abs();
            let cdf = 0.5 * libm::erfc(m / s / std::f64::consts::SQRT_2);
            match cdf > 0.001 {
                true => {
                    let pdf = (-(m / s).powi(2) / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
                    -s * pdf / cdf + m
                }
                false => -3.0 * s,
            }
        })
        .collect()
}

/// OFD's partial L2 (mdistiller's `feat_loss`) between the student's map `s` (through its
/// connector) and the teacher's pre-activation `t` with per-channel margins `m` `[C]`:
/// the squared error, except where the teacher is negative and the student already below it
/// (no push), and against the margin where the teacher is below the margin;
///
/// ```text
/// (s − m)²·[s > m ∧ t ≤ m] + (s − t)²·[s > t ∧ m < t ≤ 0] + (s − t)²·[t > 0]
/// ```
///
/// averaged over the batch and summed over channels and positions.
pub fn partial_l2(s: Tensor<4>, t: Tensor<4>, margin: Tensor<1>) -> Tensor<1> {
    let n = s.dims()[0];
    // both reach the value through comparisons in places, where a NaN would vanish
    let non_finite = nan_if_non_finite(&s) + nan_if_non_finite(&t);
    let m = margin.reshape([1, -1, 1, 1]).expand(s.dims());
    let zero = s.zeros_like();
    let below = t.clone().lower_equal(m.clone());
    let to_margin = s.clone().greater(m.clone()).bool_and(below.clone());
    let between = s
        .clone()
        .greater(t.clone())
        .bool_and(below.bool_not())
        .bool_and(t.clone().lower_equal_elem(0.0));
    let positive = t.clone().greater_elem(0.0);
    let a = (s.clone() - m)
        .square()
        .mask_where(to_margin.bool_not(), zero.clone());
    let d = (s - t).square();
    let b = d.clone().mask_where(between.bool_not(), zero.clone());
    let c = d.mask_where(positive.bool_not(), zero);
    (a + b + c).sum() * (1.0 / n as f64) + non_finite
}

/// OFD's connector: a `k×k` convolution without bias (He-normal initialised, padding
/// `(k − 1)/2`) and batch norm (γ = 1, β = 0), student channels → teacher channels.
#[derive(Module, Debug)]
pub struct ConvBn {
    /// The convolution.
    pub conv: Conv2d,
    /// The batch norm.
    pub bn: BatchNorm,
}

impl ConvBn {
    /// `[N, Cs, H, W]` → `[N, Ct, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.bn.forward(self.conv.forward(x))
    }
}

/// Configuration of [`Ofd`]: per tap, the channels and the teacher's margins.
#[derive(Config, Debug)]
pub struct OfdConfig {
    /// The taps, shallow to deep (pre-activation maps).
    pub features: Vec<String>,
    /// `[student channels, teacher channels]` at each tap.
    pub channels: Vec<[usize; 2]>,
    /// The teacher's margins at each tap, one per teacher channel ([`ofd_margins`] of its
    /// batch norm before the ReLU).
    pub margins: Vec<Vec<f64>>,
    /// The connector's kernel size (mdistiller: 1).
    #[config(default = 1)]
    pub kernel_size: usize,
    /// Weight of the summed loss (mdistiller: 1e-3).
    #[config(default = 1e-3)]
    pub weight: f64,
}

impl OfdConfig {
    /// Validates the configuration and builds the connectors on `device`.
    pub fn init(&self, device: &Device) -> Result<Ofd, DistillError> {
        crate::check::check_taps(Ofd::NAME, &self.features, &[])?;
        check_non_negative(Ofd::NAME, "weight", self.weight)?;
        let k = self.features.len();
        let bad = |field: &str, value: String, reason: &str| {
            Err(DistillError::config(Ofd::NAME, field, value, reason))
        };
        if self.channels.len() != k || self.channels.iter().any(|c| c.contains(&0)) {
            return bad(
                "channels",
                format!("{:?}", self.channels),
                "one [student, teacher] pair of non-zero channel counts per tap",
            );
        }
        if self.margins.len() != k
            || self
                .margins
                .iter()
                .zip(&self.channels)
                .any(|(m, c)| m.len() != c[1])
            || self.margins.iter().flatten().any(|m| !m.is_finite())
        {
            return bad(
                "margins",
                format!("{} lists", self.margins.len()),
                "one finite margin per teacher channel at each tap",
            );
        }
        if self.kernel_size.is_multiple_of(2) {
            return bad(
                "kernel_size",
                self.kernel_size.to_string(),
                "must be odd (the padding keeps the size)",
            );
        }
        let (ks, pad) = (self.kernel_size, (self.kernel_size - 1) / 2);
        let connectors = self
            .channels
            .iter()
            .map(|&[cs, ct]| ConvBn {
                conv: Conv2dConfig::new([cs, ct], [ks, ks])
                    .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                    .with_bias(false)
                    .with_initializer(Initializer::Normal {
                        mean: 0.0,
                        std: (2.0 / (ks * ks * ct) as f64).sqrt(),
                    })
                    .init(device),
                bn: BatchNormConfig::new(ct).init(device),
            })
            .collect();
        Ok(Ofd {
            connectors,
            config: self.clone(),
        })
    }
}

/// OFD (Heo, Kim, Yun, Park, Kwak, Choi, ICCV 2019, *A Comprehensive Overhaul of Feature
/// Distillation*; mdistiller's `OFD.py`): the student's map, through a connector `r`,
/// regresses the teacher's **pre-ReLU** map, with the teacher's negative values replaced by a
/// margin from its batch-norm statistics and a partial L2 that ignores what the ReLU would
/// discard anyway:
///
/// ```text
/// L = w · Σᵢ partial_L2(rᵢ(Sᵢ), pool(Tᵢ), mᵢ) / 2^(k−i−1)     (deepest stage weight 1)
/// ```
///
/// The teacher's map is adaptively average-pooled to the student's spatial size. Margins come
/// from [`ofd_margins`] of the teacher's batch norm before each ReLU. One term `"ofd"`.
///
/// # Shapes
/// - tap `i`: student `[N, Csᵢ, H, W]`, teacher `[N, Ctᵢ, H', W']`
#[derive(Module, Debug)]
pub struct Ofd {
    /// One connector per tap.
    pub connectors: Vec<ConvBn>,
    #[module(skip)]
    config: OfdConfig,
}

crate::loss::objective!(Ofd, "ofd");

impl Loss for Ofd {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let checked = input.of(Self::NAME).within(BOUND).for_module(self);
        let k = c.features.len();
        let total = sum_stages(&c.features, |i, name| {
            let (s, t) = channel_maps(&checked, name, c.channels[i])?;
            let ct = c.channels[i][1];
            let s = self.connectors[i].forward(s);
            let [.., h, w] = s.dims();
            let t = adaptive_avg_pool2d(t, [h, w]);
            let margin = Tensor::<1>::from_data(
                TensorData::new(c.margins[i].clone(), [ct]),
                (&s.device(), s.dtype()),
            );
            Ok(partial_l2(s, t, margin) * halving_weight(i, k))
        })?;
        Ok(LossOutput::single(Self::NAME, total * c.weight))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e15;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Ofd"],
    paper: "Heo et al., ICCV 2019, *A Comprehensive Overhaul of Feature Distillation*",
    doc: "ofd.md",
    bound: Some(BOUND),
    example: None,
    learnable: Some(|r, dev, dtype| {
        Ok(moved(
            OfdConfig::new(
                vec!["feature".into()],
                vec![[3, 6]],
                vec![ofd_margins(
                    &[1.0, 0.5, 2.0, 1.0, 0.1, 1.5],
                    &[0.0, 0.3, -1.0, 2.0, 0.0, -0.2],
                )],
            )
            .init(r)?,
            dev,
            dtype,
        ))
    }),
    twins: None,
    method: Some(
        crate::registry::method!(learnable Ofd = feature::OfdConfig(features = ["block1"], channels = [[4, 2]], margins = [[-1.0, -0.5]])),
    ),
    golden: crate::registry::golden!["ofd" => golden::ofd],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// mdistiller's OFD `feat_loss`: the partial L2 summed over channels and positions, averaged
    /// over the batch ([`partial_l2`]).
    pub(crate) fn ofd(case: &Case) -> Result<(), String> {
        let leaves = case.taps(&["feat_student", "feat_teacher"])?;
        let (_, margin) = case.input("margin")?;
        let margin = tensor(margin.clone(), [margin.len()], case.dtype);
        let loss = partial_l2(map(&leaves[0].1)?, map(&leaves[1].1)?, margin);
        case.check(LossOutput::single("ofd", loss), &borrowed(&leaves))
            .map(drop)
    }
}
