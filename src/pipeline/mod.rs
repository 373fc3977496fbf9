//! Training pipelines around the objectives: teaching-assistant chains (TAKD),
//! multi-guide distillation (DGKD) and, behind the `train` feature, burn-train integration
//! ([`Distiller`](crate::pipeline) with loss-term metrics).

mod assistant;
#[cfg(feature = "train")]
mod distiller;

use crate::registry::Descriptor;

#[cfg(feature = "train")]
#[cfg_attr(docsrs, doc(cfg(feature = "train")))]
pub use distiller::{DistillBatch, DistillOutput, Distiller, TermInput, TermMetric};

pub use assistant::{Dgkd, DgkdConfig, Stage, Takd};

/// The catalog row of [`Distiller`](crate::pipeline) (its file is behind the `train` feature; the
/// row is not).
const OWN: &[Descriptor] = &[Descriptor {
    module: MODULE,
    items: &["Distiller"],
    paper: "burn-train model with loss-term metrics (feature `train`)",
    doc: "train.md",
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
pub(crate) const OBJECTIVES: &[&[Descriptor]] = &[assistant::DESCRIPTORS, OWN];
