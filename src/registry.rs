//! The crate's registry of objectives: one [`Descriptor`] per objective, declared in the
//! objective's own file; each family lists its files' descriptors, and [`objectives`]
//! (crate::objectives) joins the families. Every list of objectives reads it: the method tables
//! of the README and the docs, and the test suites that run every objective.

use burn::tensor::Device;

use crate::error::DistillError;
use crate::loss::Loss;

/// What the crate knows of one objective: the items it documents (objective types, or a
/// constructor), the paper or reference it follows, its page under `docs/`, and an instance to
/// run.
#[derive(Debug, Clone, Copy)]
pub struct Descriptor {
    /// The public module the items live in, e.g. `burn_distill::logit`.
    pub module: &'static str,
    /// The items, e.g. `["Kd"]` or `["Ft", "Paraphraser"]`.
    pub items: &'static [&'static str],
    /// The paper (or reference implementation) it follows.
    pub paper: &'static str,
    /// Its page in `docs/` (with an anchor where the page covers several methods).
    pub doc: &'static str,
    /// An instance that reads [`example_input`](crate::example_input) (for objectives whose
    /// construction involves no random draw): the backend and property suites run every one.
    pub example: Option<Example>,
}

/// Builds a descriptor's example objective on a device.
pub type Example = fn(&Device) -> Result<Box<dyn Loss>, DistillError>;
