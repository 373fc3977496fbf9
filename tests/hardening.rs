//! Bad input that used to panic inside burn, give a silent NaN or poison state: each case
//! asserts the exact outcome (issue 19's first root causes).

mod common;

use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use burn_distill::curriculum::CtkdConfig;
use burn_distill::feature::AtConfig;
use burn_distill::logit::{DckdConfig, DistConfig, Standardized};
use burn_distill::prelude::*;
use burn_distill::relation::{CrdConfig, DlkdConfig, RkdConfig};
use common::*;

fn empty(err: DistillError, objective: &str) -> bool {
    matches!(err, DistillError::EmptyBatch { objective: ref o, .. } if o == objective)
}

/// Logits with zero classes `[N, 0]` are an `EmptyBatch` for every logit objective, fused or
/// composed (the fused backward used to panic in the crate's own kernel, the composed paths in
/// burn's `max_dim`).
#[test]
fn zero_classes_are_an_empty_batch() {
    configure_f64();
    let z = || f64t(vec![], [3, 0]);
    let losses: Vec<Box<dyn Loss>> = vec![
        KdConfig::new().init().unwrap().boxed(),
        KdConfig::new().with_fused(false).init().unwrap().boxed(),
        DkdConfig::new()
            .with_warmup_epochs(0)
            .init()
            .unwrap()
            .boxed(),
        DckdConfig::new()
            .with_warmup_epochs(0)
            .init()
            .unwrap()
            .boxed(),
        DistConfig::new().init().unwrap().boxed(),
        CrossEntropyConfig::new().init().unwrap().boxed(),
    ];
    for loss in losses {
        let input = DistillInput::new(z(), z()).targets(ints(vec![0, 0, 0]));
        let err = loss.forward(&input).unwrap_err();
        assert!(empty(err.clone(), loss.name()), "{}: {err}", loss.name());
    }
}

/// Zero channels (AT) and zero-width embeddings (RKD) are an `EmptyBatch`, not a NaN or a
/// panic in a reshape.
#[test]
fn zero_channels_and_widths_are_an_empty_batch() {
    configure_f64();
    let at = AtConfig::new().init().unwrap();
    let input = DistillInput::features_only().feature(
        "feature",
        f64t(vec![], [2, 0, 3, 3]),
        f64t(vec![0.5; 2 * 4 * 9], [2, 4, 3, 3]),
    );
    assert!(empty(at.forward(&input).unwrap_err(), "at"));
    let rkd = RkdConfig::new().init().unwrap();
    let input = DistillInput::features_only().feature(
        "embedding",
        f64t(vec![], [3, 0]),
        f64t(vec![1.0; 6], [3, 2]),
    );
    assert!(empty(rkd.forward(&input).unwrap_err(), "rkd"));
}

/// Logit standardisation of a single class (0/0) is `TooFewClasses`.
#[test]
fn standardized_needs_two_classes() {
    configure_f64();
    let loss = Standardized::new(KdConfig::new().init().unwrap());
    let input = DistillInput::new(f64t(vec![1.0, 2.0], [2, 1]), f64t(vec![0.0, 1.0], [2, 1]));
    let err = loss.forward(&input).unwrap_err();
    assert!(
        matches!(err, DistillError::TooFewClasses { min: 2, got: 1, .. }),
        "{err}"
    );
}

/// CTKD refuses a θ of another shape than `[1]`.
#[test]
fn ctkd_theta_is_one_value() {
    configure_f64();
    let ctkd = CtkdConfig::new()
        .init(KdConfig::new().init().unwrap(), &device())
        .unwrap();
    let err = ctkd.with_theta(f64t(vec![0.0, 1.0], [2])).unwrap_err();
    assert!(
        matches!(err, DistillError::ShapeMismatch { ref expected, .. } if expected == &[1]),
        "{err}"
    );
}

/// DLKD's task term checks the logits' batch against the taps' (it used to panic in gather).
#[test]
fn dlkd_checks_the_logits_batch() {
    configure_f64();
    let dlkd = DlkdConfig::new(2, 2)
        .with_corr_weight(0.0)
        .with_supcon_weight(0.0)
        .with_align_weight(0.0)
        .init(&device())
        .unwrap();
    let input = DistillInput::student(f64t(vec![0.1; 3 * 4], [3, 4]))
        .targets(ints(vec![0, 1]))
        .feature(
            "embedding",
            f64t(vec![0.2; 4], [2, 2]),
            f64t(vec![0.3; 4], [2, 2]),
        );
    let err = dlkd.forward(&input).unwrap_err();
    assert!(
        matches!(err, DistillError::ShapeMismatch { ref objective, .. } if objective == "dlkd"),
        "{err}"
    );
}

fn crd_input(
    s: Vec<f64>,
    t: Vec<f64>,
    widths: [usize; 2],
    idx: Vec<i64>,
    step: usize,
) -> DistillInput {
    let n = idx.len();
    DistillInput::features_only()
        .feature(
            "embedding",
            f64t(s, [n, widths[0]]),
            f64t(t, [n, widths[1]]),
        )
        .indices(Tensor::<1, Int>::from_data(
            TensorData::new(idx, [n]),
            &device(),
        ))
        .progress(Progress::epoch(0, 1).at_step(step, 10))
}

/// One NaN batch does not poison CRD: it is a `NonFinite` error, the memories and the
/// normaliser are left as they were (bit-identical records), and the next valid batch gives
/// the finite loss it would have given without it. Tap widths other than the configured ones
/// are a `ShapeMismatch` (they used to panic in burn's `Linear`).
#[test]
fn crd_is_not_poisoned_by_a_nan_batch() {
    configure_f64();
    let config = CrdConfig::new(2, 3, 6).with_embed_dim(3).with_negatives(4);
    // one set of embedding weights for every copy (init draws them at random)
    let weights = config
        .init(&device())
        .unwrap()
        .into_record()
        .into_bytes()
        .unwrap();
    let crd = || {
        config
            .init(&device())
            .unwrap()
            .load_record(burn::store::ModuleRecord::from_bytes(weights.clone()).unwrap())
    };
    let good = |step| {
        crd_input(
            vec![0.3, -1.0, 2.0, 0.5],
            vec![1.0, 0.0, -1.0, 0.2, 0.4, 0.6],
            [2, 3],
            vec![1, 4],
            step,
        )
    };
    let bad = crd_input(
        vec![f64::NAN, -1.0, 2.0, 0.5],
        vec![1.0, 0.0, -1.0, 0.2, 0.4, 0.6],
        [2, 3],
        vec![2, 3],
        1,
    );

    // reference: two valid batches
    let clean = crd();
    let first = clean.forward(&good(0)).unwrap().value();
    let second = clean.forward(&good(2)).unwrap().value();

    let poisoned = crd();
    // a NaN batch first: the normaliser is not fixed from it, nothing is written
    let before = poisoned.clone().into_record().into_bytes().unwrap();
    assert!(matches!(
        poisoned.forward(&bad).unwrap_err(),
        DistillError::NonFinite { .. }
    ));
    assert_eq!(poisoned.clone().into_record().into_bytes().unwrap(), before);
    assert_eq!(poisoned.forward(&good(0)).unwrap().value(), first);
    // a NaN batch between valid ones changes nothing either
    let before = poisoned.clone().into_record().into_bytes().unwrap();
    assert!(matches!(
        poisoned.forward(&bad).unwrap_err(),
        DistillError::NonFinite { .. }
    ));
    assert_eq!(poisoned.clone().into_record().into_bytes().unwrap(), before);
    let after = poisoned.forward(&good(2)).unwrap().value();
    assert!(after.is_finite());
    assert_eq!(after, second);

    let wide = crd_input(vec![0.1; 6], vec![0.2; 6], [3, 3], vec![0, 1], 0);
    let err = crd().forward(&wide).unwrap_err();
    assert!(
        matches!(err, DistillError::ShapeMismatch { ref objective, .. } if objective == "crd"),
        "{err}"
    );
}

/// A teacher in another float type than the student (f32 beside f64, either way) is read in
/// the student's type: logit, feature, relational and token objectives give the all-f64 value
/// (to f32 precision) instead of a `dtype mismatch` panic inside burn.
#[test]
fn mixed_dtypes_are_read_in_the_students() {
    configure_f64();
    use burn::tensor::DType;
    use burn_distill::token::JsdConfig;
    let losses: Vec<Box<dyn Loss>> = vec![
        KdConfig::new().init().unwrap().boxed(),
        KdConfig::new().with_fused(false).init().unwrap().boxed(),
        DkdConfig::new()
            .with_warmup_epochs(0)
            .init()
            .unwrap()
            .boxed(),
        DistConfig::new().init().unwrap().boxed(),
        JsdConfig::new().init().unwrap().boxed(),
        RkdConfig::new().init().unwrap().boxed(),
        AtConfig::new().init().unwrap().boxed(),
    ];
    let logits = |seed: f64| {
        (0..20)
            .map(|i| ((i as f64 * 0.37 + seed).sin()) * 3.0)
            .collect::<Vec<f64>>()
    };
    let maps = |seed: f64| {
        (0..4 * 2 * 9)
            .map(|i| (i as f64 * 0.11 + seed).cos())
            .collect::<Vec<f64>>()
    };
    let input = |ds: DType, dt: DType| {
        DistillInput::new(
            tensor(logits(0.0), [4, 5], ds),
            tensor(logits(1.0), [4, 5], dt),
        )
        .targets(ints(vec![0, 1, 2, 3]))
        .feature(
            "embedding",
            tensor(logits(2.0), [4, 5], ds),
            tensor(logits(3.0), [4, 5], dt),
        )
        .feature(
            "feature",
            tensor(maps(0.0), [4, 2, 3, 3], ds),
            tensor(maps(1.0), [4, 2, 3, 3], dt),
        )
    };
    for loss in &losses {
        let want = loss
            .forward(&input(DType::F64, DType::F64))
            .unwrap()
            .value();
        for (ds, dt) in [(DType::F64, DType::F32), (DType::F32, DType::F64)] {
            let got = loss
                .forward(&input(ds, dt))
                .unwrap_or_else(|e| panic!("{} {ds:?}/{dt:?}: {e}", loss.name()))
                .value();
            assert!(
                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "{} {ds:?}/{dt:?}: {got} vs {want}",
                loss.name()
            );
        }
    }
}

fn invalid_config(err: DistillError, field: &str) -> bool {
    matches!(err, DistillError::InvalidConfig { field: ref f, .. } if f.contains(field))
}

/// Finite but absurd configurations are refused at `init` with the field named, instead of
/// overflowing f32, aborting on an allocation or panicking later.
#[test]
fn absurd_configs_are_refused_at_init() {
    configure_f64();
    for t in [1e30, 5e-324, 1e-4, 2e3] {
        let err = KdConfig::new().with_temperature(t).init().unwrap_err();
        assert!(
            matches!(err, DistillError::InvalidTemperature(v) if v == t),
            "T = {t}"
        );
    }
    for t in [1e-3, 0.07, 4.0, 1e3] {
        assert!(
            KdConfig::new().with_temperature(t).init().is_ok(),
            "T = {t}"
        );
    }
    let huge = |w: f64| DistConfig::new().with_beta(w).init().unwrap_err();
    assert!(invalid_config(huge(1e39), "beta"));
    assert!(invalid_config(
        RkdConfig::new().with_eps(1e300).init().unwrap_err(),
        "eps"
    ));
    assert!(invalid_config(
        burn_distill::relation::PktConfig::new()
            .with_eps(1e300)
            .init()
            .unwrap_err(),
        "eps"
    ));
    assert!(invalid_config(
        AtConfig::new().with_p(1e30).init().unwrap_err(),
        "p"
    ));
    assert!(AtConfig::new().with_p(3.0).init().is_ok());
    // CRD: exp(cos/τ) would overflow; memories of 2⁴⁰ rows would abort on allocation
    let dev = device();
    let crd = |n: usize, negatives: usize, t: f64| {
        CrdConfig::new(4, 4, n)
            .with_negatives(negatives)
            .with_temperature(t)
            .init(&dev)
            .map(|_| ())
    };
    assert!(invalid_config(crd(10, 4, 1e-3).unwrap_err(), "temperature"));
    assert!(invalid_config(
        crd(1 << 40, 4, 0.07).unwrap_err(),
        "dataset_size"
    ));
    assert!(invalid_config(
        crd(10, 1 << 40, 0.07).unwrap_err(),
        "negatives"
    ));
    assert!(crd(10, 4, 0.07).is_ok());
}

/// `Schedule::Step` past 2³¹ epochs keeps its value (the exponent was truncated to i32), and a
/// step schedule that leaves f64 is an error, not an infinite weight.
#[test]
fn step_schedules_past_i32_and_past_f64() {
    configure_f64();
    let epoch = (1usize << 31) + 5;
    let halving = Schedule::Step {
        start: 1.0,
        factor: 1.0,
        every: 1,
    };
    assert_eq!(
        halving
            .value(Some(Progress::epoch(epoch, epoch + 1)))
            .unwrap(),
        1.0
    );
    let growing = Schedule::Step {
        start: 1.0,
        factor: 10.0,
        every: 1,
    };
    assert_eq!(growing.value(Some(Progress::epoch(3, 10))).unwrap(), 1000.0);
    assert!(matches!(
        growing.value(Some(Progress::epoch(400, 1000))),
        Err(DistillError::InvalidConfig { .. })
    ));
}

/// Relational objectives on half-precision embeddings of ordinary size stay finite (RKD's eps
/// of 1e-12 squared is 0 in f16: the rows are read in f32).
#[test]
fn relations_are_finite_in_half_precision() {
    configure_f64();
    use burn::tensor::DType;
    let dev = device();
    let mut checked = 0;
    for dtype in [DType::F16, DType::BF16] {
        if !dev.supports_dtype(dtype) {
            continue;
        }
        checked += 1;
        let rows = |seed| tensor(noise(seed, 6 * 4, 1.0), [6, 4], dtype).require_grad();
        let (s, t) = (rows(1), rows(2));
        let input = DistillInput::features_only().feature("embedding", s.clone(), t);
        let losses: Vec<Box<dyn Loss>> = vec![
            RkdConfig::new().init().unwrap().boxed(),
            burn_distill::relation::PktConfig::new()
                .init()
                .unwrap()
                .boxed(),
            burn_distill::relation::SpConfig::new()
                .init()
                .unwrap()
                .boxed(),
            burn_distill::relation::CcConfig::new()
                .init()
                .unwrap()
                .boxed(),
        ];
        for loss in &losses {
            let out = loss.forward(&input).unwrap();
            assert!(
                out.value().is_finite(),
                "{} {dtype:?}: {}",
                loss.name(),
                out.value()
            );
            let g = values(s.grad(&out.total.backward()).unwrap());
            assert!(
                g.iter().all(|v| v.is_finite()),
                "{} {dtype:?}: gradient",
                loss.name()
            );
        }
    }
    assert!(checked > 0, "flex runs half precision");
}

/// `Paced` ranks one tensor and selects rows of all: an empty batch is `EmptyBatch` (it used
/// to panic in `clamp(1, 0)`), and a part with another row count is a `ShapeMismatch` naming
/// it (it used to select out of range).
#[test]
fn paced_checks_the_batch_it_selects_from() {
    configure_f64();
    use burn_distill::curriculum::PacedConfig;
    let paced = PacedConfig::new()
        .init(CrossEntropyConfig::new().init().unwrap())
        .unwrap();
    let p = Progress::epoch(0, 10);
    let empty_input = DistillInput::new(f64t(vec![], [0, 3]), f64t(vec![], [0, 3]))
        .targets(ints(vec![]))
        .progress(p);
    assert!(empty(paced.forward(&empty_input).unwrap_err(), "paced"));
    let z = || f64t(noise(1, 12, 1.0), [4, 3]);
    let short_tap = DistillInput::new(z(), z())
        .targets(ints(vec![0, 1, 2, 0]))
        .feature(
            "embedding",
            f64t(vec![0.5; 6], [3, 2]),
            f64t(vec![0.5; 6], [3, 2]),
        )
        .progress(p);
    let err = paced.forward(&short_tap).unwrap_err();
    assert!(
        matches!(err, DistillError::ShapeMismatch { ref what, ref actual, .. }
            if what.contains("student tap `embedding`") && actual == &[3]),
        "{err}"
    );
    // a well-formed batch still admits its easiest rows
    let ok = DistillInput::new(z(), z())
        .targets(ints(vec![0, 1, 2, 0]))
        .progress(p);
    assert!(paced.forward(&ok).unwrap().value().is_finite());
}

/// `TopKMask` cuts the guides with the logits: a guide of another shape is a `ShapeMismatch`
/// (it used to panic in `gather`), for every objective that reads the logits.
#[test]
fn guides_must_have_the_teachers_shape() {
    configure_f64();
    use burn_distill::curriculum::TopKMaskConfig;
    let z = || f64t(noise(2, 20, 1.0), [4, 5]);
    let input = DistillInput::new(z(), z())
        .targets(ints(vec![0, 1, 2, 3]))
        .guide(f64t(noise(3, 12, 1.0), [4, 3]))
        .progress(Progress::epoch(0, 10));
    let mask = TopKMaskConfig::new()
        .with_start(0.5)
        .init(KdConfig::new().init().unwrap())
        .unwrap();
    for err in [
        mask.forward(&input).unwrap_err(),
        KdConfig::new().init().unwrap().forward(&input).unwrap_err(),
    ] {
        assert!(
            matches!(err, DistillError::ShapeMismatch { ref what, ref expected, .. }
                if what == "guide 0" && expected == &[4, 5]),
            "{err}"
        );
    }
}

#[derive(Module, Debug)]
struct Row {
    w: burn::module::Param<Tensor<2>>,
}

/// DOT's momenta are state: a NaN learning rate is refused, and so is a step on a non-finite
/// loss, before either touches them — the next good step is what a fresh DOT would take.
#[test]
fn dot_refuses_a_nan_rate_and_a_non_finite_loss() {
    configure_f64();
    use burn_distill::optim::DotConfig;
    let row = || Row {
        w: burn::module::Param::from_tensor(f64t(vec![0.1, -0.2, 0.3], [1, 3])),
    };
    let teacher = |v: f64| f64t(vec![v, 0.0, 0.5], [1, 3]);
    let loss = |t: f64| {
        let kd = KdConfig::new().init().unwrap();
        move |m: &Row| {
            (CrossEntropyConfig::new().init()? + kd.clone())
                .forward(&DistillInput::new(m.w.val(), teacher(t)).targets(ints(vec![0])))
        }
    };
    let mut dot = DotConfig::new().init().unwrap();
    let err = dot.step(f64::NAN, row(), loss(1.0)).unwrap_err();
    assert!(
        matches!(err, DistillError::InvalidConfig { ref field, .. } if field == "lr"),
        "{err}"
    );
    let err = dot.step(0.1, row(), loss(f64::NAN)).unwrap_err();
    assert!(matches!(err, DistillError::NonFinite { .. }), "{err}");
    let (after, _) = dot.step(0.1, row(), loss(1.0)).unwrap();
    let (fresh, _) = DotConfig::new()
        .init()
        .unwrap()
        .step(0.1, row(), loss(1.0))
        .unwrap();
    assert_eq!(values(after.w.val()), values(fresh.w.val()));
    assert!(values(after.w.val()).iter().all(|v| v.is_finite()));
}

/// Run by [`a_tracked_teacher_is_warned_about_once`] in a child process: a KD step on a
/// teacher forward pass that autodiff tracked (`tracked`), or on constants.
#[test]
fn tracked_teacher_child() {
    configure_f64();
    let Some(mode) = std::env::var_os("BURN_DISTILL_TRACKED_CHILD") else {
        return; // only meaningful as the child
    };
    let w = f64t(noise(4, 9, 1.0), [3, 3]).require_grad();
    let x = f64t(noise(5, 6, 1.0), [2, 3]);
    let teacher = match mode.to_str() {
        Some("tracked") => x.clone().matmul(w), // the output of a tracked op
        _ => x.clone().matmul(w.detach()).set_require_grad(false),
    };
    let kd = KdConfig::new().init().unwrap();
    for _ in 0..3 {
        let student = x.clone().require_grad();
        kd.forward(&DistillInput::new(student, teacher.clone()))
            .unwrap();
    }
}

#[test]
fn a_tracked_teacher_is_warned_about_once() {
    configure_f64();
    let run = |mode: &str| {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tracked_teacher_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("BURN_DISTILL_TRACKED_CHILD", mode)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr)
            .matches("burn-distill: warning: the teacher's outputs")
            .count()
    };
    assert_eq!(run("tracked"), 1, "one warning for three steps");
    assert_eq!(run("constant"), 0);
}

/// A record of a learnable objective of another shape (a connector of other channels, a
/// memory bank of another data set size) is refused by burn's `try_load_record`, a `Result`
/// (its `load_record` panics): the path docs/train.md gives for restoring objectives.
#[test]
fn mismatched_records_are_errors_not_panics() {
    configure_f64();
    use burn_distill::feature::HintConfig;
    let dev = device();
    let hint = |teacher: usize| {
        HintConfig::new([3, 4, 4], [teacher, 4, 4])
            .init(&dev)
            .unwrap()
    };
    assert!(hint(6).try_load_record(hint(8).into_record()).is_err());
    assert!(hint(6).try_load_record(hint(6).into_record()).is_ok());
    let crd = |size: usize| CrdConfig::new(4, 5, size).init(&dev).unwrap();
    assert!(crd(20).try_load_record(crd(30).into_record()).is_err());
    assert!(crd(20).try_load_record(crd(20).into_record()).is_ok());
}

/// Issue 30's first root causes: a sequence of one position shifts to no token (it panicked in
/// burn's `narrow`), and the objectives read that as an empty batch.
#[test]
fn one_position_sequences_shift_to_an_empty_batch() {
    configure_f64();
    use burn_distill::token::{ForwardKlConfig, shift_labels, shift_logits};
    let logits = || f64t(vec![0.5; 2 * 5], [2, 1, 5]);
    let (s, t) = (shift_logits(logits()), shift_logits(logits()));
    assert_eq!(s.dims(), [0, 5]);
    let labels = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 2], [2, 1]), &device());
    assert_eq!(shift_labels(labels).dims(), [0]);
    let err = ForwardKlConfig::new()
        .init()
        .unwrap()
        .forward(&DistillInput::new(s, t))
        .unwrap_err();
    assert!(empty(err.clone(), "forward_kl"), "{err}");
}

/// `HiddenState` on taps with no rows is an empty batch (it returned 0).
#[test]
fn hidden_state_refuses_an_empty_batch() {
    configure_f64();
    use burn_distill::token::HiddenStateConfig;
    configure_f64();
    let hidden = HiddenStateConfig::new(4, 5, vec![("h".into(), "h".into())])
        .init(&device())
        .unwrap();
    let input = DistillInput::features_only()
        .student_feature("h", f64t(vec![], [0, 4]))
        .teacher_feature("h", f64t(vec![], [0, 5]));
    let err = hidden.forward(&input).unwrap_err();
    assert!(empty(err.clone(), "hidden_state"), "{err}");
}

/// Weights beyond 1e15 and CTKD temperatures outside [1e-3, 1e3] are refused, as documented
/// (a weight of 1e39 gave inf; a CTKD start of 1e30 gave NaN).
#[test]
fn huge_weights_and_ctkd_temperatures_are_refused() {
    configure_f64();
    let input = DistillInput::new(
        f64t(vec![1.0, 2.0, 0.5], [1, 3]),
        f64t(vec![2.0, 1.0, 0.0], [1, 3]),
    );
    for w in [1e39, f64::MAX, -1e16] {
        let kd = KdConfig::new().init().unwrap().weighted(w);
        let err = kd.forward(&input).unwrap_err();
        assert!(invalid_config(err.clone(), "value"), "{w}: {err}");
    }
    assert!(
        KdConfig::new()
            .init()
            .unwrap()
            .weighted(1e15)
            .forward(&input)
            .is_ok()
    );
    let kd = || KdConfig::new().init().unwrap();
    for (start, range) in [(1e30, 20.0), (1.0, 5e3), (1e-4, 1.0)] {
        let err = CtkdConfig::new()
            .with_t_start(start)
            .with_t_range(range)
            .init(kd(), &device())
            .unwrap_err();
        assert!(
            matches!(err, DistillError::InvalidTemperature(_)),
            "t_start {start}, t_range {range}: {err}"
        );
    }
    assert!(CtkdConfig::new().init(kd(), &device()).is_ok());
}

/// Absurd configurations issue 30 found accepted: FT at rate 1e6 (it allocated 12 GB), VID at
/// initial variance 1e300 (inf), CC of Gaussian order 1000 (NaN). Each is refused at `init`
/// naming its field; the largest accepted values give finite losses.
#[test]
fn absurd_ft_vid_and_cc_configs_are_refused() {
    configure_f64();
    use burn_distill::feature::{FtConfig, VidConfig};
    use burn_distill::relation::{CcConfig, CcKernel};
    configure_f64();
    let dev = device();
    for rate in [1e6, 1.5, 0.0, f64::NAN] {
        let err = FtConfig::new(3, 6).with_rate(rate).init(&dev).unwrap_err();
        assert!(invalid_config(err.clone(), "rate"), "{rate}: {err}");
    }
    for v in [1e300, 1e16, f64::INFINITY] {
        let err = VidConfig::new(vec!["f".into()], vec![[3, 6]])
            .with_init_variance(v)
            .init(&dev)
            .unwrap_err();
        assert!(invalid_config(err.clone(), "init_variance"), "{v}: {err}");
    }
    let gaussian = |order| CcKernel::Gaussian { gamma: 0.4, order };
    let err = CcConfig::new()
        .with_kernel(gaussian(1000))
        .init()
        .unwrap_err();
    assert!(invalid_config(err.clone(), "kernel.order"), "{err}");
    // the bounds themselves: a finite loss
    let maps = |c: usize, seed| f64t(noise(seed, 4 * c * 4 * 4, 1.0), [4, c, 4, 4]);
    let vid = VidConfig::new(vec!["f".into()], vec![[3, 6]])
        .with_init_variance(1e15)
        .init(&dev)
        .unwrap();
    let input = DistillInput::features_only().feature("f", maps(3, 1), maps(6, 2));
    assert!(vid.forward(&input).unwrap().value().is_finite());
    let rows = |seed| f64t(noise(seed, 4 * 8, 1.0), [4, 8]);
    let cc = CcConfig::new().with_kernel(gaussian(16)).init().unwrap();
    let input = DistillInput::features_only().feature("embedding", rows(3), rows(4));
    assert!(cc.forward(&input).unwrap().value().is_finite());
}

/// `FusedLinear` checks its heads before any kernel or matmul runs (each of these panicked
/// inside the kernel, a reshape or the matmul): no vocabulary or hidden width is an empty
/// batch, a teacher head whose weight does not fit its hidden states is a shape mismatch, a
/// weight of another float type than its hidden states a dtype mismatch, and labels outside
/// the vocabulary are refused even when no hard-label term reads them.
#[test]
fn fused_linear_checks_its_heads() {
    configure_f64();
    use burn::tensor::DType;
    use burn_distill::token::{FusedLinearConfig, JsdConfig, LmHead, LmHeads, TeacherHead};
    let fused = FusedLinearConfig::new()
        .init(
            JsdConfig::new()
                .with_reduction(burn_distill::token::TokenReduction::None)
                .init()
                .unwrap(),
        )
        .unwrap();
    let t = |data: usize, shape: [usize; 2]| f64t(noise(7, data, 1.0), shape);
    let run = |student: LmHead, teacher: TeacherHead| {
        fused.forward(&DistillInput::features_only().with(LmHeads { student, teacher }))
    };
    let head = |n, h, v| LmHead::new(t(n * h, [n, h]), t(h * v, [h, v]), None);
    // no vocabulary, no hidden width
    let err = run(head(3, 4, 0), TeacherHead::Logits(t(0, [3, 0]))).unwrap_err();
    assert!(empty(err.clone(), "fused_linear"), "{err}");
    let err = run(head(3, 0, 5), TeacherHead::Logits(t(15, [3, 5]))).unwrap_err();
    assert!(empty(err.clone(), "fused_linear"), "{err}");
    // a teacher head [N, 6] against a weight [4, 5]
    let teacher = LmHead::new(t(18, [3, 6]), t(20, [4, 5]), None);
    let err = run(head(3, 4, 5), TeacherHead::Head(teacher)).unwrap_err();
    assert!(matches!(err, DistillError::ShapeMismatch { .. }), "{err}");
    // an f64 weight beside f32 hidden states
    let student = LmHead::new(t(12, [3, 4]).cast(DType::F32), t(20, [4, 5]), None);
    let err = run(student, TeacherHead::Logits(t(15, [3, 5]))).unwrap_err();
    assert!(matches!(err, DistillError::DtypeMismatch { .. }), "{err}");
    // a label outside the vocabulary, without a hard-label term
    let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 9, -100], [3]), &device());
    let input = DistillInput::features_only()
        .with(LmHeads {
            student: head(3, 4, 5),
            teacher: TeacherHead::Logits(t(15, [3, 5])),
        })
        .labels(labels, -100);
    let err = fused.forward(&input).unwrap_err();
    assert!(
        matches!(err, DistillError::TargetOutOfRange { .. }),
        "{err}"
    );
}

/// A NaN or an infinity in an ignored token's hidden state (student or teacher head) or
/// teacher logits changes nothing in `FusedLinear`: the total and every gradient equal those of
/// the same input with that row zeroed, and the row's own gradient is 0 (the total was NaN:
/// the row met its zero gradient in `hᵀ·g`). Both the fused kernel and the graph path.
#[test]
fn fused_linear_ignores_non_finite_rows_it_does_not_count() {
    configure_f64();
    use burn_distill::token::{
        FusedLinearConfig, JsdConfig, LmHead, LmHeads, LogitCosineConfig, TeacherHead,
        TokenDivergence, TokenReduction,
    };
    let (n, h, v) = (4, 3, 5);
    let labels = vec![1i64, -100, 2, 0];
    let inners: [Box<dyn TokenDivergence>; 2] = [
        Box::new(
            JsdConfig::new()
                .with_reduction(TokenReduction::None)
                .init()
                .unwrap(),
        ),
        Box::new(
            LogitCosineConfig::new()
                .with_reduction(TokenReduction::None)
                .init()
                .unwrap(),
        ),
    ];
    for inner in inners {
        let fused = FusedLinearConfig::new()
            .with_hard_weight(0.5)
            .init(inner)
            .unwrap();
        for (bad, teacher_logits) in [(f64::NAN, false), (f64::INFINITY, false), (f64::NAN, true)] {
            let run = |poison: f64| {
                let mut hs = noise(1, n * h, 1.0);
                let mut zt = noise(3, n * v, 1.0);
                let mut ht = noise(4, n * h, 1.0);
                hs[h..2 * h].iter_mut().for_each(|x| *x = poison);
                ht[h..2 * h].iter_mut().for_each(|x| *x = poison);
                zt[v..2 * v].iter_mut().for_each(|x| *x = poison);
                let x = f64t(hs, [n, h]).require_grad();
                let w = f64t(noise(2, h * v, 1.0), [h, v]).require_grad();
                let teacher = match teacher_logits {
                    true => TeacherHead::Logits(f64t(zt, [n, v])),
                    false => TeacherHead::Head(LmHead::new(
                        f64t(ht, [n, h]),
                        f64t(noise(5, h * v, 1.0), [h, v]),
                        None,
                    )),
                };
                let input = DistillInput::features_only()
                    .labels(ints(labels.clone()), -100)
                    .with(LmHeads {
                        student: LmHead::new(x.clone(), w.clone(), None),
                        teacher,
                    });
                let out = fused.forward(&input).unwrap();
                let value = out.value();
                let grads = out.total.backward();
                (
                    value,
                    values(x.grad(&grads).unwrap()),
                    values(w.grad(&grads).unwrap()),
                )
            };
            let (want, want_x, want_w) = run(0.0);
            let (got, got_x, got_w) = run(bad);
            assert!(
                got.is_finite() && (got - want).abs() < 1e-12,
                "{bad} {teacher_logits}: {got} vs {want}"
            );
            close("hidden gradient", &got_x, &want_x, 1e-12, 1e-14).unwrap();
            close("weight gradient", &got_w, &want_w, 1e-12, 1e-14).unwrap();
            assert!(got_x[h..2 * h].iter().all(|g| *g == 0.0));
        }
    }
}

/// KDSVD: stages whose student and teacher widths differ are a shape mismatch (the alignment's
/// product panicked); all-zero and 1e-30 maps give finite values and gradients (√ at 0 gave
/// NaN gradients); f16 maps and a teacher in another float type give a finite value (f16's
/// Gram matrices overflowed; mixed types panicked in the product).
#[test]
fn kdsvd_refuses_mismatched_widths_and_stays_finite() {
    configure_f64();
    use burn::tensor::DType;
    use burn_distill::feature::KdsvdConfig;
    let kdsvd = KdsvdConfig::new(vec!["a".into(), "b".into()])
        .init()
        .unwrap();
    let map = |scale: f64, shape: [usize; 4], seed: u64| {
        f64t(noise(seed, shape.iter().product(), 1.0), shape) * scale
    };
    let input = |s: [Tensor<4>; 2], t: [Tensor<4>; 2]| {
        let [sa, sb] = s;
        let [ta, tb] = t;
        DistillInput::features_only()
            .feature("a", sa, ta)
            .feature("b", sb, tb)
    };
    let err = kdsvd
        .forward(&input(
            [map(1.0, [2, 3, 4, 5], 1), map(1.0, [2, 3, 4, 5], 2)],
            [map(1.0, [2, 3, 4, 6], 3), map(1.0, [2, 3, 4, 5], 4)],
        ))
        .unwrap_err();
    assert!(matches!(err, DistillError::ShapeMismatch { .. }), "{err}");
    for scale in [0.0, 1e-30] {
        let s = map(scale, [2, 3, 4, 5], 1).require_grad();
        let out = kdsvd
            .forward(&input(
                [s.clone(), map(scale, [2, 3, 4, 5], 2)],
                [map(scale, [2, 2, 4, 5], 3), map(scale, [2, 2, 4, 5], 4)],
            ))
            .unwrap();
        assert!(out.value().is_finite(), "scale {scale}");
        let g = values(s.grad(&out.total.backward()).unwrap());
        assert!(g.iter().all(|x| x.is_finite()), "scale {scale}: {g:?}");
    }
    let half = |t: Tensor<4>| t.cast(DType::F16);
    let out = kdsvd
        .forward(&input(
            [
                half(map(30.0, [2, 8, 8, 5], 1)),
                half(map(30.0, [2, 8, 8, 5], 2)),
            ],
            [half(map(30.0, [2, 8, 8, 5], 3)), map(30.0, [2, 8, 8, 5], 4)],
        ))
        .unwrap();
    assert!(out.value().is_finite());
}

/// Objectives with terms of different float types (logits read in f32 beside half or f64
/// maps) sum them in the widest type: DIST+ on f16 logits and maps, DIST+ and SRD with f32
/// logits beside f64 taps (each panicked adding an f32 term to another).
#[test]
fn terms_of_different_float_types_are_summed_in_the_widest() {
    configure_f64();
    use burn::tensor::DType;
    use burn_distill::feature::SrdConfig;
    use burn_distill::logit::DistPlusConfig;
    let logits = |seed| f64t(noise(seed, 4 * 5, 2.0), [4, 5]);
    let map = |seed| f64t(noise(seed, 4 * 3 * 2 * 2, 1.0), [4, 3, 2, 2]);
    let dist = DistPlusConfig::new()
        .with_feature("m".into())
        .init()
        .unwrap();
    for (logit_type, map_type) in [
        (DType::F16, DType::F16),
        (DType::F32, DType::F64),
        (DType::BF16, DType::F32),
    ] {
        let input = DistillInput::new(logits(1).cast(logit_type), logits(2).cast(logit_type))
            .feature("m", map(3).cast(map_type), map(4).cast(map_type));
        let out = dist.forward(&input).unwrap();
        assert!(
            out.value().is_finite(),
            "{logit_type:?} logits, {map_type:?} maps"
        );
    }
    let srd = SrdConfig::new()
        .with_feature("e".into())
        .init(&device())
        .unwrap();
    let input = DistillInput::new(logits(1).cast(DType::F32), logits(2).cast(DType::F32)).feature(
        "e",
        f64t(noise(5, 4 * 6, 1.0), [4, 6]),
        f64t(noise(6, 4 * 6, 1.0), [4, 6]),
    );
    let out = srd.forward(&input).unwrap();
    assert!(out.value().is_finite());
    assert_eq!(out.total.dtype(), DType::F64);
}

/// Errors show what the user wrote: a dataset index of `usize::MAX` is that number (it was
/// shown as −1), and a negative token id in a top-k cache is named as a bad token id (it said
/// "out of range for 4294967295 classes").
#[test]
fn cache_errors_show_the_index_and_token_id_as_given() {
    configure_f64();
    use burn_distill::cache::CacheWriter;
    let dir = std::env::temp_dir().join(format!("burn-distill-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ids =
        |v: i64| Tensor::<3, Int>::from_data(TensorData::new(vec![v, 1], [1, 1, 2]), &device());
    let lps = || f64t(vec![-0.5, -1.5], [1, 2]).reshape([1, 1, 2]);
    let mut writer = CacheWriter::create(dir.join("a.cache"), "k", 2).unwrap();
    let err = writer
        .write_top_k(&[usize::MAX], ids(0), lps())
        .unwrap_err();
    assert!(
        matches!(err, DistillError::IndexOutOfRange { index, .. } if index == usize::MAX as i128)
    );
    assert!(err.to_string().contains("18446744073709551615"), "{err}");
    let err = writer.write_top_k(&[0], ids(-1), lps()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("token id -1") && !text.contains("4294967295 classes"),
        "{text}"
    );
    drop(writer);
    std::fs::remove_dir_all(&dir).ok();
}

/// A TOML spec with `nan` or `inf` names the field and the number (it said "invalid type:
/// null": the options are JSON values, which have no NaN).
#[test]
fn a_non_finite_number_in_a_toml_spec_is_named() {
    configure_f64();
    use burn_distill::spec::LossSpec;
    for (value, shown) in [("nan", "NaN"), ("-inf", "-inf"), ("+inf", "inf")] {
        let text = format!(
            "[[loss]]\nmethod = \"ce\"\n\n[[loss]]\nmethod = \"kd\"\ntemperature = {value}\n"
        );
        let err = LossSpec::from_toml(&text).unwrap_err().to_string();
        assert!(
            err.contains("loss[1].temperature") && err.contains(shown),
            "{err}"
        );
        assert!(!err.contains("null"), "{err}");
    }
}

/// A cache with bytes appended says so (it said "truncated").
#[test]
fn a_cache_with_bytes_appended_says_so() {
    configure_f64();
    use burn_distill::cache::{CacheWriter, TeacherCache};
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("burn-distill-append-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("a.cache");
    let mut writer = CacheWriter::create(&path, "k", 1).unwrap();
    let ids = Tensor::<3, Int>::from_data(TensorData::new(vec![0i64, 1], [1, 1, 2]), &device());
    writer
        .write_top_k(&[0], ids, f64t(vec![-0.5, -1.5], [1, 2]).reshape([1, 1, 2]))
        .unwrap();
    writer.finish().unwrap();
    TeacherCache::open(&path, "k", 1).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"xyz")
        .unwrap();
    let err = TeacherCache::open(&path, "k", 1).unwrap_err().to_string();
    assert!(
        err.contains("3 bytes longer") && !err.contains("truncated"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// ICKD with its embedding: a student map with other channels than the embedding was built
/// for is a shape mismatch (it panicked in the convolution).
#[test]
fn ickd_checks_the_embedding_channels() {
    configure_f64();
    use burn_distill::feature::IckdConfig;
    let ickd = IckdConfig::new()
        .with_embeds(vec![[3, 4]])
        .init(&device())
        .unwrap();
    let map = |c: usize, seed| {
        f64t(noise(seed, 2 * c * 3 * 3, 1.0), [2, c, 3, 3]).cast(burn::tensor::DType::F32)
    };
    let input = DistillInput::features_only().feature("feature", map(5, 1), map(4, 2));
    let err = ickd.forward(&input).unwrap_err();
    assert!(matches!(err, DistillError::ShapeMismatch { .. }), "{err}");
    let input = DistillInput::features_only().feature("feature", map(3, 1), map(4, 2));
    assert!(ickd.forward(&input).unwrap().value().is_finite());
}

/// `CrossEntropy` with labels that carry an ignore index averages over the counted rows only:
/// an ignored row is not trained towards class 0, its NaN logits do not leak, and no counted
/// row gives 0 (it averaged over every row, ignored ones as class 0, before).
#[test]
fn cross_entropy_honours_the_ignore_index() {
    configure_f64();
    use burn::tensor::Int;
    let z = vec![2.0, 0.5, -1.0, f64::NAN, 0.0, 0.0, 0.3, 0.1, 1.2];
    let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, -100, 2], [3]), &device());
    let x = f64t(z.clone(), [3, 3]).require_grad();
    let out = CrossEntropy::new()
        .forward(&DistillInput::student(x.clone()).labels(labels, -100))
        .unwrap();
    let nll = |row: &[f64], y: usize| -> f64 {
        let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
        lse - row[y]
    };
    let want = (nll(&z[0..3], 0) + nll(&z[6..9], 2)) / 2.0;
    assert!(
        (out.value() - want).abs() < 1e-12,
        "{} vs {want}",
        out.value()
    );
    let g = values(x.grad(&out.total.backward()).unwrap());
    assert!(g.iter().all(|v| v.is_finite()) && g[3..6].iter().all(|&v| v == 0.0));
    let none = Tensor::<1, Int>::from_data(TensorData::new(vec![-100i64; 3], [3]), &device());
    let empty = CrossEntropy::new()
        .forward(&DistillInput::student(f64t(z, [3, 3])).labels(none, -100))
        .unwrap();
    assert_eq!(empty.value(), 0.0);
}
