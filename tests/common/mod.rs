//! Helpers shared by the integration tests: devices, tensors from plain data, comparisons and
//! a central finite-difference gradient check (the ones the reference-case harness shares are
//! its own: `burn_distill::golden`).
#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use burn::tensor::{DType, Device, Int, Tensor, TensorData};

pub mod models;
#[cfg(feature = "train")]
pub mod train;

pub use models::{Mlp, Tapped, mlp};

pub use burn_distill::golden::{
    Net, close, device, f64t, ints, numeric_grad, tensor, torch_grads, torch_linear, values,
};

/// Configures the default device's float dtype as f64, once per test binary and before any
/// tensor exists: modules a config builds (batch norms, convolutions, memories) and optimizer
/// states restored from records take that dtype. Call it first in every test that needs it.
pub fn configure_f64() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        burn::tensor::Device::default()
            .configure(burn::tensor::FloatDType::F64)
            .expect("the first tensor of this test binary comes after this");
    });
}

/// The gradient of each leaf that has one (the leaves an objective reads), by name, as f64.
pub fn leaf_grads(
    leaves: &[(&'static str, burn_distill::Feature)],
    grads: &burn::tensor::Gradients,
) -> Vec<(&'static str, Vec<f64>)> {
    leaves
        .iter()
        .filter_map(|(name, leaf)| {
            let g = match leaf {
                burn_distill::Feature::Map(t) => t.grad(grads).map(values),
                burn_distill::Feature::Embedding(t) => t.grad(grads).map(values),
            };
            g.map(|g| (*name, g))
        })
        .collect()
}

/// Whether every gradient of [`leaf_grads`] is finite.
pub fn finite_grads(
    leaves: &[(&'static str, burn_distill::Feature)],
    grads: &burn::tensor::Gradients,
) -> bool {
    leaf_grads(leaves, grads)
        .iter()
        .all(|(_, g)| g.iter().all(|x| x.is_finite()))
}

/// `n` deterministic values in `[-scale, scale)` from `seed` (xorshift): the same test data on
/// every run and platform.
pub fn noise(seed: u64, n: usize, scale: f64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Analytic gradients of `loss` for the feature tap `name` (teacher attached) against central
/// differences, student and teacher, to 1e-5 relative; `extra` adds the rest of the input
/// (targets, progress). A teacher gradient may be absent only where its difference is zero.
pub fn check_tap_grads<const DS: usize, const DT: usize>(
    loss: &dyn burn_distill::Loss,
    name: &str,
    (s, s_shape): (&[f64], [usize; DS]),
    (t, t_shape): (&[f64], [usize; DT]),
    extra: &dyn Fn(burn_distill::DistillInput) -> burn_distill::DistillInput,
) -> Result<(), String>
where
    burn_distill::Feature: From<Tensor<DS>> + From<Tensor<DT>>,
{
    use burn_distill::DistillInput;
    let input =
        |s: Tensor<DS>, t: Tensor<DT>| extra(DistillInput::features_only().feature(name, s, t));
    let (sl, tl) = (
        f64t(s.to_vec(), s_shape).require_grad(),
        f64t(t.to_vec(), t_shape).require_grad(),
    );
    let grads = loss
        .forward(&input(sl.clone(), tl.clone()).attach_teacher())
        .unwrap()
        .total
        .backward();
    let value = |s: Vec<f64>, t: Vec<f64>| {
        loss.forward(&input(f64t(s, s_shape), f64t(t, t_shape)))
            .unwrap()
            .value()
    };
    let num_s = numeric_grad(&|v| value(v, t.to_vec()), s, 1e-6);
    let num_t = numeric_grad(&|v| value(s.to_vec(), v), t, 1e-6);
    let named = |m: String| format!("{}: {m}", loss.name());
    let gs = sl
        .grad(&grads)
        .ok_or_else(|| named("no student gradient".into()))?;
    close("d/ds", &values(gs), &num_s, 1e-5, 1e-8).map_err(named)?;
    match tl.grad(&grads) {
        Some(g) => close("d/dt", &values(g), &num_t, 1e-5, 1e-8).map_err(named),
        None if num_t.iter().all(|v| v.abs() < 1e-8) => Ok(()),
        None => Err(named("teacher gradient missing".into())),
    }
}

/// A batch of logits in plain numbers: shape, student and teacher logits, targets, temperature.
#[derive(Debug, Clone)]
pub struct Batch {
    pub n: usize,
    pub c: usize,
    pub s: Vec<f64>,
    pub t: Vec<f64>,
    pub y: Vec<i64>,
    pub temp: f64,
}

/// Batches of `n` rows and `c` classes whose logits are uniform in `±scale` (one `scale`
/// drawn per batch), with targets in range and a temperature drawn from `temp`.
pub fn batches(
    n: std::ops::Range<usize>,
    c: std::ops::Range<usize>,
    scale: impl proptest::strategy::Strategy<Value = f64> + Clone + 'static,
    temp: std::ops::Range<f64>,
) -> impl proptest::strategy::Strategy<Value = Batch> {
    use proptest::prelude::*;
    (n, c, temp).prop_flat_map(move |(n, c, temp)| {
        let unit = prop::collection::vec(-1.0f64..1.0, n * c);
        (
            unit.clone(),
            unit,
            prop::collection::vec(0..c as i64, n),
            scale.clone(),
        )
            .prop_map(move |(s, t, y, scale)| Batch {
                n,
                c,
                s: s.iter().map(|v| v * scale).collect(),
                t: t.iter().map(|v| v * scale).collect(),
                y,
                temp,
            })
    })
}

impl Batch {
    /// Student and teacher logits of `dtype` as leaves that require gradients, and the targets.
    pub fn leaves(&self, dtype: DType) -> (Tensor<2>, Tensor<2>, Tensor<1, Int>) {
        let leaf = |v: &[f64]| tensor(v.to_vec(), [self.n, self.c], dtype).require_grad();
        (leaf(&self.s), leaf(&self.t), ints(self.y.clone()))
    }
}

/// Adds `delta` to element `index` of the parameter `target`.
struct Shift {
    target: burn::module::ParamId,
    index: usize,
    delta: f64,
}

impl burn::module::ModuleMapper for Shift {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        if param.id != self.target {
            return param;
        }
        let (index, delta) = (self.index, self.delta);
        param.map(|t| {
            let (shape, device, dtype) = (t.shape(), t.device(), t.dtype());
            let mut v = values(t);
            v[index] += delta;
            Tensor::from_data(TensorData::new(v, shape), (&device, dtype)).require_grad()
        })
    }
}

/// Every trainable float parameter (buffers such as running statistics are not tracked) and
/// its gradient in `grads`.
struct Trainable<'a> {
    grads: &'a burn::optim::GradientsParams,
    found: Vec<(burn::module::ParamId, Option<Vec<f64>>, usize)>,
}

impl burn::module::ModuleVisitor for Trainable<'_> {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        let t = param.val();
        if t.is_require_grad() {
            let numel = t.shape().num_elements();
            self.found
                .push((param.id, self.grads.get::<D>(param.id).map(values), numel));
        }
    }
}

/// The gradient of `module`'s loss on `input()` in every trainable parameter against central
/// differences (f64, 1e-5 relative), at the coordinates `picks` (modulo each size); a
/// parameter without a gradient (a frozen part, behind a detach) must have zero differences.
/// Returns how many coordinates were compared.
pub fn check_param_grads<M>(
    module: &M,
    input: &dyn Fn() -> burn_distill::DistillInput,
    picks: &[usize],
) -> Result<usize, String>
where
    M: burn::module::Module + burn_distill::Loss + Clone,
{
    let grads = module.forward(&input()).unwrap().total.backward();
    let grads = burn::optim::GradientsParams::from_grads(grads, module);
    let mut visitor = Trainable {
        grads: &grads,
        found: Vec::new(),
    };
    module.visit(&mut visitor);
    let mut checked = 0;
    for (id, grad, numel) in visitor.found {
        let grad = grad.unwrap_or_else(|| vec![0.0; numel]);
        for &p in picks {
            let index = p % numel;
            let at = |delta: f64| {
                let shifted = module.clone().map(&mut Shift {
                    target: id,
                    index,
                    delta,
                });
                shifted.forward(&input()).unwrap().value()
            };
            let h = 1e-6;
            let num = (at(h) - at(-h)) / (2.0 * h);
            close(
                &format!("{}: d/d{id}[{index}]", module.name()),
                &[grad[index]],
                &[num],
                1e-5,
                1e-8,
            )?;
            checked += 1;
        }
    }
    Ok(checked)
}
