//! Objectives on logits: the task loss ([`CrossEntropy`]), Hinton's [`Kd`] and the decoupled
//! [`Dkd`].

mod ce;
mod dkd;
mod kd;

pub use ce::*;
pub use dkd::*;
pub use kd::*;
