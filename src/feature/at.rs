//! AT: attention transfer.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::Tensor;

use super::maps::{pool_to_smaller, sum_stages};
use crate::check::{check_non_negative, check_power, check_taps};
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};
use crate::math::l2_normalize;

/// Configuration of [`At`]; the defaults are the paper's (p = 2, β/2 = 1000).
#[derive(Config, Debug)]
pub struct AtConfig {
    /// The feature taps, one per stage; their losses are summed.
    #[config(default = "vec![\"feature\".to_string()]")]
    pub features: Vec<String>,
    /// The power `p` of the attention map.
    #[config(default = 2.0)]
    pub p: f64,
    /// Weight of the summed loss (mdistiller: 1000).
    #[config(default = 1000.0)]
    pub weight: f64,
}

impl AtConfig {
    /// Validates `p`, the weight and that there is a tap.
    pub fn init(&self) -> Result<At, DistillError> {
        check_power(At::NAME, "p", self.p)?;
        check_non_negative(At::NAME, "weight", self.weight)?;
        check_taps(At::NAME, &self.features, &[])?;
        Ok(At {
            config: self.clone(),
        })
    }
}

/// Attention transfer (Zagoruyko & Komodakis, ICLR 2017, *Paying More Attention to
/// Attention*; mdistiller's `at_loss`): per stage,
///
/// ```text
/// a(F) = normalize(mean_c F^p)  flattened over H·W        L = w · Σ_stages mean (a(Fˢ) − a(Fᵗ))²
/// ```
///
/// When the spatial sizes differ, the larger map is average-pooled (adaptively) to the smaller
/// one; channel counts may differ freely. One term `"at"`.
#[derive(Debug, Clone)]
pub struct At {
    config: AtConfig,
}

/// `normalize(mean_c F^p)` flattened: `[N, C, H, W]` → `[N, H·W]`.
pub fn attention_map(f: Tensor<4>, p: f64) -> Tensor<2> {
    let powered = if p == 2.0 {
        f.square()
    } else {
        f.abs().powf_scalar(p)
    };
    l2_normalize(powered.mean_dim(1).flatten(1, 3), 1e-12)
}

crate::loss::objective!(At, "at");

impl Loss for At {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let p = self.config.p;
        let total = sum_stages(&self.config.features, |_, name| {
            let (s, t) = input.of(At::NAME).within(BOUND).maps(name)?;
            let (s, t) = pool_to_smaller(s, t);
            Ok((attention_map(s, p) - attention_map(t, p)).square().mean())
        })?;
        Ok(LossOutput::single(At::NAME, total * self.config.weight))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e15;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["At"],
    paper: "Zagoruyko & Komodakis, ICLR 2017, *Paying More Attention to Attention*",
    doc: "at.md",
    bound: Some(BOUND),
    example: Some(|_| Ok(AtConfig::new().init()?.boxed())),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss At = feature::AtConfig())),
    golden: crate::registry::golden!["at" => golden::at],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// Attention transfer over one stage (`feat_student`) or several (`feat_student_0`, …).
    pub(crate) fn at(case: &Case) -> Result<(), String> {
        let stages: Vec<String> = if case.has("feat_student") {
            vec![String::new()]
        } else {
            (0..)
                .map(|i| format!("_{i}"))
                .take_while(|k| case.has(&format!("feat_student{k}")))
                .collect()
        };
        let mut input = DistillInput::features_only().attach_teacher();
        let mut taps = Vec::new();
        for k in &stages {
            let (fs, ft) = (format!("feat_student{k}"), format!("feat_teacher{k}"));
            let (s, t) = (tap(case, &fs)?, tap(case, &ft)?);
            input = input.feature(format!("stage{k}"), s.clone(), t.clone());
            taps.push((fs, s));
            taps.push((ft, t));
        }
        let at = AtConfig::new()
            .with_features(stages.iter().map(|k| format!("stage{k}")).collect())
            .with_p(case.param("p")?)
            .with_weight(1.0)
            .init()
            .map_err(e)?;
        let taps: Vec<(&str, Feature)> =
            taps.iter().map(|(n, f)| (n.as_str(), f.clone())).collect();
        case.check(at.forward(&input).map_err(e)?, &taps).map(drop)
    }
}
