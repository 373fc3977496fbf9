//! Feature distillation: the student's intermediate feature maps are pushed towards the
//! teacher's (FitNet hints, attention transfer, NST, factor transfer, FSP, KDSVD, AB, VID, OFD,
//! ReviewKD, ICKD, KTA and its affinity term, PAD-L2, SRD, masked generative distillation), and SoKD's plug-ins around any
//! of them (learnable teacher-feature augmentation, distinctive-area mask).
//!
//! Every objective here reads named feature taps (`DistillInput::feature`) holding maps
//! `[N, C, H, W]`; a missing tap is `DistillError::MissingFeature` naming it.

use crate::registry::Descriptor;

mod maps;

mod ab;
mod affinity;
mod at;
mod fsp;
mod ft;
mod hint;
mod ickd;
mod kdsvd;
mod kta;
mod mgd;
mod nst;
mod ofd;
mod pad_l2;
mod review_kd;
mod sokd;
mod srd;
mod vid;

pub use ab::{Ab, AbConfig, activation_boundary};
pub use affinity::{Affinity, AffinityConfig, affinity_per_sample};
pub use at::{At, AtConfig, attention_map};
pub use fsp::{Fsp, FspConfig, fsp_matrix};
pub use ft::{ConvStack, Ft, FtConfig, Paraphraser, factor_loss};
pub use hint::{Connector, ConvReg, Hint, HintConfig};
pub use ickd::{Ickd, IckdConfig, channel_similarity};
pub use kdsvd::{Kdsvd, KdsvdConfig, align_vectors, top_singular};
pub use kta::{Kta, KtaConfig, kta_per_sample};
pub use mgd::{Generator, Mgd, MgdConfig, MgdMask};
pub use nst::{Nst, NstConfig, nst_stage};
pub use ofd::{ConvBn, Ofd, OfdConfig, ofd_margins, partial_l2};
pub use pad_l2::{PadL2, PadL2Config, VarianceBranch, pad_l2_per_sample};
pub use review_kd::{Abf, ConvNorm, ReviewKd, ReviewKdConfig, hcl_stage};
pub use sokd::{Augmented, Dafa, DafaConfig, Dam, DamConfig, DamMode};
pub use srd::{Srd, SrdConfig, SrdProjector, srd_feature};
pub use vid::{Vid, VidConfig, VidRegressor, vid_nll};

/// This family's module path, as its objectives' descriptors name it.
pub(crate) const MODULE: &str = module_path!();

/// This family's descriptors, file by file, in the order of the method tables.
pub(crate) const OBJECTIVES: &[&[Descriptor]] = &[
    hint::DESCRIPTORS,
    at::DESCRIPTORS,
    mgd::DESCRIPTORS,
    sokd::DESCRIPTORS,
    nst::DESCRIPTORS,
    ft::DESCRIPTORS,
    fsp::DESCRIPTORS,
    ickd::DESCRIPTORS,
    kta::DESCRIPTORS,
    affinity::DESCRIPTORS,
    pad_l2::DESCRIPTORS,
    srd::DESCRIPTORS,
    ab::DESCRIPTORS,
    vid::DESCRIPTORS,
    ofd::DESCRIPTORS,
    review_kd::DESCRIPTORS,
    kdsvd::DESCRIPTORS,
];
