//! A meta-learned teacher: MetaDistil's pilot update and Decoupled MetaDistil.

mod hypergrad;
mod teacher;

pub use hypergrad::{Batch, MetaGradient};
pub use teacher::{MetaRound, MetaTeacher, MetaTeacherConfig, MetaTeacherRecord, PilotRate};
