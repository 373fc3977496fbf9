//! The [`Loss`] trait every objective implements, its output, and the combinators that weight
//! and sum objectives.

use std::ops::Add;

use burn::config::Config;
use burn::tensor::{DType, FloatDType, Tensor};

use crate::error::DistillError;
use crate::input::DistillInput;
use crate::math::Temperature;
use crate::schedule::Schedule;

/// How per-element losses become the total, each variant named by what the sum is divided by.
///
/// For losses over class distributions, `SampleMean` (sum over classes, mean over the samples;
/// PyTorch's `batchmean`) is the convention of mdistiller, RepDistiller and torchdistill, and
/// the one that matches the math of a KL divergence; PyTorch's `KLDivLoss()` default ("mean")
/// divides by `N·C` as well, the most reported scale bug in KD code — that is
/// [`Reduction::ElementMean`] here.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
#[doc(alias = "MgdReduction")]
pub enum Reduction {
    /// Sum over classes, mean over the samples: `÷ N`.
    #[doc(alias = "BatchMean")]
    SampleMean,
    /// Mean over every element (samples and classes): `÷ N·C`.
    #[doc(alias = "Mean")]
    ElementMean,
    /// Sum over everything.
    Sum,
    /// One value per sample: the total has shape `[N]`.
    None,
}

impl Reduction {
    /// Reduces per-sample values `[N]`, each already summed over `classes` elements.
    pub fn apply(self, per_sample: Tensor<1>, classes: usize) -> Tensor<1> {
        match self {
            Reduction::SampleMean => per_sample.mean(),
            Reduction::ElementMean => per_sample.mean() * (1.0 / classes as f64),
            Reduction::Sum => per_sample.sum(),
            Reduction::None => per_sample,
        }
    }
}

/// What an objective returns: the differentiable `total`, and its named parts for logging.
///
/// `total` has shape `[1]` (or `[N]` under [`Reduction::None`]); call `total.backward()`.
/// Term names are prefixed by the objective's name: `"kd"`, `"dkd/tckd"`, `"dkd/nckd"`.
/// Weighting an objective scales its total and its terms alike. Terms are for logging: the fused
/// DKD/DCKD return theirs as values outside the autodiff graph (differentiate the total).
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// The loss to differentiate.
    pub total: Tensor<1>,
    terms: Vec<(String, Tensor<1>)>,
}

impl LossOutput {
    /// An output whose single term, `name`, is the total.
    pub fn single(name: impl Into<String>, total: Tensor<1>) -> Self {
        Self {
            terms: vec![(name.into(), total.clone())],
            total,
        }
    }

    /// An output whose `total` is computed apart from its named `terms`, which must add up to
    /// it (a fused kernel returns both; differentiating the total alone is then cheaper).
    pub fn new(total: Tensor<1>, terms: Vec<(String, Tensor<1>)>) -> Self {
        Self { total, terms }
    }

    /// An output that is the sum of the named `terms` (at least one).
    ///
    /// Terms of different float types (logits read in f32 beside half-precision or f64 feature
    /// maps) are summed in the widest of them: f64, else f32 (f16 beside bf16 too).
    pub fn from_terms(terms: Vec<(String, Tensor<1>)>) -> Self {
        let rank = |d: DType| match d {
            DType::F64 => 3,
            DType::F32 => 2,
            _ => 1,
        };
        let dtypes: Vec<DType> = terms.iter().map(|(_, t)| t.dtype()).collect();
        let widest = match dtypes.iter().map(|&d| rank(d)).max() {
            Some(3) => DType::F64,
            Some(1) if dtypes.windows(2).all(|w| w[0] == w[1]) => dtypes[0],
            _ => DType::F32,
        };
        let total = terms
            .iter()
            .map(|(_, t)| match t.dtype() == widest {
                true => t.clone(),
                false => t.clone().cast(FloatDType::from(widest)),
            })
            .reduce(|a, b| a + b)
            .expect("LossOutput::from_terms needs at least one term");
        Self { total, terms }
    }

    /// The named terms, in order.
    pub fn terms(&self) -> impl Iterator<Item = (&str, &Tensor<1>)> {
        self.terms.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// The term called `name`.
    pub fn term(&self, name: &str) -> Option<&Tensor<1>> {
        self.terms.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Each term's value as `f64` (summed when per-sample), for logging. Reads from the device.
    pub fn values(&self) -> Vec<(String, f64)> {
        self.terms
            .iter()
            .map(|(n, t)| (n.clone(), t.clone().detach().sum().into_scalar::<f64>()))
            .collect()
    }

    /// The total as `f64` (summed when per-sample). Reads from the device.
    pub fn value(&self) -> f64 {
        self.total.clone().detach().sum().into_scalar::<f64>()
    }

    /// Scales the total and every term by `w`.
    pub fn scale(self, w: f64) -> Self {
        Self {
            total: self.total * w,
            terms: self.terms.into_iter().map(|(n, t)| (n, t * w)).collect(),
        }
    }

    /// Adds `other` term by term (the same names, in the same order, as two outputs of one
    /// objective have); a term only `other` has is appended.
    pub fn add_terms(mut self, other: LossOutput) -> Self {
        self.total = self.total + other.total;
        for (name, t) in other.terms {
            match self.terms.iter_mut().find(|(n, _)| *n == name) {
                Some((_, acc)) => *acc = acc.clone() + t,
                None => self.terms.push((name, t)),
            }
        }
        self
    }

    /// Renames the terms under prefix `old` (the term `old` itself and `old/...`) to `new`.
    pub fn renamed(mut self, old: &str, new: &str) -> Self {
        for (n, _) in &mut self.terms {
            if n == old {
                *n = new.to_string();
            } else if let Some(rest) = n.strip_prefix(old).and_then(|r| r.strip_prefix('/')) {
                *n = format!("{new}/{rest}");
            }
        }
        self
    }
}

/// A distillation (or task) objective.
///
/// Object-safe: `Box<dyn Loss>` is itself a `Loss`, and [`LossExt`] weights, renames and sums
/// objectives of any type.
///
/// ```
/// # use burn::tensor::{Device, Int, Tensor};
/// use burn_distill::prelude::*;
/// # fn main() -> Result<(), DistillError> {
/// # let dev = Device::flex();
/// # let s = Tensor::<2>::from_floats([[1.0, 2.0, 0.5]], &dev);
/// # let t = Tensor::<2>::from_floats([[2.0, 1.0, 0.0]], &dev);
/// # let y = Tensor::<1, Int>::from_ints([1], &dev);
/// let kd = KdConfig::new().with_temperature(4.0).init()?;
/// let loss = CrossEntropyConfig::new().init()?.weighted(0.1) + kd.weighted(0.9);
/// let out = loss.forward(&DistillInput::new(s, t).targets(y))?;
/// let names: Vec<&str> = out.terms().map(|(n, _)| n).collect();
/// assert_eq!(names, ["ce", "kd"]);
/// # Ok(()) }
/// ```
///
/// A builder that can fail (`init`, `Ctkd::with_theta`) returns a `Result`, which is not a
/// `Loss`: the compiler says so, and how to take the objective out of it.
///
/// ```compile_fail,E0599
/// use burn_distill::prelude::*;
/// let kd = KdConfig::new().init().boxed(); // the `Result`, not the objective: `init()?`
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a distillation objective (`Loss`)",
    label = "not a `Loss`",
    note = "a builder that can fail returns a `Result`: take the objective out with `?` first (`XConfig::init()?`, `Ctkd::with_theta(θ)?`)"
)]
pub trait Loss: Send + Sync + std::fmt::Debug {
    /// The objective's name; its terms are named after it.
    fn name(&self) -> &str;

    /// Evaluates the objective on one batch.
    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError>;
}

/// An objective on softened logits whose temperature can come from outside: a learned one
/// ([`Ctkd`](crate::curriculum::Ctkd)) or a schedule.
pub trait Tempered: Loss {
    /// Evaluates the objective at `temperature` instead of its configured one.
    fn forward_at(
        &self,
        input: &DistillInput,
        temperature: &Temperature,
    ) -> Result<LossOutput, DistillError>;
}

impl Loss for Box<dyn Loss> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        (**self).forward(input)
    }
}

/// Combinators available on every [`Loss`].
pub trait LossExt: Loss + Sized + 'static {
    /// This objective times a constant weight.
    fn weighted(self, weight: f64) -> Weighted<Self> {
        self.weighted_by(Schedule::Constant(weight))
    }

    /// This objective times a weight that follows training progress.
    fn weighted_by(self, weight: Schedule) -> Weighted<Self> {
        Weighted {
            inner: self,
            weight,
        }
    }

    /// This objective under another name (its terms are renamed too).
    fn named(self, name: impl Into<String>) -> Named<Self> {
        Named {
            inner: self,
            name: name.into(),
        }
    }

    /// This objective, answering [`DistillError::NonFinite`] when its total is NaN or
    /// infinite: the crate's opt-in check on non-finite input (one read-back of the total per
    /// call, a device sync on a GPU). Without it, objectives propagate NaN and ±inf like
    /// tensor ops do; stateful parts refuse them regardless (see `docs/architecture.md`).
    fn finite(self) -> Finite<Self> {
        Finite { inner: self }
    }

    /// This objective as a trait object.
    fn boxed(self) -> Box<dyn Loss> {
        Box::new(self)
    }

    /// This objective alone during the first `epochs` epochs, then `next` alone: the
    /// initialisation stages of AB, FSP or SSKD before the distillation proper (RepDistiller's
    /// `init_epochs`). Reads the input's [`Progress`](crate::Progress).
    fn then_after<N: Loss + 'static>(self, epochs: usize, next: N) -> Staged {
        Staged {
            first: Box::new(self),
            epochs,
            next: Box::new(next),
        }
    }
}

/// One objective for a number of epochs, then another; see [`LossExt::then_after`].
#[derive(Debug)]
pub struct Staged {
    first: Box<dyn Loss>,
    epochs: usize,
    next: Box<dyn Loss>,
}

impl Loss for Staged {
    fn name(&self) -> &str {
        self.next.name()
    }
    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let progress = input
            .get_progress()
            .ok_or_else(|| DistillError::MissingInput {
                objective: self.next.name().into(),
                what: "training progress (DistillInput::progress), to choose the stage".into(),
            })?;
        match progress.epoch < self.epochs {
            true => self.first.forward(input),
            false => self.next.forward(input),
        }
    }
}

impl<T: Loss + 'static> LossExt for T {}

/// An objective times a (scheduled) weight; see [`LossExt::weighted`].
#[derive(Debug, Clone)]
pub struct Weighted<L> {
    inner: L,
    weight: Schedule,
}

impl<L: Loss> Loss for Weighted<L> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let w = self.weight.value(input.get_progress())?;
        Ok(self.inner.forward(input)?.scale(w))
    }
}

/// An objective whose non-finite totals are errors; see [`LossExt::finite`].
#[derive(Debug, Clone)]
pub struct Finite<L> {
    inner: L,
}

impl<L: Loss> Loss for Finite<L> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let out = self.inner.forward(input)?;
        match out.value().is_finite() {
            true => Ok(out),
            false => Err(DistillError::NonFinite {
                what: format!("the {} loss", self.inner.name()),
            }),
        }
    }
}

/// An objective under another name; see [`LossExt::named`].
#[derive(Debug, Clone)]
pub struct Named<L> {
    inner: L,
    name: String,
}

impl<L> Named<L> {
    /// The objective under the new name.
    pub fn inner(&self) -> &L {
        &self.inner
    }
}

impl<L: Loss> Loss for Named<L> {
    fn name(&self) -> &str {
        &self.name
    }
    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let out = self.inner.forward(input)?;
        Ok(out.renamed(self.inner.name(), &self.name))
    }
}

/// The sum of any number of objectives of any types.
///
/// Its terms are its parts' terms, in order, with names made unique: when two parts have a
/// term of the same name (say two `kd` objectives), the second becomes `kd#2`.
#[derive(Debug, Default)]
pub struct LossSum {
    parts: Vec<Box<dyn Loss>>,
}

impl LossSum {
    /// An empty sum.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `loss` as the last part (what `+` does).
    pub fn with<L: Loss + 'static>(mut self, loss: L) -> Self {
        self.parts.push(Box::new(loss));
        self
    }

    /// The parts, in order.
    pub fn parts(&self) -> &[Box<dyn Loss>] {
        &self.parts
    }
}

impl Loss for LossSum {
    fn name(&self) -> &str {
        "sum"
    }
    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        if self.parts.is_empty() {
            return Err(DistillError::config(
                "sum",
                "parts",
                0,
                "needs at least one loss",
            ));
        }
        let mut terms = Vec::new();
        let mut total = None;
        for part in &self.parts {
            let out = part.forward(input)?;
            total = Some(match total {
                None => out.total,
                Some(t) => t + out.total,
            });
            for (name, value) in out.terms {
                let taken = |n: &str| terms.iter().any(|(t, _): &(String, _)| t == n);
                let name = if taken(&name) {
                    (2..)
                        .map(|i| format!("{name}#{i}"))
                        .find(|n| !taken(n))
                        .expect("an unused name")
                } else {
                    name
                };
                terms.push((name, value));
            }
        }
        Ok(LossOutput {
            total: total.expect("at least one part"),
            terms,
        })
    }
}

impl<R: Loss + 'static> Add<R> for LossSum {
    type Output = LossSum;
    fn add(self, rhs: R) -> LossSum {
        self.with(rhs)
    }
}

/// Gives an objective type its one name, `NAME` (which its [`Loss::name`] returns and its
/// terms and errors carry), and `+` with any other objective. Every objective file invokes it
/// once: `crate::loss::objective!(Kd, "kd");`, or `…!(Paced<L>, "paced");` for a wrapper.
macro_rules! objective {
    ($ty:ident $(<$g:ident>)?, $name:literal) => {
        impl$(<$g>)? $ty$(<$g>)? {
            #[doc = concat!("The objective's name, `\"", $name, "\"`: its terms and errors carry it.")]
            pub const NAME: &'static str = $name;
        }

        impl<$($g,)? R: $crate::loss::Loss + 'static> ::std::ops::Add<R> for $ty$(<$g>)?
        where
            $ty$(<$g>)?: $crate::loss::Loss + 'static,
        {
            type Output = $crate::loss::LossSum;
            fn add(self, rhs: R) -> $crate::loss::LossSum {
                $crate::loss::LossSum::new() + self + rhs
            }
        }
    };
}

pub(crate) use objective;

macro_rules! combinator_add {
    ($($ty:ty $(, $g:ident)?);*) => {$(
        impl<$($g: Loss + 'static,)? R: Loss + 'static> Add<R> for $ty {
            type Output = LossSum;
            fn add(self, rhs: R) -> LossSum {
                LossSum::new().with(self).with(rhs)
            }
        }
    )*};
}

combinator_add!(Weighted<L>, L; Named<L>, L; Finite<L>, L; Box<dyn Loss>);
