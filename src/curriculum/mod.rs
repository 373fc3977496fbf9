//! Curriculum distillation: values that follow training progress, and a learned temperature.
//!
//! A [`Schedule`] turns a [`Progress`](crate::Progress) into a number. Objectives use them for
//! warm-ups (DKD), and [`LossExt::weighted_by`](crate::LossExt::weighted_by) weights any
//! objective by one. [`Ctkd`] learns a global temperature adversarially. [`Paced`] admits
//! harder samples and [`TopKMask`] more non-target classes as training goes on.

pub use crate::Schedule;

crate::family! {
    files: ctkd, difficulty;
    "Ctkd" => "Li et al., AAAI 2023, *Curriculum Temperature for KD*", "ctkd.md";
    "Schedule" => "warm-ups and ramps for any weight", "curriculum.md";
    "Paced", "TopKMask" => "difficulty curricula over samples and classes (DeepKD's top-k mask)", "curriculum.md#difficulty-curricula";
}
