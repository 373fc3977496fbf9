//! Feature distillation: the student's intermediate feature maps are pushed towards the
//! teacher's (FitNet hints, attention transfer, NST, factor transfer, FSP, KDSVD, AB, VID, OFD,
//! ReviewKD, ICKD, KTA and its affinity term, PAD-L2, SRD, masked generative distillation), and SoKD's plug-ins around any
//! of them (learnable teacher-feature augmentation, distinctive-area mask).
//!
//! Every objective here reads named feature taps (`DistillInput::feature`) holding maps
//! `[N, C, H, W]`; a missing tap is `DistillError::MissingFeature` naming it.

mod maps;

use crate::LossExt;

crate::family! {
    files: ab, affinity, at, fsp, ft, hint, ickd, kdsvd, kta, mgd, nst, ofd, pad_l2, review_kd, sokd, srd, vid;
    "Hint" => "Romero et al., ICLR 2015, *FitNets: Hints for Thin Deep Nets*", "hint.md";
    "At" => "Zagoruyko & Komodakis, ICLR 2017, *Paying More Attention to Attention*", "at.md",
        example: |_| Ok(AtConfig::new().init()?.boxed());
    "Mgd" => "Yang et al., ECCV 2022, *Masked Generative Distillation*", "mgd.md";
    "Dafa", "Augmented", "Dam" => "Shen et al. 2024, SoKD (reconstruction from the abstract)", "sokd.md",
        example: |_| Ok(DamConfig::new().init(AtConfig::new().init()?)?.boxed());
    "Nst" => "Huang & Wang 2017, *Like What You Like: Neuron Selectivity Transfer*", "nst.md",
        example: |_| Ok(NstConfig::new().init()?.boxed());
    "Ft", "Paraphraser" => "Kim et al., NeurIPS 2018, *Paraphrasing Complex Network: Factor Transfer*", "ft.md";
    "Fsp" => "Yim et al., CVPR 2017, *A Gift from Knowledge Distillation*", "fsp.md",
        example: |_| Ok(FspConfig::new(vec!["paired".into(), "paired".into()]).init()?.boxed());
    "Ickd" => "Liu et al., ICCV 2021, *Inter-Channel Correlation for KD*", "ickd.md",
        example: |dev| Ok(IckdConfig::new().with_features(vec!["paired".into()]).init(dev)?.boxed());
    "Kta", "Affinity" => "He et al., CVPR 2019, *Knowledge Adaptation for Efficient Semantic Segmentation*", "kta.md",
        example: |_| Ok((KtaConfig::new().with_feature("paired".into()).init()?
            + AffinityConfig::new().with_feature("paired".into()).init()?).boxed());
    "PadL2" => "Zhang et al., ECCV 2020, *Prime-Aware Adaptive Distillation*", "pad_l2.md";
    "Srd" => "Miles & Mikolajczyk, AAAI 2024, *Understanding the Role of the Projector in KD*", "srd.md",
        example: |dev| Ok(SrdConfig::new().with_feature("paired".into()).init(dev)?.boxed());
    "Ab" => "Heo et al., AAAI 2019, *Distillation of Activation Boundaries Formed by Hidden Neurons*", "ab.md";
    "Vid" => "Ahn et al., CVPR 2019, *Variational Information Distillation*", "vid.md";
    "Ofd" => "Heo et al., ICCV 2019, *A Comprehensive Overhaul of Feature Distillation*", "ofd.md";
    "ReviewKd", "Abf" => "Chen et al., CVPR 2021, *Distilling Knowledge via Knowledge Review*", "review_kd.md";
    "Kdsvd" => "Lee et al., ECCV 2018, *Self-supervised KD Using Singular Value Decomposition*", "kdsvd.md",
        example: |_| Ok(KdsvdConfig::new(vec!["feature".into(), "paired".into()]).init()?.boxed());
}
