//! Objectives on logits: the task loss ([`CrossEntropy`]), Hinton's [`Kd`], the decoupled
//! [`Dkd`] and [`Dckd`], [`Dist`], and the [`Standardized`] pre-transform.

pub use crate::{CrossEntropy, CrossEntropyConfig, cross_entropy_per_sample};

mod decoupled;

crate::family! {
    files: dckd, dist, dkd, kd, prob_mse, standardized;
    "CrossEntropy" => "the task loss (with label smoothing)", "kd.md#composing-with-the-task-loss";
    "Kd" => "Hinton, Vinyals, Dean 2015, *Distilling the Knowledge in a Neural Network*", "kd.md";
    "Dkd" => "Zhao et al., CVPR 2022, *Decoupled Knowledge Distillation*", "dkd.md";
    "Dckd" => "Wang et al., PLoS One 2025 (reconstruction from the abstract)", "dckd.md";
    "Dist" => "Huang et al., NeurIPS 2022, *Knowledge Distillation from A Stronger Teacher*", "dist.md";
    "Standardized" => "Sun et al., CVPR 2024, *Logit Standardization in KD*", "dist.md#logit-standardisation";
    "ProbMse" => "MetaDistil's NLP soft loss (squared error of softened probabilities)", "prob_mse.md";
}
