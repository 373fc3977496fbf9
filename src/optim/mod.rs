//! Optimisation tailored to distillation: [`Dot`] gives the task and the distillation
//! gradients separate momenta.

use crate::registry::Descriptor;

mod dot;

pub use dot::{Dot, DotConfig};

/// This family's module path, as its objectives' descriptors name it.
pub(crate) const MODULE: &str = module_path!();

/// This family's descriptors, file by file.
pub(crate) const OBJECTIVES: &[&[Descriptor]] = &[dot::DESCRIPTORS];
