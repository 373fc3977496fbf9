//! Objectives on logits: the task loss ([`CrossEntropy`]), Hinton's [`Kd`], the decoupled
//! [`Dkd`] and [`Dckd`], [`Dist`], and the [`Standardized`] pre-transform.

mod ce;
mod dckd;
mod dist;
mod dkd;
mod kd;
mod prob_mse;
mod standardize;

pub use ce::*;
pub use dckd::*;
pub use dist::*;
pub use dkd::*;
pub use kd::*;
pub use prob_mse::*;
pub use standardize::*;
