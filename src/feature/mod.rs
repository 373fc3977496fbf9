//! Feature distillation: the student's intermediate feature maps are pushed towards the
//! teacher's (FitNet hints, attention transfer, masked generative distillation), and SoKD's
//! plug-ins around any of them (learnable teacher-feature augmentation, distinctive-area mask).
//!
//! Every objective here reads named feature taps (`DistillInput::feature`) holding maps
//! `[N, C, H, W]`; a missing tap is `DistillError::MissingFeature` naming it.

mod at;
mod hint;
mod mgd;
mod sokd;

pub use at::*;
pub use hint::*;
pub use mgd::*;
pub use sokd::*;
