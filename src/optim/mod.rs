//! Optimisation tailored to distillation: [`Dot`] gives the task and the distillation
//! gradients separate momenta.

mod dot;

pub use dot::*;
