//! MGD: masked generative distillation.

use crate::registry::{Descriptor, moved};
use std::sync::atomic::{AtomicU64, Ordering};

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{PaddingConfig2d, Relu};
use burn::tensor::{Device, Tensor, TensorData};

use crate::check::check_non_negative;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput, Reduction};
use crate::math::SplitMix;

/// Which part of the student's map MGD hides.
#[derive(Config, Debug, PartialEq, Copy)]
pub enum MgdMask {
    /// Whole channels, `[N, C, 1, 1]` (classification): a channel is hidden when `u < λ`.
    Channel,
    /// Whole positions, `[N, 1, H, W]` (detection): a position is hidden when `u > 1 − λ`.
    Spatial,
}

/// Configuration of [`Mgd`]. `lambda` and `alpha` default by mask and reduction: channel
/// masks λ = 0.15, α = 7e-5; spatial masks λ = 0.65, α = 2e-5 (the paper's classification and
/// detection settings) under `Sum`; under `Mean`, α is rescaled by 512·7·7 (ResNet-18's last
/// map, the setting the classification α was tuned on): 1.756 and 0.502.
#[derive(Config, Debug)]
pub struct MgdConfig {
    /// Student channels at the tap.
    pub student_channels: usize,
    /// Teacher channels at the tap.
    pub teacher_channels: usize,
    /// The feature tap.
    #[config(default = "\"feature\".to_string()")]
    pub feature: String,
    /// Channel or spatial masks.
    #[config(default = "MgdMask::Channel")]
    pub mask: MgdMask,
    /// The masked fraction λ, in [0, 1).
    #[config(default = "None")]
    pub lambda: Option<f64>,
    /// The loss weight α.
    #[config(default = "None")]
    pub alpha: Option<f64>,
    /// The reduction of the squared error: `SampleMean` (the reference: the sum over every
    /// element divided by `N`, hence its tiny α) or `ElementMean` (the mean over every element).
    #[config(default = "Reduction::SampleMean")]
    pub reduction: Reduction,
    /// Seed of the masks.
    #[config(default = 0)]
    pub seed: u64,
}

impl MgdConfig {
    /// Validates λ and α and builds the align convolution (1×1, when the channel counts
    /// differ) and the generator (3×3 conv → ReLU → 3×3 conv) on `device`.
    pub fn init(&self, device: &Device) -> Result<Mgd, DistillError> {
        let (cs, ct) = (self.student_channels, self.teacher_channels);
        if cs == 0 || ct == 0 {
            return Err(DistillError::config(
                Mgd::NAME,
                "channels",
                format!("{cs} -> {ct}"),
                "must be >= 1",
            ));
        }
        let lambda = self.lambda.unwrap_or(match self.mask {
            MgdMask::Channel => 0.15,
            MgdMask::Spatial => 0.65,
        });
        crate::check::check_fraction(Mgd::NAME, "lambda", lambda, false)?;
        let sum_alpha = match self.mask {
            MgdMask::Channel => 7e-5,
            MgdMask::Spatial => 2e-5,
        };
        if !matches!(
            self.reduction,
            Reduction::SampleMean | Reduction::ElementMean
        ) {
            return Err(DistillError::config(
                Mgd::NAME,
                "reduction",
                format!("{:?}", self.reduction),
                "MGD reduces by SampleMean (the reference) or ElementMean",
            ));
        }
        let alpha = self.alpha.unwrap_or(match self.reduction {
            Reduction::ElementMean => sum_alpha * (512.0 * 7.0 * 7.0),
            _ => sum_alpha,
        });
        check_non_negative(Mgd::NAME, "alpha", alpha)?;
        let gen_conv = || {
            Conv2dConfig::new([ct, ct], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Ok(Mgd {
            align: (cs != ct).then(|| Conv2dConfig::new([cs, ct], [1, 1]).init(device)),
            generator: Generator {
                conv1: gen_conv(),
                relu: Relu::new(),
                conv2: gen_conv(),
            },
            config: self.clone(),
            lambda,
            alpha,
            draws: std::sync::Arc::new(AtomicU64::new(0)),
        })
    }
}

/// MGD's generator: 3×3 conv → ReLU → 3×3 conv over the teacher's channels.
#[derive(Module, Debug)]
pub struct Generator {
    /// First convolution.
    pub conv1: Conv2d,
    /// Activation.
    pub relu: Relu,
    /// Second convolution.
    pub conv2: Conv2d,
}

impl Generator {
    /// `[N, Ct, H, W]` → `[N, Ct, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv2.forward(self.relu.forward(self.conv1.forward(x)))
    }
}

/// MGD (Yang, Li, Shao, Yuan, Yuan, ECCV 2022, *Masked Generative Distillation*; yzd-v/MGD):
/// hide a random part of the (aligned) student map and make a generator restore the teacher's
/// full map from the rest:
///
/// ```text
/// L = α · Σ (G(align(Fˢ) ⊙ M) − Fᵗ)² / N          (Sum; Mean: α · mean(·))
/// ```
///
/// `M` is 0 on the hidden channels (or positions) and 1 elsewhere. Masks come from a
/// counter-based generator seeded by the config (the same masks on every backend), keyed by
/// the input's progress (epoch, step) when it has one and by a per-module draw counter
/// otherwise; [`forward_with_mask`](Self::forward_with_mask) takes one explicitly. The
/// align convolution and the generator are part of this module. One term `"mgd"`.
#[derive(Module, Debug)]
pub struct Mgd {
    /// 1×1 convolution from the student's to the teacher's channels (when they differ).
    pub align: Option<Conv2d>,
    /// The generator.
    pub generator: Generator,
    #[module(skip)]
    config: MgdConfig,
    #[module(skip)]
    lambda: f64,
    #[module(skip)]
    alpha: f64,
    #[module(skip)]
    draws: std::sync::Arc<AtomicU64>,
}

impl Mgd {
    /// A 0/1 mask for a teacher map of shape `[n, c, h, w]` (channel `[n, c, 1, 1]` or
    /// spatial `[n, 1, h, w]`), from the seed and `key`.
    pub fn mask(&self, shape: [usize; 4], key: u64, device: &Device) -> Tensor<4> {
        let [n, c, h, w] = shape;
        let dims = match self.config.mask {
            MgdMask::Channel => [n, c, 1, 1],
            MgdMask::Spatial => [n, 1, h, w],
        };
        let mut rng = SplitMix::keyed(self.config.seed, Self::NAME, key);
        let lambda = self.lambda;
        let data: Vec<f64> = (0..dims.iter().product::<usize>())
            .map(|_| {
                let u = rng.unit();
                let hidden = match self.config.mask {
                    MgdMask::Channel => u < lambda,
                    MgdMask::Spatial => u > 1.0 - lambda,
                };
                if hidden { 0.0 } else { 1.0 }
            })
            .collect();
        Tensor::from_data(TensorData::new(data, dims), device)
    }

    /// The loss with the given 0/1 `mask` (shaped as [`mask`](Self::mask) makes them).
    pub fn forward_with_mask(
        &self,
        student: Tensor<4>,
        teacher: Tensor<4>,
        mask: Tensor<4>,
    ) -> Tensor<1> {
        let n = student.dims()[0] as f64;
        let s = match &self.align {
            Some(a) => a.forward(student),
            None => student,
        };
        let mask = mask.cast(s.dtype());
        let err = (self.generator.forward(s * mask) - teacher).square();
        let reduced = match self.config.reduction {
            Reduction::ElementMean => err.mean(),
            _ => err.sum() * (1.0 / n),
        };
        reduced * self.alpha
    }
}

crate::loss::objective!(Mgd, "mgd");

impl Loss for Mgd {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let (s, t) = input
            .of(Mgd::NAME)
            .within(BOUND)
            .for_module(self)
            .maps(&c.feature)?;
        let (ds, dt) = (s.dims(), t.dims());
        if ds[1] != c.student_channels || dt[1] != c.teacher_channels || ds[2..] != dt[2..] {
            return Err(DistillError::ShapeMismatch {
                objective: Mgd::NAME.into(),
                what: format!(
                    "student tap `{}` (teacher channels, the teacher's size)",
                    c.feature
                ),
                expected: vec![ds[0], c.student_channels, dt[2], dt[3]],
                actual: ds.to_vec(),
            });
        }
        let key = match input.get_progress() {
            Some(p) => ((p.epoch as u64) << 32) ^ p.step as u64 ^ (1 << 63),
            None => self.draws.fetch_add(1, Ordering::Relaxed),
        };
        let mask = self.mask(dt, key, &t.device());
        Ok(LossOutput::single(
            Mgd::NAME,
            self.forward_with_mask(s, t, mask),
        ))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e15;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Mgd"],
    paper: "Yang et al., ECCV 2022, *Masked Generative Distillation*",
    doc: "mgd.md",
    bound: Some(BOUND),
    example: None,
    learnable: Some(|r, dev, dtype| {
        Ok(moved(
            MgdConfig::new(3, 6).with_alpha(Some(1e-2)).init(r)?,
            dev,
            dtype,
        ))
    }),
    twins: None,
    method: Some(
        crate::registry::method!(learnable Mgd = feature::MgdConfig(student_channels = 8, teacher_channels = 16)),
    ),
    golden: crate::registry::golden!["mgd" => golden::mgd, "modelopt_mgd" => golden::modelopt],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// MGD with the case's recorded mask and conv weights: loss and the gradients of both maps and
    /// every conv parameter. Without `align_weight` (equal channel counts) there is no align conv.
    pub(crate) fn mgd(case: &Case) -> Result<(), String> {
        let spatial = case.params["mask"]
            .as_str()
            .is_some_and(|m| m.starts_with("spatial"));
        let mask = if spatial {
            MgdMask::Spatial
        } else {
            MgdMask::Channel
        };
        let config = MgdConfig::new(
            case.param("student_channels")? as usize,
            case.param("teacher_channels")? as usize,
        )
        .with_mask(mask);
        run(
            case,
            config,
            ["preds_S", "preds_T"],
            case.constant::<4>("mask")?,
        )
    }

    /// Model-Optimizer's `MGDLoss`: spatial masks from the recorded uniform draws (a position is
    /// hidden where `u > 1 − λ`), α times the mean squared error over every element.
    pub(crate) fn modelopt(case: &Case) -> Result<(), String> {
        let config = MgdConfig::new(
            case.param("num_student_channels")? as usize,
            case.param("num_teacher_channels")? as usize,
        )
        .with_mask(MgdMask::Spatial)
        .with_reduction(Reduction::ElementMean);
        let hidden = case
            .constant::<4>("rand_u")?
            .greater_elem(1.0 - case.param("lambda_mgd")?);
        let keep = hidden.bool_not().float();
        run(case, config, ["out_s", "out_t"], keep)
    }

    /// MGD configured by `config` (λ and α from the case) with its convolutions set from the
    /// case, on the maps `names` and the 0/1 `mask`.
    fn run(
        case: &Case,
        config: MgdConfig,
        names: [&str; 2],
        mask: Tensor<4>,
    ) -> Result<(), String> {
        let mut mgd = config
            .with_lambda(Some(case.param("lambda_mgd")?))
            .with_alpha(Some(case.param("alpha_mgd")?))
            .init(&device())
            .map_err(e)?;
        match (mgd.align.as_mut(), case.has("align_weight")) {
            (Some(align), true) => set_conv(case, "align_weight", "align_bias", align)?,
            (None, false) => {}
            (Some(_), false) => return Err("an align conv the reference does not have".into()),
            (None, true) => return Err("no align conv, but the reference has one".into()),
        }
        set_conv(case, "gen0_weight", "gen0_bias", &mut mgd.generator.conv1)?;
        set_conv(case, "gen2_weight", "gen2_bias", &mut mgd.generator.conv2)?;
        let (s, t) = (case.leaf::<4>(names[0])?, case.leaf::<4>(names[1])?);
        let loss = mgd.forward_with_mask(s.clone(), t.clone(), mask.cast(s.dtype()));
        let out = LossOutput::single("mgd", loss);
        let grads = case.check(
            out,
            &[(names[0], Feature::Map(s)), (names[1], Feature::Map(t))],
        )?;
        let gp = GradientsParams::from_grads(grads, &mgd);
        if let Some(align) = &mgd.align {
            case.expect_conv(align, &gp, "align_weight", "align_bias")?;
        }
        case.expect_conv(&mgd.generator.conv1, &gp, "gen0_weight", "gen0_bias")?;
        case.expect_conv(&mgd.generator.conv2, &gp, "gen2_weight", "gen2_bias")
    }
}
