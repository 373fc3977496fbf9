//! SRD: the simple recipe of distillation (a log feature distance plus KD).

use crate::loss::LossExt;
use crate::registry::{Descriptor, moved};
use burn::config::Config;
use burn::module::Module;
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor};

use crate::check::{check_count, check_positive, check_temperature};
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};
use crate::math::kl_rows;

/// SRD's feature term: `2 · log Σ |fˢ − fᵗ|^e` over the whole batch (the sum floored at 1e-30:
/// identical features give `2 log 1e-30`, not `−∞`).
pub fn srd_feature(student: Tensor<2>, teacher: Tensor<2>, exponent: f64) -> Tensor<1> {
    let d = (student - teacher).abs();
    let d = match exponent {
        1.0 => d,
        2.0 => d.square(),
        e => d.powf_scalar(e),
    };
    d.sum().clamp_min(1e-30).log() * 2.0
}

/// SRD's projector: the student's feature to the teacher's width, then batch norm
/// (torchdistill's `SRDModelWrapper` with `linear_kwargs`).
#[derive(Module, Debug)]
pub struct SrdProjector {
    /// `student width → teacher width`.
    pub linear: Linear,
    /// Batch norm over the teacher's width.
    pub norm: BatchNorm,
}

/// Configuration of [`Srd`]; the defaults are torchdistill's.
#[derive(Config, Debug)]
pub struct SrdConfig {
    /// The feature tap (maps are flattened per sample).
    #[config(default = "\"embedding\".to_string()")]
    pub feature: String,
    /// `[student width, teacher width]` of a learnable projector; `None`: the widths match.
    #[config(default = "None")]
    pub projector: Option<[usize; 2]>,
    /// The exponent `e` of the feature distance.
    #[config(default = 1.0)]
    pub exponent: f64,
    /// The softmax temperature of the KL term (no `T²` factor, as the reference).
    #[config(default = 1.0)]
    pub temperature: f64,
}

impl SrdConfig {
    /// Validates the configuration and builds the projector on `device`.
    pub fn init(&self, device: &Device) -> Result<Srd, DistillError> {
        check_positive(Srd::NAME, "exponent", self.exponent)?;
        check_temperature(self.temperature)?;
        let projector = match self.projector {
            Some([ds, dt]) => {
                check_count(Srd::NAME, "projector", ds.min(dt), 1)?;
                Some(SrdProjector {
                    linear: LinearConfig::new(ds, dt).init(device),
                    norm: BatchNormConfig::new(dt).init(device),
                })
            }
            None => None,
        };
        Ok(Srd {
            projector,
            config: self.clone(),
        })
    }
}

/// SRD (Miles & Mikolajczyk, AAAI 2024, *Understanding the Role of the Projector in Knowledge
/// Distillation*, <https://arxiv.org/abs/2303.11098>; torchdistill's `SRDLoss`): a
/// log-distance between the student's projected features and the teacher's, plus KD:
///
/// ```text
/// L = 2 · log Σ_{n,d} |p(fˢ) − fᵗ|^e  +  (1/N) Σₙ KL(softmax(zᵗ/T) ‖ softmax(zˢ/T))
/// ```
///
/// with `p` the optional projector (linear then batch norm). The KL term has no `T²`
/// (torchdistill's `KLDivLoss(reduction='batchmean')`). Terms `"srd/feature"` and `"srd/kl"`.
///
/// # Shapes
/// - the tap: student `[N, Ds]`, teacher `[N, Dt]` (maps flattened); logits `[N, C]`
#[derive(Module, Debug)]
pub struct Srd {
    /// The learnable projector (`None`: the widths match).
    pub projector: Option<SrdProjector>,
    #[module(skip)]
    config: SrdConfig,
}

crate::loss::objective!(Srd, "srd");

impl Loss for Srd {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let checked = input.of(Self::NAME).within(BOUND).for_module(self);
        let name = &self.config.feature;
        let (s, t) = checked.rows(name, 1)?;
        let s = match (&self.projector, self.config.projector) {
            (Some(p), Some([ds, _])) if s.dims()[1] == ds => p.norm.forward(p.linear.forward(s)),
            (Some(_), Some([ds, _])) => {
                return Err(checked.shape(
                    format!("student width of tap `{name}` (the projector's input)"),
                    vec![ds],
                    vec![s.dims()[1]],
                ));
            }
            _ => s,
        };
        if s.dims() != t.dims() {
            return Err(checked.shape(
                format!("teacher tap `{name}` (the student's after the projector)"),
                s.dims().to_vec(),
                t.dims().to_vec(),
            ));
        }
        let (zs, zt) = checked.logits()?;
        let scale = 1.0 / self.config.temperature;
        let kl = kl_rows(log_softmax(zt * scale, 1), log_softmax(zs * scale, 1)).mean();
        Ok(LossOutput::from_terms(vec![
            (
                format!("{}/feature", Self::NAME),
                srd_feature(s, t, self.config.exponent),
            ),
            (format!("{}/kl", Self::NAME), kl),
        ]))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e30;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Srd"],
    paper: "Miles & Mikolajczyk, AAAI 2024, *Understanding the Role of the Projector in KD*",
    doc: "srd.md",
    bound: Some(BOUND),
    example: Some(|dev| {
        Ok(SrdConfig::new()
            .with_feature("paired".into())
            .init(dev)?
            .boxed())
    }),
    learnable: Some(|r, dev, dtype| {
        Ok(moved(
            SrdConfig::new().with_projector(Some([4, 5])).init(r)?,
            dev,
            dtype,
        ))
    }),
    twins: None,
    method: Some(crate::registry::method!(learnable Srd = feature::SrdConfig())),
    golden: crate::registry::golden!["srd" => golden::srd],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// torchdistill's `SRDLoss` (features already projected).
    pub(crate) fn srd(case: &Case) -> Result<(), String> {
        if case.params["reduction"].as_str() != Some("batchmean") {
            return Err(format!(
                "{NOT_YET}SRD's KL reduction {:?}",
                case.params["reduction"]
            ));
        }
        let loss = SrdConfig::new()
            .with_feature("tap".into())
            .with_exponent(case.param("exponent")?)
            .with_temperature(case.param("temperature")?)
            .init(&device())
            .map_err(e)?;
        on_logits_and_tap(case, &loss)
    }
}
