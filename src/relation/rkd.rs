//! RKD: relational knowledge distillation (distances and angles).

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::nn::loss::HuberLossConfig;
use burn::tensor::Tensor;

use crate::check::check_non_negative;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};
use crate::math::{l2_normalize, pairwise_distances};

/// The distance and angle potentials of a batch of rows.
fn potentials(x: Tensor<2>, squared: bool, eps: f64) -> (Tensor<2>, Tensor<3>) {
    let [n, d] = x.dims();
    let dist = pairwise_distances(x.clone(), squared, eps);
    let off = (n * (n - 1)) as f64;
    let dist = dist.clone() / (dist.sum() * (1.0 / off)).unsqueeze();
    let diff = x.clone().unsqueeze_dim::<3>(0) - x.unsqueeze_dim::<3>(1); // [i, j] = xⱼ − xᵢ
    let unit = l2_normalize(diff.reshape([n * n, d]), 1e-12).reshape([n, n, d]);
    (dist, unit.clone().matmul(unit.swap_dims(1, 2)))
}

/// Configuration of [`Rkd`]; the defaults are the paper's (and mdistiller's).
#[derive(Config, Debug)]
pub struct RkdConfig {
    /// The feature tap compared.
    #[config(default = "\"embedding\".to_string()")]
    pub feature: String,
    /// Weight of the distance term.
    #[config(default = 25.0)]
    pub distance_weight: f64,
    /// Weight of the angle term.
    #[config(default = 50.0)]
    pub angle_weight: f64,
    /// Compare squared distances.
    #[config(default = false)]
    pub squared: bool,
    /// Lower clamp of the squared distances (at least `1.2e-38`, which float32 holds).
    #[config(default = 1e-12)]
    pub eps: f64,
}

impl RkdConfig {
    /// Validates the weights and `eps`.
    pub fn init(&self) -> Result<Rkd, DistillError> {
        check_non_negative(Rkd::NAME, "distance_weight", self.distance_weight)?;
        check_non_negative(Rkd::NAME, "angle_weight", self.angle_weight)?;
        crate::check::check_floor(Rkd::NAME, "eps", self.eps)?;
        Ok(Rkd {
            config: self.clone(),
        })
    }
}

/// RKD (Park, Kim, Lu, Cho, CVPR 2019, *Relational Knowledge Distillation*):
///
/// ```text
/// L = w_d · smoothL1(ψ_D(s), ψ_D(t)) + w_a · smoothL1(ψ_A(s), ψ_A(t))
/// ψ_D(x)ᵢⱼ = ‖xᵢ − xⱼ‖ / mean_{k≠l} ‖x_k − x_l‖
/// ψ_A(x)ᵢⱼₖ = ⟨(xⱼ − xᵢ)/‖·‖, (x_k − xᵢ)/‖·‖⟩
/// ```
///
/// over a batch of `N ≥ 2` rows (smooth-L1 with β = 1, mean over the `N²` and `N³`
/// entries), as mdistiller's `rkd_loss`. Terms `"rkd/distance"` and `"rkd/angle"` (weighted).
/// The angle term costs `O(N³)` memory.
#[derive(Debug, Clone)]
pub struct Rkd {
    config: RkdConfig,
}

crate::loss::objective!(Rkd, "rkd");

impl Loss for Rkd {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let (s, t) = input.of(Rkd::NAME).within(BOUND).rows(&c.feature, 2)?;
        let (sd, sa) = potentials(s, c.squared, c.eps);
        let (td, ta) = potentials(t, c.squared, c.eps);
        let huber = HuberLossConfig::new(1.0).init();
        let smooth_l1 = |a: Tensor<2>, b: Tensor<2>| huber.forward_no_reduction(a, b).mean();
        let n = sa.dims()[0];
        let flat = |x: Tensor<3>| x.reshape([n * n, n]);
        Ok(LossOutput::from_terms(vec![
            (
                format!("{}/distance", Rkd::NAME),
                smooth_l1(sd, td) * c.distance_weight,
            ),
            (
                format!("{}/angle", Rkd::NAME),
                smooth_l1(flat(sa), flat(ta)) * c.angle_weight,
            ),
        ]))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e15;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Rkd"],
    paper: "Park et al., CVPR 2019, *Relational Knowledge Distillation*",
    doc: "rkd.md",
    bound: Some(BOUND),
    example: Some(|_| Ok(RkdConfig::new().init()?.boxed())),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss Rkd = relation::RkdConfig())),
    golden: crate::registry::golden!["rkd" => golden::rkd],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// mdistiller's `RKDLoss` on the embedding taps.
    pub(crate) fn rkd(case: &Case) -> Result<(), String> {
        let loss = RkdConfig::new()
            .with_distance_weight(case.param("distance_weight")?)
            .with_angle_weight(case.param("angle_weight")?)
            .with_eps(case.param("eps")?)
            .init()
            .map_err(e)?;
        on_embedding(case, &loss)
    }
}
