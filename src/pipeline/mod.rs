//! Training pipelines around the objectives: teaching-assistant chains (TAKD),
//! multi-guide distillation (DGKD) and, behind the `train` feature, burn-train integration
//! ([`Distiller`](crate::pipeline) with loss-term metrics).

mod assistant;
#[cfg(feature = "train")]
mod distiller;

pub use assistant::*;
#[cfg(feature = "train")]
pub use distiller::*;
