//! SoKD: student-oriented knowledge distillation (a reconstruction).
//!
//! Two plug-ins around any feature objective: [`Dafa`] augments the teacher's features with
//! a learnable mixture of feature-space operations, trained bi-level through a
//! [`MetaTeacher`](crate::meta::MetaTeacher) driving an [`Augmented`] teacher; [`Dam`]
//! restricts the wrapped loss to the areas both networks attend to.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use std::collections::BTreeMap;

use burn::config::Config;
use burn::module::{Module, ModuleDisplay, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};

use super::attention_map;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::input::{Distillable, Feature, Outputs};
use crate::loss::{Loss, LossOutput};
use crate::math::SplitMix;

/// The operations DAFA mixes, in the order of its mixture weights.
const DAFA_OPS: [&str; 5] = [
    "identity",
    "channel_scale",
    "noise",
    "spatial_drop",
    "smooth",
];

/// Configuration of [`Dafa`].
#[derive(Config, Debug)]
pub struct DafaConfig {
    /// The teacher taps augmented (maps; an embedding is treated as `[N, D, 1, 1]`).
    #[config(default = "vec![\"feature\".to_string()]")]
    pub features: Vec<String>,
    /// Initial magnitude of every operation.
    #[config(default = 0.1)]
    pub magnitude: f64,
    /// Initial weight logit of the identity (the others start at 0): 2 gives the identity
    /// about 65% of the mixture.
    #[config(default = 2.0)]
    pub identity_logit: f64,
    /// Fraction of positions the spatial drop removes.
    #[config(default = 0.1)]
    pub drop: f64,
    /// Seed of the random draws (keyed by the input's progress, or a step count).
    #[config(default = 0)]
    pub seed: u64,
    /// Augment at all (`false`: the teacher's outputs pass through untouched, for ablations).
    #[config(default = true)]
    pub enabled: bool,
}

impl DafaConfig {
    /// Validates and builds the mixture's parameters on `device`.
    pub fn init(&self, device: &Device) -> Result<Dafa, DistillError> {
        crate::check::check_non_negative(Dafa::NAME, "magnitude", self.magnitude)?;
        crate::check::check_fraction(Dafa::NAME, "drop", self.drop, false)?;
        crate::check::check_finite(Dafa::NAME, "identity_logit", self.identity_logit)?;
        let logits: Vec<f64> = (0..DAFA_OPS.len())
            .map(|k| if k == 0 { self.identity_logit } else { 0.0 })
            .collect();
        let tensor = |v: Vec<f64>| {
            let n = v.len();
            Param::from_tensor(Tensor::from_data(TensorData::new(v, [n]), device))
        };
        Ok(Dafa {
            weights: tensor(logits),
            magnitudes: tensor(vec![self.magnitude; DAFA_OPS.len() - 1]),
            smooth: AvgPool2dConfig::new([3, 3])
                .with_strides([1, 1])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_count_include_pad(false)
                .init(),
            config: self.clone(),
        })
    }
}

/// DAFA, the differentiable augmentation of the teacher's features (SoKD's first part,
/// reconstructed): a mixture, with softmax weights `π = softmax(w)`, of
///
/// ```text
/// identity     F
/// channel_scale F · (1 + m₁ z_nc)          z ~ N(0, 1) per sample and channel
/// noise        F + m₂ ε                     ε ~ N(0, 1) per element
/// spatial_drop F · (1 − m₃ d_nhw)           d ~ Bernoulli(drop) per position
/// smooth       (1 − m₄) F + m₄ avgpool₃ₓ₃(F)
/// ```
///
/// with learnable weights `w` and magnitudes `m`. The draws come from a counter-based
/// generator keyed by the seed and the step (the same on every backend), so a step's
/// augmentation is a deterministic, differentiable function of `(w, m)`. Train `w, m`
/// bi-level: wrap the teacher in [`Augmented`] and give it to a
/// [`MetaTeacher`](crate::meta::MetaTeacher), which moves them to lower the student's quiz
/// loss after a pilot step (the teacher's own weights frozen).
#[derive(Module, Debug)]
pub struct Dafa {
    /// Mixture weight logits, one per augmentation operation.
    pub weights: Param<Tensor<1>>,
    /// Magnitudes of the four non-identity operations.
    pub magnitudes: Param<Tensor<1>>,
    smooth: AvgPool2d,
    #[module(skip)]
    config: DafaConfig,
}

impl Dafa {
    /// The name its configuration errors carry.
    pub const NAME: &'static str = "dafa";

    /// The mixture weights `softmax(w)`, as `f64`.
    pub fn mixture(&self) -> Vec<f64> {
        softmax(self.weights.val().detach(), 0)
            .into_data()
            .convert::<f64>()
            .try_to_vec::<f64>()
            .unwrap_or_default()
    }

    /// Augments one map `[N, C, H, W]` with the draws of `key`.
    pub fn augment(&self, f: Tensor<4>, key: u64) -> Tensor<4> {
        let [n, c, h, w] = f.dims();
        let (device, dtype) = (f.device(), f.dtype());
        let mut rng = SplitMix::keyed(self.config.seed, "dafa", key);
        let mut gaussian = |count: usize| -> Vec<f64> {
            (0..count)
                .map(|_| {
                    let (u1, u2) = (rng.unit().max(1e-300), rng.unit());
                    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
                })
                .collect()
        };
        let draw = |v: Vec<f64>, shape: [usize; 4]| {
            Tensor::<4>::from_data(TensorData::new(v, shape), (&device, dtype))
        };
        let z = draw(gaussian(n * c), [n, c, 1, 1]);
        let eps = draw(gaussian(n * c * h * w), [n, c, h, w]);
        let drop = self.config.drop;
        let d: Vec<f64> = (0..n * h * w)
            .map(|_| if rng.unit() < drop { 1.0 } else { 0.0 })
            .collect();
        let d = draw(d, [n, 1, h, w]);

        let pi = softmax(self.weights.val(), 0).cast(dtype);
        let m = self.magnitudes.val().cast(dtype);
        let at = |t: &Tensor<1>, k: usize| t.clone().slice(k..k + 1).reshape([1, 1, 1, 1]);
        let ops = [
            f.clone(),
            f.clone() * (z * at(&m, 0) + 1.0),
            f.clone() + eps * at(&m, 1),
            f.clone() * (-(d * at(&m, 2)) + 1.0),
            f.clone() * (-at(&m, 3) + 1.0) + self.smooth.forward(f) * at(&m, 3),
        ];
        ops.into_iter()
            .enumerate()
            .map(|(k, op)| op * at(&pi, k))
            .reduce(|a, b| a + b)
            .expect("five operations")
    }

    /// `outputs` with the configured taps augmented (keyed by `key`).
    pub fn apply(&self, outputs: Outputs, key: u64) -> Outputs {
        if !self.config.enabled {
            return outputs;
        }
        let features: BTreeMap<String, Feature> = outputs
            .features
            .into_iter()
            .map(|(name, f)| {
                if !self.config.features.contains(&name) {
                    return (name, f);
                }
                let f = match f {
                    Feature::Map(t) => Feature::Map(self.augment(t, key)),
                    Feature::Embedding(t) => {
                        let [n, d] = t.dims();
                        Feature::Embedding(
                            self.augment(t.reshape([n, d, 1, 1]), key).reshape([n, d]),
                        )
                    }
                };
                (name, f)
            })
            .collect();
        Outputs {
            logits: outputs.logits,
            features,
        }
    }
}

/// A teacher whose feature taps pass through [`Dafa`]: give it to a
/// [`MetaTeacher`](crate::meta::MetaTeacher) (with the teacher frozen, `teacher.no_grad()`)
/// to train DAFA bi-level. Each call draws new augmentations (a step counter keys them);
/// [`with_key`](Self::with_key) fixes the key.
#[derive(Module, Debug)]
pub struct Augmented<T: Module> {
    /// The teacher (freeze it: only DAFA should learn).
    pub teacher: T,
    /// The augmentation.
    pub dafa: Dafa,
    #[module(skip)]
    key: Option<u64>,
    #[module(skip)]
    calls: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<T: Module + ModuleDisplay> Augmented<T> {
    /// `teacher` augmented by `dafa`.
    pub fn new(teacher: T, dafa: Dafa) -> Self {
        Self {
            teacher,
            dafa,
            key: None,
            calls: Default::default(),
        }
    }

    /// The same, with every call using the draws of `key`.
    pub fn with_key(mut self, key: u64) -> Self {
        self.key = Some(key);
        self
    }
}

impl<T: Distillable + ModuleDisplay> Distillable for Augmented<T> {
    type Input = T::Input;

    fn run(&self, input: &T::Input) -> Outputs {
        let key = self.key.unwrap_or_else(|| {
            self.calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        });
        self.dafa.apply(self.teacher.run(input), key)
    }
}

/// How [`Dam`] masks.
#[derive(Config, Debug, PartialEq, Copy)]
pub enum DamMode {
    /// No mask: the wrapped loss as it is.
    Off,
    /// `M = o / max o`, with `o = âˢ · âᵗ` the overlap of the normalised attentions.
    Soft,
    /// `M = 1` on the top `fraction` of positions by overlap, 0 elsewhere.
    TopK,
}

/// Configuration of [`Dam`].
#[derive(Config, Debug)]
pub struct DamConfig {
    /// The taps masked (student and teacher maps of the same spatial size).
    #[config(default = "vec![\"feature\".to_string()]")]
    pub features: Vec<String>,
    /// The mask.
    #[config(default = "DamMode::Soft")]
    pub mode: DamMode,
    /// Fraction of positions kept by [`DamMode::TopK`], in (0, 1].
    #[config(default = 0.5)]
    pub fraction: f64,
}

impl DamConfig {
    /// Validates the fraction and wraps `inner`.
    pub fn init<L: Loss>(&self, inner: L) -> Result<Dam<L>, DistillError> {
        crate::check::check_share(Dam::<()>::NAME, "fraction", self.fraction)?;
        Ok(Dam {
            inner,
            config: self.clone(),
        })
    }
}

/// DAM, the distinctive-area module (SoKD's second part, reconstructed): the wrapped feature
/// objective only sees the areas both networks attend to. With `a(F)` AT's attention map
/// ([`attention_map`], `mean_c F²` of unit length per sample), the overlap `o = a(Fˢ) · a(Fᵗ)` gives a mask `M` `[N, 1, H, W]`
/// (soft: `o / max o`; top-k: the top fraction of positions), and both maps are multiplied by
/// it before `inner` reads them. The soft mask is part of the objective (gradients flow
/// through it); the top-k selection is piecewise constant. Terms are `inner`'s.
#[derive(Debug, Clone)]
pub struct Dam<L> {
    inner: L,
    config: DamConfig,
}

impl<L> Dam<L> {
    /// The mask `[N, 1, H, W]` for a pair of maps of the same spatial size.
    pub fn mask(&self, student: Tensor<4>, teacher: Tensor<4>) -> Tensor<4> {
        let ([n, _, h, w], dtype) = (student.dims(), student.dtype());
        // AT's attention maps: their per-sample scale cancels in `o / max o` and in a ranking
        let overlap = attention_map(student, 2.0) * attention_map(teacher, 2.0);
        let mask = match self.config.mode {
            DamMode::Off => overlap.ones_like(),
            DamMode::Soft => overlap.clone() / overlap.max_dim(1).clamp_min(1e-12),
            DamMode::TopK => {
                let k = ((self.config.fraction * (h * w) as f64).ceil() as usize).clamp(1, h * w);
                let flat = overlap.detach();
                let kth = flat.clone().topk(k, 1).slice([0..n, k - 1..k]);
                flat.greater_equal(kth).float().cast(dtype)
            }
        };
        mask.reshape([n, 1, h, w])
    }
}

crate::loss::objective!(Dam<L>, "dam");

impl<L: Loss> Loss for Dam<L> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        if self.config.mode == DamMode::Off {
            return self.inner.forward(input);
        }
        let mut masked = input.clone();
        for name in &self.config.features {
            let (s, t) = input.of(Self::NAME).within(BOUND).maps(name)?;
            if s.dims()[2..] != t.dims()[2..] {
                return Err(DistillError::ShapeMismatch {
                    objective: Self::NAME.into(),
                    what: format!("teacher tap `{name}` spatial size"),
                    expected: s.dims()[2..].to_vec(),
                    actual: t.dims()[2..].to_vec(),
                });
            }
            let mask = self.mask(s.clone(), t.clone());
            masked = masked.feature(name.clone(), s * mask.clone(), t * mask);
        }
        self.inner.forward(&masked)
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e15;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Dafa", "Augmented", "Dam"],
    paper: "Shen et al. 2024, SoKD (reconstruction from the abstract)",
    doc: "sokd.md",
    bound: Some(BOUND),
    example: Some(|_| {
        Ok(DamConfig::new()
            .init(super::AtConfig::new().init()?)?
            .boxed())
    }),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(wrapper Dam<()> = feature::DamConfig())),
    golden: crate::registry::golden![],
}];
