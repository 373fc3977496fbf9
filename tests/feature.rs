//! Feature objectives (FitNet hint, AT, MGD) and ProbMse: finite-difference gradients in f64
//! (proptest), MGD's masks, and the errors.

mod common;

use burn::tensor::{Distribution, Tensor};
use burn_distill::Outputs;
use burn_distill::feature::{
    AbConfig, OfdConfig, ReviewKdConfig, VidConfig, activation_boundary, hcl_stage, ofd_margins,
    partial_l2,
};
use burn_distill::feature::{
    AffinityConfig, AtConfig, DafaConfig, DamConfig, DamMode, FspConfig, FtConfig, HintConfig,
    IckdConfig, KtaConfig, MgdConfig, MgdMask, NstConfig, PadL2Config, SrdConfig, fsp_matrix,
};
use burn_distill::feature::{KdsvdConfig, top_singular};
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

/// `len` numbers in `[-2, 2)` from `seed`.
fn uniform(len: usize, seed: u64) -> Vec<f64> {
    noise(seed, len, 2.0)
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
        check_grads(&NstConfig::new().init().unwrap(), &b)?;
        if b.s_shape[2] == b.t_shape[2] {
            for mode in [DamMode::Soft, DamMode::TopK] {
                let at = AtConfig::new().with_weight(10.0).init().unwrap();
                check_grads(&DamConfig::new().with_mode(mode).init(at).unwrap(), &b)?;
            }
            for reduction in [Reduction::SampleMean, Reduction::ElementMean] {
                for mask in [MgdMask::Channel, MgdMask::Spatial] {
                    let mgd = MgdConfig::new(cs, ct).with_mask(mask).with_reduction(reduction).with_alpha(Some(0.5)).init(&device()).unwrap();
                    check_grads(&mgd, &b)?;
                }
            }
        }
    }

    /// The objectives that need one shape on both sides, on the tap `feature`.
    #[test]
    fn paired_map_gradients_match_finite_differences(
        (n, c, h) in (1usize..4, 1usize..4, 1usize..4),
        seed in any::<u64>(),
        p in prop::sample::select(vec![1.0, 2.0, 3.0]),
    ) {
        configure_f64();
        let shape = [n, c, h, h];
        let len = n * c * h * h;
        let b = Maps { s_shape: shape, t_shape: shape, s: uniform(len, seed), t: uniform(len, seed ^ 0xA5) };
        check_grads(&IckdConfig::new().init(&device()).unwrap(), &b)?;
        check_grads(&KtaConfig::new().with_p(p).with_q(if p == 3.0 { 1.5 } else { 2.0 }).init().unwrap(), &b)?;
        check_grads(&AffinityConfig::new().init().unwrap(), &b)?;
        check_grads(&FspConfig::new(vec!["feature".into(), "feature".into()]).with_weight(1.0).init().unwrap(), &b)?;
        check_grads(&PadL2Config::new(c * h * h).with_feature("feature".into()).init(&device()).unwrap(), &b)?;
        let ft = FtConfig::new(c, c).with_rate(1.0).with_p2(p).with_weight(1.0).init(&device()).unwrap();
        check_grads(&ft, &b)?;
    }

    #[test]
    fn prob_mse_gradients_and_invariants(n in 1usize..4, c in 2usize..6, temp in 0.5f64..6.0, seed in any::<u64>()) {
        configure_f64();
        let (s, t) = (noise(seed, n * c, 3.0), noise(seed ^ 0x5EED, n * c, 3.0));
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
    let r = |shape: [usize; 4], seed: u64| f64t(noise(seed, shape.iter().product(), 1.0), shape);
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

/// The learnable parts of the catalogue's feature objectives (FT's translator, ICKD's
/// embedding, PAD-L2's variance branch, SRD's projector): the gradient in every parameter
/// against central differences.
#[test]
fn learnable_parts_match_finite_differences() {
    configure_f64();
    let dev = device();
    let (s, t) = (
        f64t(uniform(2 * 3 * 3 * 3, 1), [2, 3, 3, 3]),
        f64t(uniform(2 * 4 * 3 * 3, 2), [2, 4, 3, 3]),
    );
    let (es, et) = (
        f64t(uniform(3 * 4, 3), [3, 4]),
        f64t(uniform(3 * 5, 4), [3, 5]),
    );
    let logits = f64t(uniform(3 * 2, 5), [3, 2]);
    let maps = || DistillInput::features_only().feature("feature", s.clone(), t.clone());
    let rows = || {
        DistillInput::new(logits.clone(), logits.clone() * 0.5).feature(
            "embedding",
            es.clone(),
            et.clone(),
        )
    };
    let picks = [0, 7, 19, 31];
    let mut checked = 0;
    // weights of 1: at FT's 200 the differences' rounding reaches the 1e-8 floor
    dev.seed(7);
    let ft = FtConfig::new(3, 4).with_weight(1.0).init(&dev).unwrap();
    checked += check_param_grads(&ft, &maps, &picks).unwrap();
    let ickd = IckdConfig::new()
        .with_embeds(vec![[3, 4]])
        .init(&dev)
        .unwrap();
    checked += check_param_grads(&ickd, &maps, &picks).unwrap();
    let srd = SrdConfig::new()
        .with_projector(Some([4, 5]))
        .init(&dev)
        .unwrap();
    checked += check_param_grads(&srd, &rows, &picks).unwrap();
    let pad = PadL2Config::new(5).init(&dev).unwrap();
    let same = || DistillInput::features_only().feature("embedding", et.clone(), et.clone() * 0.3);
    checked += check_param_grads(&pad, &same, &picks).unwrap();
    assert!(checked >= 4 * 4 * 4, "{checked} coordinates");
}

/// FSP's matrix and NST by hand, FT's two stages, and the catalogue's shape errors.
#[test]
fn catalogue_feature_values_by_hand() {
    configure_f64();
    let dev = device();
    // one position: G = top · bottomᵀ, [1, 1, 2] = [[3·1, 3·2]]
    let bottom = f64t(vec![1.0, 2.0], [1, 2, 1, 1]);
    let top = f64t(vec![3.0], [1, 1, 1, 1]);
    assert_eq!(values(fsp_matrix(bottom, top)), [3.0, 6.0]);
    use burn::optim::{GradientsParams, SgdConfig};
    // the paraphraser's reconstruction loss falls under plain gradient descent
    let ft = FtConfig::new(2, 2).with_rate(1.0).init(&dev).unwrap();
    let teacher = f64t(uniform(2 * 2 * 3 * 3, 9), [2, 2, 3, 3]);
    // frozen for the second stage, the paraphraser gets no gradient and the translator does
    let on_maps =
        DistillInput::features_only().feature("feature", teacher.clone(), teacher.clone() * 0.5);
    let trained = |ft: &burn_distill::feature::Ft| {
        let loss = ft.forward(&on_maps).unwrap();
        GradientsParams::from_grads(loss.total.backward(), ft).len()
    };
    let all = trained(&ft);
    let frozen = trained(&ft.clone().freeze_paraphraser());
    assert!(frozen > 0 && frozen < all, "{frozen} of {all} parameters");
    let mut p = ft.paraphraser.clone();
    let first = values(p.reconstruction_loss(teacher.clone()))[0];
    let mut opt = SgdConfig::new().init();
    for _ in 0..30 {
        let loss = p.reconstruction_loss(teacher.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &p);
        p = opt.step(0.05, p, grads);
    }
    let last = values(p.reconstruction_loss(teacher))[0];
    assert!(last < first, "reconstruction {first} -> {last}");
    // shapes the objectives refuse with a typed error
    let input = DistillInput::features_only().feature(
        "feature",
        f64t(uniform(2 * 3 * 2 * 2, 1), [2, 3, 2, 2]),
        f64t(uniform(2 * 4 * 2 * 2, 2), [2, 4, 2, 2]),
    );
    let refuse = |loss: &dyn Loss| match loss.forward(&input) {
        Err(DistillError::ShapeMismatch { .. }) => {}
        other => panic!("{}: {other:?}", loss.name()),
    };
    refuse(&IckdConfig::new().init(&dev).unwrap());
    refuse(&KtaConfig::new().init().unwrap());
    refuse(&AffinityConfig::new().init().unwrap());
    refuse(
        &FspConfig::new(vec!["feature".into(), "feature".into()])
            .init()
            .unwrap(),
    );
    refuse(&FtConfig::new(3, 5).init(&dev).unwrap());
    refuse(
        &PadL2Config::new(12)
            .with_feature("feature".into())
            .init(&dev)
            .unwrap(),
    );
    refuse(
        &SrdConfig::new()
            .with_feature("feature".into())
            .init(&dev)
            .unwrap(),
    );
    refuse(
        &SrdConfig::new()
            .with_feature("feature".into())
            .with_projector(Some([5, 16]))
            .init(&dev)
            .unwrap(),
    );
    assert!(FspConfig::new(vec!["feature".into()]).init().is_err());
    assert!(
        IckdConfig::new()
            .with_weights(vec![1.0, 2.0])
            .init(&dev)
            .is_err()
    );
}

/// AB, VID, OFD and ReviewKD: the gradients of both taps and of every parameter against
/// central differences, on maps of different channels and sizes.
#[test]
fn boundary_variational_overhaul_review_gradients() {
    configure_f64();
    let dev = device();
    dev.seed(3);
    let (s, t) = (
        f64t(noise(11, 2 * 3 * 4 * 4, 1.5), [2, 3, 4, 4]),
        f64t(noise(12, 2 * 5 * 2 * 2, 1.5), [2, 5, 2, 2]),
    );
    let (s2, t2) = (
        f64t(noise(13, 2 * 4 * 2 * 2, 1.5), [2, 4, 2, 2]),
        f64t(noise(14, 2 * 5, 1.5), [2, 5, 1, 1]),
    );
    let maps = || {
        DistillInput::features_only()
            .feature("a", s.clone(), t.clone())
            .feature("b", s2.clone(), t2.clone())
    };
    let taps = || vec!["a".to_string(), "b".to_string()];
    let picks = [0, 5, 17, 29];
    let ab = AbConfig::new(
        taps(),
        vec![[3, 4, 4], [4, 2, 2]],
        vec![[5, 2, 2], [5, 1, 1]],
    )
    .with_weight(1.0)
    .init(&dev)
    .unwrap();
    let vid = VidConfig::new(taps(), vec![[3, 5], [4, 5]])
        .init(&dev)
        .unwrap();
    let margins = ofd_margins(&[1.0, 0.5, 2.0, 1.0, 0.1], &[0.0, 0.3, -1.0, 2.0, 0.0]);
    let ofd = OfdConfig::new(taps(), vec![[3, 5], [4, 5]], vec![margins.clone(), margins])
        .with_weight(1.0)
        .init(&dev)
        .unwrap();
    let review = ReviewKdConfig::new(taps(), vec![3, 4], vec![5, 5])
        .with_warmup_epochs(0)
        .init(&dev)
        .unwrap();
    let mut checked = 0;
    checked += check_param_grads(&ab, &maps, &picks).unwrap();
    checked += check_param_grads(&vid, &maps, &picks).unwrap();
    checked += check_param_grads(&ofd, &maps, &picks).unwrap();
    checked += check_param_grads(&review, &maps, &picks).unwrap();
    assert!(checked > 40, "{checked} coordinates");
    for loss in [&vid as &dyn Loss, &ofd, &review] {
        // the second tap rides along unperturbed
        let extra = |i: DistillInput| i.feature("b", s2.clone(), t2.clone());
        let with_a = |s: &[f64], t: &[f64]| {
            check_tap_grads(loss, "a", (s, [2, 3, 4, 4]), (t, [2, 5, 2, 2]), &extra)
        };
        with_a(&values(s.clone()), &values(t.clone())).unwrap();
    }
}

/// AB's and OFD's piecewise losses, OFD's margins, HCL's pyramid and the staged schedule,
/// by hand.
#[test]
fn boundary_and_overhaul_by_hand() {
    configure_f64();
    let m = |v: Vec<f64>| f64t(v, [1, 1, 1, 4]);
    // student (−2, 0, 0.5, 2) against teacher (−1, −1, 1, 1), margin 1:
    // t ≤ 0: s > −1 is pushed to −1: (0 + 1)² = 1 for s = 0; s = −2 is already past
    // t > 0: s ≤ 1 is pulled to 1: (0.5 − 1)² = 0.25; s = 2 is already past
    let ab = activation_boundary(
        m(vec![-2.0, 0.0, 0.5, 2.0]),
        m(vec![-1.0, -1.0, 1.0, 1.0]),
        1.0,
    );
    assert!((values(ab)[0] - 1.25).abs() < 1e-12);
    // the margin of N(0, 1) below zero: −φ(0)/Φ(0) = −√(2/π); a channel almost never negative: −3|γ|
    let margins = ofd_margins(&[1.0, -2.0], &[0.0, 10.0]);
    assert!((margins[0] + (2.0 / std::f64::consts::PI).sqrt()).abs() < 1e-12);
    assert_eq!(margins[1], -6.0);
    // OFD, margin −1 on a single channel: t = −2 (≤ m): (s − m)² where s > m: s = 0 → 1;
    // t = −0.5 (m < t ≤ 0): (s − t)² where s > t: s = 0 → 0.25; s = −1 (below t) → 0;
    // t = 1 > 0: (s − t)²: s = 3 → 4
    let s = f64t(vec![0.0, 0.0, -1.0, 3.0], [1, 1, 1, 4]);
    let t = f64t(vec![-2.0, -0.5, -0.5, 1.0], [1, 1, 1, 4]);
    let ofd = partial_l2(s, t, f64t(vec![-1.0], [1]));
    assert!((values(ofd)[0] - 5.25).abs() < 1e-12);
    // HCL on 2×2 maps: the map's MSE (weight 1) and the 1×1 pool's (weight ½), over 1.5
    let a = f64t(vec![1.0, 0.0, 0.0, 0.0], [1, 1, 2, 2]);
    let b = f64t(vec![0.0; 4], [1, 1, 2, 2]);
    let hcl = values(hcl_stage(a, b))[0];
    assert!((hcl - (0.25 + 0.5 * 0.0625) / 1.5).abs() < 1e-12);
    // staged: AB alone for 2 epochs, then AT
    let dev = device();
    let input = |epoch| {
        DistillInput::features_only()
            .feature(
                "feature",
                f64t(noise(1, 8, 1.0), [1, 2, 2, 2]),
                f64t(noise(2, 8, 1.0), [1, 2, 2, 2]),
            )
            .progress(Progress::epoch(epoch, 10))
    };
    let ab = AbConfig::new(vec!["feature".into()], vec![[2, 2, 2]], vec![[2, 2, 2]])
        .init(&dev)
        .unwrap();
    let staged = ab.clone().then_after(2, AtConfig::new().init().unwrap());
    let names = |epoch| -> Vec<String> {
        staged
            .forward(&input(epoch))
            .unwrap()
            .terms()
            .map(|(n, _)| n.to_string())
            .collect()
    };
    assert_eq!(names(1), ["ab"]);
    assert_eq!(names(2), ["at"]);
    assert!(staged.forward(&DistillInput::features_only()).is_err());
}

/// KDSVD's singular vectors solve the eigenproblem of `XᵀX` with a fixed sign, and its loss
/// depends on the maps only through what the SVD keeps: invariant to an orthogonal mixing of
/// the `C·H` rows (including `X → −X`) of either network's map.
#[test]
fn kdsvd_invariants() {
    configure_f64();
    // a known spectrum: X = [[3, 0], [0, 1], [0, 0]] → σ = (3, 1), V = ±I, signs fixed positive
    let x = f64t(vec![3.0, 0.0, 0.0, 1.0, 0.0, 0.0], [1, 3, 2]);
    let (v, sigma) = top_singular(x, 2, 50);
    close("σ", &values(sigma), &[3.0, 1.0], 1e-10, 1e-12).unwrap();
    close("V", &values(v), &[1.0, 0.0, 0.0, 1.0], 1e-10, 1e-12).unwrap();
    // random matrices: XᵀX v = σ² v
    let x = f64t(noise(5, 2 * 6 * 4, 1.0), [2, 6, 4]);
    let (v, sigma) = top_singular(x.clone(), 2, 200);
    let gram = x.clone().swap_dims(1, 2).matmul(x);
    let lhs = values(gram.matmul(v.clone()));
    let s2: Vec<f64> = values(sigma).iter().map(|s| s * s).collect();
    let rhs: Vec<f64> = values(v)
        .iter()
        .enumerate()
        .map(|(i, vi)| vi * s2[(i / 8) * 2 + i % 2])
        .collect();
    close("XᵀX v = σ² v", &lhs, &rhs, 1e-6, 1e-8).unwrap();
    // the loss under X → HX, H a Householder reflection of the C·H = 6 rows
    let (n, c, h, w) = (2, 3, 2, 4);
    let maps = |seed| noise(seed, n * c * h * w, 1.0);
    let u: Vec<f64> = noise(9, c * h, 1.0);
    let norm2: f64 = u.iter().map(|x| x * x).sum();
    let reflect = |m: &[f64]| -> Vec<f64> {
        let mut out = m.to_vec();
        for b in 0..n {
            for col in 0..w {
                let at = |r: usize| b * c * h * w + r * w + col;
                let dot: f64 = (0..c * h).map(|r| u[r] * m[at(r)]).sum();
                for r in 0..c * h {
                    out[at(r)] = m[at(r)] - 2.0 * u[r] * dot / norm2;
                }
            }
        }
        out
    };
    let loss = KdsvdConfig::new(vec!["a".into(), "b".into()])
        .with_iterations(100)
        .init()
        .unwrap();
    let value = |sa: &[f64], ta: &[f64], sb: &[f64], tb: &[f64]| {
        let shape = [n, c, h, w];
        let input = DistillInput::features_only()
            .feature("a", f64t(sa.to_vec(), shape), f64t(ta.to_vec(), shape))
            .feature("b", f64t(sb.to_vec(), shape), f64t(tb.to_vec(), shape));
        loss.forward(&input).unwrap().value()
    };
    let (sa, ta, sb, tb) = (maps(1), maps(2), maps(3), maps(4));
    let base = value(&sa, &ta, &sb, &tb);
    assert!(base > 1e-6, "a non-trivial loss: {base}");
    let mixed = value(&reflect(&sa), &reflect(&ta), &sb, &reflect(&tb));
    let negated: Vec<f64> = sb.iter().map(|x| -x).collect();
    let flipped = value(&sa, &ta, &negated, &tb);
    close(
        "KDSVD under X → HX",
        &[mixed, flipped],
        &[base, base],
        1e-8,
        1e-12,
    )
    .unwrap();
    assert!(KdsvdConfig::new(vec!["a".into()]).init().is_err());
}

/// The learnable parts of the catalogue's objectives save and restore through burn's records:
/// a fresh objective loaded with another's record gives the same loss.
#[test]
fn learnable_parts_save_and_restore() {
    use burn::module::Module;
    configure_f64();
    let dev = device();
    let maps = DistillInput::new(
        f64t(noise(1, 4 * 3, 1.0), [4, 3]),
        f64t(noise(2, 4 * 3, 1.0), [4, 3]),
    )
    .feature(
        "a",
        f64t(noise(3, 4 * 3 * 4 * 4, 1.0), [4, 3, 4, 4]),
        f64t(noise(4, 4 * 5 * 2 * 2, 1.0), [4, 5, 2, 2]),
    )
    .feature(
        "embedding",
        f64t(noise(5, 4 * 4, 1.0), [4, 4]),
        f64t(noise(6, 4 * 4, 1.0), [4, 4]),
    );
    fn same<M: Module + Loss>(make: impl Fn(u64) -> M, input: &DistillInput) {
        let (a, b) = (make(1), make(2));
        let before = b.forward(input).unwrap().value();
        let restored = b.load_record(a.clone().into_record());
        let (want, got) = (
            a.forward(input).unwrap().value(),
            restored.forward(input).unwrap().value(),
        );
        assert_ne!(want, before, "{}: two inits differ", a.name());
        assert_eq!(want, got, "{}: restored from the record", a.name());
    }
    let seeded = |seed: u64| {
        dev.seed(seed);
        &dev
    };
    let a = || vec!["a".to_string()];
    same(
        |s| {
            FtConfig::new(3, 5)
                .with_feature("a".into())
                .init(seeded(s))
                .unwrap()
        },
        &maps,
    );
    same(
        |s| VidConfig::new(a(), vec![[3, 5]]).init(seeded(s)).unwrap(),
        &maps,
    );
    same(
        |s| {
            AbConfig::new(a(), vec![[3, 4, 4]], vec![[5, 2, 2]])
                .init(seeded(s))
                .unwrap()
        },
        &maps,
    );
    same(
        |s| {
            OfdConfig::new(a(), vec![[3, 5]], vec![vec![-0.5; 5]])
                .init(seeded(s))
                .unwrap()
        },
        &maps,
    );
    same(
        |s| {
            ReviewKdConfig::new(a(), vec![3], vec![5])
                .with_warmup_epochs(0)
                .init(seeded(s))
                .unwrap()
        },
        &maps,
    );
    same(|s| PadL2Config::new(4).init(seeded(s)).unwrap(), &maps);
    same(
        |s| {
            SrdConfig::new()
                .with_projector(Some([4, 4]))
                .init(seeded(s))
                .unwrap()
        },
        &maps,
    );
}
