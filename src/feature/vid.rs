//! VID: variational information distillation.

use crate::registry::{Descriptor, moved};
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Relu;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::activation::softplus;
use burn::tensor::{Device, Tensor};

use super::maps::{channel_maps, pool_to_smaller, sum_stages};
use crate::check::{check_non_negative, check_positive};
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};

/// VID's negative log-likelihood of the teacher's map `t` `[N, C, H, W]` under a Gaussian with
/// mean `mean` (the regressor's output) and per-channel variance `variance` `[C]`:
/// `mean over all elements of ½ ((μ − t)²/σ² + log σ²)`.
pub fn vid_nll(mean: Tensor<4>, t: Tensor<4>, variance: Tensor<1>) -> Tensor<1> {
    let var = variance.reshape([1, -1, 1, 1]);
    (((mean - t).square() / var.clone() + var.log()) * 0.5).mean()
}

/// VID's regressor: three 1×1 convolutions without bias, ReLU between them
/// (`Cs → Cmid → Cmid → Ct`), and the per-channel log-scale `α` whose softplus is the
/// variance.
#[derive(Module, Debug)]
pub struct VidRegressor {
    /// The convolutions.
    pub convs: Vec<Conv2d>,
    /// The activation between them.
    pub relu: Relu,
    /// `α` `[Ct]`: `σ² = softplus(α) + ε`.
    pub log_scale: Param<Tensor<1>>,
}

impl VidRegressor {
    /// The predicted mean `[N, Ct, H, W]` of a student map `[N, Cs, H, W]`.
    pub fn mean(&self, mut x: Tensor<4>) -> Tensor<4> {
        for (i, conv) in self.convs.iter().enumerate() {
            if i > 0 {
                x = self.relu.forward(x);
            }
            x = conv.forward(x);
        }
        x
    }
}

/// Configuration of [`Vid`]: the channels at each tap, and the references' constants.
#[derive(Config, Debug)]
pub struct VidConfig {
    /// The taps (their losses are summed).
    pub features: Vec<String>,
    /// `[student channels, teacher channels]` at each tap.
    pub channels: Vec<[usize; 2]>,
    /// The regressor's middle width (RepDistiller's `mid_channel`); `None`: the teacher's
    /// channels at each tap (mdistiller, and RepDistiller's training script).
    #[config(default = "None")]
    pub mid_channels: Option<usize>,
    /// The initial variance σ² (RepDistiller: 5).
    #[config(default = 5.0)]
    pub init_variance: f64,
    /// ε added to the variance.
    #[config(default = 1e-5)]
    pub eps: f64,
    /// Weight of the summed loss (mdistiller: 1).
    #[config(default = 1.0)]
    pub weight: f64,
}

impl VidConfig {
    /// Validates the configuration and builds the regressors on `device`.
    pub fn init(&self, device: &Device) -> Result<Vid, DistillError> {
        crate::check::check_taps(Vid::NAME, &self.features, &[])?;
        check_positive(Vid::NAME, "eps", self.eps)?;
        check_non_negative(Vid::NAME, "weight", self.weight)?;
        if !(self.init_variance > self.eps && self.init_variance <= crate::check::MAGNITUDE) {
            return Err(DistillError::config(
                Vid::NAME,
                "init_variance",
                self.init_variance,
                "must be larger than eps and at most 1e15",
            ));
        }
        if self.channels.len() != self.features.len()
            || self.channels.iter().any(|c| c.contains(&0))
        {
            return Err(DistillError::config(
                Vid::NAME,
                "channels",
                format!("{:?}", self.channels),
                "one [student, teacher] pair of non-zero channel counts per tap",
            ));
        }
        if self.mid_channels == Some(0) {
            return Err(DistillError::config(
                Vid::NAME,
                "mid_channels",
                0,
                "must be positive",
            ));
        }
        // softplus(α) = init − ε: α = v + ln(1 − e^(−v)), no overflow for any v
        let v = self.init_variance - self.eps;
        let alpha = v + (-(-v).exp_m1()).ln();
        let regressors = self
            .channels
            .iter()
            .map(|&[cs, ct]| {
                let cm = self.mid_channels.unwrap_or(ct);
                VidRegressor {
                    convs: [(cs, cm), (cm, cm), (cm, ct)]
                        .iter()
                        .map(|&(a, b)| {
                            Conv2dConfig::new([a, b], [1, 1])
                                .with_bias(false)
                                .init(device)
                        })
                        .collect(),
                    relu: Relu::new(),
                    log_scale: Param::from_tensor(Tensor::full([ct], alpha, device)),
                }
            })
            .collect();
        Ok(Vid {
            regressors,
            config: self.clone(),
        })
    }
}

/// Variational information distillation (Ahn, Hu, Damianou, Lawrence, Dai, CVPR 2019,
/// *Variational Information Distillation for Knowledge Transfer*; RepDistiller's `VIDLoss`,
/// mdistiller's `VID.py`): maximise a variational lower bound of the mutual information
/// between the student's and the teacher's maps, a Gaussian likelihood of the teacher's map
/// given the student's,
///
/// ```text
/// μ = r(Fˢ),  σ²_c = softplus(α_c) + ε        L = w · Σ_taps mean ½ ((μ − Fᵗ)²/σ² + log σ²)
/// ```
///
/// (the larger map pooled to the smaller first). The regressor `r` and the log-scales `α` are
/// parameters of this module and **both train**: RepDistiller registers `α` as an
/// `nn.Parameter`; mdistiller keeps its log-scales in a plain list that its optimizer never
/// sees, so its variances stay at their initial 5 — the crate follows RepDistiller (the paper).
/// One term `"vid"`.
///
/// # Shapes
/// - tap `i`: student `[N, Csᵢ, H, W]`, teacher `[N, Ctᵢ, H', W']`
#[derive(Module, Debug)]
pub struct Vid {
    /// One regressor (with its log-scales) per tap.
    pub regressors: Vec<VidRegressor>,
    #[module(skip)]
    config: VidConfig,
}

crate::loss::objective!(Vid, "vid");

impl Loss for Vid {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let checked = input.of(Self::NAME).within(BOUND).for_module(self);
        let total = sum_stages(&c.features, |i, name| {
            let (s, t) = channel_maps(&checked, name, c.channels[i])?;
            let (s, t) = pool_to_smaller(s, t);
            let r = &self.regressors[i];
            let variance = softplus(r.log_scale.val(), 1.0) + c.eps;
            Ok(vid_nll(r.mean(s), t, variance))
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
    items: &["Vid"],
    paper: "Ahn et al., CVPR 2019, *Variational Information Distillation*",
    doc: "vid.md",
    bound: Some(BOUND),
    example: None,
    learnable: Some(|r, dev, dtype| {
        Ok(moved(
            VidConfig::new(vec!["feature".into()], vec![[3, 6]]).init(r)?,
            dev,
            dtype,
        ))
    }),
    twins: None,
    method: Some(
        crate::registry::method!(learnable Vid = feature::VidConfig(features = ["block1"], channels = [[8, 16]])),
    ),
    golden: crate::registry::golden!["vid" => golden::vid],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// mdistiller's `vid_loss` with the case's regressor (three bias-free 1×1 convolutions, ReLU
    /// between) and log-scales: the loss and the gradients of both maps and every parameter.
    pub(crate) fn vid(case: &Case) -> Result<(), String> {
        let leaves = case.taps(&["feat_student", "feat_teacher"])?;
        let (cs, ct) = (chw(case, "feat_student")?[0], chw(case, "feat_teacher")?[0]);
        let mid = case.input("w1")?.0[0];
        let mut vid = VidConfig::new(vec!["tap".into()], vec![[cs, ct]])
            .with_mid_channels(Some(mid))
            .with_eps(case.param("eps")?)
            .init(&device())
            .map_err(e)?;
        let regressor = &mut vid.regressors[0];
        for (conv, w) in regressor.convs.iter_mut().zip(["w1", "w2", "w3"]) {
            conv.weight = Param::from_tensor(case.constant::<4>(w)?);
        }
        regressor.log_scale = Param::from_tensor(case.constant::<1>("log_scale")?);
        let input = DistillInput::features_only()
            .feature("tap", leaves[0].1.clone(), leaves[1].1.clone())
            .attach_teacher();
        let grads = case.check(vid.forward(&input).map_err(e)?, &borrowed(&leaves))?;
        let gp = GradientsParams::from_grads(grads, &vid);
        let regressor = &vid.regressors[0];
        for (conv, w) in regressor.convs.iter().zip(["w1", "w2", "w3"]) {
            case.expect_grad(w, gp.get::<4>(conv.weight.id).map(values), None)?;
        }
        case.expect_param(&regressor.log_scale, &gp, "log_scale")
    }
}
