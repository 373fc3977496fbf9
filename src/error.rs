//! Every way an input or a configuration can be wrong.

/// An error from building or evaluating a distillation objective.
///
/// Objectives validate their configuration in `init` and their inputs in `forward`, so a bad
/// shape, a target out of range or a non-positive temperature comes back as one of these
/// variants instead of a panic inside burn or a silent `NaN`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DistillError {
    /// Two tensors that must agree in shape do not.
    #[error("{objective}: shape mismatch for {what}: expected {expected:?}, got {actual:?}")]
    ShapeMismatch {
        /// The objective that read them.
        objective: String,
        /// What was compared, e.g. `"teacher logits"`.
        what: String,
        /// The shape required.
        expected: Vec<usize>,
        /// The shape given.
        actual: Vec<usize>,
    },
    /// Student and teacher logits have different class counts.
    #[error(
        "{objective}: class-count mismatch: the student has {student} classes, the teacher {teacher}"
    )]
    ClassMismatch {
        /// The objective that read them.
        objective: String,
        /// Classes in the student's logits.
        student: usize,
        /// Classes in the teacher's logits.
        teacher: usize,
    },
    /// A target index is negative or not below the class count.
    #[error("{objective}: target {target} is out of range for {classes} classes")]
    TargetOutOfRange {
        /// The objective that read them.
        objective: String,
        /// The offending target value (the smallest or largest in the batch).
        target: i64,
        /// The number of classes.
        classes: usize,
    },
    /// A dataset index is negative or not below the data set's size.
    #[error("{objective}: dataset index {index} is out of range for {size} samples")]
    IndexOutOfRange {
        /// The objective that read them.
        objective: String,
        /// The offending index as given (the smallest or largest in the batch): an `i64` of a
        /// tensor or a `usize` of a slice, both of which `i128` holds.
        index: i128,
        /// The data set's size.
        size: usize,
    },
    /// A temperature is outside `[1e-3, 1e3]`
    /// (zero, negative, infinite, NaN, or too extreme for f32 arithmetic).
    #[error("temperature must be in [0.001, 1000], got {0}")]
    InvalidTemperature(f64),
    /// The batch has no rows.
    #[error("{objective}: empty input: {what} is empty")]
    EmptyBatch {
        /// The objective that read it.
        objective: String,
        /// The tensor that was empty.
        what: String,
    },
    /// The objective needs an input the [`DistillInput`](crate::DistillInput) does not carry.
    #[error("{objective} needs {what}, which the input does not carry")]
    MissingInput {
        /// The objective that asked.
        objective: String,
        /// What it needed, e.g. `"targets"`.
        what: String,
    },
    /// The objective names a feature tap the input does not have.
    #[error("{objective} needs the feature tap `{name}`, which the input does not have")]
    MissingFeature {
        /// The objective that asked.
        objective: String,
        /// The name of the missing tap.
        name: String,
    },
    /// A view layout (which rows are views of which image) is inconsistent.
    #[error("invalid view layout: {reason}")]
    InvalidViews {
        /// What is wrong.
        reason: String,
    },
    /// A batch-level objective got too few rows to relate.
    #[error("{objective} relates the samples of a batch and needs at least {min} rows, got {got}")]
    BatchTooSmall {
        /// The objective that asked.
        objective: String,
        /// The minimum it needs.
        min: usize,
        /// The rows it got.
        got: usize,
    },
    /// The objective needs more classes than the logits have.
    #[error("{objective} needs at least {min} classes, got {got}")]
    TooFewClasses {
        /// The objective that asked.
        objective: String,
        /// The minimum it needs.
        min: usize,
        /// The class count it got.
        got: usize,
    },
    /// A tensor is in a wider float type than the parameters of the learnable objective that
    /// reads it (narrower ones are widened, exactly).
    #[error(
        "{objective}: {what} is {actual}, but its parameters are {expected}: pass {expected} or a narrower float type (widened exactly)"
    )]
    DtypeMismatch {
        /// The objective that read it.
        objective: String,
        /// The tensor.
        what: String,
        /// The parameters' float type.
        expected: String,
        /// The tensor's.
        actual: String,
    },
    /// The input carries a mask (labels with an ignore index, or [`DistillInput::mask`](crate::DistillInput::mask))
    /// that the objective does not honour: every row would count, the ignored ones included.
    #[error(
        "{objective} does not honour a mask (labels with an ignore index, or DistillInput::mask): every row would count. Keep the rows that count first (DistillInput::select_rows), or use an objective that masks (CrossEntropy, the token objectives)"
    )]
    UnsupportedMask {
        /// The objective that read the input.
        objective: String,
    },
    /// An input holds a finite value beyond the magnitude its objective promises finite values
    /// and gradients for (the objective's [`Descriptor::bound`](crate::Descriptor::bound),
    /// stated on its page): the loss or its gradient would overflow.
    #[error(
        "{objective}: {what} holds a value of magnitude {magnitude:e}, beyond the {bound:e} this objective is finite for"
    )]
    OutOfRange {
        /// The objective that read it.
        objective: String,
        /// The tensor, e.g. `"the student logits"`.
        what: String,
        /// The largest magnitude in it.
        magnitude: f64,
        /// The objective's bound.
        bound: f64,
    },
    /// A value computed during training is NaN or infinite (a diverged model, say).
    #[error("{what} is not finite")]
    NonFinite {
        /// What was computed.
        what: String,
    },
    /// A model given to the library has nothing to train.
    #[error("{what} has no trainable parameter")]
    NothingToTrain {
        /// The model, e.g. `"teacher"`.
        what: String,
    },
    /// A saved record does not fit the model it is loaded into.
    #[error("cannot load the {what} record: {reason}")]
    InvalidRecord {
        /// What was loaded.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// A file could not be written (a missing directory, no permission, a full disk).
    #[error("cannot save the {what} to {path}: {reason}")]
    Save {
        /// What was being saved.
        what: String,
        /// The path as given.
        path: String,
        /// What the system said.
        reason: String,
    },
    /// A loss term asked for (a metric, a task term) that the loss does not have.
    #[error("the loss has no term `{term}`; its terms are {terms:?}")]
    UnknownTerm {
        /// The term asked for.
        term: String,
        /// The terms the loss has.
        terms: Vec<String>,
    },
    /// A teacher cache ([`cache`](crate::cache)) is missing, unfinished, truncated, corrupt or
    /// not the one expected, or cannot be written.
    #[error("teacher cache {path}: {reason}")]
    Cache {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A loss specification ([`spec`](crate::spec), JSON or TOML) cannot be read or built.
    #[error("loss spec, {at}: {reason}")]
    InvalidSpec {
        /// Where: the file or format, or the term, e.g. `loss[1] (dkd)`.
        at: String,
        /// What is wrong.
        reason: String,
    },
    /// A configuration value is out of its valid range.
    #[error("invalid config for {objective}: {field} = {value} ({reason})")]
    InvalidConfig {
        /// The objective (or combinator) being configured.
        objective: String,
        /// The field at fault.
        field: String,
        /// The value given, as text.
        value: String,
        /// The rule it breaks.
        reason: String,
    },
}

impl DistillError {
    /// An [`InvalidConfig`](DistillError::InvalidConfig) error.
    pub(crate) fn config(
        objective: &str,
        field: &str,
        value: impl std::fmt::Display,
        reason: &str,
    ) -> Self {
        Self::InvalidConfig {
            objective: objective.into(),
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}
