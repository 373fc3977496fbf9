//! Objectives on logits: the task loss ([`CrossEntropy`]), Hinton's [`Kd`], the decoupled
//! [`Dkd`] and [`Dckd`], [`Dist`] and [`DistPlus`], multi-level [`Mlkd`], regressions on
//! logits and probabilities ([`LogitMse`], [`ProbMse`]), and the [`Standardized`] pre-transform.

pub use crate::cross_entropy::{CrossEntropy, CrossEntropyConfig, cross_entropy_per_sample};
pub use crate::math::JointTarget;

use crate::registry::Descriptor;

mod decoupled;

use crate::loss::LossExt;

mod dckd;
mod dist;
mod dist_plus;
mod dkd;
mod kd;
mod logit_mse;
mod mlkd;
mod prob_mse;
mod standardized;

pub use dckd::{Dckd, DckdConfig};
pub use dist::{Dist, DistConfig, dist_relations};
pub use dist_plus::{DistPlus, DistPlusConfig, channel_relation, spatial_relation};
pub use dkd::{Dkd, DkdConfig, dkd_loss, dkd_per_sample};
pub use kd::{Kd, KdConfig, kd_loss, kd_per_sample};
pub use logit_mse::{LogitMse, LogitMseConfig, logit_mse};
pub use mlkd::{
    Mlkd, MlkdConfig, at_most_median, batch_correlation, class_correlation, mlkd_instance,
};
pub use prob_mse::{ProbMse, ProbMseConfig, prob_mse};
pub use standardized::{Standardized, standardize_rows};

/// The catalog rows of the core items this family re-exports.
const OWN: &[Descriptor] = &[Descriptor {
    module: MODULE,
    items: &["CrossEntropy"],
    paper: "the task loss (with label smoothing)",
    doc: "kd.md#composing-with-the-task-loss",
    bound: Some(crate::cross_entropy::BOUND),
    example: Some(|_| Ok(CrossEntropyConfig::new().init()?.boxed())),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss CrossEntropy = logit::CrossEntropyConfig())),
    golden: crate::registry::golden![],
}];

/// This family's module path, as its objectives' descriptors name it.
pub(crate) const MODULE: &str = module_path!();

/// This family's descriptors, file by file, in the order of the method tables.
pub(crate) const OBJECTIVES: &[&[Descriptor]] = &[
    OWN,
    kd::DESCRIPTORS,
    dkd::DESCRIPTORS,
    dckd::DESCRIPTORS,
    dist::DESCRIPTORS,
    dist_plus::DESCRIPTORS,
    mlkd::DESCRIPTORS,
    standardized::DESCRIPTORS,
    prob_mse::DESCRIPTORS,
    logit_mse::DESCRIPTORS,
];
