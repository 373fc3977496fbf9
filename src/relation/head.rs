//! Projection heads the relational objectives train beside the student.

use burn::module::Module;
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, Relu};
use burn::tensor::{Device, Tensor};

use crate::math::l2_normalize;

/// `Linear → BatchNorm → ReLU → Linear` (BYOL's and DLKD's `MLPHead`). The batch norm uses
/// batch statistics while training (biased variance, ε = 1e-5).
#[derive(Module, Debug)]
pub struct MlpHead {
    /// First layer, `input → hidden`.
    pub fc1: Linear,
    /// Batch norm over the hidden units.
    pub bn: BatchNorm,
    /// Activation.
    pub relu: Relu,
    /// Second layer, `hidden → output`.
    pub fc2: Linear,
}

impl MlpHead {
    /// A head `input → hidden → output` on `device` (burn's default initialisation).
    pub fn new(input: usize, hidden: usize, output: usize, device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(input, hidden).init(device),
            bn: BatchNormConfig::new(hidden).init(device),
            relu: Relu::new(),
            fc2: LinearConfig::new(hidden, output).init(device),
        }
    }

    /// `[N, input]` → `[N, output]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2
            .forward(self.relu.forward(self.bn.forward(self.fc1.forward(x))))
    }
}

/// A linear projection followed by L2 normalisation (RepDistiller's and DLKD's `Embed`).
#[derive(Module, Debug)]
pub struct Embed {
    /// The projection `input → output`.
    pub linear: Linear,
}

impl Embed {
    /// A projection `input → output` on `device`.
    pub fn new(input: usize, output: usize, device: &Device) -> Self {
        Self {
            linear: LinearConfig::new(input, output).init(device),
        }
    }

    /// `[N, input]` → unit rows `[N, output]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        l2_normalize(self.linear.forward(x), 1e-12)
    }
}
