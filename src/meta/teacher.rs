//! [`MetaTeacher`]: a teacher that learns from its student's quiz results (MetaDistil).

use burn::config::Config;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{ModuleOptimizer, OptimizerRecord};
use burn::store::ModuleRecord;
use burn::tensor::Tensor;

use super::hypergrad::{Batch, Bilevel, MetaGradient};
use crate::check::check_positive;
use crate::cross_entropy::CrossEntropy;
use crate::error::DistillError;
use crate::input::{DistillInput, Progress};
use crate::input::{Distillable, Outputs};
use crate::loss::{Loss, LossOutput};

/// The pilot step size `η`.
#[derive(Config, Debug, PartialEq)]
pub enum PilotRate {
    /// A constant `η`.
    Fixed(f64),
    /// `η` equal to the student's current learning rate (passed to each round), so it follows
    /// the student's schedule as in MetaDistil.
    StudentLr,
}

/// Configuration of a [`MetaTeacher`]. The defaults are MetaDistil's CV settings (teacher SGD
/// at 0.05, `η = 0.05`, one pilot step), with the teacher learning from the first round.
#[derive(Config, Debug)]
pub struct MetaTeacherConfig {
    /// The pilot step size `η`.
    #[config(default = "PilotRate::Fixed(0.05)")]
    pub pilot_rate: PilotRate,
    /// Pilot SGD steps `k` on the round's batch before the quiz ([`MetaTeacher::round`]);
    /// A round given the next `k` batches ([`Pilot::Ahead`]) takes one step on each instead.
    #[config(default = 1)]
    pub pilot_steps: usize,
    /// The teacher optimizer's learning rate.
    #[config(default = 0.05)]
    pub teacher_lr: f64,
    /// The teacher learns every `period` rounds.
    #[config(default = 1)]
    pub period: usize,
    /// The teacher stays fixed before this epoch (MetaDistil: 150 of 240).
    #[config(default = 0)]
    pub freeze_epochs: usize,
    /// Length of the finite-difference perturbation `ε‖a‖` in parameter space; `None` picks the
    /// cube root of the dtype's machine epsilon (6e-6 in f64, 5e-3 in f32).
    #[config(default = "None")]
    pub fd_step: Option<f64>,
}

impl MetaTeacherConfig {
    /// A meta-teacher owning `teacher`, updated by `optimizer` (any burn optimizer, e.g.
    /// `SgdConfig::new().init()`), distilling with `loss` (which should include the task term,
    /// e.g. `ce.weighted(0.1) + kd.weighted(0.9)`). The quiz loss is
    /// cross-entropy; change it with [`MetaTeacher::with_quiz`].
    ///
    /// Errors: a non-positive `η`, learning rate or finite-difference step, zero pilot steps or
    /// period, and a teacher with no trainable parameter.
    pub fn init<T: Module>(
        &self,
        teacher: T,
        optimizer: impl Into<ModuleOptimizer>,
        loss: impl Loss + 'static,
    ) -> Result<MetaTeacher<T>, DistillError> {
        const NAME: &str = "meta_teacher";
        if let PilotRate::Fixed(eta) = self.pilot_rate {
            check_positive(NAME, "pilot_rate", eta)?;
        }
        check_positive(NAME, "teacher_lr", self.teacher_lr)?;
        if let Some(h) = self.fd_step {
            check_positive(NAME, "fd_step", h)?;
        }
        for (field, v) in [("pilot_steps", self.pilot_steps), ("period", self.period)] {
            crate::check::check_count(NAME, field, v, 1)?;
        }
        let mut count = Trainable(0);
        teacher.visit(&mut count);
        if count.0 == 0 {
            return Err(DistillError::NothingToTrain {
                what: "the teacher".into(),
            });
        }
        Ok(MetaTeacher {
            teacher,
            optimizer: optimizer.into(),
            loss: Box::new(loss),
            quiz: Box::new(CrossEntropy::new()),
            config: self.clone(),
            rounds: 0,
        })
    }
}

/// Counts (and materialises) the trainable float parameters of a module.
struct Trainable(usize);

impl ModuleVisitor for Trainable {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
        if param.is_require_grad() {
            self.0 += 1;
        }
    }
}

/// What one [`MetaTeacher::round`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct MetaRound {
    /// Whether the teacher was updated (not frozen, on its period).
    pub updated: bool,
    /// The pilot student's quiz loss, when the teacher was updated.
    pub quiz_loss: Option<f64>,
}

/// A teacher that learns from its student: MetaDistil (Zhou, Xu, McAuley, ACL 2022).
///
/// Each [`round`](Self::round), before the student's own step:
/// 1. *pilot*: a copy of the student takes `k` SGD steps of size `η` on the distillation loss
///    `L(θ_s, θ_t)`, the teacher attached: `θ_s' = θ_s − η ∇θs L` (all on the round's batch,
///    or one on each of the next `k` batches, given as `&next[..]`);
/// 2. *quiz*: the pilot student is scored on a held-out quiz batch, `Q(θ_s')`;
/// 3. *teacher step*: `∇θt Q(θ_s'(θ_t))`, through the pilot steps, goes to the teacher's
///    optimizer.
///
/// Then the trainer takes the real student step on the same batch with
/// [`student_loss`](Self::student_loss), which reads the updated teacher.
///
/// burn has no gradient of a gradient, so step 3 uses first-order passes only: the mixed term
/// `−η ∂θt[v · ∇θs L]` (`v = ∇Q(θ_s')`) is a central difference of `∇θt L` along `v`, taken on
/// the teacher's outputs and sent through the teacher once (see `docs/metadistil.md`; it matches
/// the authors' second-order PyTorch to 1e-6 and a finite difference of the whole bilevel
/// objective to 1e-5). A round costs about three student forward-backward passes and one
/// teacher forward-backward more than a plain step.
///
/// [`MetaTeacher::decoupled`] builds Decoupled MetaDistil (the same loop driving DKD).
///
/// The students's running statistics (batch norm), if any, see the pilot passes: a clone of a
/// burn module shares them.
pub struct MetaTeacher<T> {
    teacher: T,
    optimizer: ModuleOptimizer,
    loss: Box<dyn Loss>,
    quiz: Box<dyn Loss>,
    config: MetaTeacherConfig,
    rounds: u64,
}

/// The kind of file [`MetaTeacher::save`] writes.
const STATE: &str = "meta-teacher state";

/// A [`MetaTeacher`]'s state: the teacher's parameters, its optimizer's state and the round
/// counter. [`MetaTeacher::save`] and [`MetaTeacher::load`] write and read it as one file.
#[derive(Debug)]
pub struct MetaTeacherRecord {
    /// The teacher's parameters.
    pub teacher: ModuleRecord,
    /// The teacher optimizer's state.
    pub optimizer: OptimizerRecord,
    /// Rounds run so far (the update period counts from them).
    pub rounds: u64,
}

impl<T: Module> std::fmt::Debug for MetaTeacher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaTeacher")
            .field("teacher", &self.teacher)
            .field("loss", &self.loss)
            .field("quiz", &self.quiz)
            .field("config", &self.config)
            .field("rounds", &self.rounds)
            .finish_non_exhaustive()
    }
}

impl<T: Module> MetaTeacher<T> {
    /// Decoupled MetaDistil (Du et al., High-Confidence Computing 2023): the meta-teacher
    /// driving DKD plus the task term: `dkd` is the decoupled objective
    /// ([`logit::Dkd`](../logit/struct.Dkd.html), or DCKD), the task term cross-entropy. It is
    /// reconstructed from the paper's abstract (no public code): see `docs/metadistil.md`.
    pub fn decoupled(
        config: &MetaTeacherConfig,
        teacher: T,
        optimizer: impl Into<ModuleOptimizer>,
        dkd: impl Loss + 'static,
    ) -> Result<Self, DistillError> {
        config.init(teacher, optimizer, CrossEntropy::new() + dkd)
    }

    /// The same meta-teacher scoring pilots with `quiz` instead of cross-entropy (it reads the
    /// pilot's logits and the quiz targets).
    pub fn with_quiz(mut self, quiz: impl Loss + 'static) -> Self {
        self.quiz = Box::new(quiz);
        self
    }

    /// The teacher.
    pub fn teacher(&self) -> &T {
        &self.teacher
    }

    /// The teacher, giving up the meta-teacher.
    pub fn into_teacher(self) -> T {
        self.teacher
    }

    /// Replaces the distillation loss, e.g. each step when it has learnable parts the
    /// student's optimizer moves (a feature connector, MGD's generator).
    pub fn set_loss(&mut self, loss: impl Loss + 'static) {
        self.loss = Box::new(loss);
    }

    /// The distillation loss.
    pub fn loss(&self) -> &dyn Loss {
        self.loss.as_ref()
    }

    /// Rounds run so far.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// The state to save: teacher, optimizer state, round counter.
    pub fn to_record(&self) -> MetaTeacherRecord {
        MetaTeacherRecord {
            teacher: self.teacher.clone().into_record(),
            optimizer: self.optimizer.to_record(),
            rounds: self.rounds,
        }
    }

    /// This meta-teacher with the state of `record`; a restored run continues exactly as the
    /// saved one would have.
    ///
    /// burn 0.22.1 rebuilds optimizer state in the *default* device's float dtype: a run in
    /// f64 must configure that device for F64 (`Device::configure`) before restoring, or the
    /// next step of a stateful optimizer (Adam, momentum) meets f32 state.
    pub fn load_record(mut self, record: MetaTeacherRecord) -> Result<Self, DistillError> {
        self.teacher = self.teacher.try_load_record(record.teacher).map_err(|e| {
            DistillError::InvalidRecord {
                what: "teacher".into(),
                reason: e.to_string(),
            }
        })?;
        self.optimizer = self.optimizer.load_record(record.optimizer);
        self.rounds = record.rounds;
        Ok(self)
    }

    /// Saves the whole state — teacher, optimizer state, round counter — to one file, written
    /// atomically (complete or not at all) with a checksum per part.
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<(), DistillError> {
        let path = path.as_ref();
        let failed = |reason: String| DistillError::Save {
            what: "meta-teacher state".into(),
            path: path.display().to_string(),
            reason,
        };
        let record = self.to_record();
        let teacher = record
            .teacher
            .into_bytes()
            .map_err(|e| failed(e.to_string()))?;
        let optimizer = record
            .optimizer
            .into_bytes()
            .map_err(|e| failed(e.to_string()))?;
        let meta = serde_json::json!({ "rounds": record.rounds });
        crate::file::write_bundle(
            path,
            STATE,
            meta,
            &[("teacher", &teacher), ("optimizer", &optimizer)],
        )
        .map_err(failed)
    }

    /// This meta-teacher with the state [`save`](Self::save) wrote to `path`. A missing,
    /// unfinished, truncated or corrupt file, or one of another teacher's shape, is
    /// [`DistillError::InvalidRecord`]; see [`load_record`](Self::load_record) for f64 runs.
    pub fn load(self, path: impl AsRef<std::path::Path>) -> Result<Self, DistillError> {
        let path = path.as_ref();
        let failed = |reason: String| DistillError::InvalidRecord {
            what: format!("meta-teacher state {}", path.display()),
            reason,
        };
        let (meta, parts) = crate::file::read_bundle(path, STATE).map_err(failed)?;
        let rounds = meta["rounds"]
            .as_u64()
            .ok_or_else(|| failed("no round counter".into()))?;
        let part = |name: &str| {
            let found = parts.iter().find(|(n, _)| n == name);
            let bytes = found
                .map(|(_, b)| b.clone())
                .ok_or_else(|| failed(format!("no `{name}` part")))?;
            Ok::<_, DistillError>(burn::tensor::Bytes::from_bytes_vec(bytes))
        };
        let teacher =
            ModuleRecord::from_bytes(part("teacher")?).map_err(|e| failed(e.to_string()))?;
        let optimizer =
            OptimizerRecord::from_bytes(part("optimizer")?).map_err(|e| failed(e.to_string()))?;
        self.load_record(MetaTeacherRecord {
            teacher,
            optimizer,
            rounds,
        })
    }

    /// One MetaDistil round, scored on `quiz`: the pilot steps on `pilot` (a batch, given as
    /// `&batch`: `pilot_steps` steps on it; or the next batches of the stream, as `&next[..]`:
    /// one step on each, in order, a look-ahead of `k = next.len()`), and the teacher learns
    /// unless frozen (before `freeze_epochs`) or off its period. `student_lr` is the student's
    /// current learning rate (the pilot step size under [`PilotRate::StudentLr`]).
    #[doc(alias = "round_ahead")]
    pub fn round<'a, S>(
        &mut self,
        student: &S,
        pilot: impl Into<Pilot<'a, T::Input>>,
        quiz: &Batch<T::Input>,
        progress: Progress,
        student_lr: f64,
    ) -> Result<MetaRound, DistillError>
    where
        T: Distillable,
        S: Distillable<Input = T::Input>,
        T::Input: 'a,
    {
        let steps = self.pilot_batches(pilot.into())?;
        self.round_on(student, steps, quiz, progress, student_lr)
    }

    fn round_on<S>(
        &mut self,
        student: &S,
        steps: Vec<&Batch<T::Input>>,
        quiz: &Batch<T::Input>,
        progress: Progress,
        student_lr: f64,
    ) -> Result<MetaRound, DistillError>
    where
        T: Distillable,
        S: Distillable<Input = T::Input>,
    {
        let index = self.rounds;
        self.rounds += 1;
        let skip = MetaRound {
            updated: false,
            quiz_loss: None,
        };
        if progress.epoch < self.config.freeze_epochs
            || !index.is_multiple_of(self.config.period as u64)
        {
            return Ok(skip);
        }
        let meta = self.gradient_on(student, steps, quiz, progress, student_lr)?;
        if !meta.quiz_loss.is_finite() {
            return Err(DistillError::NonFinite {
                what: "the pilot's quiz loss".into(),
            });
        }
        self.teacher =
            self.optimizer
                .step(self.config.teacher_lr, self.teacher.clone(), meta.teacher);
        Ok(MetaRound {
            updated: true,
            quiz_loss: Some(meta.quiz_loss),
        })
    }

    /// The meta-gradient of one [`round`](Self::round) without applying it: d quiz / d teacher
    /// parameters through the pilot steps (and d quiz / d student parameters), e.g. to inspect
    /// or clip.
    #[doc(alias = "meta_gradient_ahead")]
    pub fn meta_gradient<'a, S>(
        &self,
        student: &S,
        pilot: impl Into<Pilot<'a, T::Input>>,
        quiz: &Batch<T::Input>,
        progress: Progress,
        student_lr: f64,
    ) -> Result<MetaGradient, DistillError>
    where
        T: Distillable,
        S: Distillable<Input = T::Input>,
        T::Input: 'a,
    {
        let steps = self.pilot_batches(pilot.into())?;
        self.gradient_on(student, steps, quiz, progress, student_lr)
    }

    /// The batches the pilot steps on, in order.
    fn pilot_batches<'a>(
        &self,
        pilot: Pilot<'a, T::Input>,
    ) -> Result<Vec<&'a Batch<T::Input>>, DistillError>
    where
        T: Distillable,
    {
        match pilot {
            Pilot::Repeat(batch) => Ok(vec![batch; self.config.pilot_steps]),
            Pilot::Ahead([]) => Err(DistillError::MissingInput {
                objective: "meta_teacher".into(),
                what: "at least one pilot batch (an empty look-ahead)".into(),
            }),
            Pilot::Ahead(next) => Ok(next.iter().collect()),
        }
    }

    fn gradient_on<S>(
        &self,
        student: &S,
        batches: Vec<&Batch<T::Input>>,
        quiz: &Batch<T::Input>,
        progress: Progress,
        student_lr: f64,
    ) -> Result<MetaGradient, DistillError>
    where
        T: Distillable,
        S: Distillable<Input = T::Input>,
    {
        let eta = match self.config.pilot_rate {
            PilotRate::Fixed(eta) => eta,
            PilotRate::StudentLr => check_positive("meta_teacher", "student_lr", student_lr)?,
        };
        Bilevel {
            loss: self.loss.as_ref(),
            quiz_loss: self.quiz.as_ref(),
            batches,
            quiz,
            progress: Some(progress),
            eta,
            fd_step: self.config.fd_step,
        }
        .gradient(student, &self.teacher)
    }

    /// The current teacher's outputs on `input`, outside the autodiff graph: a tracked forward
    /// that is never backpropagated would leave its graph behind on every step.
    pub fn teacher_outputs(&self, input: &T::Input) -> Outputs
    where
        T: Distillable,
    {
        self.teacher.clone().no_grad().run(input)
    }

    /// The distillation loss of `student` (its outputs on `batch`) against the current
    /// teacher, for the student's real step; the teacher is detached.
    pub fn student_loss(
        &self,
        student: Outputs,
        batch: &Batch<T::Input>,
        progress: Progress,
    ) -> Result<LossOutput, DistillError>
    where
        T: Distillable,
    {
        let input = DistillInput::from_outputs(student, self.teacher_outputs(&batch.input))
            .targets(batch.targets.clone())
            .progress(progress);
        self.loss.forward(&input)
    }
}

/// The pilot's batches for a look-ahead round: at least one.
/// The batches a MetaDistil round's pilot steps on: `&batch` for `pilot_steps` steps on one
/// batch, `&next[..]` for one step on each of the next batches (a look-ahead).
#[derive(Debug)]
pub enum Pilot<'a, I> {
    /// `pilot_steps` steps on one batch (MetaDistil's loop with k = 1).
    Repeat(&'a Batch<I>),
    /// One step on each batch, in order.
    Ahead(&'a [Batch<I>]),
}

impl<'a, I> From<&'a Batch<I>> for Pilot<'a, I> {
    fn from(batch: &'a Batch<I>) -> Self {
        Pilot::Repeat(batch)
    }
}

impl<'a, I> From<&'a [Batch<I>]> for Pilot<'a, I> {
    fn from(next: &'a [Batch<I>]) -> Self {
        Pilot::Ahead(next)
    }
}

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[crate::registry::Descriptor] = &[
    crate::registry::Descriptor {
        module: super::MODULE,
        items: &["MetaTeacher"],
        paper: "Zhou, Xu, McAuley, ACL 2022, *BERT Learns to Teach* (MetaDistil)",
        doc: "metadistil.md",
        bound: None,
        example: None,
        learnable: None,
        twins: None,
        method: None,
        golden: crate::registry::golden!["metadistil_meta_grad" => golden::meta_round, "metadistil_meta_grad_dkd" => golden::meta_round],
    },
    crate::registry::Descriptor {
        module: super::MODULE,
        items: &["MetaTeacher::decoupled"],
        paper: "Du et al. 2023, Decoupled MetaDistil (reconstruction)",
        doc: "metadistil.md#decoupled-metadistil-reconstruction",
        bound: None,
        example: None,
        learnable: None,
        twins: None,
        method: None,
        golden: crate::registry::golden![],
    },
];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::cross_entropy::CrossEntropyConfig;
    use crate::golden::*;
    use crate::logit::{DkdConfig, KdConfig};
    use burn::optim::SgdConfig;

    /// One MetaDistil round on the case's tiny student and teacher: the pilot's quiz loss and
    /// d quiz / d teacher and student parameters, to 1e-6 relative (the finite-difference
    /// meta-gradient against the authors' second-order autograd). With `pilot_steps` k > 1 and
    /// batches `x_1`/`y_1` … `x_k`/`y_k`, the pilot takes one step on each.
    pub(crate) fn meta_round(case: &Case) -> Result<(), String> {
        let (student, s_names) = mlp(case, "s")?;
        let (teacher, t_names) = mlp(case, "t")?;
        let temperature = case.param("temperature")?;
        let loss = if case.method == "metadistil_meta_grad_dkd" {
            let dkd = DkdConfig::new()
                .with_alpha(case.param("dkd_alpha")?)
                .with_beta(case.param("dkd_beta")?)
                .with_temperature(temperature)
                .with_warmup_epochs(0)
                .init()
                .map_err(e)?;
            let ce = CrossEntropyConfig::new().init().map_err(e)?;
            ce.weighted(case.param("ce_weight")?) + dkd
        } else {
            let alpha = case.param("alpha")?;
            let kd = KdConfig::new()
                .with_temperature(temperature)
                .init()
                .map_err(e)?;
            let ce = CrossEntropyConfig::new().init().map_err(e)?;
            ce.weighted(1.0 - alpha) + kd.weighted(alpha)
        };
        let steps = case.opt("pilot_steps").unwrap_or(1.0) as usize;
        let meta = MetaTeacherConfig::new()
            .with_pilot_rate(PilotRate::Fixed(case.param("eta")?))
            .with_pilot_steps(steps)
            .init(teacher, SgdConfig::new().init(), loss)
            .map_err(e)?;
        let batch = |x: &str, y: &str| -> Result<Batch<Tensor<2>>, String> {
            Ok(Batch::new(case.constant::<2>(x)?, case.targets(y)?))
        };
        let quiz = batch("xq", "yq")?;
        let progress = Progress::epoch(0, 1);
        let g = if case.has("x_1") {
            let next = (1..=steps)
                .map(|i| batch(&format!("x_{i}"), &format!("y_{i}")))
                .collect::<Result<Vec<_>, _>>()?;
            meta.meta_gradient(&student, next.as_slice(), &quiz, progress, 0.0)
        } else {
            meta.meta_gradient(&student, &batch("x", "y")?, &quiz, progress, 0.0)
        }
        .map_err(e)?;
        let (rel, abs) = (1e-6, 1e-10);
        let want = case.loss.as_deref().ok_or("no loss")?;
        close("quiz loss", &[g.quiz_loss], want, rel, abs)?;
        let layers = meta
            .teacher()
            .layers
            .iter()
            .zip(&t_names)
            .map(|l| (l, &g.teacher));
        let layers = layers.chain(student.layers.iter().zip(&s_names).map(|l| (l, &g.student)));
        for ((layer, (w, b)), grads) in layers {
            let (gw, gb) = torch_grads(layer, grads);
            close(&format!("d quiz/d{w}"), &gw, &case.grads[w], rel, abs)?;
            close(&format!("d quiz/d{b}"), &gb, &case.grads[b], rel, abs)?;
            case.checked.borrow_mut().extend([w.clone(), b.clone()]);
        }
        Ok(())
    }
}
