//! Relational distillation: the student matches how the teacher relates the samples of a
//! batch (distances, angles, similarities) rather than each sample's output.
//!
//! Every objective here reads one feature tap (by default `"embedding"`, a map is flattened)
//! and depends on the whole batch: its value for a sample changes with the other samples. Under
//! data-parallel training each device relates only its own shard, so the loss is that of
//! smaller batches, not of the global one (see `docs/relational.md`).

use crate::LossExt;

crate::family! {
    files: cc, crd, dlkd, head, pkt, rkd, sp, sskd;
    "Rkd" => "Park et al., CVPR 2019, *Relational Knowledge Distillation*", "rkd.md",
        example: |_| Ok(RkdConfig::new().init()?.boxed());
    "Pkt" => "Passalis & Tefas, ECCV 2018, *Probabilistic Knowledge Transfer*", "pkt.md",
        example: |_| Ok(PktConfig::new().init()?.boxed());
    "Sp" => "Tung & Mori, ICCV 2019, *Similarity-Preserving KD*", "sp.md",
        example: |_| Ok(SpConfig::new().with_feature("feature".into()).init()?.boxed());
    "Cc" => "Peng et al., ICCV 2019, *Correlation Congruence for Knowledge Distillation*", "cc.md",
        example: |_| Ok(CcConfig::new().init()?.boxed());
    "Dlkd" => "Ding et al., TNNLS 2024, *Dual-level KD via Knowledge Alignment and Correlation*", "dlkd.md";
    "Crd" => "Tian et al., ICLR 2020, *Contrastive Representation Distillation*", "crd.md";
    "Sskd", "SsHead" => "Xu et al., ECCV 2020, *Knowledge Distillation Meets Self-Supervision*", "sskd.md";
}
