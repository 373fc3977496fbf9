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

use burn::tensor::Tensor;

use crate::{DistillError, DistillInput};

/// The student's and teacher's tap `name`, one row per sample, after checking that they have
/// the same number of rows and at least `min` of them.
pub(crate) fn relational_pair(
    input: &DistillInput,
    objective: &str,
    name: &str,
    min: usize,
) -> Result<(Tensor<2>, Tensor<2>), DistillError> {
    let (s, t) = input.feature_pair(objective, name)?;
    let (ns, nt) = (s.rows(), t.rows());
    if ns != nt {
        return Err(DistillError::ShapeMismatch {
            what: format!("teacher tap `{name}` rows"),
            expected: vec![ns],
            actual: vec![nt],
        });
    }
    if ns < min {
        return Err(DistillError::BatchTooSmall {
            objective: objective.into(),
            min,
            got: ns,
        });
    }
    Ok((s.flatten(), t.flatten()))
}
