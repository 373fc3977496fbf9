//! A meta-learned teacher: MetaDistil's pilot update and Decoupled MetaDistil.

mod hypergrad;
mod teacher;

pub use hypergrad::{Batch, MetaGradient};
pub use teacher::{MetaRound, MetaTeacher, MetaTeacherConfig, MetaTeacherRecord, Pilot, PilotRate};

/// This family's module path, as its descriptors name it.
pub(crate) const MODULE: &str = module_path!();

/// This family's descriptors, file by file.
pub(crate) const OBJECTIVES: &[&[crate::registry::Descriptor]] = &[teacher::DESCRIPTORS];
