//! Feature objectives (FitNet hint, AT, MGD) and ProbMse: finite-difference gradients in f64
//! (proptest), MGD's masks, and the errors.

mod common;

use burn::tensor::{Distribution, Tensor};
use burn_distill::Outputs;
use burn_distill::feature::{
    AtConfig, DafaConfig, DamConfig, DamMode, HintConfig, MgdConfig, MgdMask, MgdReduction,
};
use burn_distill::logit::ProbMseConfig;
use burn_distill::prelude::*;
use common::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Maps {
    s_shape: [usize; 4],
    t_shape: [usize; 4],
    s: Vec<f64>,
    t: Vec<f64>,
}

/// Student `[n, cs, hs, hs]` and teacher `[n, ct, ht, ht]` with `hs ∈ {ht, 2·ht}`.
fn maps() -> impl Strategy<Value = Maps> {
    (1usize..4, 1usize..4, 1usize..4, 1usize..4, prop::bool::ANY).prop_flat_map(
        |(n, cs, ct, ht, double)| {
            let hs = if double { 2 * ht } else { ht };
            let (s_shape, t_shape) = ([n, cs, hs, hs], [n, ct, ht, ht]);
            (
                prop::collection::vec(-2.0f64..2.0, n * cs * hs * hs),
                prop::collection::vec(-2.0f64..2.0, n * ct * ht * ht),
            )
                .prop_map(move |(s, t)| Maps {
                    s_shape,
                    t_shape,
                    s,
                    t,
                })
        },
    )
}

impl Maps {
    fn chw(shape: [usize; 4]) -> [usize; 3] {
        [shape[1], shape[2], shape[3]]
    }
}

fn check_grads(loss: &dyn Loss, b: &Maps) -> Result<(), TestCaseError> {
    let progress = |i: DistillInput| i.progress(Progress::epoch(1, 2).at_step(3, 10));
    check_tap_grads(
        loss,
        "feature",
        (&b.s, b.s_shape),
        (&b.t, b.t_shape),
        &progress,
    )
    .map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn feature_gradients_match_finite_differences(b in maps()) {
        configure_f64();
        let (cs, ct) = (b.s_shape[1], b.t_shape[1]);
        // the connector's batch norm needs more than one value per channel to be smooth
        if b.s_shape[0] * b.t_shape[2] * b.t_shape[3] > 1 {
            let hint = HintConfig::new(Maps::chw(b.s_shape), Maps::chw(b.t_shape)).with_relu(false).init(&device()).unwrap();
            check_grads(&hint, &b)?;
        }
        check_grads(&AtConfig::new().with_weight(10.0).init().unwrap(), &b)?;
        if b.s_shape[2] == b.t_shape[2] {
            for mode in [DamMode::Soft, DamMode::TopK] {
                let at = AtConfig::new().with_weight(10.0).init().unwrap();
                check_grads(&DamConfig::new().with_mode(mode).init(at).unwrap(), &b)?;
            }
            for reduction in [MgdReduction::Sum, MgdReduction::Mean] {
                for mask in [MgdMask::Channel, MgdMask::Spatial] {
                    let mgd = MgdConfig::new(cs, ct).with_mask(mask).with_reduction(reduction).with_alpha(Some(0.5)).init(&device()).unwrap();
                    check_grads(&mgd, &b)?;
                }
            }
        }
    }

    #[test]
    fn prob_mse_gradients_and_invariants(n in 1usize..4, c in 2usize..6, temp in 0.5f64..6.0, seed in any::<u64>()) {
        configure_f64();
        let mut st = seed | 1;
        let mut draw = |k: usize| -> Vec<f64> {
            (0..k).map(|_| { st ^= st << 13; st ^= st >> 7; st ^= st << 17; (st >> 11) as f64 / (1u64 << 53) as f64 * 6.0 - 3.0 }).collect()
        };
        let (s, t) = (draw(n * c), draw(n * c));
        let loss = ProbMseConfig::new().with_temperature(temp).init().unwrap();
        let value = |s: &[f64], t: &[f64]| loss.forward(&DistillInput::new(f64t(s.to_vec(), [n, c]), f64t(t.to_vec(), [n, c]))).unwrap().value();
        let sl = f64t(s.clone(), [n, c]).require_grad();
        let g = values(sl.grad(&loss.forward(&DistillInput::new(sl.clone(), f64t(t.clone(), [n, c]))).unwrap().total.backward()).unwrap());
        let fd = numeric_grad(&|v| value(&v, &t), &s, 1e-6);
        close("d/ds", &g, &fd, 1e-5, 1e-9).map_err(TestCaseError::fail)?;
        // zero at s = t, and a constant added to a row changes nothing
        prop_assert!(value(&s, &s).abs() < 1e-15);
        let shifted: Vec<f64> = s.iter().enumerate().map(|(i, v)| if i < c { v + 7.0 } else { *v }).collect();
        prop_assert!((value(&shifted, &t) - value(&s, &t)).abs() < 1e-12);
    }
}

#[test]
fn mgd_masks_are_seeded_and_hide_lambda() {
    configure_f64();
    let make = |seed| {
        MgdConfig::new(4, 4)
            .with_seed(seed)
            .init(&device())
            .unwrap()
    };
    let (a, b) = (make(3), make(3));
    let shape = [64, 32, 2, 2];
    let (ma, mb) = (
        values(a.mask(shape, 5, &device())),
        values(b.mask(shape, 5, &device())),
    );
    assert_eq!(ma, mb, "same seed and key, same mask");
    assert_ne!(
        ma,
        values(a.mask(shape, 6, &device())),
        "another key, another mask"
    );
    assert_ne!(
        ma,
        values(make(4).mask(shape, 5, &device())),
        "another seed, another mask"
    );
    assert_eq!(ma.len(), 64 * 32);
    assert!(ma.iter().all(|&v| v == 0.0 || v == 1.0));
    let hidden = ma.iter().filter(|&&v| v == 0.0).count() as f64 / ma.len() as f64;
    assert!(
        (hidden - 0.15).abs() < 0.03,
        "channel masks hide λ = 0.15: {hidden}"
    );
    let spatial = MgdConfig::new(4, 4)
        .with_mask(MgdMask::Spatial)
        .init(&device())
        .unwrap();
    let ms = values(spatial.mask([16, 4, 16, 16], 0, &device()));
    assert_eq!(ms.len(), 16 * 16 * 16);
    let hidden = ms.iter().filter(|&&v| v == 0.0).count() as f64 / ms.len() as f64;
    assert!(
        (hidden - 0.65).abs() < 0.03,
        "spatial masks hide λ = 0.65: {hidden}"
    );
    // the mask follows the input's progress: two steps, two different losses
    let s = Tensor::<4>::random([2, 4, 3, 3], Distribution::Normal(0.0, 1.0), &device());
    let t = Tensor::<4>::random([2, 4, 3, 3], Distribution::Normal(0.0, 1.0), &device());
    let at = |step| {
        let input = DistillInput::features_only()
            .feature("feature", s.clone(), t.clone())
            .progress(Progress::epoch(0, 1).at_step(step, 100));
        a.forward(&input).unwrap().value()
    };
    assert_eq!(at(1), at(1));
    assert_ne!(at(1), at(2));
}

#[test]
fn feature_errors() {
    configure_f64();
    let dev = device();
    let bad_config = |r: Result<(), DistillError>, field: &str| match r {
        Err(DistillError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected an error on {field}, got {other:?}"),
    };
    // no connector with different shapes; a student smaller than the teacher
    bad_config(
        HintConfig::new([4, 4, 4], [8, 4, 4])
            .with_connector(false)
            .init(&dev)
            .map(|_| ()),
        "connector",
    );
    bad_config(
        HintConfig::new([4, 2, 2], [8, 5, 5]).init(&dev).map(|_| ()),
        "student",
    );
    // mask ratios outside [0, 1)
    bad_config(
        MgdConfig::new(4, 4)
            .with_lambda(Some(1.0))
            .init(&dev)
            .map(|_| ()),
        "lambda",
    );
    bad_config(
        MgdConfig::new(4, 4)
            .with_lambda(Some(-0.1))
            .init(&dev)
            .map(|_| ()),
        "lambda",
    );
    bad_config(
        AtConfig::new().with_features(vec![]).init().map(|_| ()),
        "features",
    );

    let input = |s: Tensor<4>, t: Tensor<4>| DistillInput::features_only().feature("feature", s, t);
    let z = |shape: [usize; 4]| Tensor::<4>::zeros(shape, &dev);
    let hint = HintConfig::new([4, 4, 4], [8, 4, 4]).init(&dev).unwrap();
    // channel mismatch against the configured shapes
    assert!(matches!(
        hint.forward(&input(z([2, 3, 4, 4]), z([2, 8, 4, 4]))),
        Err(DistillError::ShapeMismatch { .. })
    ));
    // empty spatial maps
    let at = AtConfig::new().init().unwrap();
    assert!(matches!(
        at.forward(&input(z([2, 4, 0, 4]), z([2, 8, 4, 4]))),
        Err(DistillError::EmptyBatch { .. })
    ));
    // an embedding where a map is needed (rank)
    let flat = DistillInput::features_only().feature(
        "feature",
        Tensor::<2>::zeros([2, 4], &dev),
        z([2, 8, 4, 4]),
    );
    assert!(matches!(
        at.forward(&flat),
        Err(DistillError::ShapeMismatch { .. })
    ));
    // MGD: maps of different sizes; a missing tap is named
    let mgd = MgdConfig::new(4, 8).init(&dev).unwrap();
    assert!(matches!(
        mgd.forward(&input(z([2, 4, 4, 4]), z([2, 8, 2, 2]))),
        Err(DistillError::ShapeMismatch { .. })
    ));
    let err = MgdConfig::new(4, 8)
        .with_feature("layer2".to_string())
        .init(&dev)
        .unwrap()
        .forward(&input(z([2, 4, 4, 4]), z([2, 8, 4, 4])))
        .unwrap_err();
    assert_eq!(
        err,
        DistillError::MissingFeature {
            objective: "mgd".into(),
            name: "layer2".into()
        }
    );
}

/// AT on several stages (of different sizes: pooled to the smaller) is the sum of the
/// single-stage losses.
#[test]
fn at_sums_its_stages() {
    configure_f64();
    let dev = device();
    let r = |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &dev);
    let (s1, t1, s2, t2) = (
        r([2, 3, 4, 4]),
        r([2, 5, 4, 4]),
        r([2, 3, 2, 2]),
        r([2, 6, 4, 4]),
    );
    let input = DistillInput::features_only()
        .feature("a", s1, t1)
        .feature("b", s2, t2);
    let one = |names: Vec<&str>| {
        AtConfig::new()
            .with_features(names.into_iter().map(String::from).collect())
            .init()
            .unwrap()
            .forward(&input)
            .unwrap()
            .value()
    };
    let (a, b, both) = (one(vec!["a"]), one(vec!["b"]), one(vec!["a", "b"]));
    close("AT(a, b)", &[both], &[a + b], 1e-12, 0.0).unwrap();
}

/// SoKD's plug-ins switched off (no augmentation, DAM off) give the wrapped loss exactly;
/// with zero magnitudes the augmentation is the identity up to rounding.
#[test]
fn sokd_off_is_the_wrapped_loss() {
    configure_f64();
    let dev = device();
    let r = |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &dev);
    let (s, t) = (r([3, 4, 4, 4]), r([3, 6, 4, 4]));
    let at = AtConfig::new().init().unwrap();
    let plain = at
        .forward(&DistillInput::features_only().feature("feature", s.clone(), t.clone()))
        .unwrap()
        .value();
    let off = DafaConfig::new().with_enabled(false).init(&dev).unwrap();
    let teacher = off.apply(
        Outputs::logits(Tensor::zeros([3, 2], &dev)).feature("feature", t.clone()),
        0,
    );
    let wrapped = DamConfig::new()
        .with_mode(DamMode::Off)
        .init(at.clone())
        .unwrap();
    let input = DistillInput::from_outputs(
        Outputs::logits(Tensor::zeros([3, 2], &dev)).feature("feature", s.clone()),
        teacher,
    );
    assert_eq!(wrapped.forward(&input).unwrap().value(), plain);
    // zero magnitudes: every operation is the identity
    let still = DafaConfig::new().with_magnitude(0.0).init(&dev).unwrap();
    close(
        "identity",
        &values(still.augment(t.clone(), 3)),
        &values(t.clone()),
        1e-14,
        1e-14,
    )
    .unwrap();
    // and DAM's top-k with fraction 1 keeps every position
    let all = DamConfig::new()
        .with_mode(DamMode::TopK)
        .with_fraction(1.0)
        .init(at)
        .unwrap();
    let m = values(all.mask(s, t));
    assert!(m.iter().all(|&v| v == 1.0));
}

/// The gradient of a DAFA-augmented hint in DAFA's nine parameters equals a central
/// difference, and the augmentation of a step is reproducible from its key.
#[test]
fn dafa_parameter_gradients_match_finite_differences() {
    configure_f64();
    let dev = device();
    let r = |shape: [usize; 4], seed: u64| {
        let mut st = seed | 1;
        let v: Vec<f64> = (0..shape.iter().product::<usize>())
            .map(|_| {
                st ^= st << 13;
                st ^= st >> 7;
                st ^= st << 17;
                (st >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect();
        f64t(v, shape)
    };
    let (s, t) = (r([2, 3, 4, 4], 1), r([2, 3, 4, 4], 2));
    let hint = HintConfig::new([3, 4, 4], [3, 4, 4])
        .with_connector(false)
        .init(&dev)
        .unwrap();
    let theta0 = vec![1.0, -0.3, 0.2, 0.5, 0.0, 0.3, 0.2, 0.4, 0.6];
    let dafa = |theta: &[f64]| {
        let mut d = DafaConfig::new().with_drop(0.3).init(&dev).unwrap();
        d.weights = burn::module::Param::from_tensor(f64t(theta[..5].to_vec(), [5]));
        d.magnitudes = burn::module::Param::from_tensor(f64t(theta[5..].to_vec(), [4]));
        d
    };
    let loss_of = |d: &burn_distill::feature::Dafa| {
        let teacher = d.apply(
            Outputs::logits(Tensor::zeros([2, 2], &dev)).feature("feature", t.clone()),
            11,
        );
        let input = DistillInput::from_outputs(
            Outputs::logits(Tensor::zeros([2, 2], &dev)).feature("feature", s.clone()),
            teacher,
        )
        .attach_teacher();
        hint.forward(&input).unwrap()
    };
    let d = dafa(&theta0);
    let grads = burn::optim::GradientsParams::from_grads(loss_of(&d).total.backward(), &d);
    let mut got = values(grads.get::<1>(d.weights.id).unwrap());
    got.extend(values(grads.get::<1>(d.magnitudes.id).unwrap()));
    let want = numeric_grad(&|th| loss_of(&dafa(&th)).value(), &theta0, 1e-6);
    close("d hint / d dafa", &got, &want, 1e-6, 1e-10).unwrap();
    assert_eq!(
        values(d.augment(t.clone(), 5)),
        values(d.augment(t.clone(), 5))
    );
    assert_ne!(values(d.augment(t.clone(), 5)), values(d.augment(t, 6)));
}
