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

use crate::registry::Descriptor;

mod softened;
mod tokens;

pub use softened::{PerToken, Softened, SoftenedConfig};
pub use tokens::{TokenDivergence, TokenReduction, flatten, shift_labels, shift_logits};
pub(crate) use tokens::{box_divergence, unbox_divergence};

mod adaptive_kl;
mod aligned;
mod balanced;
mod cosine;
mod distillm2;
mod forward_kl;
mod hidden_state;
mod jsd;
mod lm_head;
mod mft;
mod minillm;
mod ranking;
mod reverse_kl;
mod sample;
mod sampled_token;
mod skew_kl;
mod symmetric_kl;
mod taid;
mod top_k;
mod tvd;
mod uld;

pub use adaptive_kl::{AdaptiveKl, AdaptiveKlConfig, AklVariant, adaptive_kl_rows};
pub use aligned::{Aligned, VocabAlignment};
pub use balanced::{Balanced, BalancedConfig, balance};
pub use cosine::{LogitCosine, LogitCosineConfig, cosine_distance_rows};
pub use distillm2::{
    DistiLlm2, DistiLlm2Config, DistiLlm2Form, DistiLlm2Sequences, distillm2_sequences,
};
pub use forward_kl::{
    ForwardKl, ForwardKlConfig, ForwardKlOptions, forward_kl_elements,
    teacher_cross_entropy_elements,
};
pub use hidden_state::{HiddenLoss, HiddenState, HiddenStateConfig, mse_rows};
pub use jsd::{Jsd, JsdConfig, JsdOptions, jsd_elements};
pub use lm_head::{FusedLinear, FusedLinearConfig, LmHead, LmHeads, LogitTransform, TeacherHead};
pub use mft::{Mft, MftConfig, mft_target};
pub use minillm::{
    Discount, LengthNormalization, MiniLlm, MiniLlmConfig, RewardToGoConfig, SequenceLength,
    reward_to_go,
};
pub use ranking::{Ranking, SparseRanking, SparseRankingConfig, ranking_pairs};
pub use reverse_kl::{ReverseKl, ReverseKlConfig, ReverseKlOptions, reverse_kl_elements};
pub use sample::{Sampler, SamplerConfig};
pub use sampled_token::{
    OldLogProbs, SampledToken, SampledTokenConfig, importance_weights, sampled_token_rows,
    tail_bucket,
};
pub use skew_kl::{SkewDirection, SkewKl, SkewKlConfig, SkewKlOptions, log_skew_mixture};
pub use symmetric_kl::{SymmetricKl, SymmetricKlConfig, SymmetricKlOptions};
pub use taid::{Taid, TaidConfig, TaidState, TaidStep, taid_rows};
pub use top_k::{
    MissingMass, SparseValues, TopK, TopKConfig, TopKDivergence, TopKSupport, top_k_rows,
};
pub use tvd::{Tvd, TvdConfig, TvdOptions, tvd_elements};
pub use uld::{
    CrossTokenizer, HybridConfig, MergeStrategy, TokenizedSide, Uld, UldAlignment, UldConfig,
    VocabularyMap, align_by_byte_offsets, merge_groups, sorted_l1,
};

/// This family's module path, as its objectives' descriptors name it.
pub(crate) const MODULE: &str = module_path!();

/// This family's descriptors, file by file, in the order of the method tables.
pub(crate) const OBJECTIVES: &[&[Descriptor]] = &[
    forward_kl::DESCRIPTORS,
    reverse_kl::DESCRIPTORS,
    jsd::DESCRIPTORS,
    symmetric_kl::DESCRIPTORS,
    skew_kl::DESCRIPTORS,
    tvd::DESCRIPTORS,
    top_k::DESCRIPTORS,
    ranking::DESCRIPTORS,
    sampled_token::DESCRIPTORS,
    minillm::DESCRIPTORS,
    distillm2::DESCRIPTORS,
    uld::DESCRIPTORS,
    mft::DESCRIPTORS,
    taid::DESCRIPTORS,
    adaptive_kl::DESCRIPTORS,
    lm_head::DESCRIPTORS,
    hidden_state::DESCRIPTORS,
    balanced::DESCRIPTORS,
    cosine::DESCRIPTORS,
];
