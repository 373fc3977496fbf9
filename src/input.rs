//! What an objective reads: logits, targets, named feature taps and training progress.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use burn::module::Module;
use burn::tensor::{DType, FloatDType, Int, Tensor};

use crate::DistillError;

/// Where training stands, so schedules (DKD's warm-up, curricula, CTKD's λ) are pure
/// functions of it.
///
/// `epoch` counts from 0. Epoch-based warm-ups follow mdistiller, whose epochs count from 1:
/// epoch 0 here is its epoch 1.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Progress {
    /// The current epoch, from 0.
    pub epoch: usize,
    /// Epochs in the whole run (0 when unknown).
    pub total_epochs: usize,
    /// The step within the current epoch, from 0.
    pub step: usize,
    /// Steps in one epoch (0 when unknown).
    pub steps_per_epoch: usize,
}

impl Progress {
    /// Progress at the start of `epoch` (from 0) of `total_epochs`.
    pub fn epoch(epoch: usize, total_epochs: usize) -> Self {
        Self {
            epoch,
            total_epochs,
            ..Self::default()
        }
    }

    /// The same progress at `step` of `steps_per_epoch` within the epoch.
    pub fn at_step(self, step: usize, steps_per_epoch: usize) -> Self {
        Self {
            step,
            steps_per_epoch,
            ..self
        }
    }

    /// Epochs done so far, with the fraction of the current epoch: `epoch + step / steps`.
    pub fn epochs_done(&self) -> f64 {
        let within = if self.steps_per_epoch > 0 {
            self.step as f64 / self.steps_per_epoch as f64
        } else {
            0.0
        };
        self.epoch as f64 + within
    }

    /// The fraction of the whole run done, in `[0, 1]` (0 when the total is unknown).
    pub fn fraction(&self) -> f64 {
        if self.total_epochs == 0 {
            return 0.0;
        }
        (self.epochs_done() / self.total_epochs as f64).clamp(0.0, 1.0)
    }
}

/// One intermediate representation tapped from a network.
#[derive(Debug, Clone)]
pub enum Feature {
    /// A convolutional feature map `[N, C, H, W]`.
    Map(Tensor<4>),
    /// An embedding `[N, D]` (e.g. the penultimate layer).
    Embedding(Tensor<2>),
}

impl From<Tensor<4>> for Feature {
    fn from(t: Tensor<4>) -> Self {
        Feature::Map(t)
    }
}

impl From<Tensor<2>> for Feature {
    fn from(t: Tensor<2>) -> Self {
        Feature::Embedding(t)
    }
}

impl Feature {
    /// The representation as one row per sample: a map `[N, C, H, W]` flattened to
    /// `[N, C·H·W]`, an embedding as it is.
    pub fn flatten(self) -> Tensor<2> {
        match self {
            Feature::Map(t) => t.flatten(1, 3),
            Feature::Embedding(t) => t,
        }
    }

    /// The batch size.
    pub fn rows(&self) -> usize {
        match self {
            Feature::Map(t) => t.dims()[0],
            Feature::Embedding(t) => t.dims()[0],
        }
    }

    /// The same representation cut from the autodiff graph (and not requiring a gradient).
    pub fn detach(self) -> Self {
        match self {
            Feature::Map(t) => Feature::Map(frozen(t)),
            Feature::Embedding(t) => Feature::Embedding(frozen(t)),
        }
    }
}

/// `t` cut from the autodiff graph as a constant. burn's `detach` keeps a tensor's
/// `require_grad`, so a detached teacher output would still be a tracked leaf: every objective
/// would compute (and the fused kernels keep memory for) a teacher gradient nobody reads.
fn frozen<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    t.detach().set_require_grad(false)
}

/// What one forward pass of a network exposes to the objectives: its logits and any named
/// feature taps.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// The logits `[N, C]`.
    pub logits: Tensor<2>,
    /// Named intermediate representations (see [`DistillInput::feature`]).
    pub features: BTreeMap<String, Feature>,
}

impl Outputs {
    /// Logits and no feature tap.
    pub fn logits(logits: Tensor<2>) -> Self {
        Self {
            logits,
            features: BTreeMap::new(),
        }
    }

    /// Adds the feature tap `name`.
    pub fn feature(mut self, name: impl Into<String>, feature: impl Into<Feature>) -> Self {
        self.features.insert(name.into(), feature.into());
        self
    }

    /// The same outputs cut from the autodiff graph.
    pub fn detach(self) -> Self {
        Self {
            logits: self.logits.detach(),
            features: self
                .features
                .into_iter()
                .map(|(k, f)| (k, f.detach()))
                .collect(),
        }
    }
}

/// A burn module that can be distilled from or into: a forward pass from an input batch of type
/// [`Input`](Self::Input) to [`Outputs`]. Implement it for a student and a teacher to use them
/// with the [`MetaTeacher`](crate::meta::MetaTeacher) or the burn-train `Distiller` (any
/// architecture; only this method is needed).
///
/// ```
/// use burn::module::Module;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::tensor::{Device, Tensor};
/// use burn_distill::{Distillable, Outputs};
///
/// #[derive(Module, Debug)]
/// struct Probe {
///     linear: Linear,
/// }
///
/// impl Distillable for Probe {
///     type Input = Tensor<2>;
///     fn run(&self, x: &Tensor<2>) -> Outputs {
///         Outputs::logits(self.linear.forward(x.clone()))
///     }
/// }
///
/// let dev = Device::flex();
/// let probe = Probe { linear: LinearConfig::new(4, 3).init(&dev) };
/// let out = probe.run(&Tensor::zeros([2, 4], &dev));
/// assert_eq!(out.logits.dims(), [2, 3]);
/// ```
pub trait Distillable: Module {
    /// What the network takes (images, token ids, …).
    type Input;
    /// Runs the network on `input`.
    fn run(&self, input: &Self::Input) -> Outputs;
}

/// Which rows of a batch are views of which image, and which view each is (view 0 is the
/// un-augmented one). Multi-view objectives (DLKD's correlation) read it from the input.
#[derive(Debug, Clone, PartialEq)]
pub struct Views {
    image: Vec<usize>,
    view: Vec<usize>,
}

impl Views {
    /// Rows ordered image-major, view-minor: row `r` is view `r % views` of image `r / views`
    /// (DLKD's four rotations: `Views::image_major(batch, 4)`).
    pub fn image_major(images: usize, views: usize) -> Self {
        let rows = 0..images * views;
        Self {
            image: rows.clone().map(|r| r / views.max(1)).collect(),
            view: rows.map(|r| r % views.max(1)).collect(),
        }
    }

    /// Any layout: row `r` is view `view[r]` of image `image[r]`. Every image needs exactly one
    /// view 0.
    pub fn new(image: Vec<usize>, view: Vec<usize>) -> Result<Self, DistillError> {
        let bad = |reason: String| Err(DistillError::InvalidViews { reason });
        if image.len() != view.len() {
            return bad(format!(
                "{} image ids for {} view ids",
                image.len(),
                view.len()
            ));
        }
        let mut plain = BTreeMap::new();
        for (&i, &v) in image.iter().zip(&view) {
            if v == 0 && plain.insert(i, ()).is_some() {
                return bad(format!("image {i} has two un-augmented views (view 0)"));
            }
        }
        if let Some(i) = image.iter().find(|i| !plain.contains_key(*i)) {
            return bad(format!("image {i} has no un-augmented view (view 0)"));
        }
        Ok(Self { image, view })
    }

    /// The number of rows described.
    pub fn rows(&self) -> usize {
        self.image.len()
    }

    /// The rows holding view 0, in order.
    pub fn plain_rows(&self) -> Vec<usize> {
        (0..self.rows()).filter(|&r| self.view[r] == 0).collect()
    }

    /// The rows holding augmented views, in order.
    pub fn augmented_rows(&self) -> Vec<usize> {
        (0..self.rows()).filter(|&r| self.view[r] != 0).collect()
    }

    /// The image of each row.
    pub fn images(&self) -> &[usize] {
        &self.image
    }
}

/// Everything an objective may read for one batch.
///
/// ```
/// # use burn::tensor::{Device, Int, Tensor};
/// # use burn_distill::{DistillInput, Progress};
/// # let dev = Device::flex();
/// let student = Tensor::<2>::from_floats([[1.0, 2.0, 0.5]], &dev);
/// let teacher = Tensor::<2>::from_floats([[2.0, 1.0, 0.0]], &dev);
/// let input = DistillInput::new(student, teacher)
///     .targets(Tensor::<1, Int>::from_ints([1], &dev))
///     .progress(Progress::epoch(3, 240));
/// assert_eq!(input.batch_size(), Some(1));
/// ```
///
/// The teacher's tensors are detached when an objective reads them, so no gradient reaches the
/// teacher; [`attach_teacher`](Self::attach_teacher) keeps them in the graph (a meta-learned
/// teacher needs that).
#[derive(Debug, Clone, Default)]
pub struct DistillInput {
    student_logits: Option<Tensor<2>>,
    teacher_logits: Option<Tensor<2>>,
    targets: Option<Tensor<1, Int>>,
    features: BTreeMap<String, (Feature, Feature)>,
    views: Option<Views>,
    indices: Option<Tensor<1, Int>>,
    guides: Vec<Tensor<2>>,
    progress: Option<Progress>,
    teacher_attached: bool,
    target_range: OnceLock<(i64, i64)>,
}

impl DistillInput {
    /// An input with the student's and the teacher's logits, both `[N, C]`.
    pub fn new(student_logits: Tensor<2>, teacher_logits: Tensor<2>) -> Self {
        Self {
            student_logits: Some(student_logits),
            teacher_logits: Some(teacher_logits),
            ..Self::default()
        }
    }

    /// An input with the student's logits `[N, C]` only, for objectives that need no teacher
    /// (cross-entropy, a meta-teacher's quiz).
    pub fn student(student_logits: Tensor<2>) -> Self {
        Self {
            student_logits: Some(student_logits),
            ..Self::default()
        }
    }

    /// The input the objectives see for one forward pass of a student and of a teacher: their
    /// logits and every feature tap both expose under the same name.
    pub fn from_outputs(student: Outputs, teacher: Outputs) -> Self {
        let mut teacher_features = teacher.features;
        let features = student
            .features
            .into_iter()
            .filter_map(|(name, s)| teacher_features.remove(&name).map(|t| (name, (s, t))))
            .collect();
        Self {
            features,
            ..Self::new(student.logits, teacher.logits)
        }
    }

    /// An input with no logits, for objectives that read feature taps only.
    pub fn features_only() -> Self {
        Self::default()
    }

    /// Sets the class-index targets `[N]`.
    pub fn targets(mut self, targets: Tensor<1, Int>) -> Self {
        self.targets = Some(targets);
        self.target_range = OnceLock::new();
        self
    }

    /// Adds the feature tap `name`: the student's and the teacher's representation of the batch.
    pub fn feature(
        mut self,
        name: impl Into<String>,
        student: impl Into<Feature>,
        teacher: impl Into<Feature>,
    ) -> Self {
        self.features
            .insert(name.into(), (student.into(), teacher.into()));
        self
    }

    /// Describes the rows as views of images (see [`Views`]).
    pub fn views(mut self, views: Views) -> Self {
        self.views = Some(views);
        self
    }

    /// The view layout, if set; a layout that does not cover the batch is an error.
    pub fn get_views(&self, objective: &str) -> Result<Option<&Views>, DistillError> {
        match (&self.views, self.batch_size()) {
            (Some(v), Some(n)) if v.rows() != n => Err(DistillError::InvalidViews {
                reason: format!(
                    "{objective}: the layout has {} rows, the batch {n}",
                    v.rows()
                ),
            }),
            (v, _) => Ok(v.as_ref()),
        }
    }

    /// Sets each row's index in the dataset `[N]` (for objectives with a per-sample memory,
    /// such as CRD).
    pub fn indices(mut self, indices: Tensor<1, Int>) -> Self {
        self.indices = Some(indices);
        self
    }

    /// The dataset indices after checking there are `batch` of them, each in `0..size`;
    /// [`DistillError::MissingInput`] naming `objective` when there are none.
    pub fn checked_indices(
        &self,
        objective: &str,
        batch: usize,
        size: usize,
    ) -> Result<Tensor<1, Int>, DistillError> {
        let idx = self
            .indices
            .as_ref()
            .ok_or_else(|| DistillError::MissingInput {
                objective: objective.into(),
                what: "dataset indices (DistillInput::indices)".into(),
            })?;
        if idx.dims()[0] != batch {
            return Err(DistillError::ShapeMismatch {
                what: format!("{objective} dataset indices"),
                expected: vec![batch],
                actual: idx.dims().to_vec(),
            });
        }
        match outside(min_max(idx), size) {
            Some(index) => Err(DistillError::IndexOutOfRange { index, size }),
            None => Ok(idx.clone()),
        }
    }

    /// Adds the logits `[N, C]` of another guide (a teaching assistant) beside the teacher,
    /// for multi-guide objectives ([`Dgkd`](crate::pipeline::Dgkd)).
    pub fn guide(mut self, logits: Tensor<2>) -> Self {
        self.guides.push(logits);
        self
    }

    /// The extra guides' logits, in the order they were added.
    pub fn guides(&self) -> &[Tensor<2>] {
        &self.guides
    }

    /// The same input with `teacher` as the teacher's logits.
    pub fn with_teacher_logits(&self, teacher: Tensor<2>) -> Self {
        let mut out = self.clone();
        out.teacher_logits = Some(teacher);
        out
    }

    /// Sets the training progress that schedules read.
    pub fn progress(mut self, progress: Progress) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Keeps the teacher's tensors in the autodiff graph, so the loss is differentiable in
    /// the teacher too.
    pub fn attach_teacher(mut self) -> Self {
        self.teacher_attached = true;
        self
    }

    /// The same input with `f` applied to the student's, the teacher's and the guides' logits
    /// (a pre-transform such as [`Standardized`](crate::logit::Standardized)).
    pub fn map_logits(&self, f: impl Fn(Tensor<2>) -> Tensor<2>) -> Self {
        let mut out = self.clone();
        out.student_logits = self.student_logits.clone().map(&f);
        out.teacher_logits = self.teacher_logits.clone().map(&f);
        out.guides = self.guides.iter().cloned().map(&f).collect();
        out
    }

    /// The same input restricted to the batch rows `rows` (logits, targets, guides, dataset
    /// indices and every feature tap), e.g. the samples a curriculum admits. A view layout
    /// does not survive a selection: the result has none.
    pub fn select_rows(&self, rows: Tensor<1, Int>) -> Self {
        let pick2 = |t: &Tensor<2>| t.clone().select(0, rows.clone());
        let pick = |f: &Feature| match f {
            Feature::Map(t) => Feature::Map(t.clone().select(0, rows.clone())),
            Feature::Embedding(t) => Feature::Embedding(pick2(t)),
        };
        Self {
            student_logits: self.student_logits.as_ref().map(pick2),
            teacher_logits: self.teacher_logits.as_ref().map(pick2),
            targets: self
                .targets
                .as_ref()
                .map(|y| y.clone().select(0, rows.clone())),
            features: self
                .features
                .iter()
                .map(|(k, (s, t))| (k.clone(), (pick(s), pick(t))))
                .collect(),
            views: None,
            guides: self.guides.iter().map(pick2).collect(),
            indices: self
                .indices
                .as_ref()
                .map(|i| i.clone().select(0, rows.clone())),
            progress: self.progress,
            teacher_attached: self.teacher_attached,
            target_range: OnceLock::new(),
        }
    }

    /// Whether the teacher's tensors stay in the graph.
    pub fn is_teacher_attached(&self) -> bool {
        self.teacher_attached
    }

    /// The batch size, from the logits (or the first feature tap).
    pub fn batch_size(&self) -> Option<usize> {
        if let Some(s) = &self.student_logits {
            return Some(s.dims()[0]);
        }
        self.features.values().next().map(|(s, _)| match s {
            Feature::Map(t) => t.dims()[0],
            Feature::Embedding(t) => t.dims()[0],
        })
    }

    /// The training progress, if set.
    pub fn get_progress(&self) -> Option<Progress> {
        self.progress
    }

    /// The progress, or a [`DistillError::MissingInput`] naming `objective` and `why`.
    pub fn require_progress(&self, objective: &str, why: &str) -> Result<Progress, DistillError> {
        self.progress.ok_or_else(|| DistillError::MissingInput {
            objective: objective.into(),
            what: format!("training progress (DistillInput::progress) {why}"),
        })
    }

    fn teacher<T: Clone>(&self, t: &T, detach: impl Fn(T) -> T) -> T {
        if self.teacher_attached {
            t.clone()
        } else {
            detach(t.clone())
        }
    }

    /// The student's and teacher's logits after checking that both are `[N, C]` with the same
    /// `N > 0` and `C`; the teacher's detached unless [attached](Self::attach_teacher).
    pub fn logits(&self, objective: &str) -> Result<(Tensor<2>, Tensor<2>), DistillError> {
        let s = self.student_logits(objective)?;
        let t = self
            .teacher_logits
            .as_ref()
            .ok_or_else(|| DistillError::MissingInput {
                objective: objective.into(),
                what: "teacher logits".into(),
            })?;
        check_pair(&s, t)?;
        Ok((s, upcast(self.teacher(t, frozen))))
    }

    /// The student's logits after checking that they are `[N, C]` with `N > 0`.
    pub fn student_logits(&self, objective: &str) -> Result<Tensor<2>, DistillError> {
        let s = self
            .student_logits
            .as_ref()
            .ok_or_else(|| DistillError::MissingInput {
                objective: objective.into(),
                what: "student logits".into(),
            })?;
        if s.dims()[0] == 0 {
            return Err(DistillError::EmptyBatch {
                what: "student logits".into(),
            });
        }
        Ok(upcast(s.clone()))
    }

    /// The targets after checking there are `batch` of them, each in `0..classes`.
    ///
    /// The range check reads the targets' minimum and maximum back from the device once per
    /// input, however many objectives ask.
    pub fn checked_targets(
        &self,
        objective: &str,
        batch: usize,
        classes: usize,
    ) -> Result<Tensor<1, Int>, DistillError> {
        let y = self
            .targets
            .as_ref()
            .ok_or_else(|| DistillError::MissingInput {
                objective: objective.into(),
                what: "targets (DistillInput::targets)".into(),
            })?;
        let n = y.dims()[0];
        if n != batch {
            return Err(DistillError::ShapeMismatch {
                what: "targets".into(),
                expected: vec![batch],
                actual: vec![n],
            });
        }
        let range = *self.target_range.get_or_init(|| min_max(y));
        match outside(range, classes) {
            Some(target) => Err(DistillError::TargetOutOfRange { target, classes }),
            None => Ok(y.clone()),
        }
    }

    /// The feature tap `name`, student then teacher (the teacher's detached unless attached).
    pub fn feature_pair(
        &self,
        objective: &str,
        name: &str,
    ) -> Result<(Feature, Feature), DistillError> {
        let (s, t) = self
            .features
            .get(name)
            .ok_or_else(|| DistillError::MissingFeature {
                objective: objective.into(),
                name: name.into(),
            })?;
        Ok((s.clone(), self.teacher(t, Feature::detach)))
    }
}

/// The smallest and largest value of an index tensor, read back in one transfer.
fn min_max(t: &Tensor<1, Int>) -> (i64, i64) {
    let v: Vec<i64> = Tensor::cat(vec![t.clone().min(), t.clone().max()], 0)
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap_or_default();
    (v[0], v[1])
}

/// The bound of `(lo, hi)` outside `0..size`, if any.
fn outside((lo, hi): (i64, i64), size: usize) -> Option<i64> {
    if lo < 0 {
        Some(lo)
    } else if hi >= size as i64 {
        Some(hi)
    } else {
        None
    }
}

/// Half-precision logits in f32: losses over them (sums of `T²`-scaled log-ratios) overflow
/// f16's 65504 long before the logits do, so the logit objectives compute in f32 and return
/// f32 losses, as mixed-precision training does; gradients flow back to the half inputs.
fn upcast(z: Tensor<2>) -> Tensor<2> {
    match z.dtype() {
        DType::F16 | DType::BF16 => z.cast(FloatDType::F32),
        _ => z,
    }
}

/// Checks that student and teacher logits are both `[N, C]` with the same `N > 0` and `C`.
pub(crate) fn check_pair(s: &Tensor<2>, t: &Tensor<2>) -> Result<(usize, usize), DistillError> {
    let ([ns, cs], [nt, ct]) = (s.dims(), t.dims());
    if ns == 0 {
        return Err(DistillError::EmptyBatch {
            what: "student logits".into(),
        });
    }
    if cs != ct {
        return Err(DistillError::ClassMismatch {
            student: cs,
            teacher: ct,
        });
    }
    if ns != nt {
        return Err(DistillError::ShapeMismatch {
            what: "teacher logits".into(),
            expected: vec![ns, cs],
            actual: vec![nt, ct],
        });
    }
    Ok((ns, cs))
}
