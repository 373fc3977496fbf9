#![deny(missing_docs)]
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
//! | objective | paper | module |
//! |---|---|---|
//! | [`CrossEntropy`](logit::CrossEntropy) | the task loss | [`logit`] |
//! | [`Kd`](logit::Kd) | Hinton, Vinyals, Dean 2015, *Distilling the Knowledge in a Neural Network* | [`logit`] |
//! | [`Dkd`](logit::Dkd) | Zhao et al., CVPR 2022, *Decoupled Knowledge Distillation* | [`logit`] |
//! | [`Dckd`](logit::Dckd) | Wang et al., PLoS One 2025 (reconstruction from the abstract) | [`logit`] |
//! | [`Dist`](logit::Dist) | Huang et al., NeurIPS 2022, *Knowledge Distillation from A Stronger Teacher* | [`logit`] |
//! | [`Standardized`](logit::Standardized) | Sun et al., CVPR 2024, *Logit Standardization in KD* | [`logit`] |
//! | [`Ctkd`](curriculum::Ctkd) | Li et al., AAAI 2023, *Curriculum Temperature for KD* | [`curriculum`] |
//! | [`Schedule`](curriculum::Schedule) | warm-ups and ramps for any weight | [`curriculum`] |
//! | [`Paced`](curriculum::Paced), [`TopKMask`](curriculum::TopKMask) | difficulty curricula over samples and classes (DeepKD's top-k mask) | [`curriculum`] |
//! | [`Dot`](optim::Dot) | Zhao et al., ICCV 2023, *DOT: A Distillation-Oriented Trainer* | [`optim`] |
//! | [`ProbMse`](logit::ProbMse) | MetaDistil's NLP soft loss (squared error of softened probabilities) | [`logit`] |
//! | [`Hint`](feature::Hint) | Romero et al., ICLR 2015, *FitNets: Hints for Thin Deep Nets* | [`feature`] |
//! | [`At`](feature::At) | Zagoruyko & Komodakis, ICLR 2017, *Paying More Attention to Attention* | [`feature`] |
//! | [`Mgd`](feature::Mgd) | Yang et al., ECCV 2022, *Masked Generative Distillation* | [`feature`] |
//! | [`Dafa`](feature::Dafa), [`Dam`](feature::Dam) | Shen et al. 2024, SoKD (reconstruction from the abstract) | [`feature`] |
//! | [`Rkd`](relation::Rkd) | Park et al., CVPR 2019, *Relational Knowledge Distillation* | [`relation`] |
//! | [`Pkt`](relation::Pkt) | Passalis & Tefas, ECCV 2018, *Probabilistic Knowledge Transfer* | [`relation`] |
//! | [`Sp`](relation::Sp) | Tung & Mori, ICCV 2019, *Similarity-Preserving KD* | [`relation`] |
//! | [`Dlkd`](relation::Dlkd) | Ding et al., TNNLS 2024, *Dual-level KD via Knowledge Alignment and Correlation* | [`relation`] |
//! | [`Crd`](relation::Crd) | Tian et al., ICLR 2020, *Contrastive Representation Distillation* | [`relation`] |
//! | [`MetaTeacher`](meta::MetaTeacher) | Zhou, Xu, McAuley, ACL 2022, *BERT Learns to Teach* (MetaDistil) | [`meta`] |
//! | [`MetaTeacher::decoupled`](meta::MetaTeacher::decoupled) | Du et al. 2023, Decoupled MetaDistil (reconstruction) | [`meta`] |
//!
//! ## Backends
//!
//! Every objective works on whatever [`Device`](burn::tensor::Device) the caller's tensors live
//! on. The cargo features `flex` (on by default), `ndarray`, `wgpu`, `tch` and `cuda` pass
//! through to burn's; `default-features = false` enables no backend at all.
//!
//! [`Kd`](logit::Kd), [`Dkd`](logit::Dkd) and [`Dckd`](logit::Dckd) run [fused](fused) CPU
//! kernels on flex and ndarray (a forward and an analytic backward in a few passes over the
//! logits) and their composed tensor-op versions everywhere else.

mod check;
mod cross_entropy;
mod error;
mod input;
mod loss;
mod schedule;

pub mod curriculum;
pub mod feature;
pub mod fused;
pub mod logit;
pub mod math;
pub mod meta;
pub mod optim;
pub mod pipeline;
pub mod relation;

pub use cross_entropy::{CrossEntropy, CrossEntropyConfig, cross_entropy_per_sample};
pub use error::DistillError;
pub use input::{Checked, DistillInput, Distillable, Feature, Outputs, Progress, Views};
pub use loss::{Loss, LossExt, LossOutput, LossSum, Named, Reduction, Tempered, Weighted};
pub use schedule::Schedule;

/// The types a training loop needs, in one import.
pub mod prelude {
    pub use crate::Schedule;
    pub use crate::logit::{CrossEntropy, CrossEntropyConfig, Dkd, DkdConfig, Kd, KdConfig};
    pub use crate::{DistillError, DistillInput, Loss, LossExt, LossOutput, Progress, Reduction};
}
