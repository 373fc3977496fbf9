//! Relational objectives: finite-difference gradients (f64, proptest), invariance to permuting
//! the batch, PKT at an all-zero row, CRD's memory by hand and across save/load, errors.

mod common;

use burn::module::Module;
use burn::tensor::{Int, Tensor};
use burn_distill::prelude::*;
use burn_distill::relation::{
    CcConfig, CcKernel, CrdConfig, DlkdConfig, PktConfig, RkdConfig, SpConfig,
};
use burn_distill::relation::{SskdConfig, view_contrast_loss};
use burn_distill::{Feature, Views};
use common::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Taps {
    n: usize,
    ds: usize,
    dt: usize,
    s: Vec<f64>,
    t: Vec<f64>,
    y: Vec<i64>,
}

fn taps(rows: std::ops::Range<usize>) -> impl Strategy<Value = Taps> {
    (rows, 2usize..6, 2usize..7).prop_flat_map(|(n, ds, dt)| {
        (
            prop::collection::vec(-2.0f64..2.0, n * ds),
            prop::collection::vec(-2.0f64..2.0, n * dt),
            prop::collection::vec(0i64..3, n),
        )
            .prop_map(move |(s, t, y)| Taps { n, ds, dt, s, t, y })
    })
}

impl Taps {
    fn input(&self, s: Vec<f64>, t: Vec<f64>) -> DistillInput {
        DistillInput::features_only()
            .feature(
                "embedding",
                f64t(s, [self.n, self.ds]),
                f64t(t, [self.n, self.dt]),
            )
            .targets(ints(self.y.clone()))
    }

    /// Rows `perm[i]` in place of row `i`, in both taps and the targets.
    fn permuted(&self, perm: &[usize]) -> Taps {
        let pick = |x: &[f64], d: usize| {
            perm.iter()
                .flat_map(|&r| x[r * d..(r + 1) * d].to_vec())
                .collect()
        };
        Taps {
            s: pick(&self.s, self.ds),
            t: pick(&self.t, self.dt),
            y: perm.iter().map(|&r| self.y[r]).collect(),
            ..self.clone()
        }
    }
}

/// Whether all rows are pairwise at least 0.3 apart (RKD's distances and angles are not
/// differentiable where two rows meet).
fn separated(x: &[f64], n: usize, d: usize) -> bool {
    (0..n).all(|i| {
        (0..i).all(|j| {
            (0..d)
                .map(|k| (x[i * d + k] - x[j * d + k]).powi(2))
                .sum::<f64>()
                > 0.09
        })
    })
}

/// FD gradient check of a relational objective on the `embedding` tap.
fn check_grads(loss: &dyn Loss, b: &Taps) -> Result<(), TestCaseError> {
    let targets = |i: DistillInput| i.targets(ints(b.y.clone()));
    check_tap_grads(
        loss,
        "embedding",
        (&b.s, [b.n, b.ds]),
        (&b.t, [b.n, b.dt]),
        &targets,
    )
    .map_err(TestCaseError::fail)
}

fn dlkd(b: &Taps) -> burn_distill::relation::Dlkd {
    DlkdConfig::new(b.ds, b.dt)
        .with_ce_weight(0.0)
        .with_embed_dim(4)
        .init(&device())
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn relational_gradients_match_finite_differences(b in taps(2..7)) {
        configure_f64();
        check_grads(&PktConfig::new().init().unwrap(), &b)?;
        check_grads(&SpConfig::new().init().unwrap(), &b)?;
        if separated(&b.s, b.n, b.ds) && separated(&b.t, b.n, b.dt) {
            check_grads(&RkdConfig::new().init().unwrap(), &b)?;
        }
        // DLKD: its heads are fixed parameters here (the golden cases check their gradients)
        check_grads(&dlkd(&b), &b)?;
        for kernel in [CcKernel::Bilinear, CcKernel::Gaussian { gamma: 0.4, order: 3 }] {
            check_grads(&CcConfig::new().with_kernel(kernel).init().unwrap(), &b)?;
        }
        if b.ds == b.dt {
            check_grads(&CcConfig::new().with_kernel(CcKernel::Consecutive).init().unwrap(), &b)?;
        }
    }

    /// Relating samples, not ordering them: RKD, SP, PKT and DLKD's correlation (one view per
    /// image) and CC's matrix kernels give the same loss for any permutation of the batch.
    #[test]
    fn invariant_to_permuting_the_batch(b in taps(2..7), seed in any::<u64>()) {
        configure_f64();
        let mut perm: Vec<usize> = (0..b.n).collect();
        let mut state = seed | 1;
        for i in (1..b.n).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            perm.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let p = b.permuted(&perm);
        let corr_only = DlkdConfig::new(b.ds, b.dt).with_ce_weight(0.0).with_supcon_weight(0.0).with_align_weight(0.0).init(&device()).unwrap();
        let losses: Vec<Box<dyn Loss>> = vec![
            RkdConfig::new().init().unwrap().boxed(),
            SpConfig::new().init().unwrap().boxed(),
            PktConfig::new().init().unwrap().boxed(),
            corr_only.boxed(),
            CcConfig::new().init().unwrap().boxed(),
        ];
        for loss in &losses {
            let a = loss.forward(&b.input(b.s.clone(), b.t.clone())).unwrap().value();
            let c = loss.forward(&p.input(p.s.clone(), p.t.clone())).unwrap().value();
            prop_assert!((a - c).abs() <= 1e-9 * (1.0 + a.abs()), "{}: {a} vs {c}", loss.name());
        }
    }
}

#[test]
fn pkt_is_finite_with_an_all_zero_row() {
    configure_f64();
    let mut s = vec![0.5, -1.0, 2.0, 0.0, 0.0, 0.0, 1.0, 1.0, -0.5];
    s[3..6].fill(0.0);
    let t = vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3, 0.2, 0.1];
    let (ss, tt) = (
        f64t(s, [3, 3]).require_grad(),
        f64t(t, [3, 3]).require_grad(),
    );
    let input = DistillInput::features_only()
        .feature("embedding", ss.clone(), tt.clone())
        .attach_teacher();
    let out = PktConfig::new().init().unwrap().forward(&input).unwrap();
    assert!(out.value().is_finite());
    let grads = out.total.backward();
    for g in [
        values(ss.grad(&grads).unwrap()),
        values(tt.grad(&grads).unwrap()),
    ] {
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    }
}

#[test]
fn batch_relational_losses_need_two_rows() {
    configure_f64();
    let input = DistillInput::features_only().feature(
        "embedding",
        f64t(vec![1.0, 2.0], [1, 2]),
        f64t(vec![1.0, 0.0], [1, 2]),
    );
    let losses: Vec<Box<dyn Loss>> = vec![
        RkdConfig::new().init().unwrap().boxed(),
        SpConfig::new().init().unwrap().boxed(),
        PktConfig::new().init().unwrap().boxed(),
        DlkdConfig::new(2, 2)
            .with_ce_weight(0.0)
            .init(&device())
            .unwrap()
            .boxed(),
    ];
    for loss in &losses {
        match loss.forward(&input) {
            Err(DistillError::BatchTooSmall { min: 2, got: 1, .. }) => {}
            other => panic!("{}: {other:?}", loss.name()),
        }
    }
    // a missing tap is named
    let err = SpConfig::new()
        .with_feature("layer3".to_string())
        .init()
        .unwrap()
        .forward(&input)
        .unwrap_err();
    assert_eq!(
        err,
        DistillError::MissingFeature {
            objective: "sp".into(),
            name: "layer3".into()
        }
    );
}

#[test]
fn view_layouts_are_checked() {
    configure_f64();
    assert!(matches!(
        Views::new(vec![0, 0, 1], vec![0, 1, 1]),
        Err(DistillError::InvalidViews { .. })
    ));
    assert!(matches!(
        Views::new(vec![0, 0], vec![0, 0]),
        Err(DistillError::InvalidViews { .. })
    ));
    assert!(matches!(
        Views::new(vec![0, 1], vec![0]),
        Err(DistillError::InvalidViews { .. })
    ));
    let v = Views::new(vec![1, 0, 1, 0], vec![0, 0, 2, 1]).unwrap();
    assert_eq!(
        (v.plain_rows(), v.augmented_rows()),
        (vec![0, 1], vec![2, 3])
    );
    assert_eq!(Views::image_major(2, 3).images(), &[0, 0, 0, 1, 1, 1]);
    // a layout that does not cover the batch
    let b = Taps {
        n: 4,
        ds: 2,
        dt: 2,
        s: vec![0.1; 8],
        t: vec![0.2; 8],
        y: vec![0; 4],
    };
    let input = b
        .input(b.s.clone(), b.t.clone())
        .views(Views::image_major(2, 3));
    assert!(matches!(
        dlkd(&b).forward(&input),
        Err(DistillError::InvalidViews { .. })
    ));
}

/// DLKD's correlation with a layout: each augmented row against every plain row, by hand.
#[test]
fn dlkd_correlation_follows_the_view_layout() {
    configure_f64();
    let b = Taps {
        n: 4,
        ds: 2,
        dt: 3,
        s: vec![1.0, 0.0, 0.5, 0.5, -1.0, 0.2, 0.0, 1.0],
        t: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.6, 0.8, 0.0, 0.0, 0.0, 1.0],
        y: vec![0, 0, 1, 1],
    };
    let model = DlkdConfig::new(2, 3)
        .with_ce_weight(0.0)
        .with_supcon_weight(0.0)
        .with_align_weight(0.0)
        .with_corr_weight(1.0)
        .init(&device())
        .unwrap();
    // rows 0, 2 plain (images 0, 1); rows 1, 3 their augmented views
    let views = Views::new(vec![0, 0, 1, 1], vec![0, 1, 0, 1]).unwrap();
    let got = model
        .forward(&b.input(b.s.clone(), b.t.clone()).views(views))
        .unwrap()
        .value();
    // by hand: the student side goes through the head
    let head = values(model.corr_head.forward(f64t(b.s.clone(), [4, 2])));
    let cos = |x: &[f64], i: usize, j: usize, d: usize| {
        let (a, c) = (&x[i * d..(i + 1) * d], &x[j * d..(j + 1) * d]);
        let dot: f64 = a.iter().zip(c).map(|(p, q)| p * q).sum();
        let n = |v: &[f64]| v.iter().map(|p| p * p).sum::<f64>().sqrt();
        dot / (n(a) * n(c))
    };
    let softmax = |z: Vec<f64>| {
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = z.iter().map(|v| ((v - m) / 0.5).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect::<Vec<_>>()
    };
    let want: f64 = [1usize, 3]
        .iter()
        .map(|&a| {
            let pt = softmax([0usize, 2].iter().map(|&r| cos(&b.t, a, r, 3)).collect());
            let ps = softmax([0usize, 2].iter().map(|&r| cos(&head, a, r, 2)).collect());
            pt.iter()
                .zip(&ps)
                .map(|(p, q)| p * (p.ln() - q.ln()))
                .sum::<f64>()
        })
        .sum::<f64>()
        / 2.0;
    close("corr", &[got], &[want], 1e-12, 1e-15).unwrap();
}

fn crd_input(s: &[f64], t: &[f64], idx: Vec<i64>, step: usize) -> DistillInput {
    let n = idx.len();
    DistillInput::features_only()
        .feature(
            "embedding",
            f64t(s.to_vec(), [n, 2]),
            f64t(t.to_vec(), [n, 3]),
        )
        .indices(Tensor::<1, Int>::from_data(
            burn::tensor::TensorData::new(idx, [n]),
            &device(),
        ))
        .progress(Progress::epoch(0, 1).at_step(step, 10))
}

/// The memory update `m_i ← normalize(μ m_i + (1 − μ) v_i)` by hand for the batch's rows; the
/// other rows unchanged.
#[test]
fn crd_updates_its_memory_by_momentum() {
    configure_f64();
    let crd = CrdConfig::new(2, 3, 6)
        .with_embed_dim(3)
        .with_negatives(4)
        .with_momentum(0.5)
        .init(&device())
        .unwrap();
    let before = values(crd.memory_student.value());
    let (s, t) = ([0.3, -1.0, 2.0, 0.5], [1.0, 0.0, -1.0, 0.2, 0.4, 0.6]);
    let input = crd_input(&s, &t, vec![4, 1], 0);
    let v = values(crd.embed_student.forward(f64t(s.to_vec(), [2, 2])));
    crd.forward(&input).unwrap();
    let after = values(crd.memory_student.value_sync());
    for row in 0..6 {
        let old = &before[row * 3..row * 3 + 3];
        let want: Vec<f64> = match [4usize, 1].iter().position(|&r| r == row) {
            None => old.to_vec(),
            Some(b) => {
                let m: Vec<f64> = (0..3).map(|k| 0.5 * old[k] + 0.5 * v[b * 3 + k]).collect();
                let norm = m.iter().map(|x| x * x).sum::<f64>().sqrt();
                m.iter().map(|x| x / norm).collect()
            }
        };
        close(
            &format!("memory row {row}"),
            &after[row * 3..row * 3 + 3],
            &want,
            1e-12,
            1e-15,
        )
        .unwrap();
    }
}

/// Save after two steps, load into a fresh CRD (another seed), and the next loss is the same.
#[test]
fn crd_memory_survives_save_and_load() {
    configure_f64();
    let config = CrdConfig::new(2, 3, 8).with_embed_dim(4).with_negatives(5);
    let crd = config.init(&device()).unwrap();
    let (s, t) = (
        [0.3, -1.0, 2.0, 0.5, 0.1, 0.1],
        [1.0, 0.0, -1.0, 0.2, 0.4, 0.6, 0.0, 1.0, 1.0],
    );
    for step in 0..2 {
        crd.forward(&crd_input(&s, &t, vec![0, 3, 7], step))
            .unwrap();
    }
    let bytes = crd.clone().into_record().into_bytes().unwrap();
    // a restart builds the same config; its initial bank is the one before the two steps
    let fresh = config.init(&device()).unwrap();
    let restored = fresh.load_record(burn::store::ModuleRecord::from_bytes(bytes).unwrap());
    let next = crd_input(&s, &t, vec![5, 3, 2], 2);
    let (a, b) = (
        crd.forward(&next).unwrap().value(),
        restored.forward(&next).unwrap().value(),
    );
    assert_eq!(a, b);
    assert!(a.is_finite() && a > 0.0);
    // and the record carried the memory: a bank without it gives another loss
    let other = config.init(&device()).unwrap();
    assert_ne!(other.forward(&next).unwrap().value(), a);
}

#[test]
fn crd_gradients_match_finite_differences() {
    configure_f64();
    let config = CrdConfig::new(2, 3, 8).with_embed_dim(4).with_negatives(5);
    let (s, t) = (
        vec![0.3, -1.0, 2.0, 0.5, 0.1, 0.1],
        vec![1.0, 0.0, -1.0, 0.2, 0.4, 0.6, 0.0, 1.0, 1.0],
    );
    // the same bank for every evaluation (the forward updates it): a record of one with Z
    // fixed by a first batch, loaded afresh each time
    let base = config.init(&device()).unwrap();
    base.forward(&crd_input(&s, &t, vec![1, 2, 4], 0)).unwrap();
    let bytes = base.into_record().into_bytes().unwrap();
    let fresh = || {
        let record = burn::store::ModuleRecord::from_bytes(bytes.clone()).unwrap();
        config.init(&device()).unwrap().load_record(record)
    };
    let at = |s: &[f64], t: &[f64]| crd_input(s, t, vec![0, 3, 7], 1).attach_teacher();
    let (ss, tt) = (
        f64t(s.clone(), [3, 2]).require_grad(),
        f64t(t.clone(), [3, 3]).require_grad(),
    );
    let input = DistillInput::features_only()
        .feature("embedding", ss.clone(), tt.clone())
        .indices(Tensor::<1, Int>::from_data(
            burn::tensor::TensorData::new(vec![0i64, 3, 7], [3]),
            &device(),
        ))
        .progress(Progress::epoch(0, 1).at_step(1, 10))
        .attach_teacher();
    let grads = fresh().forward(&input).unwrap().total.backward();
    let num_s = numeric_grad(&|v| fresh().forward(&at(&v, &t)).unwrap().value(), &s, 1e-6);
    let num_t = numeric_grad(&|v| fresh().forward(&at(&s, &v)).unwrap().value(), &t, 1e-6);
    close(
        "d/ds",
        &values(ss.grad(&grads).unwrap()),
        &num_s,
        1e-5,
        1e-8,
    )
    .unwrap();
    close(
        "d/dt",
        &values(tt.grad(&grads).unwrap()),
        &num_t,
        1e-5,
        1e-8,
    )
    .unwrap();
}

#[test]
fn crd_errors() {
    configure_f64();
    let crd = CrdConfig::new(2, 3, 8)
        .with_embed_dim(4)
        .with_negatives(5)
        .init(&device())
        .unwrap();
    let (s, t) = ([0.3, -1.0, 2.0, 0.5], [1.0, 0.0, -1.0, 0.2, 0.4, 0.6]);
    assert_eq!(
        crd.forward(&crd_input(&s, &t, vec![0, 8], 0)).unwrap_err(),
        DistillError::IndexOutOfRange {
            objective: "crd".into(),
            index: 8,
            size: 8
        }
    );
    assert_eq!(
        crd.forward(&crd_input(&s, &t, vec![-1, 2], 0)).unwrap_err(),
        DistillError::IndexOutOfRange {
            objective: "crd".into(),
            index: -1,
            size: 8
        }
    );
    let no_indices = DistillInput::features_only()
        .feature(
            "embedding",
            Feature::Embedding(f64t(s.to_vec(), [2, 2])),
            Feature::Embedding(f64t(t.to_vec(), [2, 3])),
        )
        .progress(Progress::epoch(0, 1));
    assert!(matches!(
        crd.forward(&no_indices),
        Err(DistillError::MissingInput { .. })
    ));
    assert!(matches!(
        CrdConfig::new(2, 3, 0).init(&device()),
        Err(DistillError::InvalidConfig { .. })
    ));
    assert!(matches!(
        CrdConfig::new(2, 3, 5).with_momentum(1.0).init(&device()),
        Err(DistillError::InvalidConfig { .. })
    ));
}

/// CC by hand: the Gaussian kernel's expansion, the unsquared norm over `N²`, and
/// RepDistiller's consecutive form.
#[test]
fn cc_values_by_hand() {
    configure_f64();
    // two one-dimensional samples: student (1, 0), teacher (0, 1)
    let input = DistillInput::features_only().feature(
        "embedding",
        f64t(vec![1.0, 0.0], [2, 1]),
        f64t(vec![0.0, 1.0], [2, 1]),
    );
    let value = |kernel| {
        CcConfig::new()
            .with_kernel(kernel)
            .init()
            .unwrap()
            .forward(&input)
            .unwrap()
            .value()
    };
    // bilinear: Kˢ = [[1, 0], [0, 0]], Kᵗ = [[0, 0], [0, 1]]: ‖·‖_F = √2, over N² = 4
    assert!((value(CcKernel::Bilinear) - 2f64.sqrt() / 4.0).abs() < 1e-12);
    // order 1, γ = 0.5: K = e⁻¹ (1 + aᵀb): the same difference scaled by e⁻¹
    let gaussian = value(CcKernel::Gaussian {
        gamma: 0.5,
        order: 1,
    });
    assert!((gaussian - (-1f64).exp() * 2f64.sqrt() / 4.0).abs() < 1e-12);
    // consecutive: δ = (1, −1), |δ₀||δ₁| = 1, one pair
    assert!((value(CcKernel::Consecutive) - 1.0).abs() < 1e-12);
    let one = DistillInput::features_only().feature(
        "embedding",
        f64t(vec![1.0], [1, 1]),
        f64t(vec![0.0], [1, 1]),
    );
    assert!(matches!(
        CcConfig::new().init().unwrap().forward(&one),
        Err(DistillError::BatchTooSmall { min: 2, .. })
    ));
    assert!(
        CcConfig::new()
            .with_kernel(CcKernel::Gaussian {
                gamma: -1.0,
                order: 2
            })
            .init()
            .is_err()
    );
}

/// SSKD on two images with three rotations each: the gradients of the student's logits,
/// features and head against central differences; zero distillation terms when the student is
/// the teacher; the teacher's first stage learns; a batch that is not 4 rows per image is an
/// error.
#[test]
fn sskd_gradients_stages_and_errors() {
    configure_f64();
    let dev = device();
    dev.seed(5);
    let (n, c, d) = (8, 5, 6);
    let (zs, zt) = (noise(1, n * c, 2.0), noise(2, n * c, 2.0));
    let (fs, ft) = (noise(3, n * d, 1.0), noise(4, n * d, 1.0));
    let y = || ints(vec![1, 3]);
    let sskd = SskdConfig::new(d, d)
        .with_ss_ratio(0.5)
        .init(&dev)
        .unwrap()
        .freeze_teacher_head();
    let input = |zs: &[f64], fs: &[f64]| {
        DistillInput::new(f64t(zs.to_vec(), [n, c]), f64t(zt.clone(), [n, c]))
            .feature(
                "embedding",
                f64t(fs.to_vec(), [n, d]),
                f64t(ft.clone(), [n, d]),
            )
            .targets(y())
    };
    // the student's logits and features
    let (zl, fl) = (
        f64t(zs.clone(), [n, c]).require_grad(),
        f64t(fs.clone(), [n, d]).require_grad(),
    );
    let tracked = DistillInput::new(zl.clone(), f64t(zt.clone(), [n, c]))
        .feature("embedding", fl.clone(), f64t(ft.clone(), [n, d]))
        .targets(y());
    let grads = sskd.forward(&tracked).unwrap().total.backward();
    let num_z = numeric_grad(
        &|v| sskd.forward(&input(&v, &fs)).unwrap().value(),
        &zs,
        1e-6,
    );
    let num_f = numeric_grad(
        &|v| sskd.forward(&input(&zs, &v)).unwrap().value(),
        &fs,
        1e-6,
    );
    close(
        "d/dzs",
        &values(zl.grad(&grads).unwrap()),
        &num_z,
        1e-5,
        1e-8,
    )
    .unwrap();
    close(
        "d/dfs",
        &values(fl.grad(&grads).unwrap()),
        &num_f,
        1e-5,
        1e-8,
    )
    .unwrap();
    let checked = check_param_grads(&sskd, &|| input(&zs, &fs), &[0, 11, 23, 35]).unwrap();
    assert!(checked >= 4 * 4, "{checked}");
    // the student is the teacher (logits, features, head): only the task loss is left
    // a seeded head: its weights must not depend on what the other tests drew
    dev.seed(5);
    let mut same = SskdConfig::new(d, d).init(&dev).unwrap();
    same.student_head = same.teacher_head.clone();
    let twin = DistillInput::new(f64t(zt.clone(), [n, c]), f64t(zt.clone(), [n, c]))
        .feature(
            "embedding",
            f64t(ft.clone(), [n, d]),
            f64t(ft.clone(), [n, d]),
        )
        .targets(y());
    let out = same.forward(&twin).unwrap();
    for term in ["sskd/kl", "sskd/ss", "sskd/tf"] {
        let v = values(out.term(term).unwrap().clone())[0];
        assert!(v.abs() < 1e-10, "{term} = {v}");
    }
    // stage 1: the teacher head's contrastive loss falls under gradient descent (steps small
    // enough to descend from any initial head: 0.5 overshot one draw in a full run)
    use burn::optim::{GradientsParams, SgdConfig};
    let teacher_features = f64t(ft.clone(), [n, d]);
    let mut head = same.teacher_head.clone();
    let first = values(view_contrast_loss(head.forward(teacher_features.clone())))[0];
    let mut opt = SgdConfig::new().init();
    for _ in 0..50 {
        let loss = view_contrast_loss(head.forward(teacher_features.clone()));
        head = opt.step(
            0.05,
            head.clone(),
            GradientsParams::from_grads(loss.backward(), &head),
        );
    }
    let last = values(same.teacher_stage_loss(teacher_features.clone()))[0];
    let trained = values(view_contrast_loss(head.forward(teacher_features)))[0];
    assert!(
        trained < first && (last - first).abs() < 1e-12,
        "{first} -> {trained}"
    );
    // 6 rows are not 4 per image
    let six = DistillInput::new(
        f64t(zs[..6 * c].to_vec(), [6, c]),
        f64t(zt[..6 * c].to_vec(), [6, c]),
    );
    assert!(matches!(
        sskd.forward(&six),
        Err(DistillError::ShapeMismatch { .. })
    ));
}

/// SKD's direction loss: its Cholesky and triangular solve against plain f64 code, the loss
/// against a transcription with an explicit inverse (Gauss–Jordan), its gradients against
/// finite differences in f64, and 0 with zero gradients at student = teacher.
mod skd {
    use super::*;
    use burn_distill::math::{cholesky, solve_lower};
    use burn_distill::relation::{SkdDirectionConfig, skd_direction};

    /// `mean_i sqrt(Δ_i Σ⁻¹ Δ_iᵀ)` with Σ inverted by Gauss–Jordan elimination.
    fn plain(s: &[f64], t: &[f64], b: usize, d: usize, lambda: f64) -> f64 {
        let gram = |x: &[f64]| -> Vec<f64> {
            let n: Vec<Vec<f64>> = x
                .chunks(d)
                .map(|r| {
                    let norm = r.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
                    r.iter().map(|v| v / norm).collect()
                })
                .collect();
            (0..b * b)
                .map(|k| n[k / b].iter().zip(&n[k % b]).map(|(x, y)| x * y).sum())
                .collect()
        };
        let (gs, gt) = (gram(s), gram(t));
        let delta: Vec<f64> = gs.iter().zip(&gt).map(|(a, c)| a - c).collect();
        let mean: Vec<f64> = (0..b)
            .map(|j| (0..b).map(|i| delta[i * b + j]).sum::<f64>() / b as f64)
            .collect();
        let mut a = vec![vec![0.0; 2 * b]; b];
        for j in 0..b {
            for k in 0..b {
                a[j][k] = (0..b)
                    .map(|i| (delta[i * b + j] - mean[j]) * (delta[i * b + k] - mean[k]))
                    .sum::<f64>()
                    / (b as f64 - 1.0)
                    + if j == k { lambda } else { 0.0 };
            }
            a[j][b + j] = 1.0;
        }
        for c in 0..b {
            let p = a[c][c];
            for v in a[c].iter_mut() {
                *v /= p;
            }
            for r in 0..b {
                if r != c {
                    let f = a[r][c];
                    let row = a[c].clone();
                    for (x, y) in a[r].iter_mut().zip(row) {
                        *x -= f * y;
                    }
                }
            }
        }
        (0..b)
            .map(|i| {
                let di = &delta[i * b..(i + 1) * b];
                (0..b)
                    .map(|j| (0..b).map(|k| di[j] * a[j][b + k] * di[k]).sum::<f64>())
                    .sum::<f64>()
                    .sqrt()
            })
            .sum::<f64>()
            / b as f64
    }

    #[test]
    fn cholesky_and_solve_match_plain_code() {
        configure_f64();
        let n = 5;
        let m = noise(3, n * n, 1.0);
        let a: Vec<f64> = (0..n * n)
            .map(|k| {
                (0..n)
                    .map(|i| m[(k / n) * n + i] * m[(k % n) * n + i])
                    .sum::<f64>()
                    + if k % (n + 1) == 0 { 0.5 } else { 0.0 }
            })
            .collect();
        let l = values(cholesky(f64t(a.clone(), [n, n])));
        // L Lᵀ = A, L lower
        for i in 0..n {
            for j in 0..n {
                let llt: f64 = (0..n).map(|k| l[i * n + k] * l[j * n + k]).sum();
                assert!((llt - a[i * n + j]).abs() < 1e-12, "({i}, {j})");
                if j > i {
                    assert_eq!(l[i * n + j], 0.0);
                }
            }
        }
        let rhs = noise(4, n * 2, 1.0);
        let y = values(solve_lower(
            f64t(l.clone(), [n, n]),
            f64t(rhs.clone(), [n, 2]),
        ));
        for i in 0..n {
            for c in 0..2 {
                let ly: f64 = (0..n).map(|k| l[i * n + k] * y[k * 2 + c]).sum();
                assert!((ly - rhs[i * 2 + c]).abs() < 1e-12);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn skd_direction_matches_plain_code_and_finite_differences(seed in 0u64..1000, b in 2usize..7) {
            configure_f64();
            let d = 4;
            let (s, t) = (noise(seed, b * d, 1.0), noise(seed + 1, b * d, 1.0));
            let lambda = 0.1;
            let (xs, xt) = (f64t(s.clone(), [b, d]).require_grad(), f64t(t.clone(), [b, d]).require_grad());
            let loss = skd_direction(xs.clone(), xt.clone(), lambda);
            let got = values(loss.clone())[0];
            let want = plain(&s, &t, b, d, lambda);
            prop_assert!((got - want).abs() < 1e-10 * want.max(1.0), "{got} vs {want}");
            let grads = loss.backward();
            let gs = values(xs.grad(&grads).unwrap());
            let gt = values(xt.grad(&grads).unwrap());
            close("student", &gs, &numeric_grad(&|x| plain(&x, &t, b, d, lambda), &s, 1e-6), 1e-5, 1e-8).map_err(TestCaseError::fail)?;
            close("teacher", &gt, &numeric_grad(&|x| plain(&s, &x, b, d, lambda), &t, 1e-6), 1e-5, 1e-8).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn identical_rows_give_zero_and_zero_gradients() {
        configure_f64();
        let (b, d) = (4, 3);
        let s = noise(9, b * d, 1.0);
        let (xs, xt) = (
            f64t(s.clone(), [b, d]).require_grad(),
            f64t(s.clone(), [b, d]).require_grad(),
        );
        let loss = SkdDirectionConfig::new().init().unwrap();
        let out = loss
            .forward(&DistillInput::new(xs.clone(), xt.clone()).attach_teacher())
            .unwrap();
        assert_eq!(out.value(), 0.0);
        let grads = out.total.backward();
        assert!(values(xs.grad(&grads).unwrap()).iter().all(|&g| g == 0.0));
        assert!(values(xt.grad(&grads).unwrap()).iter().all(|&g| g == 0.0));
        let one = loss.forward(&DistillInput::new(
            f64t(s[..d].to_vec(), [1, d]),
            f64t(s[..d].to_vec(), [1, d]),
        ));
        assert!(
            matches!(one, Err(DistillError::BatchTooSmall { .. })),
            "{one:?}"
        );
        assert!(SkdDirectionConfig::new().with_tikhonov(0.0).init().is_err());
    }
}
