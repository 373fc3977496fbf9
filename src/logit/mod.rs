//! Objectives on logits: the task loss ([`CrossEntropy`]), Hinton's [`Kd`], the decoupled
//! [`Dkd`] and [`Dckd`], [`Dist`], and the [`Standardized`] pre-transform.

mod dckd;
mod decoupled;
mod dist;
mod dkd;
mod kd;
mod prob_mse;
mod standardized;

pub use crate::{CrossEntropy, CrossEntropyConfig, cross_entropy_per_sample};
pub use dckd::*;
pub use dist::*;
pub use dkd::*;
pub use kd::*;
pub use prob_mse::*;
pub use standardized::*;
