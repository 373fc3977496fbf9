//! Feature distillation: the student's intermediate feature maps are pushed towards the
//! teacher's (FitNet hints, attention transfer, masked generative distillation), and SoKD's
//! plug-ins around any of them (learnable teacher-feature augmentation, distinctive-area mask).
//!
//! Every objective here reads named feature taps (`DistillInput::feature`) holding maps
//! `[N, C, H, W]`; a missing tap is `DistillError::MissingFeature` naming it.

use crate::LossExt;

crate::family! {
    files: at, hint, mgd, sokd;
    "Hint" => "Romero et al., ICLR 2015, *FitNets: Hints for Thin Deep Nets*", "hint.md";
    "At" => "Zagoruyko & Komodakis, ICLR 2017, *Paying More Attention to Attention*", "at.md",
        example: |_| Ok(AtConfig::new().init()?.boxed());
    "Mgd" => "Yang et al., ECCV 2022, *Masked Generative Distillation*", "mgd.md";
    "Dafa", "Augmented", "Dam" => "Shen et al. 2024, SoKD (reconstruction from the abstract)", "sokd.md",
        example: |_| Ok(DamConfig::new().init(AtConfig::new().init()?)?.boxed());
}
