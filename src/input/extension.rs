//! Typed extensions: inputs that only some objectives read.

use std::sync::Arc;

use burn::tensor::{Int, Tensor};

/// An input only some objectives read, carried by [`DistillInput::with`](super::DistillInput::with)
/// and read back by its type ([`DistillInput::extension`](super::DistillInput::extension),
/// [`Checked::extension`](super::Checked::extension)). The fused lm-head objectives read their
/// hidden states and weights this way ([`token::LmHeads`](crate::token::LmHeads)).
pub trait Extension: std::any::Any + std::fmt::Debug + Send + Sync {
    /// The same extension for the batch rows `rows` (what
    /// [`DistillInput::select_rows`](super::DistillInput::select_rows) keeps), or `None` to drop
    /// it from the selection (the default).
    fn select_rows(&self, rows: &Tensor<1, Int>) -> Option<Arc<dyn Extension>> {
        let _ = rows;
        None
    }
}
