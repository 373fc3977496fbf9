//! [`Checked`]: the input as one objective reads it, every read validated.

use burn::tensor::{Bool, DType, FloatDType, Int, Tensor};

use super::outputs::frozen;
use super::{DistillInput, Feature, Progress, Views};
use crate::error::DistillError;
use crate::loss::LossOutput;

/// A [`DistillInput`] read on behalf of one objective ([`DistillInput::of`]): each accessor
/// checks what it returns (presence, shapes, ranges) and names the objective in its error. The
/// teacher's tensors come back detached unless the input
/// [attaches](DistillInput::attach_teacher) them, and in the student's float type (a teacher
/// in f32 beside an f64 student is converted; half-precision logits are read in f32).
///
/// ```
/// # use burn::tensor::{Device, Tensor};
/// use burn_distill::{DistillError, DistillInput};
/// # let dev = Device::flex();
/// let input = DistillInput::new(Tensor::zeros([2, 3], &dev), Tensor::zeros([2, 4], &dev));
/// let err = input.of("kd").logits().unwrap_err();
/// assert!(matches!(err, DistillError::ClassMismatch { ref objective, .. } if objective == "kd"));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Checked<'a> {
    input: &'a DistillInput,
    objective: &'a str,
    params: Option<DType>,
    bound: Option<f64>,
    masks: bool,
}

impl<'a> Checked<'a> {
    pub(super) fn new(input: &'a DistillInput, objective: &'a str) -> Self {
        Self {
            input,
            objective,
            params: None,
            bound: None,
            masks: false,
        }
    }

    /// The same reader for an objective that honours the input's mask ([`mask`](Self::mask)):
    /// without it, the logits and taps of an input that carries a mask are refused with
    /// [`DistillError::UnsupportedMask`], since every row would count.
    pub fn masked(self) -> Self {
        Self {
            masks: true,
            ..self
        }
    }

    /// [`DistillError::UnsupportedMask`] when the input carries a mask the objective does not
    /// honour.
    fn honours_mask(&self) -> Result<(), DistillError> {
        match self.input.mask.is_some() && !self.masks {
            true => Err(DistillError::UnsupportedMask {
                objective: self.objective.into(),
            }),
            false => Ok(()),
        }
    }

    /// The same reader for an objective that promises finite values and gradients for inputs
    /// of magnitude up to `bound` (its [`Descriptor::bound`](crate::Descriptor::bound)): the
    /// logits and taps it returns are checked against it, and a finite value beyond it is a
    /// [`DistillError::OutOfRange`] (one pass and one read-back of each tensor's largest
    /// magnitude; none for a bound its float type cannot exceed). Non-finite values pass, as
    /// the non-finite policy says.
    pub fn within(self, bound: f64) -> Self {
        Self {
            bound: Some(bound),
            ..self
        }
    }

    /// Checks `t` against the bound, if any (see [`within`](Self::within)).
    fn in_bound<const D: usize>(&self, t: &Tensor<D>, what: &str) -> Result<(), DistillError> {
        match self.bound {
            Some(bound) => self.beyond(bound, t, what),
            None => Ok(()),
        }
    }

    /// The objective's output `out`, checked against `bound` after the fact: what the
    /// objectives over whole logit planes (KD, DKD, the token divergences) use instead of
    /// [`within`](Self::within), whose read of every input would cost them a pass over each
    /// plane. A finite total is returned as it is (one read-back of the total); a non-finite
    /// one is a [`DistillError::OutOfRange`] when one of `inputs` (name, tensor) holds a finite
    /// value beyond `bound`, else it propagates (non-finite input, the non-finite policy).
    pub fn settle<const D: usize>(
        &self,
        bound: f64,
        out: LossOutput,
        inputs: &[(&str, &Tensor<D>)],
    ) -> Result<LossOutput, DistillError> {
        if out.value().is_finite() {
            return Ok(out);
        }
        for (what, t) in inputs {
            self.beyond(bound, t, what)?;
        }
        Ok(out)
    }

    /// [`settle`](Self::settle) for an objective whose inputs are the student's and the
    /// teacher's logits.
    pub fn settle_logits(
        &self,
        bound: f64,
        out: LossOutput,
        student: &Tensor<2>,
        teacher: &Tensor<2>,
    ) -> Result<LossOutput, DistillError> {
        let logits = [
            ("the student logits", student),
            ("the teacher logits", teacher),
        ];
        self.settle(bound, out, &logits)
    }

    /// A [`DistillError::OutOfRange`] when `t` holds a finite value beyond `bound`.
    fn beyond<const D: usize>(
        &self,
        bound: f64,
        t: &Tensor<D>,
        what: &str,
    ) -> Result<(), DistillError> {
        let widest = match t.dtype() {
            DType::F64 => f64::MAX,
            DType::F16 => 65504.0,
            _ => f64::from(f32::MAX),
        };
        // a bound the float type cannot exceed, or nothing to read (the callers' emptiness
        // checks name that)
        if bound >= widest || t.shape().num_elements() == 0 {
            return Ok(());
        }
        // a non-finite largest magnitude means NaN or ±∞ in `t`, which propagate (the
        // non-finite policy)
        let magnitude = t.clone().detach().max_abs().into_scalar::<f64>();
        match magnitude.is_finite() && magnitude > bound {
            true => Err(DistillError::OutOfRange {
                objective: self.objective.into(),
                what: what.into(),
                magnitude,
                bound,
            }),
            false => Ok(()),
        }
    }

    /// The same reader for an objective with learnable parameters (`module`'s): the taps it
    /// returns are in the parameters' float type — widened when they are narrower (f16, bf16 →
    /// f32 → f64: exact), a [`DistillError::DtypeMismatch`] when they are wider.
    pub fn for_module<M: burn::module::Module>(self, module: &M) -> Self {
        struct First(Option<DType>);
        impl burn::module::ModuleVisitor for First {
            fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
                self.0.get_or_insert_with(|| param.val().dtype());
            }
        }
        let mut first = First(None);
        module.visit(&mut first);
        Self {
            params: first.0,
            ..self
        }
    }

    /// `t` in the parameters' float type, if there are parameters (see [`for_module`](Self::for_module)).
    fn fit<const D: usize>(&self, t: Tensor<D>, what: &str) -> Result<Tensor<D>, DistillError> {
        let Some(params) = self.params else {
            return Ok(t);
        };
        let width = |d: DType| match d {
            DType::F64 => 3,
            DType::F32 | DType::Flex32 => 2,
            DType::F16 | DType::BF16 => 1,
            _ => 0,
        };
        let d = t.dtype();
        match d == params || width(d) < width(params) {
            true => Ok(like(t, params)),
            false => Err(DistillError::DtypeMismatch {
                objective: self.objective.into(),
                what: what.into(),
                expected: format!("{params:?}"),
                actual: format!("{d:?}"),
            }),
        }
    }

    /// [`fit`](Self::fit) for a tap.
    fn fit_feature(&self, f: Feature, what: &str) -> Result<Feature, DistillError> {
        Ok(match f {
            Feature::Map(t) => Feature::Map(self.fit(t, what)?),
            Feature::Embedding(t) => Feature::Embedding(self.fit(t, what)?),
        })
    }

    /// The objective reading.
    pub fn objective(&self) -> &'a str {
        self.objective
    }

    /// The input itself.
    pub fn input(&self) -> &'a DistillInput {
        self.input
    }

    fn missing(&self, what: &str) -> DistillError {
        DistillError::MissingInput {
            objective: self.objective.into(),
            what: what.into(),
        }
    }

    /// A shape error naming this objective.
    pub(crate) fn shape(
        &self,
        what: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    ) -> DistillError {
        DistillError::ShapeMismatch {
            objective: self.objective.into(),
            what,
            expected,
            actual,
        }
    }

    fn empty(&self, what: String) -> DistillError {
        DistillError::EmptyBatch {
            objective: self.objective.into(),
            what,
        }
    }

    fn teacher<T: Clone + Tracked>(&self, t: &T, detach: impl Fn(T) -> T) -> T {
        if !self.input.teacher_attached && t.orphaned_graph() {
            warn_tracked_teacher();
        }
        match self.input.teacher_attached {
            true => t.clone(),
            false => detach(t.clone()),
        }
    }

    /// The student's logits after checking that they are `[N, C]` with `N > 0`.
    pub fn student_logits(&self) -> Result<Tensor<2>, DistillError> {
        self.honours_mask()?;
        let s = self
            .input
            .student_logits
            .as_ref()
            .ok_or_else(|| self.missing("student logits"))?;
        if s.dims()[0] == 0 {
            return Err(self.empty("student logits".into()));
        }
        if s.dims()[1] == 0 {
            return Err(self.empty("student logits (zero classes)".into()));
        }
        self.in_bound(s, "the student logits")?;
        match self.params {
            Some(_) => self.fit(s.clone(), "the student logits"),
            None => Ok(upcast(s.clone())),
        }
    }

    /// The student's `[N, Vs]` and teacher's `[N, Vt]` logits, of any two vocabulary sizes
    /// (`Vt > 0`), as they are given (the teacher detached unless attached).
    pub fn logits_of_any_vocabulary(&self) -> Result<(Tensor<2>, Tensor<2>), DistillError> {
        self.logit_pair(false)
    }

    /// The student's and teacher's logits after checking that both are `[N, C]` with the same
    /// `N > 0` and `C`.
    pub fn logits(&self) -> Result<(Tensor<2>, Tensor<2>), DistillError> {
        let (s, t) = self.logit_pair(true)?;
        let [nt, ct] = t.dims();
        // guides stand in for the teacher (DGKD) or are cut with it (TopKMask)
        for (i, guide) in self.input.guides.iter().enumerate() {
            if guide.dims() != [nt, ct] {
                return Err(self.shape(format!("guide {i}"), vec![nt, ct], guide.dims().to_vec()));
            }
        }
        Ok((s, t))
    }

    /// Both logits with the same rows (and, with `same_vocabulary`, the same classes; the
    /// class count is checked first), the teacher detached unless attached and in the
    /// student's float type.
    fn logit_pair(&self, same_vocabulary: bool) -> Result<(Tensor<2>, Tensor<2>), DistillError> {
        let s = self.student_logits()?;
        let t = self
            .input
            .teacher_logits
            .as_ref()
            .ok_or_else(|| self.missing("teacher logits"))?;
        let ([ns, cs], [nt, ct]) = (s.dims(), t.dims());
        if same_vocabulary && cs != ct {
            return Err(DistillError::ClassMismatch {
                objective: self.objective.into(),
                student: cs,
                teacher: ct,
            });
        }
        if ns != nt || ct == 0 {
            return Err(self.shape("teacher logits".into(), vec![ns, cs], vec![nt, ct]));
        }
        self.in_bound(t, "the teacher logits")?;
        let t = like(upcast(self.teacher(t, frozen)), s.dtype());
        Ok((s, t))
    }

    /// The batch size, after checking the batch is not empty and that every part with one row
    /// per sample (logits, targets, mask, guides, feature taps) has as many rows: what an
    /// objective that selects rows ([`Paced`](crate::curriculum::Paced)) needs.
    pub fn batch(&self) -> Result<usize, DistillError> {
        let input = self.input;
        let n = input
            .batch_size()
            .ok_or_else(|| self.missing("logits or a feature tap"))?;
        if n == 0 {
            return Err(DistillError::EmptyBatch {
                objective: self.objective.into(),
                what: "the batch".into(),
            });
        }
        let logits = [
            ("student logits", &input.student_logits),
            ("teacher logits", &input.teacher_logits),
        ];
        let mut rows: Vec<(String, usize)> = logits
            .iter()
            .filter_map(|(what, t)| t.as_ref().map(|t| (what.to_string(), t.dims()[0])))
            .collect();
        rows.extend(
            input
                .targets
                .as_ref()
                .map(|y| ("targets".into(), y.dims()[0])),
        );
        rows.extend(input.mask.as_ref().map(|m| ("mask".into(), m.dims()[0])));
        rows.extend(
            input
                .guides
                .iter()
                .enumerate()
                .map(|(i, g)| (format!("guide {i}"), g.dims()[0])),
        );
        for (side, taps) in [
            ("student", &input.student_features),
            ("teacher", &input.teacher_features),
        ] {
            rows.extend(
                taps.iter()
                    .map(|(name, f)| (format!("{side} tap `{name}`"), f.rows())),
            );
        }
        match rows.into_iter().find(|(_, r)| *r != n) {
            Some((what, r)) => Err(self.shape(format!("rows of the {what}"), vec![n], vec![r])),
            None => Ok(n),
        }
    }

    /// The targets after checking there are `batch` of them, each in `0..classes`.
    ///
    /// The range check reads the targets' minimum and maximum back from the device once per
    /// input, however many objectives ask.
    pub fn targets(&self, batch: usize, classes: usize) -> Result<Tensor<1, Int>, DistillError> {
        let y = self
            .input
            .targets
            .as_ref()
            .ok_or_else(|| self.missing("targets (DistillInput::targets)"))?;
        let n = y.dims()[0];
        if n != batch {
            return Err(self.shape("targets".into(), vec![batch], vec![n]));
        }
        let range = *self.input.target_range.get_or_init(|| min_max(y));
        match outside(range, classes) {
            Some(target) => Err(DistillError::TargetOutOfRange {
                objective: self.objective.into(),
                target,
                classes,
            }),
            None => Ok(y.clone()),
        }
    }

    /// The targets, checked as [`targets`](Self::targets), when the input carries them.
    pub fn targets_if_any(
        &self,
        batch: usize,
        classes: usize,
    ) -> Result<Option<Tensor<1, Int>>, DistillError> {
        match self.input.targets {
            Some(_) => self.targets(batch, classes).map(Some),
            None => Ok(None),
        }
    }

    /// Per-row labels `[batch]` of any non-negative value (the targets, for objectives that
    /// group rows by label rather than index classes).
    pub fn labels(&self, batch: usize) -> Result<Tensor<1, Int>, DistillError> {
        self.targets(batch, i64::MAX as usize)
    }

    /// Which of the `batch` rows count ([`DistillInput::mask`]), after checking its length;
    /// `None`: every row counts.
    pub fn mask(&self, batch: usize) -> Result<Option<Tensor<1, Bool>>, DistillError> {
        match &self.input.mask {
            Some(m) if m.dims()[0] != batch => Err(self.shape(
                "mask (DistillInput::mask or labels)".into(),
                vec![batch],
                m.dims().to_vec(),
            )),
            m => Ok(m.clone()),
        }
    }

    /// The sparse teacher ([`DistillInput::sparse_teacher`]) after checking that its ids and
    /// log-probabilities are both `[batch, k]` with `k ≥ 1` and every id in `0..vocab`; the
    /// log-probabilities detached unless the teacher is attached.
    pub fn sparse_teacher(
        &self,
        batch: usize,
        vocab: usize,
    ) -> Result<(Tensor<2, Int>, Tensor<2>), DistillError> {
        let super::SparseTeacher { ids, log_probs: lp } =
            self.extra::<super::SparseTeacher>("a sparse teacher (sparse_teacher)")?;
        let [n, k] = ids.dims();
        if n != batch || k == 0 {
            return Err(self.shape(
                "sparse teacher ids".into(),
                vec![batch, k.max(1)],
                ids.dims().to_vec(),
            ));
        }
        if lp.dims() != ids.dims() {
            return Err(self.shape(
                "sparse teacher log-probabilities".into(),
                ids.dims().to_vec(),
                lp.dims().to_vec(),
            ));
        }
        if let Some(index) = outside(min_max(&ids.clone().flatten(0, 1)), vocab) {
            return Err(DistillError::TargetOutOfRange {
                objective: self.objective.into(),
                target: index,
                classes: vocab,
            });
        }
        let dtype = self.student_logits()?.dtype();
        Ok((ids.clone(), like(upcast(self.teacher(lp, frozen)), dtype)))
    }

    /// The extra of type `E` ([`DistillInput::with`]), or [`DistillError::MissingInput`]
    /// naming `what` it is.
    pub fn extra<E: super::Extra>(&self, what: &str) -> Result<&'a E, DistillError> {
        self.input
            .extra::<E>()
            .ok_or_else(|| self.missing(&format!("{what} (DistillInput::with)")))
    }

    /// The value of `schedule` at this input's progress; a schedule that needs progress and
    /// finds none is [`DistillError::MissingInput`] saying `why` it is needed.
    pub fn scheduled(
        &self,
        schedule: &crate::schedule::Schedule,
        why: &str,
    ) -> Result<f64, DistillError> {
        let progress = match schedule.needs_progress() {
            true => Some(self.progress(why)?),
            false => None,
        };
        schedule.value(progress)
    }

    /// The training progress, or [`DistillError::MissingInput`] saying `why` it is needed.
    pub fn progress(&self, why: &str) -> Result<Progress, DistillError> {
        self.input.progress.ok_or_else(|| {
            self.missing(&format!("training progress (DistillInput::progress) {why}"))
        })
    }

    /// The view layout, if set; a layout that does not cover the batch is an error.
    pub fn views(&self) -> Result<Option<&'a Views>, DistillError> {
        match (self.input.extra::<Views>(), self.input.batch_size()) {
            (Some(v), Some(n)) if v.rows() != n => Err(DistillError::InvalidViews {
                reason: format!(
                    "{}: the layout has {} rows, the batch {n}",
                    self.objective,
                    v.rows()
                ),
            }),
            (v, _) => Ok(v),
        }
    }

    /// The dataset indices after checking there are `batch` of them, each in `0..size`.
    pub fn indices(&self, batch: usize, size: usize) -> Result<Tensor<1, Int>, DistillError> {
        let super::DatasetIndices(idx) =
            self.extra::<super::DatasetIndices>("dataset indices (indices)")?;
        if idx.dims()[0] != batch {
            return Err(self.shape("dataset indices".into(), vec![batch], idx.dims().to_vec()));
        }
        match outside(min_max(idx), size) {
            Some(index) => Err(DistillError::IndexOutOfRange {
                objective: self.objective.into(),
                index: index.into(),
                size,
            }),
            None => Ok(idx.clone()),
        }
    }

    /// The feature tap `name`, student then teacher.
    pub fn feature(&self, name: &str) -> Result<(Feature, Feature), DistillError> {
        self.mapped(name, name)
    }

    /// The student's tap `student` and the teacher's tap `teacher` (a layer mapping: student
    /// layer `i` distilled from teacher layer `j`).
    pub fn mapped(&self, student: &str, teacher: &str) -> Result<(Feature, Feature), DistillError> {
        self.honours_mask()?;
        let missing = |name: &str| DistillError::MissingFeature {
            objective: self.objective.into(),
            name: name.into(),
        };
        let s = self
            .input
            .student_features
            .get(student)
            .ok_or_else(|| missing(student))?;
        let t = self
            .input
            .teacher_features
            .get(teacher)
            .ok_or_else(|| missing(teacher))?;
        let t = match (s, self.teacher(t, Feature::detach)) {
            (Feature::Map(s), Feature::Map(t)) => Feature::Map(like(t, s.dtype())),
            (Feature::Embedding(s), Feature::Embedding(t)) => {
                Feature::Embedding(like(t, s.dtype()))
            }
            (_, t) => t,
        };
        for (f, what) in [
            (s, format!("the student tap `{student}`")),
            (&t, format!("the teacher tap `{teacher}`")),
        ] {
            match f {
                Feature::Map(x) => self.in_bound(x, &what)?,
                Feature::Embedding(x) => self.in_bound(x, &what)?,
            }
        }
        let s = self.fit_feature(s.clone(), &format!("the student tap `{student}`"))?;
        let t = self.fit_feature(t, &format!("the teacher tap `{teacher}`"))?;
        Ok((s, t))
    }

    /// The student's and teacher's maps of tap `name`, after checking both are `[N, C, H, W]`
    /// with the same `N > 0` and non-empty channels and spatial sizes.
    pub fn maps(&self, name: &str) -> Result<(Tensor<4>, Tensor<4>), DistillError> {
        let (s, t) = self.feature(name)?;
        let map = |f: Feature, who: &str| match f {
            Feature::Map(t) => Ok(t),
            Feature::Embedding(t) => Err(self.shape(
                format!("{who} tap `{name}` (a map [N, C, H, W] is needed)"),
                vec![t.dims()[0], 0, 0, 0],
                t.dims().to_vec(),
            )),
        };
        let (s, t) = (map(s, "student")?, map(t, "teacher")?);
        let (ds, dt) = (s.dims(), t.dims());
        if ds[0] != dt[0] {
            return Err(self.shape(
                format!("teacher tap `{name}` batch"),
                vec![ds[0]],
                vec![dt[0]],
            ));
        }
        for (who, d) in [("student", ds), ("teacher", dt)] {
            if d.contains(&0) {
                return Err(self.empty(format!("{who} tap `{name}` of shape {d:?}")));
            }
        }
        // attention, Gram and affinity maps of half-precision maps overflow f16 at magnitudes
        // of 1e2: maps are read in f32, as logits and rows are (a learnable objective reads
        // them in its parameters' type instead)
        match self.params {
            Some(_) => Ok((s, t)),
            None => Ok((upcast(s), upcast(t))),
        }
    }

    /// The student's and teacher's tap `name`, one row per sample (a map is flattened), after
    /// checking that they have the same number of rows, at least `min` of them, and a non-zero
    /// width. Half-precision rows are read in f32 (as the logits are).
    pub fn rows(&self, name: &str, min: usize) -> Result<(Tensor<2>, Tensor<2>), DistillError> {
        let (s, t) = self.feature(name)?;
        let (ns, nt) = (s.rows(), t.rows());
        if ns != nt {
            return Err(self.shape(format!("teacher tap `{name}` rows"), vec![ns], vec![nt]));
        }
        if ns < min {
            return Err(DistillError::BatchTooSmall {
                objective: self.objective.into(),
                min,
                got: ns,
            });
        }
        // distances, angles and Gram matrices of half-precision rows lose their small terms
        // (an eps of 1e-12 squares to 0 in f16): relations are computed in f32
        // (a learnable objective computes in its parameters' type instead)
        let up = |z: Tensor<2>| match self.params {
            Some(_) => z,
            None => upcast(z),
        };
        let (s, t) = (up(s.flatten()), up(t.flatten()));
        for (who, d) in [("student", s.dims()), ("teacher", t.dims())] {
            if d[1] == 0 {
                return Err(self.empty(format!("{who} tap `{name}` has width 0")));
            }
        }
        Ok((s, t))
    }

    /// [`rows`](Self::rows) of tap `name` that must also have one width on both sides (the
    /// student's feature already projected to the teacher's).
    pub fn paired_rows(&self, name: &str) -> Result<(Tensor<2>, Tensor<2>), DistillError> {
        let (s, t) = self.rows(name, 1)?;
        if s.dims() != t.dims() {
            return Err(self.shape(
                format!("teacher tap `{name}` (flattened; one width on both sides)"),
                s.dims().to_vec(),
                t.dims().to_vec(),
            ));
        }
        Ok((s, t))
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

/// `t` in `dtype` (the student's: a teacher in another float type is converted, as mixed
/// precision does, instead of meeting the student in a burn op that panics on the mismatch).
fn like<const D: usize>(t: Tensor<D>, dtype: DType) -> Tensor<D> {
    match t.dtype() == dtype {
        true => t,
        false => t.cast(FloatDType::from(dtype)),
    }
}

/// Half-precision logits in f32: losses over them (sums of `T²`-scaled log-ratios) overflow
/// f16's 65504 long before the logits do, so the logit objectives compute in f32 and return
/// f32 losses, as mixed-precision training does; gradients flow back to the half inputs.
pub(crate) fn upcast<const D: usize>(z: Tensor<D>) -> Tensor<D> {
    match z.dtype() {
        DType::F16 | DType::BF16 => z.cast(FloatDType::F32),
        _ => z,
    }
}

/// What can tell whether it is the output of tracked operations: a teacher forward pass run
/// with autodiff on (not a leaf, not a constant).
trait Tracked {
    fn orphaned_graph(&self) -> bool;
}

impl<const D: usize> Tracked for Tensor<D> {
    fn orphaned_graph(&self) -> bool {
        self.is_tracked() && !self.is_require_grad()
    }
}

impl Tracked for Feature {
    fn orphaned_graph(&self) -> bool {
        match self {
            Feature::Map(t) => t.orphaned_graph(),
            Feature::Embedding(t) => t.orphaned_graph(),
        }
    }
}

/// Once per process: the teacher's outputs came from a tracked forward pass. The objectives
/// detach them, but burn keeps the graph that made them for as long as the caller holds them,
/// and a training loop that does this every step slows down step after step.
fn warn_tracked_teacher() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        eprintln!(
            "burn-distill: warning: the teacher's outputs were computed with autodiff tracking \
             (a forward pass of a module on an autodiff device). The objectives detach them, but \
             burn keeps their graph alive while you hold them, and steps get slower: run the \
             teacher with `teacher.valid()` (on the inner device) or `.no_grad()`, or call \
             `DistillInput::attach_teacher()` if the teacher is meant to learn. See docs/kd.md."
        );
    });
}
