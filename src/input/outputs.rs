//! What a network exposes to the objectives: its logits and named feature taps.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{Int, Tensor};

/// One intermediate representation tapped from a network.
#[derive(Debug, Clone)]
pub enum Feature {
    /// A convolutional feature map `[N, C, H, W]`.
    Map(Tensor<4>),
    /// An embedding `[N, D]` (e.g. the penultimate layer).
    Embedding(Tensor<2>),
}

impl From<Tensor<4>> for Feature {
    fn from(t: Tensor<4>) -> Self {
        Feature::Map(t)
    }
}

impl From<Tensor<2>> for Feature {
    fn from(t: Tensor<2>) -> Self {
        Feature::Embedding(t)
    }
}

impl Feature {
    /// The representation as one row per sample: a map `[N, C, H, W]` flattened to
    /// `[N, C·H·W]`, an embedding as it is.
    pub fn flatten(self) -> Tensor<2> {
        match self {
            Feature::Map(t) => t.flatten(1, 3),
            Feature::Embedding(t) => t,
        }
    }

    /// The batch size.
    pub fn rows(&self) -> usize {
        match self {
            Feature::Map(t) => t.dims()[0],
            Feature::Embedding(t) => t.dims()[0],
        }
    }

    /// The same representation cut from the autodiff graph (and not requiring a gradient).
    pub fn detach(self) -> Self {
        match self {
            Feature::Map(t) => Feature::Map(frozen(t)),
            Feature::Embedding(t) => Feature::Embedding(frozen(t)),
        }
    }
}

/// `t` cut from the autodiff graph as a constant. burn's `detach` keeps a tensor's
/// `require_grad`, so a detached teacher output would still be a tracked leaf: every objective
/// would compute (and the fused kernels keep memory for) a teacher gradient nobody reads.
pub(crate) fn frozen<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    t.detach().set_require_grad(false)
}

/// What one forward pass of a network exposes to the objectives: its logits and any named
/// feature taps.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// The logits `[N, C]`.
    pub logits: Tensor<2>,
    /// Named intermediate representations (see [`DistillInput::feature`](crate::DistillInput::feature)).
    pub features: BTreeMap<String, Feature>,
}

impl Outputs {
    /// Logits and no feature tap.
    pub fn logits(logits: Tensor<2>) -> Self {
        Self {
            logits,
            features: BTreeMap::new(),
        }
    }

    /// Adds the feature tap `name`.
    pub fn feature(mut self, name: impl Into<String>, feature: impl Into<Feature>) -> Self {
        self.features.insert(name.into(), feature.into());
        self
    }

    /// The rows `indices` of the logits and of every tap (a batch of outputs computed once for
    /// the whole data set; on disk, see [`cache`](crate::cache)).
    pub fn select(&self, indices: Tensor<1, Int>) -> Self {
        let features = self.features.iter().map(|(name, feature)| {
            let rows = match feature {
                Feature::Map(t) => Feature::Map(t.clone().select(0, indices.clone())),
                Feature::Embedding(t) => Feature::Embedding(t.clone().select(0, indices.clone())),
            };
            (name.clone(), rows)
        });
        Self {
            logits: self.logits.clone().select(0, indices.clone()),
            features: features.collect(),
        }
    }

    /// The same outputs cut from the autodiff graph.
    pub fn detach(self) -> Self {
        Self {
            logits: self.logits.detach(),
            features: self
                .features
                .into_iter()
                .map(|(k, f)| (k, f.detach()))
                .collect(),
        }
    }
}

/// A burn module that can be distilled from or into: a forward pass from an input batch of type
/// [`Input`](Self::Input) to [`Outputs`]. Implement it for a student and a teacher to use them
/// with the [`MetaTeacher`](crate::meta::MetaTeacher) or the burn-train `Distiller` (any
/// architecture; only this method is needed).
///
/// ```
/// use burn::module::Module;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::tensor::{Device, Tensor};
/// use burn_distill::{Distillable, Outputs};
///
/// #[derive(Module, Debug)]
/// struct Probe {
///     linear: Linear,
/// }
///
/// impl Distillable for Probe {
///     type Input = Tensor<2>;
///     fn run(&self, x: &Tensor<2>) -> Outputs {
///         Outputs::logits(self.linear.forward(x.clone()))
///     }
/// }
///
/// let dev = Device::flex();
/// let probe = Probe { linear: LinearConfig::new(4, 3).init(&dev) };
/// let out = probe.run(&Tensor::zeros([2, 4], &dev));
/// assert_eq!(out.logits.dims(), [2, 3]);
/// ```
pub trait Distillable: Module {
    /// What the network takes (images, token ids, …).
    type Input;
    /// Runs the network on `input`.
    fn run(&self, input: &Self::Input) -> Outputs;
}
