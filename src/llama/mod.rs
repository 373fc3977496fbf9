//! A pretrained teacher from a GGUF file (feature `llama`): the file's reader with bit-exact
//! dequantisation ([`Gguf`]), a Llama-architecture model on burn ([`Llama`], which also serves
//! as a student: [`LlamaConfig::init`]) and the byte-level BPE tokenizer of its vocabulary
//! ([`Tokenizer`]).
//!
//! ```no_run
//! # fn main() -> Result<(), burn_distill::llama::LlamaError> {
//! use burn::tensor::{Device, Int, Tensor, TensorData};
//! use burn_distill::llama::{Gguf, Llama, Tokenizer};
//!
//! let file = Gguf::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let device = Device::flex();
//! let (teacher, tokenizer) = (Llama::from_gguf(&file, &device)?, Tokenizer::from_gguf(&file)?);
//! let ids = tokenizer.encode("Knowledge distillation in Rust.")?;
//! let n = ids.len();
//! let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), &device);
//! let logits = teacher.forward(ids); // [1, n, 49152]
//! # Ok(()) }
//! ```
//!
//! `docs/llama.md` has the file format, the model's conventions and how it was checked against
//! Hugging Face transformers.

mod gguf;
mod model;
mod tokenizer;

pub use gguf::{Gguf, TensorInfo, TensorType, Value, dequantize};
pub use model::{Llama, LlamaConfig};
pub use tokenizer::{Encoding, Tokenizer};

/// An error from reading a GGUF file, building the model or tokenizing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlamaError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The path as given.
        path: String,
        /// What the system said.
        message: String,
    },
    /// The file ends inside what is named.
    #[error("the file is truncated: it ends inside {what} (byte {offset})")]
    Truncated {
        /// The key, tensor or header field being read.
        what: String,
        /// Where it starts.
        offset: usize,
    },
    /// Something in the file is malformed.
    #[error("{what}: {problem}")]
    Format {
        /// The key, tensor or header field.
        what: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The file uses something this crate does not implement (another architecture, a
    /// K-quant, a tokenizer other than byte-level BPE, rope scaling).
    #[error("{what}: {found} is not supported")]
    Unsupported {
        /// The key or tensor.
        what: String,
        /// What the file has.
        found: String,
    },
    /// A key or tensor the model needs is not in the file.
    #[error("{0} is missing from the file")]
    Missing(String),
    /// A tensor's shape is not the one the metadata implies.
    #[error("{tensor}: expected shape {expected:?}, found {found:?}")]
    Shape {
        /// The tensor.
        tensor: String,
        /// The shape the metadata implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}
