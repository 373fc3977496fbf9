//! Curriculum distillation: values that follow training progress, and a learned temperature.
//!
//! A [`Schedule`] turns a [`Progress`](crate::Progress) into a number. Objectives use them for
//! warm-ups (DKD), and [`LossExt::weighted_by`](crate::LossExt::weighted_by) weights any
//! objective by one. [`Ctkd`] learns a global temperature adversarially. [`Paced`] admits
//! harder samples and [`TopKMask`] more non-target classes as training goes on.

mod ctkd;
mod difficulty;

pub use crate::Schedule;
pub use ctkd::*;
pub use difficulty::*;
