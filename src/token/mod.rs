//! Token-level distillation for language models: per-token divergences between the student's
//! and the teacher's next-token distributions over a vocabulary, with padding and prompt tokens
//! masked out and a normalisation that survives gradient accumulation and data parallelism.
//!
//! Inputs are logits `[N, V]`, one row per token (flatten `[B, T, V]` with [`flatten`], or
//! shift a causal model's outputs with [`shift_logits`] / [`shift_labels`]), and either labels
//! with an ignore index ([`DistillInput::labels`](crate::DistillInput::labels), −100 by
//! PyTorch's convention) or a boolean mask ([`DistillInput::mask`](crate::DistillInput::mask)).
//! Every divergence is computed from log-softmaxes, so it stays finite for logits of any
//! magnitude; rows that do not count are replaced by constants before anything is computed, so
//! a NaN or an infinity in a padded row never reaches the loss or the gradients.
//! `docs/token.md` has the formulas and the table that reproduces TRL, Liger-Kernel, torchtune,
//! DistillKit and DistiLLM.

mod tokens;

use crate::LossExt;

pub use tokens::{TokenReduction, flatten, shift_labels, shift_logits};

crate::family! {
    files: cosine, forward_kl, hidden_state, jsd, lm_head, reverse_kl, skew_kl, symmetric_kl, top_k, tvd;
    "ForwardKl" => "KL(p_t ‖ p_s) per token (TRL, torchtune, DistillKit)", "token.md",
        example: |_| Ok(ForwardKlConfig::new().with_temperature(2.0).init()?.boxed());
    "ReverseKl" => "KL(p_s ‖ p_t) per token (MiniLLM; TRL, torchtune)", "token.md",
        example: |_| Ok(ReverseKlConfig::new().init()?.boxed());
    "Jsd" => "generalized JSD(β) (Agarwal et al., ICLR 2024, GKD; TRL, Liger)", "token.md",
        example: |_| Ok(JsdConfig::new().with_beta(0.3).init()?.boxed());
    "SymmetricKl" => "λ·FKL + (1 − λ)·RKL (torchtune)", "token.md",
        example: |_| Ok(SymmetricKlConfig::new().with_ratio(0.7).init()?.boxed());
    "SkewKl" => "skew forward / reverse KL (Ko et al., ICML 2024, DistiLLM)", "token.md",
        example: |_| Ok(SkewKlConfig::new().with_alpha(0.2).init()?.boxed());
    "Tvd" => "total variation distance per token (Liger, DistillKit)", "token.md",
        example: |_| Ok(TvdConfig::new().with_temperature(1.5).init()?.boxed());
    "TopK" => "a sparse top-k teacher with DistillKit's missing-mass handling", "token.md",
        example: |_| Ok(TopKConfig::new().with_missing(MissingMass::SymmetricUniform).with_divergence(TopKDivergence::Jsd).init()?.boxed());
    "FusedLinear" => "any token objective through the lm-head in chunks, logits never materialised (Liger-Kernel's fused linear losses)", "token.md",
        example: |_| Ok(FusedLinearConfig::new().with_chunk_size(Some(4)).init(ForwardKlConfig::new().with_reduction(TokenReduction::None).init()?)?.boxed());
    "HiddenState" => "hidden-state MSE / cosine with learnable projections (DistillKit)", "token.md";
    "LogitCosine" => "1 − cos(z_s, z_t) per token", "token.md",
        example: |_| Ok(LogitCosineConfig::new().init()?.boxed());
}
