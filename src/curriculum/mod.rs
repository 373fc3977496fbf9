//! Curriculum distillation: values that follow training progress.
//!
//! A [`Schedule`] turns a [`Progress`](crate::Progress) into a number. Objectives use them for
//! warm-ups (DKD), and [`LossExt::weighted_by`](crate::LossExt::weighted_by) weights any
//! objective by one.

mod schedule;

pub use schedule::*;
