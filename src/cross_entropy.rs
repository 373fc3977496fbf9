//! The task loss: cross-entropy on the student's logits, which every family composes with.

use burn::config::Config;
use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;

use crate::check::check_fraction;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};

/// Per-sample cross-entropy `[N]` of logits `[N, C]` against class indices `[N]`, with label
/// smoothing `smoothing` (no input checks: see [`CrossEntropy`] for the checked form).
pub fn cross_entropy_per_sample(
    logits: Tensor<2>,
    targets: Tensor<1, burn::tensor::Int>,
    smoothing: f64,
) -> Tensor<1> {
    let c = logits.dims()[1];
    let logp = log_softmax(logits, 1);
    let nll = -logp
        .clone()
        .gather(1, targets.unsqueeze_dim(1))
        .squeeze_dim::<1>(1);
    if smoothing == 0.0 {
        return nll;
    }
    let uniform = -logp.sum_dim(1).squeeze_dim::<1>(1) * (1.0 / c as f64);
    nll * (1.0 - smoothing) + uniform * smoothing
}

/// Configuration to create a [`CrossEntropy`] task loss.
#[derive(Config, Debug)]
pub struct CrossEntropyConfig {
    /// Label smoothing ε in `[0, 1)`: the target distribution is `(1 − ε)·onehot + ε/C`.
    #[config(default = 0.0)]
    pub smoothing: f64,
}

impl CrossEntropyConfig {
    /// Validates the configuration and builds the loss.
    pub fn init(&self) -> Result<CrossEntropy, DistillError> {
        Ok(CrossEntropy {
            smoothing: check_fraction(CrossEntropy::NAME, "smoothing", self.smoothing, false)?,
        })
    }
}

/// The task loss on the student's logits, so a task term and a distillation term compose:
///
/// `CE = −mean_n [(1 − ε) log p_{n,yₙ} + (ε / C) Σ_c log p_{n,c}]`, `p = softmax(z_s)`.
///
/// It reads the student's logits and the targets of the [`DistillInput`], and its mask where
/// it has one (labels with an ignore index): the mean is then over the rows that count (0 when
/// none does). Its term is `"ce"`.
#[derive(Debug, Clone)]
pub struct CrossEntropy {
    smoothing: f64,
}

crate::loss::objective!(CrossEntropy, "ce");

/// The largest input magnitude the cross-entropy promises finite values and gradients for
/// (docs/kd.md states it; `tests/range.rs` checks it at the bound and beyond).
pub(crate) const BOUND: f64 = 1e30;

impl CrossEntropy {
    /// Cross-entropy without smoothing: the default configuration's objective, which cannot
    /// fail (`CrossEntropyConfig::new().with_smoothing(ε).init()?` for label smoothing).
    pub fn new() -> Self {
        Self { smoothing: 0.0 }
    }
}

impl Default for CrossEntropy {
    fn default() -> Self {
        Self::new()
    }
}

impl Loss for CrossEntropy {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let input = input.of(Self::NAME).masked();
        let s = input.student_logits()?;
        let read = s.clone();
        let [n, c] = s.dims();
        let y = input.targets(n, c)?;
        let total = match input.mask(n)? {
            None => cross_entropy_per_sample(s, y, self.smoothing).mean(),
            // labels with an ignore index (or a mask): the mean over the rows that count, 0
            // when none does; an ignored row's logits never reach the loss
            Some(keep) => {
                let out = keep.clone().bool_not();
                let s = s.mask_fill(out.clone().unsqueeze_dim::<2>(1).expand([n, c]), 0.0);
                let rows = cross_entropy_per_sample(s, y, self.smoothing).mask_fill(out, 0.0);
                let count = keep.int().sum().float().cast(rows.dtype()).clamp_min(1.0);
                rows.sum() / count
            }
        };
        let out = LossOutput::single(Self::NAME, total);
        input.settle(BOUND, out, &[("the student logits", &read)])
    }
}
