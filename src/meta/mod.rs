//! A meta-learned teacher: MetaDistil's pilot update and Decoupled MetaDistil.

mod hypergrad;
mod teacher;

pub use hypergrad::{Batch, MetaGradient};
pub use teacher::{MetaRound, MetaTeacher, MetaTeacherConfig, MetaTeacherRecord, PilotRate};

/// This family's rows of the catalog.
pub(crate) const OBJECTIVES: &[crate::Entry] = &[
    crate::Entry {
        module: module_path!(),
        items: &["MetaTeacher"],
        paper: "Zhou, Xu, McAuley, ACL 2022, *BERT Learns to Teach* (MetaDistil)",
        doc: "metadistil.md",
        example: None,
    },
    crate::Entry {
        module: module_path!(),
        items: &["MetaTeacher::decoupled"],
        paper: "Du et al. 2023, Decoupled MetaDistil (reconstruction)",
        doc: "metadistil.md#decoupled-metadistil-reconstruction",
        example: None,
    },
];
