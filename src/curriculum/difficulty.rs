//! Difficulty curricula: which samples, and which classes, the distillation sees as training
//! goes on. Both wrap any objective and feed it a smaller input: easy samples first
//! ([`Paced`]), a few informative non-target classes first ([`TopKMask`]).

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

use crate::cross_entropy::cross_entropy_per_sample;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};
use crate::math::target_mask;
use crate::schedule::Schedule;

/// A linear ramp of a fraction in (0, 1], from `start` to `end` over `epochs` (0: the run).
fn fraction_ramp(
    objective: &str,
    start: f64,
    end: f64,
    epochs: usize,
) -> Result<Schedule, DistillError> {
    for (field, v) in [("start", start), ("end", end)] {
        crate::check::check_share(objective, field, v)?;
    }
    if end < start {
        return Err(DistillError::config(
            objective,
            "end",
            end,
            "must be >= start: the curriculum only widens",
        ));
    }
    Ok(Schedule::Linear { start, end, epochs })
}

/// `ceil(fraction · n)`, at least 1 and at most `n`.
fn count(fraction: f64, n: usize) -> usize {
    ((fraction * n as f64).ceil() as usize).clamp(1, n)
}

/// How hard a sample is, for [`Paced`]: the lower, the earlier it is admitted.
#[derive(Config, Debug, PartialEq, Copy)]
pub enum Difficulty {
    /// `1 − maxⱼ pᵗⱼ`: the teacher's doubt, whatever the label.
    TeacherConfidence,
    /// The teacher's cross-entropy on the target.
    TeacherLoss,
    /// The student's cross-entropy on the target (self-paced learning, Kumar et al. 2010).
    StudentLoss,
}

/// Configuration of [`Paced`]: the fraction of each batch admitted grows linearly from
/// `start` to `end` over `epochs` (0: the whole run), easiest samples first.
#[derive(Config, Debug)]
pub struct PacedConfig {
    /// How samples are ranked.
    #[config(default = "Difficulty::TeacherLoss")]
    pub difficulty: Difficulty,
    /// Fraction of the batch admitted at the start, in (0, 1].
    #[config(default = 0.5)]
    pub start: f64,
    /// Fraction admitted at the end of the ramp, in [start, 1].
    #[config(default = 1.0)]
    pub end: f64,
    /// Epochs of the ramp (0: the whole run).
    #[config(default = 10)]
    pub epochs: usize,
}

impl PacedConfig {
    /// Wraps `inner`; errors for fractions outside (0, 1] or a shrinking ramp.
    pub fn init<L: Loss>(&self, inner: L) -> Result<Paced<L>, DistillError> {
        Ok(Paced {
            inner,
            difficulty: self.difficulty,
            admitted: fraction_ramp(Paced::<()>::NAME, self.start, self.end, self.epochs)?,
        })
    }
}

/// A difficulty curriculum over samples: `inner` sees only the easiest `⌈f·N⌉` rows of each
/// batch, `f` growing with training progress, so harder samples join as the student matures
/// (curriculum learning, Bengio et al. 2009; self-paced learning, Kumar et al. 2010; applied
/// to distillation by ranking with the teacher's confidence or loss).
///
/// The selection is a hard 0/1 weight, so any objective can be wrapped, including batch-level
/// ones (which then relate the admitted rows only). Terms keep `inner`'s names; the loss is
/// `inner`'s reduction over the admitted rows. Needs the input's progress (and targets for the
/// loss-based difficulties).
#[derive(Debug, Clone)]
pub struct Paced<L> {
    inner: L,
    difficulty: Difficulty,
    admitted: Schedule,
}

impl<L: Loss> Paced<L> {
    /// The fraction of each batch admitted at `input`'s progress.
    pub fn admitted(&self, input: &DistillInput) -> Result<f64, DistillError> {
        let p = input
            .of(Self::NAME)
            .within(BOUND)
            .progress("to pace its curriculum")?;
        self.admitted.value(Some(p))
    }

    /// Each sample's difficulty `[N]` (no gradient).
    pub fn difficulty(&self, input: &DistillInput) -> Result<Tensor<1>, DistillError> {
        let with_targets = |z: Tensor<2>| -> Result<Tensor<1>, DistillError> {
            let [n, c] = z.dims();
            let y = input.of(Self::NAME).within(BOUND).targets(n, c)?;
            Ok(cross_entropy_per_sample(z.detach(), y, 0.0))
        };
        match self.difficulty {
            Difficulty::TeacherConfidence => {
                let (_, t) = input.of(Self::NAME).within(BOUND).logits()?;
                let top = log_softmax(t.detach(), 1).max_dim(1).squeeze_dim::<1>(1);
                Ok(-top.exp())
            }
            Difficulty::TeacherLoss => with_targets(input.of(Self::NAME).within(BOUND).logits()?.1),
            Difficulty::StudentLoss => {
                with_targets(input.of(Self::NAME).within(BOUND).student_logits()?)
            }
        }
    }
}

crate::loss::objective!(Paced<L>, "paced");

impl<L: Loss> Loss for Paced<L> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let fraction = self.admitted(input)?;
        let n = input.of(Self::NAME).within(BOUND).batch()?;
        let k = count(fraction, n);
        if k == n {
            return self.inner.forward(input);
        }
        let order = self.difficulty(input)?.argsort(0);
        self.inner.forward(&input.select_rows(order.slice(0..k)))
    }
}

/// Configuration of [`TopKMask`]: the fraction of non-target classes kept grows linearly from
/// `start` to `end` over `epochs` (0: the whole run).
#[derive(Config, Debug)]
pub struct TopKMaskConfig {
    /// Fraction of the `C − 1` non-target classes kept at the start, in (0, 1].
    #[config(default = 0.2)]
    pub start: f64,
    /// Fraction kept at the end of the ramp, in [start, 1].
    #[config(default = 1.0)]
    pub end: f64,
    /// Epochs of the ramp (0: the whole run).
    #[config(default = 0)]
    pub epochs: usize,
    /// Non-target classes kept at least (when there are that many): with one, the non-target
    /// distribution is a point mass and decoupled losses (DKD's NCKD) have nothing to match.
    #[config(default = 2)]
    pub min_kept: usize,
}

impl TopKMaskConfig {
    /// Wraps `inner`; errors for fractions outside (0, 1], a shrinking ramp or `min_kept = 0`.
    pub fn init<L: Loss>(&self, inner: L) -> Result<TopKMask<L>, DistillError> {
        crate::check::check_count(TopKMask::<()>::NAME, "min_kept", self.min_kept, 1)?;
        Ok(TopKMask {
            inner,
            kept: fraction_ramp(TopKMask::<()>::NAME, self.start, self.end, self.epochs)?,
            min_kept: self.min_kept,
        })
    }
}

/// A difficulty curriculum over classes (the dynamic top-k mask of DeepKD, Huang et al. 2025):
/// `inner` sees, for each sample, only the target class and the teacher's `k` most likely
/// non-target classes, `k = max(⌈f·(C − 1)⌉, min_kept)` growing with progress; at `f = 1` it
/// is `inner` unchanged.
///
/// The classes are cut out, not masked with a large negative number: the logits become
/// `[N, k + 1]` (target first), so softmaxes renormalise over the kept classes exactly, in
/// any dtype. Needs the input's progress and targets.
#[derive(Debug, Clone)]
pub struct TopKMask<L> {
    inner: L,
    kept: Schedule,
    min_kept: usize,
}

impl<L: Loss> TopKMask<L> {
    /// The number of non-target classes kept at `input`'s progress, for `classes` classes.
    pub fn kept(&self, input: &DistillInput, classes: usize) -> Result<usize, DistillError> {
        let p = input
            .of(Self::NAME)
            .within(BOUND)
            .progress("to widen its mask")?;
        let others = classes.saturating_sub(1).max(1);
        let k = count(self.kept.value(Some(p))?, others);
        Ok(k.max(self.min_kept).min(others))
    }
}

crate::loss::objective!(TopKMask<L>, "top_k_mask");

impl<L: Loss> Loss for TopKMask<L> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let (_, t) = input.of(Self::NAME).within(BOUND).logits()?;
        let [n, c] = t.dims();
        crate::check::check_classes(Self::NAME, c, 3)?;
        let k = self.kept(input, c)?;
        if k == c - 1 {
            return self.inner.forward(input);
        }
        let y = input.of(Self::NAME).within(BOUND).targets(n, c)?;
        let others = t
            .detach()
            .mask_fill(target_mask(y.clone(), c), f64::NEG_INFINITY);
        let (_, top) = others.topk_with_indices(k, 1);
        let keep = Tensor::cat(vec![y.clone().unsqueeze_dim::<2>(1), top], 1);
        let cut = input
            .map_logits(|z| z.gather(1, keep.clone()))
            .targets(Tensor::<1, Int>::zeros([n], &y.device()));
        self.inner.forward(&cut)
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e30;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[
    Descriptor {
        module: super::MODULE,
        items: &["Paced"],
        paper: "a difficulty curriculum over samples (easy first)",
        doc: "curriculum.md#difficulty-curricula",
        bound: Some(BOUND),
        example: Some(|_| {
            Ok(PacedConfig::new()
                .init(crate::cross_entropy::CrossEntropyConfig::new().init()?)?
                .boxed())
        }),
        learnable: None,
        twins: None,
        method: Some(crate::registry::method!(wrapper Paced<()> = curriculum::PacedConfig())),
        golden: crate::registry::golden![],
    },
    Descriptor {
        module: super::MODULE,
        items: &["TopKMask"],
        paper: "a curriculum over classes (DeepKD's dynamic top-k mask)",
        doc: "curriculum.md#difficulty-curricula",
        bound: Some(BOUND),
        example: Some(|_| {
            let ce = crate::cross_entropy::CrossEntropyConfig::new().init()?;
            Ok(TopKMaskConfig::new().with_start(0.5).init(ce)?.boxed())
        }),
        learnable: None,
        twins: None,
        method: Some(crate::registry::method!(wrapper TopKMask<()> = curriculum::TopKMaskConfig())),
        golden: crate::registry::golden![],
    },
];
