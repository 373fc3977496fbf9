//! Typed extras: inputs that only some objectives read.

use std::sync::Arc;

use burn::tensor::{Int, Tensor};

/// An input only some objectives read, carried by [`DistillInput::with`](super::DistillInput::with)
/// and read back by its type ([`DistillInput::extra`](super::DistillInput::extra),
/// [`Checked::extra`](super::Checked::extra)). The fused lm-head objectives read their
/// hidden states and weights this way ([`token::LmHeads`](crate::token::LmHeads)).
#[doc(alias = "Extension")]
pub trait Extra: std::any::Any + std::fmt::Debug + Send + Sync {
    /// The same extra for the batch rows `rows` (what
    /// [`DistillInput::select_rows`](super::DistillInput::select_rows) keeps), or `None` to drop
    /// it from the selection (the default).
    fn select_rows(&self, rows: &Tensor<1, Int>) -> Option<Arc<dyn Extra>> {
        let _ = rows;
        None
    }
}

/// Each row's index in the dataset `[N]`, for objectives with a per-sample memory
/// ([`Crd`](crate::relation::Crd)); set with [`DistillInput::indices`](super::DistillInput::indices).
#[derive(Debug, Clone)]
pub struct DatasetIndices(pub Tensor<1, Int>);

impl Extra for DatasetIndices {
    fn select_rows(&self, rows: &Tensor<1, Int>) -> Option<Arc<dyn Extra>> {
        Some(Arc::new(Self(self.0.clone().select(0, rows.clone()))))
    }
}

/// A sparse teacher: the ids of its top-`k` tokens `[N, k]` and their log-probabilities
/// `[N, k]`; set with [`DistillInput::sparse_teacher`](super::DistillInput::sparse_teacher).
#[derive(Debug, Clone)]
pub struct SparseTeacher {
    /// Token ids `[N, k]`.
    pub ids: Tensor<2, Int>,
    /// Their log-probabilities under the teacher `[N, k]`.
    pub log_probs: Tensor<2>,
}

impl Extra for SparseTeacher {
    fn select_rows(&self, rows: &Tensor<1, Int>) -> Option<Arc<dyn Extra>> {
        Some(Arc::new(Self {
            ids: self.ids.clone().select(0, rows.clone()),
            log_probs: self.log_probs.clone().select(0, rows.clone()),
        }))
    }
}

/// A view layout does not survive a selection of rows: it is dropped.
impl Extra for super::Views {}
