//! FitNet hints with a learnable connector.

use crate::registry::{Descriptor, moved};
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d, Relu};
use burn::tensor::{Device, Tensor};

use super::maps::configured_maps;
use crate::check::check_non_negative;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};

/// Configuration of [`Hint`]: the student's and teacher's map shapes `[C, H, W]` at the tap.
#[derive(Config, Debug)]
pub struct HintConfig {
    /// The student's map `[C, H, W]`.
    pub student: [usize; 3],
    /// The teacher's map `[C, H, W]`.
    pub teacher: [usize; 3],
    /// The feature tap.
    #[config(default = "\"feature\".to_string()")]
    pub feature: String,
    /// Learn a connector (FitNet's regressor). Without one the shapes must match.
    #[config(default = true)]
    pub connector: bool,
    /// A ReLU after the connector's batch norm (mdistiller's `ConvReg(use_relu=True)`).
    #[config(default = true)]
    pub relu: bool,
    /// Weight of the loss.
    #[config(default = 1.0)]
    pub weight: f64,
}

impl HintConfig {
    /// Validates the shapes and builds the connector ([`ConvReg::new`]) on `device`.
    pub fn init(&self, device: &Device) -> Result<Hint, DistillError> {
        check_non_negative(Hint::NAME, "weight", self.weight)?;
        if self.student.contains(&0) || self.teacher.contains(&0) {
            return Err(DistillError::config(
                Hint::NAME,
                "student/teacher",
                format!("{:?} / {:?}", self.student, self.teacher),
                "every size must be >= 1",
            ));
        }
        if !self.connector {
            if self.student != self.teacher {
                return Err(DistillError::config(
                    Hint::NAME,
                    "connector",
                    false,
                    "student and teacher maps differ: a connector is needed",
                ));
            }
            return Ok(Hint {
                connector: None,
                config: self.clone(),
            });
        }
        let connector =
            ConvReg::new(self.student, self.teacher, self.relu, device).map_err(|reason| {
                DistillError::config(Hint::NAME, "student", format!("{:?}", self.student), reason)
            })?;
        Ok(Hint {
            connector: Some(connector),
            config: self.clone(),
        })
    }
}

/// The convolution of a [`ConvReg`].
#[derive(Module, Debug)]
pub enum Connector {
    /// A (possibly strided) convolution.
    Conv(Conv2d),
    /// A transposed convolution (upsampling by 2).
    Up(ConvTranspose2d),
}

/// FitNet's regressor: convolution, batch norm, optional ReLU.
#[derive(Module, Debug)]
pub struct ConvReg {
    /// The convolution.
    pub conv: Connector,
    /// Batch norm over the teacher's channels.
    pub bn: BatchNorm,
    /// The optional ReLU.
    pub relu: Option<Relu>,
}

impl ConvReg {
    /// The connector from a student map `[Cs, Hs, Ws]` to a teacher map `[Ct, Ht, Wt]`: a 1×1
    /// convolution when the spatial sizes match, a 3×3 stride-2 convolution when the student's
    /// map is twice the teacher's, a transposed 4×4 stride-2 convolution when it is half, and a
    /// `(1 + Hs − Ht) × (1 + Ws − Wt)` convolution when it is otherwise larger (mdistiller's
    /// and RepDistiller's `ConvReg`); then batch norm (and ReLU). `Err` says why there is none.
    pub fn new(
        [cs, hs, ws]: [usize; 3],
        [ct, ht, wt]: [usize; 3],
        relu: bool,
        device: &Device,
    ) -> Result<Self, &'static str> {
        let conv = if (hs, ws) == (ht, wt) {
            Connector::Conv(Conv2dConfig::new([cs, ct], [1, 1]).init(device))
        } else if (hs, ws) == (2 * ht, 2 * wt) {
            Connector::Conv(
                Conv2dConfig::new([cs, ct], [3, 3])
                    .with_stride([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device),
            )
        } else if (2 * hs, 2 * ws) == (ht, wt) {
            Connector::Up(
                ConvTranspose2dConfig::new([cs, ct], [4, 4])
                    .with_stride([2, 2])
                    .with_padding([1, 1])
                    .init(device),
            )
        } else if hs >= ht && ws >= wt {
            Connector::Conv(Conv2dConfig::new([cs, ct], [1 + hs - ht, 1 + ws - wt]).init(device))
        } else {
            return Err(
                "a map smaller than the teacher's (and not half its size) has no connector",
            );
        };
        Ok(Self {
            conv,
            bn: BatchNormConfig::new(ct).init(device),
            relu: relu.then(Relu::new),
        })
    }

    /// The student's map brought to the teacher's shape.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = match &self.conv {
            Connector::Conv(c) => c.forward(x),
            Connector::Up(c) => c.forward(x),
        };
        let x = self.bn.forward(x);
        match &self.relu {
            Some(r) => r.forward(x),
            None => x,
        }
    }
}

/// FitNet hints (Romero et al., ICLR 2015, *FitNets: Hints for Thin Deep Nets*): the
/// student's map, through a learnable connector `r`, regresses the teacher's:
///
/// ```text
/// L = w · mean (r(Fˢ) − Fᵗ)²
/// ```
///
/// (mean over all elements, mdistiller's `F.mse_loss`). The connector is part of this module:
/// put it beside the student in the module the optimizer updates. One term `"hint"`.
#[derive(Module, Debug)]
pub struct Hint {
    /// The connector (`None` when the shapes match and none was asked for).
    pub connector: Option<ConvReg>,
    #[module(skip)]
    config: HintConfig,
}

crate::loss::objective!(Hint, "hint");

impl Loss for Hint {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let (s, t) = configured_maps(
            &input.of(Hint::NAME).within(BOUND).for_module(self),
            &c.feature,
            c.student,
            c.teacher,
        )?;
        let s = match &self.connector {
            Some(r) => r.forward(s),
            None => s,
        };
        Ok(LossOutput::single(
            Hint::NAME,
            (s - t).square().mean() * c.weight,
        ))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e15;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Hint"],
    paper: "Romero et al., ICLR 2015, *FitNets: Hints for Thin Deep Nets*",
    doc: "hint.md",
    bound: Some(BOUND),
    example: None,
    learnable: Some(|r, dev, dtype| {
        Ok(moved(
            HintConfig::new([3, 4, 4], [6, 4, 4]).init(r)?,
            dev,
            dtype,
        ))
    }),
    twins: None,
    method: Some(
        crate::registry::method!(learnable Hint = feature::HintConfig(student = [8, 4, 4], teacher = [16, 4, 4])),
    ),
    golden: crate::registry::golden!["fitnet_mse" => golden::fitnet, "fitnet_convreg_mse" => golden::fitnet],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// FitNet: the plain hint (no connector) and mdistiller's ConvReg connector with the case's
    /// weights, batch norm in training mode.
    pub(crate) fn fitnet(case: &Case) -> Result<(), String> {
        let (s, t) = (tap(case, "feat_student")?, tap(case, "feat_teacher")?);
        let shape = |name: &str| -> Result<[usize; 3], String> {
            case.input(name)?.0[1..]
                .try_into()
                .map_err(|_| format!("`{name}` is not a map"))
        };
        let connector = case.method == "fitnet_convreg_mse";
        let mut hint = HintConfig::new(shape("feat_student")?, shape("feat_teacher")?)
            .with_connector(connector)
            .init(&device())
            .map_err(e)?;
        if let Some(reg) = hint.connector.as_mut() {
            let Connector::Conv(c) = &mut reg.conv else {
                return Err("a 1x1 connector expected".into());
            };
            set_conv(case, "conv_weight", "conv_bias", c)?;
            reg.bn.gamma = Param::from_tensor(case.constant::<1>("bn_weight")?);
            reg.bn.beta = Param::from_tensor(case.constant::<1>("bn_bias")?);
        }
        let input = DistillInput::features_only()
            .feature("feature", s.clone(), t.clone())
            .attach_teacher();
        let out = hint.forward(&input).map_err(e)?;
        let grads = case.check(out, &[("feat_student", s), ("feat_teacher", t)])?;
        if let Some(reg) = &hint.connector {
            let gp = GradientsParams::from_grads(grads, &hint);
            let Connector::Conv(c) = &reg.conv else {
                return Err("a 1x1 connector expected".into());
            };
            case.expect_conv(c, &gp, "conv_weight", "conv_bias")?;
            case.expect_param(&reg.bn.gamma, &gp, "bn_weight")?;
            case.expect_param(&reg.bn.beta, &gp, "bn_bias")?;
        }
        Ok(())
    }
}
