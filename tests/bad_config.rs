//! Absurd configurations, driven by the registry: every numeric field of every loss-spec
//! method (so every objective a spec can build, including those added later) is set in turn to
//! zero, negative, tiny and huge values. Each is refused with a typed error at `init`, or
//! builds an objective whose value and gradients on the crate's example input are finite (or
//! a typed error): never a panic, an abort or a silent NaN.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::tensor::{DType, Device};
use burn_distill::example_input;
use burn_distill::spec::{MethodKind, TermSpec, methods};
use serde_json::Value;

/// The values a numeric field is tried with.
fn absurd(default: &Value) -> Vec<Value> {
    let floats = [0.0, -1.0, 1e-300, -1e300, 1e300, 1e20];
    match default {
        Value::Number(n) if n.is_f64() => floats.iter().map(|&v| Value::from(v)).collect(),
        Value::Number(_) => [0i64, 1, 1 << 40, i64::MAX]
            .iter()
            .map(|&v| Value::from(v))
            .chain([Value::from(-1i64), Value::from(1e20)])
            .collect(),
        _ => Vec::new(),
    }
}

/// The numeric fields of a method's defaults, with their paths (one level of nesting: a
/// reduction's `DivideBy`, a schedule's fields).
fn numeric_fields(defaults: &Value) -> Vec<(Vec<String>, Value)> {
    let mut out = Vec::new();
    if let Value::Object(map) = defaults {
        for (k, v) in map {
            match v {
                Value::Number(_) => out.push((vec![k.clone()], v.clone())),
                Value::Object(inner) => {
                    for (k2, v2) in inner {
                        if v2.is_number() {
                            out.push((vec![k.clone(), k2.clone()], v2.clone()));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    out
}

#[test]
fn absurd_configurations_are_refused_or_stay_finite() {
    let dev = Device::flex().autodiff();
    let (mut failures, mut cases, mut evaluated) = (Vec::new(), 0, 0);
    for method in methods() {
        let defaults = method.defaults();
        for (path, default) in numeric_fields(&defaults) {
            for value in absurd(&default) {
                cases += 1;
                let option = match path.as_slice() {
                    [k] => (k.clone(), value.clone()),
                    [k, k2] => {
                        let mut inner = defaults[k].clone();
                        inner[k2] = value.clone();
                        (k.clone(), inner)
                    }
                    _ => unreachable!(),
                };
                let mut term = TermSpec::new(method.name());
                for (field, example) in method.required() {
                    term = term.with_option(field, example);
                }
                let term = term.with_option(option.0.clone(), option.1.clone());
                let term = match method.kind() {
                    MethodKind::Loss => term,
                    MethodKind::Wrapper => term.with_of(TermSpec::new("kd")),
                    MethodKind::TokenWrapper => {
                        term.with_of(TermSpec::new("jsd").with_option("reduction", "None"))
                    }
                    MethodKind::Learnable => continue,
                };
                let what = format!("{} {} = {value}", method.name(), path.join("."));
                let run = catch_unwind(AssertUnwindSafe(|| {
                    let Ok(loss) = term.init() else {
                        return Ok(());
                    };
                    let ex = example_input(&dev, DType::F32);
                    let Ok(out) = loss.forward(&ex.input) else {
                        return Ok(());
                    };
                    evaluated += 1;
                    let value = out.value();
                    let grads = out.total.backward();
                    let finite = common::finite_grads(&ex.leaves, &grads);
                    match value.is_finite() && finite {
                        true => Ok(()),
                        false => Err(format!("value {value:e}, finite gradients: {finite}")),
                    }
                }));
                match run {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failures.push(format!("{what}: {e}")),
                    Err(_) => failures.push(format!("{what}: a panic")),
                }
            }
        }
    }
    assert!(
        cases >= 300 && evaluated >= 50,
        "only {cases} cases, {evaluated} evaluated"
    );
    assert!(
        failures.is_empty(),
        "{} of {cases} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
