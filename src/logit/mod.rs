//! Objectives on logits: the task loss ([`CrossEntropy`]), Hinton's [`Kd`], the decoupled
//! [`Dkd`] and [`Dckd`], [`Dist`] and [`DistPlus`], multi-level [`Mlkd`], regressions on
//! logits and probabilities ([`LogitMse`], [`ProbMse`]), and the [`Standardized`] pre-transform.

pub use crate::{CrossEntropy, CrossEntropyConfig, cross_entropy_per_sample};

mod decoupled;

use crate::LossExt;

crate::family! {
    files: dckd, dist, dist_plus, dkd, kd, logit_mse, mlkd, prob_mse, standardized;
    "CrossEntropy" => "the task loss (with label smoothing)", "kd.md#composing-with-the-task-loss",
        example: |_| Ok(CrossEntropyConfig::new().init()?.boxed());
    "Kd" => "Hinton, Vinyals, Dean 2015, *Distilling the Knowledge in a Neural Network*", "kd.md",
        example: |_| Ok(KdConfig::new().with_temperature(2.0).init()?.boxed());
    "Dkd" => "Zhao et al., CVPR 2022, *Decoupled Knowledge Distillation*", "dkd.md",
        example: |_| Ok(DkdConfig::new().with_warmup_epochs(0).init()?.boxed());
    "Dckd" => "Wang et al., PLoS One 2025 (reconstruction from the abstract)", "dckd.md",
        example: |_| Ok(DckdConfig::new().with_warmup_epochs(0).init()?.boxed());
    "Dist" => "Huang et al., NeurIPS 2022, *Knowledge Distillation from A Stronger Teacher*", "dist.md",
        example: |_| Ok(DistConfig::new().init()?.boxed());
    "DistPlus" => "Huang et al., TPAMI 2025, *DIST+: KD From a Stronger Adaptive Teacher*", "dist_plus.md",
        example: |_| Ok(DistPlusConfig::new().with_feature("paired".into()).init()?.boxed());
    "Mlkd" => "Jin, Wang, Lin, CVPR 2023, *Multi-Level Logit Distillation*", "mlkd.md",
        example: |_| Ok(MlkdConfig::new().with_ce_weight(1.0).init()?.boxed());
    "Standardized" => "Sun et al., CVPR 2024, *Logit Standardization in KD*", "dist.md#logit-standardisation",
        example: |_| Ok(Standardized::new(KdConfig::new().init()?).boxed());
    "ProbMse" => "MetaDistil's NLP soft loss (squared error of softened probabilities)", "prob_mse.md",
        example: |_| Ok(ProbMseConfig::new().with_temperature(2.0).init()?.boxed());
    "LogitMse" => "Ba & Caruana 2014; MetaDistil's `MSEWithTemperature`", "logit_mse.md",
        example: |_| Ok(LogitMseConfig::new().with_temperature(4.0).init()?.boxed());
}
