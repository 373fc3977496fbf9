#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
//! # burn-distill
//!
//! Knowledge-distillation objectives for the [burn](https://burn.dev) deep-learning framework.
//! Every objective is a [`Loss`]: it reads a [`DistillInput`] (student and teacher logits,
//! targets, named feature taps, training progress) and returns a [`LossOutput`] (a
//! differentiable total and its named terms). Objectives compose: weight them, sum any number
//! of them, box them.
//!
//! ```
//! use burn::tensor::{Device, Distribution, Int, Tensor};
//! use burn_distill::prelude::*;
//!
//! # fn main() -> Result<(), DistillError> {
//! let dev = Device::flex().autodiff();
//! let student = Tensor::<2>::random([8, 10], Distribution::Normal(0.0, 1.0), &dev).require_grad();
//! let teacher = Tensor::<2>::random([8, 10], Distribution::Normal(0.0, 1.0), &dev);
//! let labels = Tensor::<1, Int>::from_ints([0, 1, 2, 3, 4, 5, 6, 7], &dev);
//!
//! let dkd = DkdConfig::new().with_warmup_epochs(20).init()?;
//! let loss = CrossEntropyConfig::new().init()?.weighted(1.0) + dkd;
//! let input = DistillInput::new(student.clone(), teacher)
//!     .targets(labels)
//!     .progress(Progress::epoch(5, 240));
//! let out = loss.forward(&input)?;
//! for (name, value) in out.values() {
//!     println!("{name}: {value:.4}"); // ce, dkd/tckd, dkd/nckd
//! }
//! let grads = out.total.backward();
//! assert!(student.grad(&grads).is_some());
//! # Ok(()) }
//! ```
//!
//! ## Objectives
//!
//! Every objective, generated from [`objectives()`] (paths relative to this crate; each page
//! is in the repository's `docs/`):
//!
#![doc = include_str!("../docs/objectives.md")]
//!
//! ## Backends
//!
//! Every objective works on whatever [`Device`](burn::tensor::Device) the caller's tensors live
//! on. The cargo features `flex` (on by default), `ndarray`, `wgpu`, `tch` and `cuda` pass
//! through to burn's; `default-features = false` enables no backend at all.
//!
//! [`Kd`](logit::Kd), [`Dkd`](logit::Dkd), [`Dckd`](logit::Dckd) and the token
//! [`ForwardKl`](token::ForwardKl) and [`Jsd`](token::Jsd) run [fused](fused) kernels (a
//! forward and an analytic backward in a few passes over the logits): CPU kernels on flex and
//! ndarray, CubeCL kernels on wgpu and cuda (feature `cube`, which `wgpu` and `cuda` turn on),
//! and their composed tensor-op versions everywhere else.

#[cfg(feature = "golden")]
#[doc(hidden)]
pub mod golden;

mod check;
mod cross_entropy;
mod error;
mod example;
mod file;
mod input;
mod loss;
mod registry;
mod schedule;

pub mod cache;
pub mod curriculum;
pub mod feature;
pub mod fused;
#[cfg(feature = "llama")]
#[cfg_attr(docsrs, doc(cfg(feature = "llama")))]
pub mod llama;
pub mod logit;
pub mod math;
pub mod meta;
pub mod optim;
pub mod pipeline;
pub mod relation;
pub mod spec;
pub mod token;

pub use cross_entropy::{CrossEntropy, CrossEntropyConfig, cross_entropy_per_sample};
pub use error::DistillError;
pub use example::{ExampleInput, example_input, example_input_at, example_input_shifted};
pub use input::{Checked, DistillInput, Distillable, Extra, Feature, Outputs, Progress, Views};
pub use loss::{
    Finite, Loss, LossExt, LossOutput, LossSum, Named, Reduction, Staged, Tempered, Weighted,
};
pub use registry::{Descriptor, Example, Golden, Learnable};
pub use schedule::Schedule;

/// Every objective of the crate, family by family and file by file: the registry the method
/// tables in the README, these docs and `docs/index.md` are generated from (`tests/catalog.rs`
/// keeps them in step), and that the test suites run.
pub fn objectives() -> Vec<Descriptor> {
    [
        logit::OBJECTIVES,
        curriculum::OBJECTIVES,
        optim::OBJECTIVES,
        feature::OBJECTIVES,
        relation::OBJECTIVES,
        meta::OBJECTIVES,
        token::OBJECTIVES,
        pipeline::OBJECTIVES,
    ]
    .concat()
    .concat()
}

/// The types a training loop needs, in one import: the losses every example composes, the
/// input and output types, networks' outputs, batches, loss specs and the teacher cache.
pub mod prelude {
    pub use crate::cache::{CacheWriter, TeacherCache};
    pub use crate::logit::{CrossEntropy, CrossEntropyConfig, Dkd, DkdConfig, Kd, KdConfig};
    pub use crate::meta::Batch;
    pub use crate::spec::LossSpec;
    pub use crate::{
        DistillError, DistillInput, Distillable, Feature, Loss, LossExt, LossOutput, LossSum,
        Outputs, Progress, Reduction, Schedule,
    };
}
