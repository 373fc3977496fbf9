//! DIST+: DIST's logit relations plus channel and spatial relations of a feature map.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::Tensor;
use burn::tensor::activation::softmax;

use crate::check::{check_non_negative, check_positive, check_temperature};
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::logit::dist_relations;
use crate::loss::{Loss, LossOutput};
use crate::math::pearson_rows;

/// DIST+'s channel relation of maps `[N, C, H, W]`: the mean over every `(n, h, w)` of the
/// Pearson correlation across channels, `Σ_c ãˢ ãᵗ / (√(Σ_c ãˢ² · Σ_c ãᵗ²) + ε)` with
/// `ã = a − mean_c a`. (The square root's argument is floored at `ε²`, so a pixel with constant
/// channels gets a zero gradient, not sqrt's infinite one; above the floor it is exact.)
pub fn channel_relation(s: Tensor<4>, t: Tensor<4>, eps: f64) -> Tensor<1> {
    let s = s.clone() - s.mean_dim(1);
    let t = t.clone() - t.mean_dim(1);
    let num = (s.clone() * t.clone()).sum_dim(1);
    let den = (s.square().sum_dim(1) * t.square().sum_dim(1))
        .clamp_min(eps * eps)
        .sqrt();
    (num / (den + eps)).mean()
}

/// DIST+'s spatial relation of maps `[N, C, H, W]`: the channel-summed maps `[N, H·W]`,
/// correlated over the batch at every position, `1 − mean_hw ρ(Sˢ:,hw, Sᵗ:,hw)`.
pub fn spatial_relation(s: Tensor<4>, t: Tensor<4>, eps: f64) -> Tensor<1> {
    let flat = |x: Tensor<4>| x.sum_dim(1).flatten::<2>(1, 3).transpose();
    pearson_rows(flat(s), flat(t), eps).mean().neg() + 1.0
}

/// Configuration of [`DistPlus`]; the defaults are torchdistill's.
#[derive(Config, Debug)]
pub struct DistPlusConfig {
    /// Weight β of the inter-class relation.
    #[config(default = 1.0)]
    pub beta: f64,
    /// Weight γ of the intra-class relation (torchdistill's code; its docstring calls it the
    /// spatial weight).
    #[config(default = 1.0)]
    pub gamma: f64,
    /// Weight ι of the channel relation.
    #[config(default = 1.0)]
    pub iota: f64,
    /// Weight κ of the spatial relation.
    #[config(default = 1.0)]
    pub kappa: f64,
    /// The softmax temperature τ.
    #[config(default = 1.0)]
    pub temperature: f64,
    /// The correlations' ε.
    #[config(default = 1e-8)]
    pub eps: f64,
    /// The feature tap `[N, C, H, W]` (student and teacher of the same shape).
    #[config(default = "\"feature\".to_string()")]
    pub feature: String,
}

impl DistPlusConfig {
    /// Validates the weights, the temperature and ε.
    pub fn init(&self) -> Result<DistPlus, DistillError> {
        for (field, v) in [
            ("beta", self.beta),
            ("gamma", self.gamma),
            ("iota", self.iota),
            ("kappa", self.kappa),
        ] {
            check_non_negative(DistPlus::NAME, field, v)?;
        }
        check_temperature(self.temperature)?;
        check_positive(DistPlus::NAME, "eps", self.eps)?;
        Ok(DistPlus {
            config: self.clone(),
        })
    }
}

/// DIST+ (Huang et al., TPAMI 2025, *DIST+: Knowledge Distillation From a Stronger Adaptive
/// Teacher*; torchdistill's `DISTPlusLoss`): [`Dist`](crate::logit::Dist)'s two relations of
/// `p = softmax(z/τ)` plus two relations of a feature map `F`:
///
/// ```text
/// L = τ² [β (1 − meanₙ ρ(pˢₙ, pᵗₙ)) + γ (1 − mean_c ρ(pˢ_c, pᵗ_c))]
///     + ι · mean_{n,h,w} ρ_c(Fˢ, Fᵗ)   + κ · (1 − mean_hw ρₙ(Σ_c Fˢ, Σ_c Fᵗ))
/// ```
///
/// **Follows the code, not the paper**: torchdistill adds the channel correlation itself
/// (`+ι·ρ`, which rewards *anti*-correlated channels), where the other three terms are
/// `1 − ρ`; and its docstring's weight names differ from its code (the crate follows the
/// code: γ intra, ι channel, κ spatial). Set `iota = 0` for the spatial and logit terms
/// alone. Terms `"dist_plus/inter"`, `"dist_plus/intra"`, `"dist_plus/channel"`,
/// `"dist_plus/spatial"`.
///
/// # Shapes
/// - logits `[N, K]`; the tap `[N, C, H, W]`, student and teacher alike
#[derive(Debug, Clone)]
pub struct DistPlus {
    config: DistPlusConfig,
}

crate::loss::objective!(DistPlus, "dist_plus");

impl Loss for DistPlus {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let checked = input.of(Self::NAME).within(BOUND);
        let c = &self.config;
        let (zs, zt) = checked.logits()?;
        let (fs, ft) = checked.maps(&c.feature)?;
        if fs.dims() != ft.dims() {
            return Err(checked.shape(
                format!("teacher tap `{}`", c.feature),
                fs.dims().to_vec(),
                ft.dims().to_vec(),
            ));
        }
        let scale = 1.0 / c.temperature;
        let [inter, intra] = dist_relations(softmax(zs * scale, 1), softmax(zt * scale, 1), c.eps);
        let tau2 = c.temperature * c.temperature;
        let name = |part: &str| format!("{}/{part}", Self::NAME);
        Ok(LossOutput::from_terms(vec![
            (name("inter"), inter * (c.beta * tau2)),
            (name("intra"), intra * (c.gamma * tau2)),
            (
                name("channel"),
                channel_relation(fs.clone(), ft.clone(), c.eps) * c.iota,
            ),
            (name("spatial"), spatial_relation(fs, ft, c.eps) * c.kappa),
        ]))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e15;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["DistPlus"],
    paper: "Huang et al., TPAMI 2025, *DIST+: KD From a Stronger Adaptive Teacher*",
    doc: "dist_plus.md",
    bound: Some(BOUND),
    example: Some(|_| {
        Ok(DistPlusConfig::new()
            .with_feature("paired".into())
            .init()?
            .boxed())
    }),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss DistPlus = logit::DistPlusConfig())),
    golden: crate::registry::golden!["dist_plus" => golden::dist_plus],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// torchdistill's `DISTPlusLoss`.
    pub(crate) fn dist_plus(case: &Case) -> Result<(), String> {
        let loss = DistPlusConfig::new()
            .with_beta(case.param("beta")?)
            .with_gamma(case.param("gamma")?)
            .with_iota(case.param("iota")?)
            .with_kappa(case.param("kappa")?)
            .with_temperature(case.param("tau")?)
            .with_eps(case.param("eps")?)
            .with_feature("tap".into())
            .init()
            .map_err(e)?;
        on_logits_and_tap(case, &loss)
    }
}
