//! Curriculum distillation: values that follow training progress, and a learned temperature.
//!
//! A [`Schedule`] turns a [`Progress`](crate::Progress) into a number. Objectives use them for
//! warm-ups (DKD), and [`LossExt::weighted_by`] weights any
//! objective by one. [`Ctkd`] learns a global temperature adversarially. [`Paced`] admits
//! harder samples and [`TopKMask`] more non-target classes as training goes on.

pub use crate::Schedule;

use crate::LossExt;

crate::family! {
    files: ctkd, difficulty;
    "Ctkd" => "Li et al., AAAI 2023, *Curriculum Temperature for KD*", "ctkd.md";
    "Schedule" => "warm-ups and ramps for any weight", "curriculum.md";
    "Paced" => "a difficulty curriculum over samples (easy first)", "curriculum.md#difficulty-curricula",
        example: |_| Ok(PacedConfig::new().init(crate::CrossEntropyConfig::new().init()?)?.boxed());
    "TopKMask" => "a curriculum over classes (DeepKD's dynamic top-k mask)", "curriculum.md#difficulty-curricula",
        example: |_| {
            let ce = crate::CrossEntropyConfig::new().init()?;
            Ok(TopKMaskConfig::new().with_start(0.5).init(ce)?.boxed())
        };
}
