//! Every registered objective at its bound and beyond ([`Descriptor::bound`]): on the crate's
//! example input with every logit, map and embedding drawn up to the bound, the value and every
//! gradient are finite (in f32 and f64, and with the half-precision types read in f32); beyond
//! it (ten times the bound, and the float type's largest value) the answer is
//! [`DistillError::OutOfRange`] or, where an objective checks after the fact, a finite value
//! with finite gradients: never a silent NaN or infinity. A new objective is tried by being
//! registered.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::tensor::{DType, Device};
use burn_distill::{Descriptor, Feature, Loss, example_input_at};

/// The largest finite value of a float type.
fn widest(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => f64::MAX,
        DType::F16 => 65504.0,
        DType::BF16 => 3.38e38,
        _ => f64::from(f32::MAX),
    }
}

/// The descriptor's objectives in `dtype`: its example, or its learnable example built in
/// `dtype` from seeded weights (in f32 and f64: with half-precision parameters an objective
/// computes in their type, whose range is its own).
fn built(d: &Descriptor, dev: &Device, dtype: DType) -> Vec<Box<dyn Loss>> {
    let mut out = Vec::new();
    if let Some(example) = d.example {
        out.push(example(dev).unwrap());
    }
    if let Some(learnable) = d
        .learnable
        .filter(|_| matches!(dtype, DType::F32 | DType::F64))
    {
        dev.seed(7);
        out.push(learnable(dev, dev, dtype).unwrap());
    }
    out
}

/// The gradient of each example leaf an objective reads, by name.
type Grads = Vec<(&'static str, Vec<f64>)>;

/// The value and the gradient of every leaf `loss` reads, on the example input at `magnitude`;
/// an error or a panic as text.
fn evaluate(
    loss: &dyn Loss,
    dev: &Device,
    dtype: DType,
    magnitude: f64,
) -> Result<(f64, Grads), String> {
    let ex = example_input_at(dev, dtype, magnitude);
    let run = catch_unwind(AssertUnwindSafe(|| {
        let out = loss
            .forward(&ex.input)
            .map_err(|e| format!("error: {e:?}"))?;
        let value = out.value();
        let grads = out.total.backward();
        let mut leaves = Vec::new();
        for (name, leaf) in &ex.leaves {
            let g = match leaf {
                Feature::Map(t) => t.grad(&grads).map(common::values),
                Feature::Embedding(t) => t.grad(&grads).map(common::values),
            };
            leaves.extend(g.map(|g| (*name, g)));
        }
        Ok((value, leaves))
    }));
    run.unwrap_or_else(|_| Err("a panic".into()))
}

/// `Ok(())` when `loss` at `magnitude` has a finite value and finite gradients. In a half
/// type a gradient may overflow only where the same input in f32 has a gradient beyond the
/// type's range (half-precision inputs are read in f32; their gradients are of their type),
/// and an objective with a half-precision parameter is not held to it.
fn outcome(loss: &dyn Loss, dev: &Device, dtype: DType, magnitude: f64) -> Result<(), String> {
    let wide = match dtype {
        DType::F16 | DType::BF16 => Some(evaluate(loss, dev, DType::F32, magnitude)?.1),
        _ => None,
    };
    // an lm-head weight is a parameter: with it in a half type, the logits h·W are computed
    // in that type, whose range is its own (as a learnable objective's)
    if wide
        .as_ref()
        .is_some_and(|w| w.iter().any(|(n, _)| *n == "lm_head_weight"))
    {
        return Ok(());
    }
    let (value, leaves) = evaluate(loss, dev, dtype, magnitude)?;
    let mut bad: Vec<&str> = Vec::new();
    for (i, (name, g)) in leaves.iter().enumerate() {
        let overflows = |j: usize| {
            wide.as_ref()
                .is_some_and(|w| w[i].1[j].abs() > widest(dtype) || !w[i].1[j].is_finite())
        };
        if (0..g.len()).any(|j| !g[j].is_finite() && !overflows(j)) {
            bad.push(name);
        }
    }
    match value.is_finite() && bad.is_empty() {
        true => Ok(()),
        false => Err(format!("value {value:e}, non-finite gradients of {bad:?}")),
    }
}

#[test]
fn every_objective_is_finite_at_its_bound_and_refuses_beyond() {
    let dev = Device::flex().autodiff();
    let (mut failures, mut cases) = (Vec::new(), 0);
    for d in burn_distill::objectives() {
        let Some(bound) = d.bound else { continue };
        for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
            for loss in built(&d, &dev, dtype) {
                let name = loss.name().to_string();
                // values drawn just inside the bound, which the half types' rounding keeps
                let at = bound.min(widest(dtype)) * 0.99;
                cases += 1;
                if let Err(e) = outcome(loss.as_ref(), &dev, dtype, at) {
                    failures.push(format!(
                        "{name} ({:?}) in {dtype:?} at {at:e}: {e}",
                        d.items
                    ));
                }
                // beyond the bound (where the float type holds such values): refused
                for beyond in [bound * 10.0, widest(dtype)] {
                    if beyond <= bound || beyond > widest(dtype) {
                        continue;
                    }
                    cases += 1;
                    match outcome(loss.as_ref(), &dev, dtype, beyond) {
                        Ok(()) => {}
                        Err(e) if e.starts_with("error: OutOfRange") => {}
                        Err(e) => failures.push(format!("{name} in {dtype:?} at {beyond:e}: {e}")),
                    }
                }
            }
        }
    }
    assert!(cases >= 200, "only {cases} cases");
    assert!(
        failures.is_empty(),
        "{} of {cases} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
