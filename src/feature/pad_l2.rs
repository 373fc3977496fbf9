//! PAD-L2: prime-aware adaptive distillation with a learned variance per feature.

use crate::registry::{Descriptor, moved};
use burn::config::Config;
use burn::module::Module;
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use crate::check::{check_count, check_positive};
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput, Reduction};

/// PAD-L2 per sample (torchdistill's `PADL2Loss` before its reduction): the mean over the `D`
/// features of `(t − s)² / (ε + exp v) + v`, with `v` the log-variances, all `[N, D]` → `[N]`.
pub fn pad_l2_per_sample(
    student: Tensor<2>,
    teacher: Tensor<2>,
    log_variance: Tensor<2>,
    eps: f64,
) -> Tensor<1> {
    let precision = (log_variance.clone().exp() + eps).recip();
    ((teacher - student).square() * precision + log_variance)
        .mean_dim(1)
        .squeeze_dim(1)
}

/// PAD's variance branch: `Linear(D, D)` then batch norm, from the student's embedding to its
/// per-feature log-variance (torchdistill's `VarianceBranch4PAD`).
#[derive(Module, Debug)]
pub struct VarianceBranch {
    /// The linear layer.
    pub linear: Linear,
    /// The batch norm over the `D` outputs.
    pub norm: BatchNorm,
}

impl VarianceBranch {
    /// The log-variances `[N, D]` of the student's embeddings `[N, D]`.
    pub fn forward(&self, embedding: Tensor<2>) -> Tensor<2> {
        self.norm.forward(self.linear.forward(embedding))
    }
}

/// Configuration of [`PadL2`]; the defaults are torchdistill's.
#[derive(Config, Debug)]
pub struct PadL2Config {
    /// The embedding width `D` (student and teacher alike).
    pub width: usize,
    /// The feature tap holding the embeddings (maps are flattened per sample).
    #[config(default = "\"embedding\".to_string()")]
    pub feature: String,
    /// ε added to the variance.
    #[config(default = 1e-6)]
    pub eps: f64,
    /// [`Reduction::SampleMean`] (torchdistill's `'mean'`; `Mean` is the same here: each
    /// sample's value is already a mean over `D`), `Sum` or `None`.
    #[config(default = "Reduction::SampleMean")]
    pub reduction: Reduction,
}

impl PadL2Config {
    /// Validates the configuration and builds the variance branch on `device`.
    pub fn init(&self, device: &Device) -> Result<PadL2, DistillError> {
        check_count(PadL2::NAME, "width", self.width, 1)?;
        check_positive(PadL2::NAME, "eps", self.eps)?;
        Ok(PadL2 {
            branch: VarianceBranch {
                linear: LinearConfig::new(self.width, self.width).init(device),
                norm: BatchNormConfig::new(self.width).init(device),
            },
            config: self.clone(),
        })
    }
}

/// Prime-aware adaptive distillation, L2 form (Zhang et al., ECCV 2020, *Prime-Aware
/// Adaptive Distillation*; torchdistill's `PADL2Loss` and `VarianceBranch4PAD`): the
/// feature regression is weighted by an uncertainty the student learns, so that hard samples
/// ("non-primes") count less:
///
/// ```text
/// v = BN(W eˢ + b)                L = reduceₙ mean_d [(eᵗ − eˢ)² / (ε + exp v) + v]
/// ```
///
/// The variance branch is part of this module (put it beside the student in what the
/// optimizer updates). torchdistill's first stage trains a plain feature regression before
/// this one; the crate's [`Hint`](crate::feature::Hint) without a connector is that stage.
/// One term `"pad_l2"`.
///
/// # Shapes
/// - the tap: student and teacher embeddings `[N, D]` (or maps, flattened to `D`)
#[derive(Module, Debug)]
pub struct PadL2 {
    /// The learnable variance branch.
    pub branch: VarianceBranch,
    #[module(skip)]
    config: PadL2Config,
}

crate::loss::objective!(PadL2, "pad_l2");

impl Loss for PadL2 {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let checked = input.of(Self::NAME).within(BOUND).for_module(self);
        let (s, t) = checked.paired_rows(&self.config.feature)?;
        if s.dims()[1] != self.config.width {
            return Err(checked.shape(
                format!("width of tap `{}`", self.config.feature),
                vec![self.config.width],
                vec![s.dims()[1]],
            ));
        }
        let log_variance = self.branch.forward(s.clone());
        let per_sample = pad_l2_per_sample(s, t, log_variance, self.config.eps);
        // each sample's value is one number: `ElementMean` and `SampleMean` coincide
        Ok(LossOutput::single(
            Self::NAME,
            self.config.reduction.apply(per_sample, 1),
        ))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e15;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["PadL2"],
    paper: "Zhang et al., ECCV 2020, *Prime-Aware Adaptive Distillation*",
    doc: "pad_l2.md",
    bound: Some(BOUND),
    example: None,
    learnable: Some(|r, dev, dtype| {
        Ok(moved(
            PadL2Config::new(48).with_feature("paired".into()).init(r)?,
            dev,
            dtype,
        ))
    }),
    twins: None,
    method: Some(crate::registry::method!(learnable PadL2 = feature::PadL2Config(width = 16))),
    golden: crate::registry::golden!["pad_l2" => golden::pad_l2],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// torchdistill's `PADL2Loss` on given log-variances (the objective computes them with its
    /// variance branch; the math is the case's).
    pub(crate) fn pad_l2(case: &Case) -> Result<(), String> {
        let leaves = case.taps(&["log_variances", "student_embed", "teacher_embed"])?;
        let rows = |f: &Feature| f.clone().flatten();
        let per_sample = pad_l2_per_sample(
            rows(&leaves[1].1),
            rows(&leaves[2].1),
            rows(&leaves[0].1),
            case.param("eps")?,
        );
        let loss = reduction(case, Reduction::SampleMean)?.apply(per_sample, 1);
        case.check(LossOutput::single("pad_l2", loss), &borrowed(&leaves))
            .map(drop)
    }
}
