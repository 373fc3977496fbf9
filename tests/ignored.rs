//! Rows a mask ignores, for every registered objective: with row 0 of a batch ignored (labels
//! with an ignore index), a NaN or an infinity in any of that row's inputs changes nothing —
//! the value equals the one with finite values there, and every gradient is finite — or the
//! objective, which does not honour masks, refuses the input (`UnsupportedMask`) instead of
//! counting the row. Never a silent NaN from a position the caller said does not count.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::tensor::{Bool, DType, Device, Tensor, TensorData};
use burn_distill::{DistillError, Loss, example_input, example_input_shifted};

#[test]
fn non_finite_values_in_ignored_rows_change_nothing_or_the_mask_is_refused() {
    let dev = Device::flex().autodiff();
    let mask = || {
        let keep = vec![false, true, true, true, true, true];
        Tensor::<1, Bool>::from_data(TensorData::new(keep, [6]), &dev)
    };
    let (mut failures, mut honoured, mut refused) = (Vec::new(), 0, 0);
    for d in burn_distill::objectives() {
        let mut losses: Vec<Box<dyn Loss>> = Vec::new();
        losses.extend(d.example.map(|e| e(&dev).unwrap()));
        if let Some(learnable) = d.learnable {
            dev.seed(7);
            losses.push(learnable(&dev, &dev, DType::F32).unwrap());
        }
        for loss in losses {
            let name = loss.name().to_string();
            let clean = loss.forward(&example_input(&dev, DType::F32).input.mask(mask()));
            let clean = match clean {
                Err(DistillError::UnsupportedMask { .. }) => {
                    refused += 1;
                    continue;
                }
                Err(e) => {
                    failures.push(format!("{name}: the clean masked input: {e}"));
                    continue;
                }
                Ok(out) => out.value(),
            };
            honoured += 1;
            // every per-row leaf (element 0 is in row 0); the lm-head weight is a parameter that
            // every row uses
            let leaves: Vec<&str> = example_input(&dev, DType::F32)
                .leaves
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| *n != "lm_head_weight")
                .collect();
            for leaf in leaves {
                for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                    let ex = example_input_shifted(&dev, DType::F32, Some((leaf, 0, bad)));
                    let run = catch_unwind(AssertUnwindSafe(|| {
                        let out = loss
                            .forward(&ex.input.clone().mask(mask()))
                            .map_err(|e| e.to_string())?;
                        let value = out.value();
                        let grads = out.total.backward();
                        let finite = common::finite_grads(&ex.leaves, &grads);
                        let same = (value - clean).abs() <= 1e-5 * clean.abs().max(1.0);
                        match same && finite {
                            true => Ok(()),
                            false => Err(format!(
                                "{value} (clean {clean}), finite gradients {finite}"
                            )),
                        }
                    }));
                    match run {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => failures.push(format!("{name}: {bad} in {leaf}[0]: {e}")),
                        Err(_) => failures.push(format!("{name}: {bad} in {leaf}[0]: a panic")),
                    }
                }
            }
        }
    }
    assert!(
        honoured >= 10 && refused >= 10,
        "{honoured} honour masks, {refused} refuse them"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
