use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::Tensor;
use burn::tensor::activation::softmax;

use crate::check::{check_non_negative, check_temperature};
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput, Tempered};
use crate::math::{Temperature, pearson_rows};

/// DIST's two relation losses from class distributions `[N, C]`:
/// `[1 − meanₙ ρ(pˢₙ,:, pᵀₙ,:), 1 − mean_c ρ(pˢ:,c, pᵀ:,c)]` (inter-class, intra-class), without
/// weights or `τ²`.
pub fn dist_relations(ps: Tensor<2>, pt: Tensor<2>, eps: f64) -> [Tensor<1>; 2] {
    let inter = pearson_rows(ps.clone(), pt.clone(), eps).mean().neg() + 1.0;
    let intra = pearson_rows(ps.transpose(), pt.transpose(), eps)
        .mean()
        .neg()
        + 1.0;
    [inter, intra]
}

/// Configuration to create a [`Dist`] objective.
#[derive(Config, Debug)]
pub struct DistConfig {
    /// Weight β of the inter-class relation (rows: one sample's class distribution).
    #[config(default = 1.0)]
    pub beta: f64,
    /// Weight γ of the intra-class relation (columns: one class across the batch).
    #[config(default = 1.0)]
    pub gamma: f64,
    /// The softmax temperature τ (> 0): 1 on ImageNet, 4 on CIFAR-100 (with β = γ = 2).
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Floor of each norm in the Pearson correlation.
    #[config(default = 1e-8)]
    pub eps: f64,
}

impl DistConfig {
    /// Validates the configuration and builds the objective.
    pub fn init(&self) -> Result<Dist, DistillError> {
        crate::check::check_positive(Dist::NAME, "eps", self.eps)?;
        Ok(Dist {
            beta: check_non_negative(Dist::NAME, "beta", self.beta)?,
            gamma: check_non_negative(Dist::NAME, "gamma", self.gamma)?,
            temperature: check_temperature(self.temperature)?,
            eps: self.eps,
        })
    }
}

/// DIST, as described in [Knowledge Distillation from A Stronger
/// Teacher](https://arxiv.org/abs/2205.10536) (Huang et al., NeurIPS 2022): match the
/// *relations* of the class distributions, not their values, with Pearson correlations of
/// `p = softmax(z/τ)`:
///
/// `DIST = τ² · [β · (1 − meanₙ ρ(pˢₙ,:, pᵀₙ,:)) + γ · (1 − mean_c ρ(pˢ:,c, pᵀ:,c))]`
///
/// (torchdistill's `DISTLoss`). Terms: `"dist/inter"` (rows) and `"dist/intra"` (columns). The
/// intra-class term correlates each class over the batch: it depends on the whole batch.
///
/// # Shapes
/// - student and teacher logits: `[N, C]`
#[derive(Debug, Clone)]
pub struct Dist {
    beta: f64,
    gamma: f64,
    temperature: f64,
    eps: f64,
}

crate::loss::objective!(Dist, "dist");

impl Loss for Dist {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        self.forward_at(input, &Temperature::Fixed(self.temperature))
    }
}

impl Tempered for Dist {
    fn forward_at(
        &self,
        input: &DistillInput,
        temperature: &Temperature,
    ) -> Result<LossOutput, DistillError> {
        let (s, t) = input.of(Dist::NAME).within(BOUND).logits()?;
        let ps = softmax(temperature.scale(s), 1);
        let pt = softmax(temperature.scale(t), 1);
        let [inter, intra] = dist_relations(ps, pt, self.eps);
        Ok(LossOutput::from_terms(vec![
            (
                format!("{}/inter", Dist::NAME),
                temperature.times_squared(inter * self.beta),
            ),
            (
                format!("{}/intra", Dist::NAME),
                temperature.times_squared(intra * self.gamma),
            ),
        ]))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = f64::MAX;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Dist"],
    paper: "Huang et al., NeurIPS 2022, *Knowledge Distillation from A Stronger Teacher*",
    doc: "dist.md",
    bound: Some(BOUND),
    example: Some(|_| Ok(DistConfig::new().init()?.boxed())),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss Dist = logit::DistConfig())),
    golden: crate::registry::golden!["dist" => golden::dist],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    pub(crate) fn dist(case: &Case) -> Result<(), String> {
        let dist = DistConfig::new()
            .with_beta(case.param("beta")?)
            .with_gamma(case.param("gamma")?)
            .with_temperature(case.param("tau")?)
            .with_eps(case.param("eps")?)
            .init()
            .map_err(e)?;
        on_logits(case, &dist)
    }
}
