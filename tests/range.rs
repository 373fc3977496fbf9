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
use burn_distill::{
    Descriptor, DistillInput, ExampleInput, Feature, Loss, LossExt, example_input_at,
};

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

/// An input, in a float type, with its values drawn up to a magnitude.
type Input<'a> = dyn Fn(DType, f64) -> ExampleInput + 'a;

/// The value and the gradient of every leaf `loss` reads, on the example input at `magnitude`;
/// an error or a panic as text.
fn evaluate(
    loss: &dyn Loss,
    input: &Input,
    dtype: DType,
    magnitude: f64,
) -> Result<(f64, Grads), String> {
    let ex = input(dtype, magnitude);
    let run = catch_unwind(AssertUnwindSafe(|| {
        let out = loss
            .forward(&ex.input)
            .map_err(|e| format!("error: {e:?}"))?;
        let value = out.value();
        let grads = out.total.backward();
        Ok((value, common::leaf_grads(&ex.leaves, &grads)))
    }));
    run.unwrap_or_else(|_| Err("a panic".into()))
}

/// `Ok(())` when `loss` at `magnitude` has a finite value and finite gradients. In a half
/// type a gradient may overflow only where the same input in f32 has a gradient beyond the
/// type's range (half-precision inputs are read in f32; their gradients are of their type),
/// and an objective with a half-precision parameter is not held to it.
fn outcome(loss: &dyn Loss, input: &Input, dtype: DType, magnitude: f64) -> Result<(), String> {
    let wide = match dtype {
        DType::F16 | DType::BF16 => Some(evaluate(loss, input, DType::F32, magnitude)?.1),
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
    let (value, leaves) = evaluate(loss, input, dtype, magnitude)?;
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

/// `loss` (bound `bound`) on `input` in `dtype`: finite at the bound, refused or finite
/// beyond; what went wrong, one line a case, into `failures`. Returns the cases tried.
fn check(
    loss: &dyn Loss,
    input: &Input,
    bound: f64,
    dtype: DType,
    failures: &mut Vec<String>,
) -> usize {
    let name = loss.name();
    // values drawn just inside the bound, which the half types' rounding keeps
    let at = bound.min(widest(dtype)) * 0.99;
    if let Err(e) = outcome(loss, input, dtype, at) {
        failures.push(format!("{name} in {dtype:?} at {at:e}: {e}"));
    }
    let mut cases = 1;
    // beyond the bound (where the float type holds such values): refused, or finite
    for beyond in [bound * 10.0, widest(dtype)] {
        if beyond <= bound || beyond > widest(dtype) {
            continue;
        }
        cases += 1;
        match outcome(loss, input, dtype, beyond) {
            Ok(()) => {}
            Err(e) if e.starts_with("error: OutOfRange") => {}
            Err(e) => failures.push(format!("{name} in {dtype:?} at {beyond:e}: {e}")),
        }
    }
    cases
}

#[test]
fn every_objective_is_finite_at_its_bound_and_refuses_beyond() {
    let dev = Device::flex().autodiff();
    let (mut failures, mut cases) = (Vec::new(), 0);
    let example = |dtype, magnitude| example_input_at(&dev, dtype, magnitude);
    for d in burn_distill::objectives() {
        let Some(bound) = d.bound else { continue };
        for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
            for loss in built(&d, &dev, dtype) {
                cases += check(loss.as_ref(), &example, bound, dtype, &mut failures);
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

/// The objectives whose input the crate's example does not hold (sequences, two
/// tokenizations, rotated views), each on an input of its own built from the example's
/// leaves: at their bound and beyond, as above.
#[test]
fn objectives_with_inputs_of_their_own_at_their_bound() {
    use burn::tensor::{Int, Tensor, TensorData};
    use burn_distill::relation::SskdConfig;
    use burn_distill::token::{
        CrossTokenizer, DistiLlm2Config, MiniLlmConfig, SampledTokenConfig, SequenceLength,
        TokenizedSide, UldAlignment, UldConfig,
    };
    let dev = Device::flex().autodiff();
    let bound = |item: &str| {
        burn_distill::objectives()
            .into_iter()
            .find(|d| d.items.contains(&item))
            .and_then(|d| d.bound)
            .unwrap()
    };
    let example = |dtype, m| example_input_at(&dev, dtype, m);
    // two sequences of three tokens: the example's six rows
    let sequences = |dtype, m| {
        let ex = example_input_at(&dev, dtype, m);
        ExampleInput {
            input: ex.input.with(SequenceLength(3)),
            leaves: ex.leaves,
        }
    };
    // both sides tokenized alike: the example's logits as [2, 3, 5], every token an answer's
    let tokenized = |dtype, m| {
        let ex = example_input_at(&dev, dtype, m);
        let logits = |i: usize| match &ex.leaves[i].1 {
            Feature::Embedding(t) => t.clone().reshape([2, 3, 5]),
            Feature::Map(_) => unreachable!("the example's logits are rows"),
        };
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3, 4, 0], [2, 3]), &dev);
        let side = |i| TokenizedSide {
            logits: logits(i),
            labels: ids.clone(),
            ids: ids.clone(),
            offsets: None,
        };
        let pair = CrossTokenizer {
            student: side(0),
            teacher: side(1),
        };
        ExampleInput {
            input: ex.input.with(pair),
            leaves: ex.leaves,
        }
    };
    // two images of four rotated views: eight rows of logits [8, 5] and embeddings [8, 6]
    let views = |dtype, m: f64| {
        let leaf = |seed: u64, cols: usize| {
            let v = common::noise(seed, 8 * cols, m);
            Tensor::<2>::from_data(TensorData::new(v, [8, cols]), (&dev, dtype)).require_grad()
        };
        let (zs, zt, fs, ft) = (leaf(1, 5), leaf(2, 5), leaf(3, 6), leaf(4, 6));
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 3], [2]), &dev);
        ExampleInput {
            input: DistillInput::new(zs.clone(), zt.clone())
                .feature("embedding", fs.clone(), ft.clone())
                .targets(y)
                .attach_teacher(),
            leaves: vec![
                ("logits_student", Feature::Embedding(zs)),
                ("logits_teacher", Feature::Embedding(zt)),
                ("embedding_student", Feature::Embedding(fs)),
                ("embedding_teacher", Feature::Embedding(ft)),
            ],
        }
    };
    let (mut failures, mut cases) = (Vec::new(), 0);
    for dtype in [DType::F32, DType::F64] {
        let token: Vec<(&str, Box<dyn Loss>, &Input)> = vec![
            (
                "SampledToken",
                SampledTokenConfig::new().init().unwrap().boxed(),
                &example,
            ),
            (
                "MiniLlm",
                MiniLlmConfig::new().init().unwrap().boxed(),
                &sequences,
            ),
            (
                "DistiLlm2",
                DistiLlm2Config::new().init().unwrap().boxed(),
                &sequences,
            ),
            (
                "Uld",
                UldConfig::new()
                    .with_alignment(UldAlignment::Positional)
                    .init()
                    .unwrap()
                    .boxed(),
                &tokenized,
            ),
        ];
        for (item, loss, input) in token {
            cases += check(loss.as_ref(), input, bound(item), dtype, &mut failures);
        }
    }
    // a learnable objective, its parameters in the device's float type (f32)
    dev.seed(9);
    let sskd = SskdConfig::new(6, 6).init(&dev).unwrap();
    cases += check(&sskd, &views, bound("Sskd"), DType::F32, &mut failures);
    assert!(cases >= 20, "only {cases} cases");
    assert!(
        failures.is_empty(),
        "{} of {cases} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
