//! Losses from configuration files (`burn_distill::spec`): every objective of the crate is a
//! method; a file builds the same loss as code (values and gradients, bit for bit); specs
//! round-trip through TOML and JSON; every mistake is a typed error naming its place. The
//! field reference `docs/spec.md` is generated from `spec::methods()` (`BLESS=1` rewrites it).

mod common;

use std::path::PathBuf;

use burn::tensor::{DType, Device};
use burn_distill::feature::HintConfig;
use burn_distill::logit::{DkdConfig, KdConfig, Standardized};
use burn_distill::relation::RkdConfig;
use burn_distill::spec::{LossSpec, MethodKind, TermSpec, methods};
use burn_distill::{
    CrossEntropyConfig, DistillError, Feature, Loss, LossExt, Schedule, example_input,
};
use proptest::prelude::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The loss's terms and the gradients of the student's logits and embedding on the example.
fn outcome(loss: &dyn Loss) -> (Vec<(String, f64)>, Vec<Vec<f64>>) {
    let ex = example_input(&Device::flex().autodiff(), DType::F32);
    let out = loss
        .forward(&ex.input)
        .expect("the example input suits the loss");
    let values = out.values();
    let grads = out.total.backward();
    let grads = ex
        .leaves
        .iter()
        .filter(|(name, _)| name.ends_with("_student"))
        .map(|(_, leaf)| match leaf {
            Feature::Embedding(t) => t.grad(&grads).map(common::values).unwrap_or_default(),
            Feature::Map(t) => t.grad(&grads).map(common::values).unwrap_or_default(),
        })
        .collect();
    (values, grads)
}

fn spec_error(result: Result<impl std::fmt::Debug, DistillError>) -> (String, String) {
    match result {
        Err(DistillError::InvalidSpec { at, reason }) => (at, reason),
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
}

#[test]
fn the_example_files_build_the_losses_written_in_code() -> Result<(), DistillError> {
    let dkd = LossSpec::read(root().join("examples/losses/dkd.toml"))?.init()?;
    let code = CrossEntropyConfig::new().init()?
        + DkdConfig::new()
            .with_beta(1.0)
            .with_temperature(2.0)
            .with_warmup_epochs(5)
            .init()?;
    assert_eq!(outcome(dkd.as_ref()), outcome(&code));

    let mix = LossSpec::read(root().join("examples/losses/mix.toml"))?.init()?;
    let code = CrossEntropyConfig::new().init()?.weighted(0.5)
        + KdConfig::new()
            .with_temperature(4.0)
            .init()?
            .weighted_by(Schedule::Linear {
                start: 0.1,
                end: 0.5,
                epochs: 10,
            })
        + Standardized::new(KdConfig::new().with_temperature(2.0).init()?)
            .named("kd_std")
            .weighted(0.25)
        + RkdConfig::new()
            .with_distance_weight(20.0)
            .with_squared(true)
            .init()?;
    let (values, grads) = outcome(mix.as_ref());
    assert_eq!((values.clone(), grads), outcome(&code));
    let names: Vec<&str> = values.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["ce", "kd", "kd_std", "rkd/distance", "rkd/angle"]);
    // the schedule is at epoch 2 + 3/10 of 10 epochs: not its start, not its end
    assert!(values.iter().all(|(_, v)| v.is_finite() && *v != 0.0));
    Ok(())
}

#[test]
fn the_init_stage_replaces_the_loss_for_its_epochs() -> Result<(), DistillError> {
    let spec = LossSpec::from_toml(
        r#"
        [init]
        epochs = 3
        [[init.loss]]
        method = "kd"

        [[loss]]
        method = "ce"
        "#,
    )?;
    let code = KdConfig::new()
        .init()?
        .then_after(3, CrossEntropyConfig::new().init()?);
    // the example is at epoch 2: the stage
    let (values, _) = outcome(spec.init()?.as_ref());
    assert_eq!(values[0].0, "kd");
    assert_eq!(outcome(spec.init()?.as_ref()), outcome(&code));
    Ok(())
}

/// Every objective of the crate (each `objective!(Type, "name")` in the source) is a method,
/// and every method builds (or, if learnable, refuses to with a pointer to its config).
#[test]
fn every_objective_is_a_method() {
    let mut names = Vec::new();
    let mut stack = vec![root().join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for line in text
                    .lines()
                    .filter(|l| l.starts_with("crate::loss::objective!("))
                {
                    names.push(line.split('"').nth(1).unwrap().to_string());
                }
            }
        }
    }
    assert!(names.len() > 40, "found {names:?}");
    let known: Vec<&str> = methods().iter().map(|m| m.name()).collect();
    for name in &names {
        assert!(
            known.contains(&name.as_str()),
            "`{name}` is not a spec method"
        );
    }
    assert_eq!(
        known.len(),
        names.len(),
        "methods {known:?}, objectives {names:?}"
    );

    for method in methods() {
        let mut term = TermSpec::new(method.name());
        for (field, example) in method.required() {
            term = term.with_option(field, example);
        }
        match method.kind() {
            MethodKind::Loss => {
                term.init()
                    .unwrap_or_else(|e| panic!("{}: {e}", method.name()));
            }
            MethodKind::Wrapper => {
                term.clone().with_of(TermSpec::new("ce")).init().unwrap();
                let (_, reason) = spec_error(term.init());
                assert!(reason.contains("`of`"), "{reason}");
            }
            MethodKind::TokenWrapper => {
                let jsd = TermSpec::new("jsd").with_option("reduction", "None");
                term.clone().with_of(jsd).init().unwrap();
                let (_, reason) = spec_error(term.clone().with_of(TermSpec::new("ce")).init());
                assert!(reason.contains("token divergence"), "{reason}");
                let weighted = TermSpec::new("jsd").with_weight(0.5);
                let (_, reason) = spec_error(term.clone().with_of(weighted).init());
                assert!(reason.contains("weight the wrapper"), "{reason}");
                let (_, reason) = spec_error(term.init());
                assert!(reason.contains("`of`"), "{reason}");
            }
            MethodKind::Learnable => {
                let (_, reason) = spec_error(term.init());
                assert!(reason.contains(method.config()), "{reason}");
            }
        }
        // the term's own keys are never a config's field
        let defaults = method.defaults();
        for key in ["method", "weighted", "name", "of"] {
            assert!(
                defaults.get(key).is_none(),
                "{}: `{key}` is a field",
                method.name()
            );
        }
    }
}

#[test]
fn a_learnable_objective_reads_its_typed_config() -> Result<(), DistillError> {
    let spec = LossSpec::from_toml(
        r#"
        [[loss]]
        method = "hint"
        student = [8, 4, 4]
        teacher = [16, 4, 4]
        feature = "block2"
        "#,
    )?;
    let config: HintConfig = spec.loss[0].config()?;
    let code = HintConfig::new([8, 4, 4], [16, 4, 4]).with_feature("block2".into());
    assert_eq!(format!("{config:?}"), format!("{code:?}"));
    config.init(&Device::flex().autodiff())?;
    let (at, reason) = spec_error(spec.loss[0].config::<KdConfig>());
    assert_eq!(at, "hint");
    assert!(reason.contains("feature::HintConfig"), "{reason}");
    Ok(())
}

#[test]
fn every_mistake_is_a_typed_error_that_says_where() {
    let build = |text: &str| LossSpec::from_toml(text).and_then(|s| s.init());

    let (at, reason) = spec_error(build("[[loss]]\nmethod = \"kdd\""));
    assert_eq!(at, "loss[0] (kdd)");
    assert!(
        reason.contains("unknown method `kdd`") && reason.contains("\"dkd\""),
        "{reason}"
    );

    let (at, reason) = spec_error(build(
        "[[loss]]\nmethod = \"ce\"\n[[loss]]\nmethod = \"kd\"\ntemprature = 2.0",
    ));
    assert_eq!(at, "loss[1] (kd)");
    assert!(
        reason.contains("unknown field `temprature`") && reason.contains("\"temperature\""),
        "{reason}"
    );

    let (_, reason) = spec_error(build("[[loss]]\nmethod = \"kd\"\ntemperature = \"hot\""));
    assert!(
        reason.starts_with("`temperature`: invalid type"),
        "{reason}"
    );

    let (_, reason) = spec_error(build("[[loss]]\nmethod = \"fsp\""));
    assert!(
        reason.contains("missing the required field `features`"),
        "{reason}"
    );

    // out-of-range values are the configs' own errors
    assert_eq!(
        build("[[loss]]\nmethod = \"kd\"\ntemperature = 0.0").unwrap_err(),
        KdConfig::new().with_temperature(0.0).init().unwrap_err()
    );
    assert!(matches!(
        build("[[loss]]\nmethod = \"kd\"\nweighted = { kind = \"step\", start = 1.0, factor = 0.5, every = 0 }"),
        Err(DistillError::InvalidConfig { field, .. }) if field == "every"
    ));

    let (_, reason) = spec_error(build("[[loss]]\nmethod = \"kd\"\nof = { method = \"ce\" }"));
    assert!(reason.contains("only for the wrappers"), "{reason}");
    let (at, _) = spec_error(build(
        "[[loss]]\nmethod = \"paced\"\nof = { method = \"kd\", beta = 1.0 }",
    ));
    assert_eq!(at, "loss[0] (paced).of (kd)");

    let (_, reason) = spec_error(build("loss = []"));
    assert!(reason.contains("at least one term"), "{reason}");
    let (at, reason) = spec_error(build(
        "[[loss]]\nmethod = \"kd\"\nweighted = { kind = \"ramp\" }",
    ));
    assert_eq!(at, "TOML");
    assert!(reason.contains("kind = constant | warmup"), "{reason}");
    let (at, _) = spec_error(build("[[loss]\nmethod = \"kd\""));
    assert_eq!(at, "TOML");
    let (at, _) = spec_error(LossSpec::from_json("{\"loss\": [{\"method\": 1}]}"));
    assert_eq!(at, "JSON");
    // JSON's null has no TOML form: writing it is an error, not a panic
    let null = LossSpec::from_json(
        r#"{"loss": [{"method": "fused_linear", "chunk_size": null, "of": {"method": "ce"}}]}"#,
    );
    let (at, _) = spec_error(null.unwrap().to_toml());
    assert_eq!(at, "TOML");
    let (at, reason) = spec_error(LossSpec::read(root().join("Cargo.toml.missing")));
    assert!(at.ends_with("Cargo.toml.missing") && !reason.is_empty());
}

/// A schedule of each kind.
fn schedule() -> impl Strategy<Value = Schedule> {
    let v = -10.0..10.0f64;
    prop_oneof![
        v.clone().prop_map(Schedule::Constant),
        (v.clone(), 0..50usize).prop_map(|(value, epochs)| Schedule::Warmup { value, epochs }),
        (v.clone(), v.clone(), 0..50usize).prop_map(|(start, end, epochs)| Schedule::Linear {
            start,
            end,
            epochs
        }),
        (v.clone(), v.clone(), 0..50usize).prop_map(|(start, end, epochs)| Schedule::Cosine {
            start,
            end,
            epochs
        }),
        (v.clone(), v, 1..50usize).prop_map(|(start, factor, every)| Schedule::Step {
            start,
            factor,
            every
        }),
    ]
}

/// A term of any method (with its required fields), a weight, maybe a name and a wrapped term.
fn term() -> impl Strategy<Value = TermSpec> {
    let n = methods().len();
    (
        0..n,
        schedule(),
        proptest::option::of("[a-z]{1,6}"),
        0.1..9.0f64,
    )
        .prop_map(|(i, weight, name, t)| {
            let method = &methods()[i];
            let mut term = TermSpec::new(method.name()).with_weight(weight);
            for (field, example) in method.required() {
                term = term.with_option(field, example);
            }
            if let Some(name) = name {
                term = term.with_name(name);
            }
            match method.kind() {
                MethodKind::Wrapper => {
                    term.with_of(TermSpec::new("kd").with_option("temperature", t))
                }
                MethodKind::TokenWrapper => {
                    term.with_of(TermSpec::new("jsd").with_option("temperature", t))
                }
                _ => term,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn specs_round_trip_through_toml_and_json(
        terms in proptest::collection::vec(term(), 1..5),
        stage in proptest::option::of((0..20usize, term())),
    ) {
        let mut spec = LossSpec::new(terms);
        if let Some((epochs, first)) = stage {
            spec.init = Some(burn_distill::spec::InitSpec { epochs, loss: vec![first] });
        }
        prop_assert_eq!(&LossSpec::from_toml(&spec.to_toml().unwrap()).unwrap(), &spec);
        prop_assert_eq!(&LossSpec::from_json(&spec.to_json()).unwrap(), &spec);
    }
}

const START: &str = "<!-- methods: generated from burn_distill::spec::methods() by tests/spec.rs (BLESS=1 cargo test --test spec) -->";
const END: &str = "<!-- /methods -->";

/// Every method, its kind, config, required fields (with the example values) and defaults.
fn reference() -> String {
    let mut out = String::new();
    for m in methods() {
        let kind = match m.kind() {
            MethodKind::Loss => "objective",
            MethodKind::Wrapper => "wrapper (`of`)",
            MethodKind::TokenWrapper => "wrapper of a token divergence (`of`)",
            MethodKind::Learnable => "learnable: `TermSpec::config`",
        };
        out.push_str(&format!(
            "### `{}`\n\n{kind}; config `{}`",
            m.name(),
            m.config()
        ));
        let required = m.required();
        if !required.is_empty() {
            let req: Vec<String> = required
                .iter()
                .map(|(f, v)| format!("`{f}` (e.g. `{v}`)"))
                .collect();
            out.push_str(&format!("; required: {}", req.join(", ")));
        }
        out.push_str("\n\n| field | default |\n|---|---|\n");
        for (field, value) in m.defaults().as_object().unwrap() {
            if !required.iter().any(|(f, _)| f == field) {
                out.push_str(&format!("| `{field}` | `{value}` |\n"));
            }
        }
        out.push('\n');
    }
    out
}

#[test]
fn the_field_reference_is_generated_from_the_methods() {
    let path = root().join("docs/spec.md");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let (start, end) = (text.find(START), text.find(END));
    let (Some(start), Some(end)) = (start, end) else {
        panic!("docs/spec.md has no generated section ({START})");
    };
    let want = format!(
        "{}{START}\n{}{END}{}",
        &text[..start],
        reference(),
        &text[end + END.len()..]
    );
    if want != text {
        if std::env::var_os("BLESS").is_some() {
            std::fs::write(&path, want).unwrap();
        } else {
            panic!(
                "docs/spec.md is out of step with spec::methods(): BLESS=1 cargo test --test spec"
            );
        }
    }
}
