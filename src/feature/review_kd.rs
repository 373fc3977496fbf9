//! ReviewKD: attention-based fusion of the student's stages and the hierarchical context loss.

use crate::registry::{Descriptor, moved};
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, PaddingConfig2d};
use burn::tensor::module::{adaptive_avg_pool2d, interpolate};
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};

use crate::check::check_non_negative;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};
use crate::math::logistic;
use crate::schedule::Schedule;

/// ReviewKD's hierarchical context loss for one stage (mdistiller's `hcl_loss`): the mean
/// squared error of the maps, plus that of their `4×4`, `2×2` and `1×1` average pools (each
/// smaller than the map), weighted `1, ½, ¼, …` and normalised by the weights' sum.
pub fn hcl_stage(s: Tensor<4>, t: Tensor<4>) -> Tensor<1> {
    let h = s.dims()[2];
    let mut loss = (s.clone() - t.clone()).square().mean();
    let (mut weight, mut total) = (1.0, 1.0);
    for level in [4, 2, 1] {
        if level >= h {
            continue;
        }
        weight /= 2.0;
        let pooled = |x: Tensor<4>| adaptive_avg_pool2d(x, [level, level]);
        loss = loss + (pooled(s.clone()) - pooled(t.clone())).square().mean() * weight;
        total += weight;
    }
    loss * (1.0 / total)
}

/// A convolution without bias (Kaiming-uniform with `a = 1`, as the reference) and batch norm.
#[derive(Module, Debug)]
pub struct ConvNorm {
    /// The convolution.
    pub conv: Conv2d,
    /// The batch norm.
    pub bn: BatchNorm,
}

impl ConvNorm {
    fn new(c_in: usize, c_out: usize, kernel: usize, device: &Device) -> Self {
        let pad = kernel / 2;
        Self {
            conv: Conv2dConfig::new([c_in, c_out], [kernel, kernel])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_bias(false)
                .with_initializer(Initializer::KaimingUniform {
                    gain: 1.0,
                    fan_out_only: false,
                })
                .init(device),
            bn: BatchNormConfig::new(c_out).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.bn.forward(self.conv.forward(x))
    }
}

/// ReviewKD's attention-based fusion (mdistiller's `ABF`): a 1×1 projection of the stage's
/// map, fused with the deeper stages' residual through two sigmoid attention maps, then a 3×3
/// convolution to the teacher's channels.
#[derive(Module, Debug)]
pub struct Abf {
    /// Stage map → middle channels.
    pub reduce: ConvNorm,
    /// Fused map → teacher channels.
    pub output: ConvNorm,
    /// The attention (two maps from the concatenated pair); `None` for the deepest stage.
    pub attention: Option<Conv2d>,
}

impl Abf {
    /// The stage's output `[N, Ct, H', W']` and its residual for the next (shallower) stage:
    /// `x` the student's map, `residual` the deeper stages' (upsampled to `x`'s size), `out`
    /// the teacher's spatial size.
    pub fn forward(
        &self,
        x: Tensor<4>,
        residual: Option<Tensor<4>>,
        out: [usize; 2],
    ) -> (Tensor<4>, Tensor<4>) {
        let [n, _, h, w] = x.dims();
        let mut x = self.reduce.forward(x);
        if let (Some(att), Some(y)) = (&self.attention, residual) {
            let y = nearest(y, [h, w]);
            let z = logistic(att.forward(Tensor::cat(vec![x.clone(), y.clone()], 1)));
            let a = z.clone().slice([0..n, 0..1]);
            let b = z.slice([0..n, 1..2]);
            x = x * a + y * b;
        }
        if [x.dims()[2], x.dims()[3]] != out {
            x = nearest(x, out);
        }
        (self.output.forward(x.clone()), x)
    }
}

/// Nearest-neighbour resizing (`F.interpolate(mode="nearest")`).
fn nearest(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    match [x.dims()[2], x.dims()[3]] == size {
        true => x,
        false => interpolate(
            x,
            InterpolateOptions::new(InterpolateMode::Nearest)
                .with_align_corners(false)
                .with_output_size(size),
        ),
    }
}

/// Configuration of [`ReviewKd`]: the stages' channels and mdistiller's constants.
#[derive(Config, Debug)]
pub struct ReviewKdConfig {
    /// The taps, shallow to deep (the deepest is often the pooled feature `[N, C, 1, 1]`).
    pub features: Vec<String>,
    /// The student's channels at each tap.
    pub student_channels: Vec<usize>,
    /// The teacher's channels at each tap.
    pub teacher_channels: Vec<usize>,
    /// The cap of the fusion's middle width (`min(cap, deepest student channels)`).
    #[config(default = 512)]
    pub max_mid_channels: usize,
    /// Epochs of linear warm-up of the weight, `min((epoch + 1) / warmup, 1)` (mdistiller: 20;
    /// 0: none, then no progress is needed).
    #[config(default = 20)]
    pub warmup_epochs: usize,
    /// Weight of the loss (mdistiller: 1).
    #[config(default = 1.0)]
    pub weight: f64,
}

impl ReviewKdConfig {
    /// Validates the configuration and builds the fusion modules on `device`.
    pub fn init(&self, device: &Device) -> Result<ReviewKd, DistillError> {
        crate::check::check_taps(ReviewKd::NAME, &self.features, &[])?;
        check_non_negative(ReviewKd::NAME, "weight", self.weight)?;
        let k = self.features.len();
        for (field, v) in [
            ("student_channels", &self.student_channels),
            ("teacher_channels", &self.teacher_channels),
        ] {
            if v.len() != k || v.contains(&0) {
                return Err(DistillError::config(
                    ReviewKd::NAME,
                    field,
                    format!("{v:?}"),
                    "one non-zero channel count per tap",
                ));
            }
        }
        let mid = self
            .max_mid_channels
            .min(self.student_channels[k - 1])
            .max(1);
        // deepest first, as the reference reverses its list
        let abfs = (0..k)
            .rev()
            .map(|i| Abf {
                reduce: ConvNorm::new(self.student_channels[i], mid, 1, device),
                output: ConvNorm::new(mid, self.teacher_channels[i], 3, device),
                attention: (i < k - 1)
                    .then(|| Conv2dConfig::new([2 * mid, 2], [1, 1]).init(device)),
            })
            .collect();
        Ok(ReviewKd {
            abfs,
            config: self.clone(),
        })
    }
}

/// Knowledge review (Chen, Liu, Zhao, Jia, CVPR 2021, *Distilling Knowledge via Knowledge
/// Review*; mdistiller's `ReviewKD.py`): each teacher stage is matched by a *fusion* of the
/// student's same and deeper stages, built from the deepest stage up by attention-based
/// fusion ([`Abf`]), under the hierarchical context loss ([`hcl_stage`]):
///
/// ```text
/// (oₖ, rₖ) = ABFₖ(Sₖ);  (oᵢ, rᵢ) = ABFᵢ(Sᵢ, rᵢ₊₁)  for i = k−1 … 1
/// L = w · min((epoch + 1)/warmup, 1) · Σᵢ HCL(oᵢ, Tᵢ)
/// ```
///
/// The fusion modules are part of this module. mdistiller's student taps are post-ReLU maps by
/// default (`STU_PREACT = False`) and its teacher taps pre-ReLU; the crate reads what it is
/// given. One term `"review_kd"`.
///
/// # Shapes
/// - tap `i`: student `[N, Csᵢ, Hᵢ, Wᵢ]`, teacher `[N, Ctᵢ, H'ᵢ, W'ᵢ]` (square maps in the
///   reference; any sizes here, the fused map is resized to the teacher's)
#[derive(Module, Debug)]
pub struct ReviewKd {
    /// The fusion modules, deepest stage first.
    pub abfs: Vec<Abf>,
    #[module(skip)]
    config: ReviewKdConfig,
}

crate::loss::objective!(ReviewKd, "review_kd");

impl Loss for ReviewKd {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let checked = input.of(Self::NAME).within(BOUND).for_module(self);
        let warmup = Schedule::Warmup {
            value: c.weight,
            epochs: c.warmup_epochs,
        };
        let weight = checked.scheduled(&warmup, "for its warm-up (or set warmup_epochs = 0)")?;
        let mut residual: Option<Tensor<4>> = None;
        let mut total: Option<Tensor<1>> = None;
        for (abf, i) in self.abfs.iter().zip((0..c.features.len()).rev()) {
            let name = &c.features[i];
            let (s, t) = super::maps::channel_maps(
                &checked,
                name,
                [c.student_channels[i], c.teacher_channels[i]],
            )?;
            let out = [t.dims()[2], t.dims()[3]];
            let (fused, res) = abf.forward(s, residual.take(), out);
            residual = Some(res);
            let stage = hcl_stage(fused, t);
            total = Some(match total {
                None => stage,
                Some(acc) => acc + stage,
            });
        }
        let total = total.expect("at least one tap, checked at init");
        Ok(LossOutput::single(Self::NAME, total * weight))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e15;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["ReviewKd", "Abf"],
    paper: "Chen et al., CVPR 2021, *Distilling Knowledge via Knowledge Review*",
    doc: "review_kd.md",
    bound: Some(BOUND),
    example: None,
    learnable: Some(|r, dev, dtype| {
        Ok(moved(
            ReviewKdConfig::new(
                vec!["paired".into(), "feature".into()],
                vec![3, 3],
                vec![3, 6],
            )
            .with_warmup_epochs(0)
            .init(r)?,
            dev,
            dtype,
        ))
    }),
    twins: None,
    method: Some(
        crate::registry::method!(learnable ReviewKd = feature::ReviewKdConfig(features = ["block1", "block2"], student_channels = [8, 16], teacher_channels = [16, 32])),
    ),
    golden: crate::registry::golden!["reviewkd_hcl" => golden::reviewkd_hcl],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// mdistiller's ReviewKD `hcl_loss` over every stage (pools of 4, 2 and 1).
    pub(crate) fn reviewkd_hcl(case: &Case) -> Result<(), String> {
        let levels: Vec<f64> = case.params["pool_levels"]
            .as_array()
            .ok_or("no pool_levels")?
            .iter()
            .map(number)
            .collect::<Result<_, _>>()?;
        if levels != [4.0, 2.0, 1.0] {
            return Err(format!("{NOT_YET}pool levels {levels:?}"));
        }
        let (_, leaves, k) = staged_input(case)?;
        let total = (0..k)
            .map(|i| {
                Ok(hcl_stage(
                    map(&leaves[2 * i].1)?,
                    map(&leaves[2 * i + 1].1)?,
                ))
            })
            .reduce(|a: Result<Tensor<1>, String>, b| Ok(a? + b?))
            .ok_or("no stages")??;
        case.check(LossOutput::single("review_kd", total), &borrowed(&leaves))
            .map(drop)
    }
}
