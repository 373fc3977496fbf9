//! PKT: probabilistic knowledge transfer.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::Tensor;

use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};
use crate::math::exact_row_norms;

/// PKT's loss between student and teacher rows `[N, D]` (any widths): the mean over the `N²`
/// entries of `Pᵗ log((Pᵗ + ε) / (Pˢ + ε))`.
pub fn pkt_loss(student: Tensor<2>, teacher: Tensor<2>, eps: f64) -> Tensor<1> {
    let (ps, pt) = (distribution(student, eps), distribution(teacher, eps));
    (pt.clone() * ((pt + eps).log() - (ps + eps).log())).mean()
}

/// Each row's cosine similarities to the batch, mapped to [0, 1] and normalised.
fn distribution(x: Tensor<2>, eps: f64) -> Tensor<2> {
    // the reference's ‖x‖, with the subgradient 0 where a row is all zero (its `sqrt` gives NaN)
    let x = x.clone() / (exact_row_norms(x) + eps);
    let k = (x.clone().matmul(x.transpose()) + 1.0) * 0.5;
    k.clone() / k.sum_dim(1)
}

/// Configuration of [`Pkt`].
#[derive(Config, Debug)]
pub struct PktConfig {
    /// The feature tap compared.
    #[config(default = "\"embedding\".to_string()")]
    pub feature: String,
    /// The reference's `eps` (in the normalisation and inside the log).
    #[config(default = 1e-7)]
    pub eps: f64,
}

impl PktConfig {
    /// Validates `eps`.
    pub fn init(&self) -> Result<Pkt, DistillError> {
        crate::check::check_positive(Pkt::NAME, "eps", self.eps)?;
        Ok(Pkt {
            feature: self.feature.clone(),
            eps: self.eps,
        })
    }
}

/// PKT (Passalis & Tefas, ECCV 2018, *Learning Deep Representations with Probabilistic
/// Knowledge Transfer*): each row's cosine similarities to the batch, mapped to [0, 1] and
/// normalised into a distribution, matched in KL:
///
/// ```text
/// x̂ = x / (‖x‖ + ε)      Kᵢⱼ = (⟨x̂ᵢ, x̂ⱼ⟩ + 1) / 2      Pᵢⱼ = Kᵢⱼ / Σⱼ Kᵢⱼ
/// L = mean_ij Pᵗᵢⱼ · log((Pᵗᵢⱼ + ε) / (Pˢᵢⱼ + ε))
/// ```
///
/// as mdistiller's `pkt_loss` (mean over the `N²` entries, `N ≥ 2`). An all-zero row gives a
/// finite loss and gradient here: the norm's subgradient 0 there, so the row's gradient is
/// exactly `∂L/∂x̂ / ε` (the reference's `sqrt` at 0 gives NaN gradients).
#[derive(Debug, Clone)]
pub struct Pkt {
    feature: String,
    eps: f64,
}

crate::loss::objective!(Pkt, "pkt");

impl Loss for Pkt {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let (s, t) = input.of(Pkt::NAME).within(BOUND).rows(&self.feature, 2)?;
        Ok(LossOutput::single(Pkt::NAME, pkt_loss(s, t, self.eps)))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = f64::MAX;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Pkt"],
    paper: "Passalis & Tefas, ECCV 2018, *Probabilistic Knowledge Transfer*",
    doc: "pkt.md",
    bound: Some(BOUND),
    example: Some(|_| Ok(PktConfig::new().init()?.boxed())),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss Pkt = relation::PktConfig())),
    golden: crate::registry::golden!["pkt" => golden::pkt],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// mdistiller's `pkt_loss` on the embedding taps; where the reference's student gradient is NaN
    /// (an all-zero row), the closed form of `exact::pkt_student_grad` instead.
    pub(crate) fn pkt(case: &Case) -> Result<(), String> {
        let loss = PktConfig::new()
            .with_eps(case.param("eps")?)
            .init()
            .map_err(e)?;
        let (s, t) = (tap(case, "feat_student")?, tap(case, "feat_teacher")?);
        let input = DistillInput::features_only()
            .feature("embedding", s.clone(), t.clone())
            .attach_teacher();
        let out = loss.forward(&input).map_err(e)?;
        case.expect_loss(out.value(), None)?;
        let grads = out.total.backward();
        let ((sd, sv), (td, tv)) = (case.input("feat_student")?, case.input("feat_teacher")?);
        let eps = case.param("eps")?;
        let exact = || exact::pkt_student_grad(sv, sd[1], tv, td[1], eps);
        case.expect_grad("feat_student", grad(&s, &grads), Some(&exact))?;
        case.expect_grad("feat_teacher", grad(&t, &grads), None)
    }
}
