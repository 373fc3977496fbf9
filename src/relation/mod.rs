//! Relational distillation: the student matches how the teacher relates the samples of a
//! batch (distances, angles, similarities) rather than each sample's output.
//!
//! Every objective here reads one feature tap (by default `"embedding"`, a map is flattened)
//! and depends on the whole batch: its value for a sample changes with the other samples. Under
//! data-parallel training each device relates only its own shard, so the loss is that of
//! smaller batches, not of the global one (see `docs/relational.md`).

mod crd;
mod dlkd;
mod head;
mod pkt;
mod rkd;
mod sp;

pub use crd::*;
pub use dlkd::*;
pub use head::*;
pub use pkt::*;
pub use rkd::*;
pub use sp::*;
