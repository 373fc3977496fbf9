//! Every reference case in the golden directory, computed with the original authors' PyTorch
//! code: loss and gradients must agree within the tolerance of the case's dtype.
//!
//! The directory is `tests/golden` in this repository (a copy of the project's shared set), or
//! `BURN_DISTILL_GOLDEN_DIR`. Each `*.json` case is dispatched on its `method` through the
//! registry: the objective whose descriptor answers the method (`Descriptor::golden`) runs it
//! with the runner in its own file (`burn_distill::golden` is the harness). One test per family
//! runs that family's cases; a case that fails or panics is reported as that case's failure
//! and the others still run. A method no objective answers is counted and named, never a
//! failure or a crash. Every recorded gradient must be checked by its runner (or listed in the
//! case's `omitted_grads`). Where the reference itself was not finite (`reference_nonfinite`),
//! the crate's value must be finite and equal an exact recomputation
//! (`burn_distill::golden::exact`).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use burn_distill::golden::{Report, Runner, cases, device, run};
use common::configure_f64;

fn dir() -> PathBuf {
    std::env::var_os("BURN_DISTILL_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden"))
}

/// The runner of a method, from the registry: the module of the objective that answers it.
fn lookup(method: &str) -> Option<(&'static str, Runner)> {
    burn_distill::objectives().into_iter().find_map(|d| {
        d.golden
            .iter()
            .find(|g| g.id == method)
            .map(|g| (d.module, g.run))
    })
}

/// Runs the family's cases and fails on any mismatch; returns the report.
fn family(module: &str) -> Report {
    // heads built by a config (DLKD's batch norm) take the device's default float dtype: the
    // cases are mostly f64, and f32 cases give their dtype explicitly
    configure_f64();
    // KD, DKD and DCKD objectives built with their defaults take the fused kernels here
    assert!(burn_distill::fused::supported(&device()));
    let files = cases(&dir());
    assert!(!files.is_empty(), "no cases in {}", dir().display());
    let report = run(&files, &lookup, module);
    for f in &report.failed {
        println!("golden ({module}): FAILED {f}");
    }
    for (method, count) in &report.missing {
        println!("golden ({module}): `{method}`: {count} cases of a variant not implemented");
    }
    println!(
        "golden ({module}): {} passed, {} failed ({})",
        report.passed,
        report.failed.len(),
        dir().display()
    );
    assert!(
        report.failed.is_empty(),
        "golden mismatches:\n{}",
        report.failed.join("\n")
    );
    report
}

#[test]
fn golden_logit() {
    assert!(family("burn_distill::logit").passed > 0);
}

#[test]
fn golden_curriculum() {
    assert!(family("burn_distill::curriculum").passed > 0);
}

#[test]
fn golden_feature() {
    assert!(family("burn_distill::feature").passed > 0);
}

#[test]
fn golden_relation() {
    assert!(family("burn_distill::relation").passed > 0);
}

#[test]
fn golden_meta() {
    assert!(family("burn_distill::meta").passed > 0);
}

#[test]
fn golden_token() {
    assert!(family("burn_distill::token").passed > 0);
}

/// Every case's method is answered by one objective of a family above, or reported as not
/// implemented (set 3's methods until their objectives land), never a crash; no two objectives
/// answer one method.
#[test]
fn golden_methods_are_answered_once_or_reported() {
    let files = cases(&dir());
    let mut seen = BTreeSet::new();
    for d in burn_distill::objectives() {
        for g in d.golden {
            assert!(seen.insert(g.id), "two objectives answer `{}`", g.id);
        }
    }
    let families = [
        "burn_distill::logit",
        "burn_distill::curriculum",
        "burn_distill::feature",
        "burn_distill::relation",
        "burn_distill::meta",
        "burn_distill::token",
    ];
    for d in burn_distill::objectives()
        .iter()
        .filter(|d| !d.golden.is_empty())
    {
        assert!(
            families.contains(&d.module),
            "{}: no golden test runs it",
            d.module
        );
    }
    // the unanswered ones, without running the others
    let unanswered = |m: &str| lookup(m).is_none();
    let (mut missing, mut methods) = (0, BTreeSet::new());
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let method = value["method"].as_str().unwrap_or_default().to_string();
        if unanswered(&method) {
            missing += 1;
            methods.insert(method);
        }
    }
    for m in &methods {
        println!("golden: method `{m}` not implemented");
    }
    println!(
        "golden: {missing} of {} cases not implemented ({} methods)",
        files.len(),
        methods.len()
    );
}
