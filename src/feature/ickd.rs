//! ICKD: inter-channel correlation.

use crate::loss::LossExt;
use crate::registry::{Descriptor, moved};
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{BatchNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use super::hint::{Connector, ConvReg};
use super::maps::sum_stages;
use crate::check::check_taps;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};
use crate::math::l2_normalize;

/// One tap of ICKD (torchdistill's `ChSimLoss.batch_loss`): each sample's channel Gram matrix
/// `G = F Fᵀ` over the spatial positions `[N, C, C]`, every row scaled to unit length, and
/// `Σ (Gˢ − Gᵗ)² / (C · N²)` (the reference divides by `N²`, not `N`).
pub fn channel_similarity(s: Tensor<4>, t: Tensor<4>) -> Tensor<1> {
    let [n, c, ..] = s.dims();
    let gram = |f: Tensor<4>| {
        let [n, c, h, w] = f.dims();
        let f = f.reshape([n, c, h * w]);
        let g = f.clone().matmul(f.swap_dims(1, 2));
        l2_normalize(g.reshape([n * c, c]), 1e-12)
    };
    (gram(s) - gram(t)).square().sum() * (1.0 / (c * n * n) as f64)
}

/// Configuration of [`Ickd`].
#[derive(Config, Debug)]
pub struct IckdConfig {
    /// The feature taps (pairs of a student and a teacher map of one shape).
    #[config(default = "vec![\"feature\".to_string()]")]
    pub features: Vec<String>,
    /// One weight per tap (empty: 1 each, torchdistill's default).
    #[config(default = "Vec::new()")]
    pub weights: Vec<f64>,
    /// Per tap, `[student channels, teacher channels]` of a learnable embedding (3×3
    /// convolution and batch norm, torchdistill's `ChannelSimilarityEmbed`) applied to the
    /// student's map first; empty: no embedding (the channels must then match).
    #[config(default = "Vec::new()")]
    pub embeds: Vec<[usize; 2]>,
}

impl IckdConfig {
    /// Validates the taps, weights and embeddings and builds the embeddings on `device`.
    pub fn init(&self, device: &Device) -> Result<Ickd, DistillError> {
        check_taps(Ickd::NAME, &self.features, &self.weights)?;
        if !self.embeds.is_empty() && self.embeds.len() != self.features.len() {
            return Err(DistillError::config(
                Ickd::NAME,
                "embeds",
                format!("{:?}", self.embeds),
                "one [student, teacher] channel pair per tap, or none",
            ));
        }
        if self.embeds.iter().any(|e| e.contains(&0)) {
            return Err(DistillError::config(
                Ickd::NAME,
                "embeds",
                format!("{:?}", self.embeds),
                "every channel count must be >= 1",
            ));
        }
        let embeds = self
            .embeds
            .iter()
            .map(|&[cs, ct]| ConvReg {
                conv: Connector::Conv(
                    Conv2dConfig::new([cs, ct], [3, 3])
                        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                        .with_bias(false)
                        .init(device),
                ),
                bn: BatchNormConfig::new(ct).init(device),
                relu: None,
            })
            .collect();
        Ok(Ickd {
            embeds,
            config: self.clone(),
        })
    }
}

/// Inter-channel correlation distillation (Liu et al., ICCV 2021, *Exploring Inter-Channel
/// Correlation for Diversity-preserved Knowledge Distillation*; torchdistill's `ChSimLoss`):
/// the student matches, per sample, how the teacher's channels correlate:
///
/// ```text
/// G(F) = rownormalize(F Fᵀ)   [N, C, C]        L = Σ_taps wₖ · Σ (G(e(Fˢ)) − G(Fᵗ))² / (C·N²)
/// ```
///
/// with `e` the optional learnable embedding. The paper divides by `C²`; the reference (and
/// the crate) normalises the Gram rows and divides by `C·N²`. One term `"ickd"`.
///
/// # Shapes
/// - each tap: maps `[N, C, H, W]`, student (after the embedding) and teacher of one shape
#[derive(Module, Debug)]
pub struct Ickd {
    /// The learnable embeddings, one per tap (empty: none).
    pub embeds: Vec<ConvReg>,
    #[module(skip)]
    config: IckdConfig,
}

crate::loss::objective!(Ickd, "ickd");

impl Loss for Ickd {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let checked = input.of(Self::NAME).within(BOUND).for_module(self);
        let total = sum_stages(&self.config.features, |i, name| {
            let (s, t) = checked.maps(name)?;
            // the embedding's convolution reads the channels it was built for
            if let Some(&[cs, _]) = self.config.embeds.get(i)
                && s.dims()[1] != cs
            {
                return Err(checked.shape(
                    format!("student tap `{name}` channels (the embedding's input)"),
                    vec![cs],
                    vec![s.dims()[1]],
                ));
            }
            let s = match self.embeds.get(i) {
                Some(e) => e.forward(s),
                None => s,
            };
            if s.dims() != t.dims() {
                return Err(checked.shape(
                    format!("teacher tap `{name}` (the student's map after its embedding)"),
                    s.dims().to_vec(),
                    t.dims().to_vec(),
                ));
            }
            let w = self.config.weights.get(i).copied().unwrap_or(1.0);
            Ok(channel_similarity(s, t) * w)
        })?;
        Ok(LossOutput::single(Self::NAME, total))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e15;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Ickd"],
    paper: "Liu et al., ICCV 2021, *Inter-Channel Correlation for KD*",
    doc: "ickd.md",
    bound: Some(BOUND),
    example: Some(|dev| {
        Ok(IckdConfig::new()
            .with_features(vec!["paired".into()])
            .init(dev)?
            .boxed())
    }),
    learnable: Some(|r, dev, dtype| {
        Ok(moved(
            IckdConfig::new().with_embeds(vec![[3, 6]]).init(r)?,
            dev,
            dtype,
        ))
    }),
    twins: None,
    method: Some(crate::registry::method!(learnable Ickd = feature::IckdConfig())),
    golden: crate::registry::golden!["ickd_chsim" => golden::ickd],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// torchdistill's `ChSimLoss` over its feature pairs (`student_feat_i`, `teacher_feat_i`) with
    /// their weights.
    pub(crate) fn ickd(case: &Case) -> Result<(), String> {
        let pairs = case.params["feature_pairs"]
            .as_object()
            .ok_or("no feature_pairs")?;
        let weights = pairs
            .values()
            .map(|p| number(&p["weight"]))
            .collect::<Result<Vec<_>, _>>()?;
        let mut input = DistillInput::features_only().attach_teacher();
        let mut leaves = Vec::new();
        for i in 0..weights.len() {
            let pair = case.taps(&[&format!("student_feat_{i}"), &format!("teacher_feat_{i}")])?;
            input = input.feature(format!("pair{i}"), pair[0].1.clone(), pair[1].1.clone());
            leaves.extend(pair);
        }
        let loss = IckdConfig::new()
            .with_features((0..weights.len()).map(|i| format!("pair{i}")).collect())
            .with_weights(weights)
            .init(&device())
            .map_err(e)?;
        case.check(loss.forward(&input).map_err(e)?, &borrowed(&leaves))
            .map(drop)
    }
}
