//! Small models the tests and the docs' snippets (`tests/doc_snippets.rs`) train: tanh MLPs,
//! one with a feature tap.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::tanh;
use burn::tensor::{Device, Tensor};
use burn_distill::{Distillable, Feature, Outputs};

pub use burn_distill::golden::Net;

/// A tanh MLP of `widths`, its weights drawn on `device` from `seed`.
pub fn mlp(widths: &[usize], seed: u64, device: &Device) -> Net {
    device.seed(seed);
    let net = Net {
        layers: widths
            .windows(2)
            .map(|w| LinearConfig::new(w[0], w[1]).init(device))
            .collect(),
    };
    net.fork(device)
}

/// What the docs call a model type: `Mlp::new(widths, seed, &device)` is [`mlp`].
pub struct Mlp;

impl Mlp {
    /// [`mlp`] (the docs' `Mlp::new` builds the crate's test MLP, not an `Mlp`).
    #[allow(clippy::new_ret_no_self)]
    pub fn new(widths: &[usize], seed: u64, device: &Device) -> Net {
        mlp(widths, seed, device)
    }
}

/// An MLP whose hidden layer (`4·channels` wide) is also the feature tap `feature`, a map
/// `[N, channels, 2, 2]`.
#[derive(Module, Debug)]
pub struct Tapped {
    hidden: Linear,
    head: Linear,
}

impl Tapped {
    /// `inputs → 4·channels → classes`, drawn from `seed`.
    pub fn new(inputs: usize, channels: usize, classes: usize, seed: u64, device: &Device) -> Self {
        device.seed(seed);
        Self {
            hidden: LinearConfig::new(inputs, 4 * channels).init(device),
            head: LinearConfig::new(4 * channels, classes).init(device),
        }
    }
}

impl Distillable for Tapped {
    type Input = Tensor<2>;
    fn run(&self, x: &Tensor<2>) -> Outputs {
        let h = tanh(self.hidden.forward(x.clone()));
        let [n, width] = h.dims();
        let map = h.clone().reshape([n, width / 4, 2, 2]);
        Outputs::logits(self.head.forward(h)).feature("feature", Feature::Map(map))
    }
}
