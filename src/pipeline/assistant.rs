//! Teaching assistants: TAKD chains and DGKD's randomly dropped guides.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;

use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};
use crate::math::SplitMix;

/// One stage of a [`Takd`] chain: a model to train and the loss that distils into it.
pub struct Stage<M> {
    /// A name for logs.
    pub name: String,
    /// The model before training.
    pub model: M,
    /// The loss distilling the previous stage into it.
    pub loss: Box<dyn Loss>,
}

/// A teaching-assistant chain (Mirzadeh et al., AAAI 2020, *Improved Knowledge Distillation
/// via Teacher Assistant*): teacher → assistant(s) → student, each stage distilled from the
/// previous stage's *trained* model, with any [`Loss`] per stage.
///
/// The chain only orders the work; the training itself is the caller's function
/// `train(stage name, model, its teacher, loss) → trained model`, so any loop (a hand-written
/// one, burn-train) fits. All stages share the model type `M` (an enum of architectures works).
///
/// ```
/// use burn_distill::pipeline::Takd;
/// use burn_distill::prelude::*;
///
/// // models are numbers here: "training" adds the teacher's value
/// let chain = Takd::new()
///     .stage("assistant", 10, KdConfig::new().init().unwrap())
///     .stage("student", 1, KdConfig::new().init().unwrap());
/// let trained = chain
///     .run(100, |_, model, teacher, _| Ok::<_, DistillError>(model + teacher))
///     .unwrap();
/// assert_eq!(trained, [110, 111]);
/// ```
pub struct Takd<M> {
    stages: Vec<Stage<M>>,
}

impl<M> Default for Takd<M> {
    fn default() -> Self {
        Self { stages: Vec::new() }
    }
}

impl<M> Takd<M> {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a stage: `model`, distilled from the previous stage with `loss`.
    pub fn stage(mut self, name: impl Into<String>, model: M, loss: impl Loss + 'static) -> Self {
        self.stages.push(Stage {
            name: name.into(),
            model,
            loss: Box::new(loss),
        });
        self
    }

    /// The stages' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.stages.iter().map(|s| s.name.as_str()).collect()
    }

    /// Trains every stage in order, the first from `teacher`, each next one from the one
    /// before; returns the trained models in order (the last is the student).
    pub fn run<E>(
        self,
        teacher: M,
        mut train: impl FnMut(&str, M, &M, &dyn Loss) -> Result<M, E>,
    ) -> Result<Vec<M>, E> {
        let mut trained: Vec<M> = Vec::with_capacity(self.stages.len());
        for stage in self.stages {
            let previous = trained.last().unwrap_or(&teacher);
            let model = train(&stage.name, stage.model, previous, stage.loss.as_ref())?;
            trained.push(model);
        }
        Ok(trained)
    }
}

/// Configuration of [`Dgkd`].
#[derive(Config, Debug)]
pub struct DgkdConfig {
    /// Probability of dropping each guide at a step, in [0, 1).
    #[config(default = 0.5)]
    pub drop: f64,
    /// Seed of the drops.
    #[config(default = 0)]
    pub seed: u64,
}

impl DgkdConfig {
    /// Validates the drop probability and wraps `inner` (KD in the paper).
    pub fn init<L: Loss>(&self, inner: L) -> Result<Dgkd<L>, DistillError> {
        crate::check::check_fraction(Dgkd::<()>::NAME, "drop", self.drop, false)?;
        Ok(Dgkd {
            inner,
            drop: self.drop,
            seed: self.seed,
        })
    }
}

/// DGKD (Son, Na, Choi, Hwang, ICCV 2021, *Densely Guided Knowledge Distillation using
/// Multiple Teacher Assistants*): the student learns from the teacher and every assistant at
/// once; at each step each guide is dropped with probability `drop`, at least one kept.
///
/// ```text
/// L = mean_{g kept} inner(student, g)
/// ```
///
/// The guides are the input's teacher (guide 0) and its [`guides`](DistillInput::guide)
/// (1, 2, …). The drops are a pure function of the seed and the input's progress (epoch,
/// step), so a run is reproducible and a restarted one drops the same guides. Terms are
/// `inner`'s, averaged over the kept guides.
#[derive(Debug, Clone)]
pub struct Dgkd<L> {
    inner: L,
    drop: f64,
    seed: u64,
}

impl<L> Dgkd<L> {
    /// The guides kept among `guides` at (`epoch`, `step`): never empty.
    pub fn kept(&self, guides: usize, epoch: usize, step: usize) -> Vec<usize> {
        let key = SplitMix::progress_key(epoch, step);
        let mut rng = SplitMix::keyed(self.seed, Self::NAME, key);
        let kept: Vec<usize> = (0..guides).filter(|_| rng.unit() >= self.drop).collect();
        if kept.is_empty() && guides > 0 {
            return vec![(rng.next() % guides as u64) as usize];
        }
        kept
    }
}

crate::loss::objective!(Dgkd<L>, "dgkd");

impl<L: Loss> Loss for Dgkd<L> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let p = input
            .of(Self::NAME)
            .within(BOUND)
            .progress("to drop its guides")?;
        let (_, teacher) = input.of(Self::NAME).within(BOUND).logits()?;
        let guides: Vec<_> = std::iter::once(teacher)
            .chain(input.guides().iter().cloned())
            .collect();
        let kept = self.kept(guides.len(), p.epoch, p.step);
        let scale = 1.0 / kept.len() as f64;
        let mut total: Option<LossOutput> = None;
        for g in kept {
            let out = self
                .inner
                .forward(&input.with_teacher_logits(guides[g].clone()))?
                .scale(scale);
            total = Some(match total {
                None => out,
                Some(acc) => acc.add_terms(out),
            });
        }
        Ok(total.expect("at least one guide is kept"))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e38;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Takd", "Dgkd"],
    paper: "Mirzadeh et al., AAAI 2020; Son et al., ICCV 2021: teaching assistants",
    doc: "assistants.md",
    bound: Some(BOUND),
    example: Some(|_| {
        Ok(DgkdConfig::new()
            .init(crate::logit::KdConfig::new().init()?)?
            .boxed())
    }),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(wrapper Dgkd<()> = pipeline::DgkdConfig())),
    golden: crate::registry::golden![],
}];
