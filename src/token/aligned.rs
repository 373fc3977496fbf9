//! Teacher and student vocabularies of different sizes.

use burn::config::Config;
use burn::tensor::Tensor;

use super::tokens::TokenDivergence;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};

/// How [`Aligned`] makes a teacher's vocabulary of another size meet the student's. The first
/// `min(Vs, Vt)` ids are taken to be the same tokens (a padded embedding, a tokenizer extended
/// at its end).
#[derive(Config, Debug, Copy, PartialEq)]
pub enum VocabAlignment {
    /// The smaller side is right-padded with `logit` (Liger pads a smaller student with 0;
    /// −∞ makes the padding masked vocabulary, probability 0).
    Pad {
        /// The padding's logit.
        logit: f64,
    },
    /// The teacher's extra entries are dropped (its padded rows of an embedding, as in
    /// torchtune #2119: Qwen's 152,064 against 151,936); the teacher renormalises over the
    /// student's vocabulary. A teacher smaller than the student is an error.
    Truncate,
}

/// A token objective whose teacher may have another vocabulary size than the student: the
/// logits are aligned by [`VocabAlignment`] and passed on (the padding is a constant, so
/// gradients reach only the real entries). Without a mismatch it is the inner objective.
/// Through [`FusedLinear`](super::FusedLinear) the two lm-heads may then differ in `V`.
#[derive(Debug, Clone)]
pub struct Aligned<L> {
    inner: L,
    alignment: VocabAlignment,
}

impl<L: TokenDivergence> Aligned<L> {
    /// `inner` with `alignment`; a padding logit that is NaN or +∞ is an error.
    pub fn new(inner: L, alignment: VocabAlignment) -> Result<Self, DistillError> {
        if let VocabAlignment::Pad { logit } = alignment
            && (logit.is_nan() || logit == f64::INFINITY)
        {
            return Err(DistillError::config(
                inner.name(),
                "alignment (padding logit)",
                logit,
                "must be finite or −∞",
            ));
        }
        Ok(Self { inner, alignment })
    }

    /// The wrapped objective.
    pub fn inner(&self) -> &L {
        &self.inner
    }
}

/// `x` `[N, V]` right-padded with `logit` to `[N, width]`.
fn pad(x: Tensor<2>, width: usize, logit: f64) -> Tensor<2> {
    let [n, v] = x.dims();
    let fill = Tensor::<2>::full([n, width - v], logit, (&x.device(), x.dtype()));
    Tensor::cat(vec![x, fill], 1)
}

impl<L: TokenDivergence> Loss for Aligned<L> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let checked = input.of(self.inner.name()).masked();
        let (s, t) = checked.logits_of_any_vocabulary()?;
        let ([_, vs], [_, vt]) = (s.dims(), t.dims());
        let (s, t) = match (self.alignment, vs.cmp(&vt)) {
            (_, std::cmp::Ordering::Equal) => return self.inner.forward(input),
            (VocabAlignment::Pad { logit }, std::cmp::Ordering::Less) => (pad(s, vt, logit), t),
            (VocabAlignment::Pad { logit }, std::cmp::Ordering::Greater) => (s, pad(t, vs, logit)),
            (VocabAlignment::Truncate, std::cmp::Ordering::Less) => (s, t.narrow(1, 0, vs)),
            (VocabAlignment::Truncate, std::cmp::Ordering::Greater) => {
                return Err(DistillError::ClassMismatch {
                    objective: self.inner.name().into(),
                    student: vs,
                    teacher: vt,
                });
            }
        };
        // the teacher as read (detached unless attached): attaching it again changes nothing
        let aligned = match input.is_teacher_attached() {
            true => input.with_logits(s, t),
            false => input.with_logits(s, t.detach()),
        };
        self.inner.forward(&aligned)
    }
}

/// No fused kernel: the aligned logits go through the inner objective's composed path.
impl<L: TokenDivergence> TokenDivergence for Aligned<L> {
    fn aligns_vocabulary(&self) -> bool {
        true
    }
}
