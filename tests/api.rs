//! The public contract: one test per error variant, the combinators, reductions, the teacher's
//! detachment, warm-up and the functional forms.

mod common;

use burn::tensor::{DType, Tensor};
use burn_distill::logit::{dkd_loss, kd_loss};
use burn_distill::prelude::*;
use burn_distill::{LossSum, curriculum::Schedule};
use common::*;

fn logits(n: usize, c: usize, seed: u64) -> Tensor<2> {
    let data = (0..n * c)
        .map(|i| (((i as u64 + 1) * (seed * 2 + 7919)) % 97) as f64 / 17.0 - 2.5)
        .collect();
    f64t(data, [n, c])
}

fn input(n: usize, c: usize) -> DistillInput {
    DistillInput::new(logits(n, c, 1), logits(n, c, 2))
        .targets(ints((0..n as i64).map(|i| i % c as i64).collect()))
}

// ---- one test per error variant -------------------------------------------------------------

#[test]
fn shape_mismatch_names_both_shapes() {
    let kd = KdConfig::new().init().unwrap();
    let err = kd
        .forward(&DistillInput::new(logits(4, 5, 1), logits(3, 5, 2)))
        .unwrap_err();
    assert_eq!(
        err,
        DistillError::ShapeMismatch {
            objective: "kd".into(),
            what: "teacher logits".into(),
            expected: vec![4, 5],
            actual: vec![3, 5]
        }
    );
    assert!(err.to_string().contains("[4, 5]") && err.to_string().contains("[3, 5]"));
    let ce = CrossEntropyConfig::new().init().unwrap();
    let err = ce
        .forward(&DistillInput::new(logits(4, 5, 1), logits(4, 5, 2)).targets(ints(vec![0, 1])))
        .unwrap_err();
    assert!(matches!(err, DistillError::ShapeMismatch { ref what, .. } if what == "targets"));
}

#[test]
fn class_mismatch() {
    let err = KdConfig::new()
        .init()
        .unwrap()
        .forward(&DistillInput::new(logits(2, 5, 1), logits(2, 6, 2)))
        .unwrap_err();
    assert_eq!(
        err,
        DistillError::ClassMismatch {
            objective: "kd".into(),
            student: 5,
            teacher: 6
        }
    );
}

#[test]
fn target_out_of_range() {
    let dkd = DkdConfig::new().with_warmup_epochs(0).init().unwrap();
    for (y, bad) in [(vec![0, 5], 5), (vec![-1, 2], -1)] {
        let err = dkd
            .forward(&DistillInput::new(logits(2, 5, 1), logits(2, 5, 2)).targets(ints(y)))
            .unwrap_err();
        assert_eq!(
            err,
            DistillError::TargetOutOfRange {
                objective: "dkd".into(),
                target: bad,
                classes: 5
            }
        );
    }
}

#[test]
fn non_positive_or_non_finite_temperature() {
    for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            KdConfig::new().with_temperature(t).init(),
            Err(DistillError::InvalidTemperature(_))
        ));
        assert!(matches!(
            DkdConfig::new().with_temperature(t).init(),
            Err(DistillError::InvalidTemperature(_))
        ));
        assert!(matches!(
            kd_loss(logits(2, 3, 1), logits(2, 3, 2), t),
            Err(DistillError::InvalidTemperature(_))
        ));
    }
}

#[test]
fn empty_batch() {
    let empty = || f64t(vec![], [0, 5]);
    let err = KdConfig::new()
        .init()
        .unwrap()
        .forward(&DistillInput::new(empty(), empty()))
        .unwrap_err();
    assert!(matches!(err, DistillError::EmptyBatch { .. }));
}

#[test]
fn missing_input() {
    let dkd = DkdConfig::new().with_warmup_epochs(0).init().unwrap();
    let err = dkd
        .forward(&DistillInput::new(logits(2, 5, 1), logits(2, 5, 2)))
        .unwrap_err();
    assert!(matches!(err, DistillError::MissingInput { ref what, .. } if what.contains("targets")));
    let err = KdConfig::new()
        .init()
        .unwrap()
        .forward(&DistillInput::features_only())
        .unwrap_err();
    assert!(matches!(err, DistillError::MissingInput { ref what, .. } if what.contains("logits")));
    // DKD with a warm-up needs the training progress
    let err = DkdConfig::new()
        .init()
        .unwrap()
        .forward(&input(2, 5))
        .unwrap_err();
    assert!(
        matches!(err, DistillError::MissingInput { ref what, .. } if what.contains("progress"))
    );
}

#[test]
fn missing_feature_names_the_tap() {
    let input = input(2, 5).feature("layer3", logits(2, 4, 3), logits(2, 4, 4));
    assert!(input.of("hint").feature("layer3").is_ok());
    let err = input.of("hint").feature("layer4").unwrap_err();
    assert_eq!(
        err,
        DistillError::MissingFeature {
            objective: "hint".into(),
            name: "layer4".into()
        }
    );
}

#[test]
fn too_few_classes_for_dkd() {
    let dkd = DkdConfig::new().with_warmup_epochs(0).init().unwrap();
    let err = dkd.forward(&input(3, 2)).unwrap_err();
    assert_eq!(
        err,
        DistillError::TooFewClasses {
            objective: "dkd".into(),
            min: 3,
            got: 2
        }
    );
    assert!(matches!(
        dkd_loss(
            logits(3, 2, 1),
            logits(3, 2, 2),
            ints(vec![0, 1, 0]),
            1.0,
            8.0,
            4.0
        ),
        Err(DistillError::TooFewClasses { .. })
    ));
}

#[test]
fn invalid_config_values() {
    for (cfg, field) in [
        (DkdConfig::new().with_alpha(-1.0), "alpha"),
        (DkdConfig::new().with_beta(f64::NAN), "beta"),
    ] {
        let err = cfg.init().unwrap_err();
        assert!(
            matches!(err, DistillError::InvalidConfig { field: ref f, .. } if f == field),
            "{err}"
        );
    }
    assert!(matches!(
        CrossEntropyConfig::new().with_smoothing(1.0).init(),
        Err(DistillError::InvalidConfig { .. })
    ));
    let bad_weight = KdConfig::new().init().unwrap().weighted(f64::NAN);
    assert!(matches!(
        bad_weight.forward(&input(2, 5)),
        Err(DistillError::InvalidConfig { .. })
    ));
    assert!(matches!(
        LossSum::new().forward(&input(2, 5)),
        Err(DistillError::InvalidConfig { .. })
    ));
}

// ---- combinators ----------------------------------------------------------------------------

#[test]
fn weighted_sum_is_the_sum_of_weighted_parts_with_named_terms() {
    let input = input(4, 5).progress(Progress::epoch(1, 10));
    let ce = CrossEntropyConfig::new().init().unwrap();
    let kd = KdConfig::new().init().unwrap();
    let dkd = DkdConfig::new().with_warmup_epochs(4).init().unwrap();
    let (v_ce, v_kd, v_dkd) = (
        ce.forward(&input).unwrap().value(),
        kd.forward(&input).unwrap().value(),
        dkd.forward(&input).unwrap().value(),
    );
    let loss = ce.clone().weighted(0.1) + kd.clone().weighted(0.9) + dkd.boxed();
    let out = loss.forward(&input).unwrap();
    let want = 0.1 * v_ce + 0.9 * v_kd + v_dkd;
    assert!((out.value() - want).abs() < 1e-12 * want.abs());
    let names: Vec<&str> = out.terms().map(|(n, _)| n).collect();
    assert_eq!(names, ["ce", "kd", "dkd/tckd", "dkd/nckd"]);
    let term_sum: f64 = out.values().iter().map(|(_, v)| v).sum();
    assert!((term_sum - out.value()).abs() < 1e-12 * want.abs());
    assert!((out.values()[1].1 - 0.9 * v_kd).abs() < 1e-12);

    // duplicate names become unique; renaming renames the terms
    let twice = kd.clone() + kd.clone().named("kd_t1") + kd.clone();
    let names: Vec<String> = twice
        .forward(&input)
        .unwrap()
        .values()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["kd", "kd_t1", "kd#2"]);

    // trait objects, nested sums, scheduled weights
    let boxed: Vec<Box<dyn Loss>> = vec![ce.boxed(), kd.clone().boxed()];
    let sum = boxed
        .into_iter()
        .fold(LossSum::new(), |sum, part| sum + part);
    assert!((sum.forward(&input).unwrap().value() - (v_ce + v_kd)).abs() < 1e-12);
    let ramp = kd.weighted_by(Schedule::Linear {
        start: 0.0,
        end: 1.0,
        epochs: 0,
    });
    let half = ramp
        .forward(&input.clone().progress(Progress::epoch(5, 10)))
        .unwrap()
        .value();
    assert!((half - 0.5 * v_kd).abs() < 1e-12);
}

// ---- semantics ------------------------------------------------------------------------------

#[test]
fn teacher_is_detached_unless_attached() {
    let (s, t) = (
        logits(3, 5, 1).require_grad(),
        logits(3, 5, 2).require_grad(),
    );
    let kd = KdConfig::new().init().unwrap();
    let grads = kd
        .forward(&DistillInput::new(s.clone(), t.clone()))
        .unwrap()
        .total
        .backward();
    assert!(s.grad(&grads).is_some() && t.grad(&grads).is_none());
    let grads = kd
        .forward(&DistillInput::new(s.clone(), t.clone()).attach_teacher())
        .unwrap()
        .total
        .backward();
    assert!(t.grad(&grads).is_some());
}

#[test]
fn reductions_and_t_squared_relate_as_documented() {
    let (n, c, temp) = (4, 5, 3.0);
    let input = input(n, c);
    let kd = |r: Reduction, sq: bool| {
        KdConfig::new()
            .with_temperature(temp)
            .with_reduction(r)
            .with_t_squared(sq)
            .init()
            .unwrap()
    };
    let bm = kd(Reduction::SampleMean, true)
        .forward(&input)
        .unwrap()
        .value();
    assert!(
        (kd(Reduction::ElementMean, true)
            .forward(&input)
            .unwrap()
            .value()
            - bm / c as f64)
            .abs()
            < 1e-12
    );
    assert!(
        (kd(Reduction::Sum, true).forward(&input).unwrap().value() - bm * n as f64).abs() < 1e-12
    );
    assert!(
        (kd(Reduction::SampleMean, false)
            .forward(&input)
            .unwrap()
            .value()
            - bm / (temp * temp))
            .abs()
            < 1e-12
    );
    let per = kd(Reduction::None, true).forward(&input).unwrap().total;
    assert_eq!(per.dims(), [n]);
    assert!((values(per).iter().sum::<f64>() / n as f64 - bm).abs() < 1e-12);
    // the functional form is the default objective
    let (s, t) = input.of("test").logits().unwrap();
    assert!((kd_loss(s, t, temp).unwrap().into_scalar::<f64>() - bm).abs() < 1e-12);
}

#[test]
fn dkd_warmup_scales_linearly_then_holds() {
    let dkd = DkdConfig::new().with_warmup_epochs(4).init().unwrap();
    let full = DkdConfig::new()
        .with_warmup_epochs(0)
        .init()
        .unwrap()
        .forward(&input(4, 5))
        .unwrap()
        .value();
    for (epoch, w) in [(0, 0.25), (1, 0.5), (3, 1.0), (50, 1.0)] {
        let v = dkd
            .forward(&input(4, 5).progress(Progress::epoch(epoch, 60)))
            .unwrap()
            .value();
        assert!(
            (v - w * full).abs() < 1e-12 * full,
            "epoch {epoch}: {v} vs {}",
            w * full
        );
    }
    let (s, t) = input(4, 5).of("test").logits().unwrap();
    let f = dkd_loss(s, t, ints(vec![0, 1, 2, 3]), 1.0, 8.0, 4.0)
        .unwrap()
        .into_scalar::<f64>();
    assert!((f - full).abs() < 1e-12 * full);
}

#[test]
fn works_in_f32_by_default() {
    let dev = burn::tensor::Device::flex();
    let s = Tensor::<2>::from_floats([[1.0, 2.0, 0.5, 0.1]], &dev);
    assert_eq!(s.dtype(), DType::F32);
    let out = KdConfig::new()
        .init()
        .unwrap()
        .forward(&DistillInput::new(s.clone(), s * 0.5))
        .unwrap();
    assert_eq!(out.total.dtype(), DType::F32);
    assert!(out.value() > 0.0);
}

/// The defaults that cannot fail do not return a `Result`: `CrossEntropy::new()` (and
/// `Default`) is the unsmoothed task loss, equal to `CrossEntropyConfig::new().init()`; a
/// `LossSum` is built part by part with `with`, as `+` does.
#[test]
fn infallible_defaults_and_an_explicit_sum() {
    use burn::tensor::{Int, Tensor, TensorData};
    use burn_distill::LossSum;
    let dev = burn::tensor::Device::flex();
    let z = Tensor::<2>::from_data(
        TensorData::new(vec![0.1f32, 2.0, -1.0, 0.5, 0.3, 0.2], [2, 3]),
        &dev,
    );
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 0], [2]), &dev);
    let input = DistillInput::student(z).targets(y);
    let a = CrossEntropy::new().forward(&input).unwrap().value();
    let b = CrossEntropyConfig::new()
        .init()
        .unwrap()
        .forward(&input)
        .unwrap()
        .value();
    assert_eq!(a, b);
    assert_eq!(CrossEntropy::default().forward(&input).unwrap().value(), a);
    let sum = LossSum::new()
        .with(CrossEntropy::new())
        .with(CrossEntropy::new().weighted(2.0));
    assert!((sum.forward(&input).unwrap().value() - 3.0 * a).abs() < 1e-6);
}
