//! What an objective reads: logits, targets, named feature taps and training progress.
//!
//! [`DistillInput`] carries them; [`Checked`] (from [`DistillInput::of`]) reads them on behalf of
//! one objective, validating shapes and ranges and naming the objective in every error.

mod checked;
mod extra;
mod outputs;
mod progress;
mod views;

use std::any::TypeId;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use burn::tensor::{Bool, Int, Tensor};

pub use checked::Checked;
pub(crate) use checked::upcast;
pub use extra::{DatasetIndices, Extra, SparseTeacher};
pub use outputs::{Distillable, Feature, Outputs};
pub use progress::Progress;
pub use views::Views;

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
    mask: Option<Tensor<1, Bool>>,
    extras: BTreeMap<TypeId, Arc<dyn Extra>>,
    /// The student's feature taps, by name.
    student_features: BTreeMap<String, Feature>,
    /// The teacher's feature taps, by name.
    teacher_features: BTreeMap<String, Feature>,
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
    /// logits and every feature tap each exposes (an objective reads a tap both expose under
    /// one name, or, with a layer mapping, the student's tap of one name and the teacher's of
    /// another).
    pub fn from_outputs(student: Outputs, teacher: Outputs) -> Self {
        Self {
            student_features: student.features,
            teacher_features: teacher.features,
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

    /// Sets which rows count `[N]` (true = counted): padding and prompt tokens of a language
    /// model are false. Objectives that honour a mask (the [`token`](crate::token) family) give
    /// the rows that do not count exactly zero loss and gradient; a mask with no true entry
    /// gives a loss of 0, never NaN.
    pub fn mask(mut self, mask: Tensor<1, Bool>) -> Self {
        self.mask = Some(mask);
        self
    }

    /// Sets per-token labels `[N]` in which `ignore_index` (−100 in PyTorch's convention)
    /// marks the rows that do not count: the mask is `labels != ignore_index`, and the targets
    /// are the labels with ignored rows set to class 0 (so a hard-label term reads them in
    /// range; its ignored rows are masked out).
    pub fn labels(self, labels: Tensor<1, Int>, ignore_index: i64) -> Self {
        let ignored = labels.clone().equal_elem(ignore_index);
        let targets = labels.mask_fill(ignored.clone(), 0);
        self.targets(targets).mask(ignored.bool_not())
    }

    /// Sets the teacher as a sparse distribution: for each row, the ids of its top-`k` tokens
    /// `[N, k]` and their log-probabilities `[N, k]` (from the teacher's full log-softmax, as an
    /// offline teacher store keeps them). Read by [`token::TopK`](crate::token::TopK).
    pub fn sparse_teacher(self, ids: Tensor<2, Int>, log_probs: Tensor<2>) -> Self {
        self.with(SparseTeacher { ids, log_probs })
    }

    /// Adds `extra`, which objectives that know its type read (one of each type; a second
    /// replaces the first). A new kind of input an objective needs is an extra, not a new
    /// field: see [`Extra`].
    pub fn with<E: Extra>(mut self, extra: E) -> Self {
        self.extras.insert(TypeId::of::<E>(), Arc::new(extra));
        self
    }

    /// The extra of type `E`, if the input carries one.
    pub fn extra<E: Extra>(&self) -> Option<&E> {
        let ext: &dyn std::any::Any = self.extras.get(&TypeId::of::<E>())?.as_ref();
        ext.downcast_ref::<E>()
    }

    /// Adds the feature tap `name`: the student's and the teacher's representation of the batch.
    pub fn feature(
        mut self,
        name: impl Into<String>,
        student: impl Into<Feature>,
        teacher: impl Into<Feature>,
    ) -> Self {
        let name = name.into();
        self.student_features.insert(name.clone(), student.into());
        self.teacher_features.insert(name, teacher.into());
        self
    }

    /// Adds the student's feature tap `name` alone (a layer another objective maps to a
    /// teacher tap of another name, e.g. [`token::HiddenState`](crate::token::HiddenState)).
    pub fn student_feature(mut self, name: impl Into<String>, student: impl Into<Feature>) -> Self {
        self.student_features.insert(name.into(), student.into());
        self
    }

    /// Adds the teacher's feature tap `name` alone.
    pub fn teacher_feature(mut self, name: impl Into<String>, teacher: impl Into<Feature>) -> Self {
        self.teacher_features.insert(name.into(), teacher.into());
        self
    }

    /// Describes the rows as views of images (see [`Views`]).
    pub fn views(self, views: Views) -> Self {
        self.with(views)
    }

    /// Sets each row's index in the dataset `[N]` (for objectives with a per-sample memory,
    /// such as CRD).
    pub fn indices(self, indices: Tensor<1, Int>) -> Self {
        self.with(DatasetIndices(indices))
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

    /// The same input with `student` and `teacher` as the logits.
    pub fn with_logits(&self, student: Tensor<2>, teacher: Tensor<2>) -> Self {
        let mut out = self.clone();
        out.student_logits = Some(student);
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

    /// The same input restricted to the batch rows `rows` (logits, targets, the mask, guides,
    /// every feature tap, and each extra that follows a selection: dataset indices, the
    /// sparse teacher, the lm-heads), e.g. the samples a curriculum admits. A view layout does
    /// not survive a selection: the result has none.
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
            mask: self
                .mask
                .as_ref()
                .map(|m| m.clone().int().select(0, rows.clone()).equal_elem(1)),
            student_features: self
                .student_features
                .iter()
                .map(|(k, f)| (k.clone(), pick(f)))
                .collect(),
            teacher_features: self
                .teacher_features
                .iter()
                .map(|(k, f)| (k.clone(), pick(f)))
                .collect(),
            extras: self
                .extras
                .iter()
                .filter_map(|(k, e)| e.select_rows(&rows).map(|e| (*k, e)))
                .collect(),
            guides: self.guides.iter().map(pick2).collect(),
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
        self.student_features.values().next().map(Feature::rows)
    }

    /// Whether the input carries the teacher's logits.
    pub fn has_teacher_logits(&self) -> bool {
        self.teacher_logits.is_some()
    }

    /// The training progress, if set.
    pub fn get_progress(&self) -> Option<Progress> {
        self.progress
    }

    /// This input as read by the objective `objective` (its [`NAME`](crate::Loss::name)):
    /// every accessor of [`Checked`] validates what it returns and names `objective` in its
    /// errors.
    #[doc(alias(
        "logits",
        "checked_targets",
        "feature_pair",
        "require_progress",
        "get_views",
        "checked_indices"
    ))]
    pub fn of<'a>(&'a self, objective: &'a str) -> Checked<'a> {
        Checked::new(self, objective)
    }
}
