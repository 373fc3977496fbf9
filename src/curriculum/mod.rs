//! Curriculum distillation: values that follow training progress, and a learned temperature.
//!
//! A [`Schedule`] turns a [`Progress`](crate::Progress) into a number. Objectives use them for
//! warm-ups (DKD), and [`LossExt::weighted_by`](crate::LossExt::weighted_by) weights any
//! objective by one. [`Ctkd`] learns a global temperature adversarially. [`Paced`] admits
//! harder samples and [`TopKMask`] more non-target classes as training goes on.

pub use crate::schedule::Schedule;

use crate::registry::Descriptor;

mod ctkd;
mod difficulty;

pub use ctkd::{Ctkd, CtkdConfig};
pub use difficulty::{Difficulty, Paced, PacedConfig, TopKMask, TopKMaskConfig};

/// The catalog rows of the core items this family re-exports.
const OWN: &[Descriptor] = &[Descriptor {
    module: MODULE,
    items: &["Schedule"],
    paper: "warm-ups and ramps for any weight",
    doc: "curriculum.md",
    bound: None,
    example: None,
    learnable: None,
    twins: None,
    method: None,
    golden: crate::registry::golden![],
}];

/// This family's module path, as its objectives' descriptors name it.
pub(crate) const MODULE: &str = module_path!();

/// This family's descriptors, file by file, in the order of the method tables.
pub(crate) const OBJECTIVES: &[&[Descriptor]] = &[ctkd::DESCRIPTORS, OWN, difficulty::DESCRIPTORS];
