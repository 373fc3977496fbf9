//! Relational distillation: the student matches how the teacher relates the samples of a
//! batch (distances, angles, similarities) rather than each sample's output.
//!
//! Every objective here reads one feature tap (by default `"embedding"`, a map is flattened)
//! and depends on the whole batch: its value for a sample changes with the other samples. Under
//! data-parallel training each device relates only its own shard, so the loss is that of
//! smaller batches, not of the global one (see `docs/relational.md`).

use crate::registry::Descriptor;

mod cc;
mod crd;
mod dlkd;
mod head;
mod pkt;
mod rkd;
mod skd;
mod sp;
mod sskd;

pub use cc::{Cc, CcConfig, CcKernel, cc_loss, correlation_matrix};
pub use crd::{Crd, CrdConfig};
pub use dlkd::{Dlkd, DlkdConfig};
pub use head::{Embed, MlpHead};
pub use pkt::{Pkt, PktConfig, pkt_loss};
pub use rkd::{Rkd, RkdConfig};
pub use skd::{SkdDirection, SkdDirectionConfig, skd_direction};
pub use sp::{Sp, SpConfig, sp_loss};
pub use sskd::{SsHead, Sskd, SskdConfig, ranked_rows, view_contrast_loss, view_similarities};

/// This family's module path, as its objectives' descriptors name it.
pub(crate) const MODULE: &str = module_path!();

/// This family's descriptors, file by file, in the order of the method tables.
pub(crate) const OBJECTIVES: &[&[Descriptor]] = &[
    rkd::DESCRIPTORS,
    pkt::DESCRIPTORS,
    sp::DESCRIPTORS,
    skd::DESCRIPTORS,
    cc::DESCRIPTORS,
    dlkd::DESCRIPTORS,
    crd::DESCRIPTORS,
    sskd::DESCRIPTORS,
];
