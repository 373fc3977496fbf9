//! burn-train integration: a student distilled from a frozen (or meta-learned) teacher as a
//! burn-train model, with every loss term as a metric.

use std::any::Any;
use std::sync::{Arc, Mutex, MutexGuard};

use burn::module::{Module, ModuleDisplay, ModuleVisitor, Param};
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsParams, ModuleOptimizer, MultiGradientsParams};
use burn::tensor::{Device, ExecutionError, Tensor, TensorReadError};
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    AccuracyInput, Adaptor, ItemLazy, LossInput, Metric, MetricAttributes, MetricMetadata,
    MetricName, Numeric, NumericAttributes, NumericEntry, SerializedEntry,
};
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};

use crate::error::DistillError;
use crate::input::{DistillInput, Progress};
use crate::input::{Distillable, Outputs};
use crate::loss::Loss;
use crate::meta::{Batch, MetaTeacher};

/// One training item for a [`Distiller`]: the batch, optionally the teacher's outputs on it
/// (cached once per data set when the teacher is frozen and the inputs are not augmented),
/// a quiz batch (for a meta-learned teacher) and the progress.
#[derive(Debug, Clone)]
pub struct DistillBatch<I> {
    /// Inputs and targets.
    pub batch: Batch<I>,
    /// The teacher's outputs on `batch`, if cached; otherwise the teacher runs.
    pub teacher: Option<Outputs>,
    /// A quiz batch for the meta-teacher's round (ignored without one).
    pub quiz: Option<Batch<I>>,
    /// Where training stands (schedules, warm-ups, CTKD's λ).
    pub progress: Option<Progress>,
}

impl<I> DistillBatch<I> {
    /// A batch without cached teacher outputs, quiz or progress.
    pub fn new(batch: Batch<I>) -> Self {
        Self {
            batch,
            teacher: None,
            quiz: None,
            progress: None,
        }
    }
}

/// What a [`Distiller`] step gives burn-train: the classification output (accuracy, loss)
/// and each named loss term (see [`TermMetric`]).
pub struct DistillOutput {
    /// Total loss, student logits and targets.
    pub classification: ClassificationOutput,
    /// The named terms of the loss.
    pub terms: Vec<(String, Tensor<1>)>,
}

impl ItemLazy for DistillOutput {
    fn sync(self) -> Result<Self, ExecutionError> {
        Ok(Self {
            classification: self.classification.sync()?,
            terms: self
                .terms
                .into_iter()
                .map(|(n, t)| (n, t.detach()))
                .collect(),
        })
    }
}

impl Adaptor<AccuracyInput> for DistillOutput {
    fn adapt(&self) -> AccuracyInput {
        self.classification.adapt()
    }
}

impl Adaptor<LossInput> for DistillOutput {
    fn adapt(&self) -> LossInput {
        self.classification.adapt()
    }
}

/// The input of a [`TermMetric`]: the named loss terms of a step.
pub struct TermInput {
    terms: Vec<(String, Tensor<1>)>,
}

impl Adaptor<TermInput> for DistillOutput {
    fn adapt(&self) -> TermInput {
        TermInput {
            terms: self.terms.clone(),
        }
    }
}

/// A burn-train metric following one named loss term (`"kd"`, `"dkd/nckd"`, …) of a
/// [`Distiller`]'s loss. Register one per term: `.metric_train_numeric(TermMetric::new("kd"))`.
#[derive(Clone)]
pub struct TermMetric {
    term: String,
    name: Arc<String>,
    state: NumericMetricState,
}

impl TermMetric {
    /// The metric of the term `term`. Its name is `Loss term <term>` with every character
    /// that is not a letter, a digit, `-` or `_` replaced by `_` (`dkd/tckd` → `dkd_tckd`), so
    /// that every logger can use it as a file name (burn's file logger opens `<name>.log`).
    ///
    /// A term the loss does not produce logs NaN: prefer [`checked`](Self::checked) or
    /// [`all`](Self::all), which read the loss's terms from one forward pass first.
    pub fn new(term: impl Into<String>) -> Self {
        let term = term.into();
        Self {
            name: Arc::new(Self::metric_name(&term)),
            term,
            state: NumericMetricState::default(),
        }
    }

    /// The name burn-train logs the term `term` under (`dkd/tckd` → `Loss term dkd_tckd`), for
    /// code that reads the logs by term.
    pub fn metric_name(term: &str) -> String {
        let safe: String = term
            .chars()
            .map(|c| match c.is_alphanumeric() || c == '-' || c == '_' {
                true => c,
                false => '_',
            })
            .collect();
        format!("Loss term {safe}")
    }

    /// The metric of `term` after checking, on one forward pass of `loss` over `example` (a
    /// batch like the training ones), that the loss has that term;
    /// [`DistillError::UnknownTerm`] lists the terms it has.
    pub fn checked(
        term: &str,
        loss: &dyn Loss,
        example: &DistillInput,
    ) -> Result<Self, DistillError> {
        let terms = term_names(loss, example)?;
        match terms.iter().any(|t| t == term) {
            true => Ok(Self::new(term)),
            false => Err(DistillError::UnknownTerm {
                term: term.into(),
                terms,
            }),
        }
    }

    /// One metric per term of `loss` (read from one forward pass over `example`), to register
    /// with `metric_train_numeric` / `metric_valid_numeric`.
    pub fn all(loss: &dyn Loss, example: &DistillInput) -> Result<Vec<Self>, DistillError> {
        Ok(term_names(loss, example)?
            .into_iter()
            .map(Self::new)
            .collect())
    }
}

/// The names of the terms `loss` returns on `example`.
fn term_names(loss: &dyn Loss, example: &DistillInput) -> Result<Vec<String>, DistillError> {
    Ok(loss
        .forward(example)?
        .terms()
        .map(|(n, _)| n.to_string())
        .collect())
}

impl Metric for TermMetric {
    type Input = TermInput;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(
        &mut self,
        item: &TermInput,
        _metadata: &MetricMetadata,
    ) -> Result<SerializedEntry, TensorReadError> {
        let value = match item.terms.iter().find(|(n, _)| *n == self.term) {
            Some((_, t)) => t.clone().sum().try_into_scalar::<f64>()?,
            None => f64::NAN,
        };
        let batch = item.terms.first().map_or(1, |(_, t)| t.dims()[0].max(1));
        self.state.update(value, batch);
        Ok(self
            .state
            .compute_update(FormatOptions::new(self.name()).precision(4)))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        Ok(self
            .state
            .compute_final(FormatOptions::new(self.name()).precision(4)))
    }

    fn clear(&mut self) {
        self.state.reset()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: false,
        }
        .into()
    }
}

impl Numeric for TermMetric {
    fn value(&self) -> Option<NumericEntry> {
        Some(self.state.current_value())
    }

    fn running_value(&self) -> Option<NumericEntry> {
        Some(self.state.running_value())
    }

    fn final_value(&self) -> NumericEntry {
        self.state.final_value()
    }
}

/// Materialises every parameter (a lazy one shares its cell with clones, BURN-0.22.md §3).
struct Materialise;

impl ModuleVisitor for Materialise {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// A student distilled by any [`Loss`] from a teacher, as a burn-train model
/// (`TrainStep` + `InferenceStep`): `SupervisedTraining` then gives progress, metrics
/// (accuracy, the loss, and each loss term with [`TermMetric`]), checkpoints and burn's
/// multi-device strategies unchanged.
///
/// **Progress** (DKD's warm-up, CTKD, every [`Schedule`](crate::Schedule)): with
/// [`with_progress`](Self::with_progress) the distiller counts its own optimizer steps and
/// gives every batch its [`Progress`]; the count is part of the module's record, so a run
/// resumed from a checkpoint continues where it stopped, and it does not depend on how many
/// loader workers made the batches (with gradient accumulation, count `steps_per_epoch` in
/// optimizer steps). A batch that carries its own `progress` keeps it.
/// **Bad input** is found before `launch` with [`check`](Self::check) on one batch: inside
/// `TrainStep` an error can only be a panic, whose message names the objective and the cause.
///
/// The teacher is frozen (no gradient, its parameters never move) unless a
/// [`MetaTeacher`] drives it ([`with_meta`](Self::with_meta)); then each training step first
/// runs the meta-teacher's round on the item's quiz batch. Cached teacher outputs in a
/// [`DistillBatch`] skip the teacher's forward pass. Inference evaluates the same loss.
#[derive(Module, Debug)]
pub struct Distiller<S: Module + ModuleDisplay, T: Module + ModuleDisplay> {
    /// The student (trained).
    pub student: S,
    /// The teacher (frozen).
    pub teacher: T,
    #[module(skip)]
    loss: Arc<dyn Loss>,
    /// A `MetaTeacher<T>`, type-erased (the module derive keeps generic types out of skipped
    /// fields).
    #[module(skip)]
    meta: Option<Arc<Mutex<Box<dyn Any + Send>>>>,
    #[module(skip)]
    student_lr: f64,
    /// Optimizer steps taken (a parameter without gradient: saved with the record, never
    /// trained).
    steps: Param<Tensor<1>>,
    /// `(steps per epoch, epochs)` when the distiller gives each batch its progress.
    #[module(skip)]
    schedule: Option<(usize, usize)>,
}

impl<S: Module + ModuleDisplay, T: Module + ModuleDisplay + 'static> Distiller<S, T> {
    /// `student` distilled from `teacher` (frozen here) with `loss`.
    pub fn new(student: S, teacher: T, loss: impl Loss + 'static) -> Self {
        teacher.visit(&mut Materialise);
        Self {
            student,
            teacher: teacher.freeze(),
            loss: Arc::new(loss),
            meta: None,
            student_lr: 0.0,
            steps: Param::from_tensor(
                Tensor::zeros([1], &Device::default()).set_require_grad(false),
            ),
            schedule: None,
        }
    }

    /// The same, giving each batch its [`Progress`] from its own step count:
    /// `steps_per_epoch` batches an epoch (the loader's length), `epochs` in the run.
    pub fn with_progress(mut self, steps_per_epoch: usize, epochs: usize) -> Self {
        self.schedule = Some((steps_per_epoch.max(1), epochs));
        self
    }

    /// The optimizer steps this distiller has taken (restored with its record; exact up to
    /// 2²⁴ steps in f32).
    pub fn steps_taken(&self) -> usize {
        self.steps.val().into_scalar::<f64>() as usize
    }

    /// The same distiller one optimizer step further.
    fn stepped(mut self) -> Self {
        let next = self.steps.val() + 1.0;
        self.steps = Param::initialized(self.steps.id, next.set_require_grad(false));
        self
    }

    /// The progress at the current step count, if the distiller tracks it.
    fn progress(&self) -> Option<Progress> {
        let (per_epoch, epochs) = self.schedule?;
        let step = self.steps_taken();
        Some(Progress::epoch(step / per_epoch, epochs).at_step(step % per_epoch, per_epoch))
    }

    /// The loss on one batch like the training ones, as a `Result`: run it before `launch`,
    /// where a bad shape, a missing tap or a missing progress is an error to handle instead of
    /// a panic inside burn-train's loop.
    pub fn check(&self, item: &DistillBatch<S::Input>) -> Result<(), DistillError>
    where
        S: Distillable,
        T: Distillable<Input = S::Input>,
        S::Input: Clone,
    {
        self.try_forward(item.clone()).map(|_| ())
    }

    /// The same, with `meta` updating the teacher before each step that carries a quiz batch:
    /// the meta-teacher's own loss drives its pilot step, this distiller's loss the student's
    /// step (against the updated teacher); `student_lr` drives `PilotRate::StudentLr`.
    pub fn with_meta(mut self, meta: MetaTeacher<T>, student_lr: f64) -> Self {
        self.meta = Some(Arc::new(Mutex::new(Box::new(meta))));
        self.student_lr = student_lr;
        self
    }

    /// Runs `f` on the meta-teacher, if there is one.
    fn with_meta_teacher<R>(&self, f: impl FnOnce(&mut MetaTeacher<T>) -> R) -> Option<R> {
        let meta = self.meta.as_ref()?;
        let mut guard: MutexGuard<'_, Box<dyn Any + Send>> =
            meta.lock().expect("meta-teacher lock");
        let meta = guard
            .downcast_mut::<MetaTeacher<T>>()
            .expect("the meta-teacher drives this teacher type");
        Some(f(meta))
    }

    /// The meta-teacher's current teacher (the frozen one without a meta-teacher).
    pub fn current_teacher(&self) -> T {
        self.with_meta_teacher(|m| m.teacher().clone())
            .unwrap_or_else(|| self.teacher.clone())
    }

    /// The loss on `item`, its terms, the student's logits and the targets (`classification.loss`
    /// is the total to differentiate). Panics on a [`DistillError`], naming it
    /// ([`check`](Self::check) finds those first).
    pub fn forward(&self, item: DistillBatch<S::Input>) -> DistillOutput
    where
        S: Distillable,
        T: Distillable<Input = S::Input>,
    {
        self.try_forward(item)
            .unwrap_or_else(|e| panic!("burn-distill: the distillation loss failed: {e}"))
    }

    /// [`forward`](Self::forward) as a `Result`.
    fn try_forward(&self, item: DistillBatch<S::Input>) -> Result<DistillOutput, DistillError>
    where
        S: Distillable,
        T: Distillable<Input = S::Input>,
    {
        let student = self.student.run(&item.batch.input);
        let logits = student.logits.clone();
        let meta = self.with_meta_teacher(|m| m.teacher_outputs(&item.batch.input));
        let teacher = match (meta, item.teacher) {
            (Some(t), _) | (None, Some(t)) => t,
            (None, None) => self.teacher.run(&item.batch.input),
        };
        let mut input = DistillInput::from_outputs(student, teacher.detach())
            .targets(item.batch.targets.clone());
        if let Some(p) = item.progress.or_else(|| self.progress()) {
            input = input.progress(p);
        }
        let out = self.loss.forward(&input)?;
        Ok(DistillOutput {
            terms: out
                .terms()
                .map(|(n, t)| (n.to_string(), t.clone()))
                .collect(),
            classification: ClassificationOutput::new(out.total, logits, item.batch.targets),
        })
    }
}

impl<S, T> TrainStep for Distiller<S, T>
where
    S: Distillable + ModuleDisplay + 'static,
    S::Input: Send + 'static,
    T: Distillable<Input = S::Input> + ModuleDisplay + 'static,
{
    type Input = DistillBatch<S::Input>;
    type Output = DistillOutput;

    fn step(&self, mut item: DistillBatch<S::Input>) -> TrainOutput<DistillOutput> {
        item.progress = item.progress.or_else(|| self.progress());
        if let Some(quiz) = &item.quiz {
            let progress = item.progress.unwrap_or_default();
            self.with_meta_teacher(|m| {
                m.round(&self.student, &item.batch, quiz, progress, self.student_lr)
            })
            .transpose()
            .unwrap_or_else(|e| panic!("burn-distill: the meta-teacher's round failed: {e}"));
        }
        let out = self.forward(item);
        let grads = out.classification.loss.backward();
        TrainOutput::new(self, grads, out)
    }

    fn optimize(
        self,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        grads: GradientsParams,
    ) -> Self {
        optim.step(lr, self, grads).stepped()
    }

    fn optimize_multi(
        self,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        grads: MultiGradientsParams,
    ) -> Self {
        optim.step_multi(lr, self, grads).stepped()
    }
}

impl<S, T> InferenceStep for Distiller<S, T>
where
    S: Distillable + ModuleDisplay + 'static,
    S::Input: Send + 'static,
    T: Distillable<Input = S::Input> + ModuleDisplay + 'static,
{
    type Input = DistillBatch<S::Input>;
    type Output = DistillOutput;

    fn step(&self, item: DistillBatch<S::Input>) -> DistillOutput {
        self.forward(item)
    }
}
