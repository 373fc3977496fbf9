//! Difficulty curricula (Paced, TopKMask) and DOT against values computed by hand in plain
//! f64 arithmetic.

mod common;

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn_distill::curriculum::{Difficulty, PacedConfig, TopKMaskConfig};
use burn_distill::optim::DotConfig;
use burn_distill::prelude::*;
use common::*;

fn softmax(z: &[f64], t: f64) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = z.iter().map(|v| ((v - m) / t).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// KD of one row by its definition: T² Σ pᵗ (log pᵗ − log pˢ).
fn kd_row(s: &[f64], t: &[f64], temp: f64) -> f64 {
    let (ps, pt) = (softmax(s, temp), softmax(t, temp));
    temp * temp
        * pt.iter()
            .zip(&ps)
            .map(|(a, b)| a * (a.ln() - b.ln()))
            .sum::<f64>()
}

const C: usize = 4;
const S: [f64; 16] = [
    1.0, 0.2, -0.5, 0.3, //
    -1.0, 2.0, 0.5, 0.0, //
    0.3, 0.3, 1.5, -2.0, //
    2.5, -0.4, 0.1, 0.9,
];
const T: [f64; 16] = [
    3.0, 0.1, -1.0, 0.2, // confident, right (target 0)
    0.5, 0.4, 0.6, 0.3, // unsure
    -1.0, 2.5, 0.0, 0.5, // confident, wrong (target 2)
    1.0, 0.2, -0.3, 0.8, // fairly sure, right (target 0)
];
const Y: [i64; 4] = [0, 1, 2, 0];

fn input(epoch: usize) -> DistillInput {
    DistillInput::new(f64t(S.to_vec(), [4, C]), f64t(T.to_vec(), [4, C]))
        .targets(ints(Y.to_vec()))
        .progress(Progress::epoch(epoch, 10))
}

fn row(x: &[f64], i: usize) -> &[f64] {
    &x[i * C..(i + 1) * C]
}

/// Cross-entropy of row `i` of the logits `z` on its target.
fn ce(z: &[f64], i: usize) -> f64 {
    -softmax(row(z, i), 1.0)[Y[i] as usize].ln()
}

/// A sample's difficulty by its index.
type Score = Box<dyn Fn(usize) -> f64>;

/// The rows a ranking admits, easiest first.
fn easiest(score: impl Fn(usize) -> f64, k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..4).collect();
    idx.sort_by(|a, b| score(*a).partial_cmp(&score(*b)).unwrap());
    idx.truncate(k);
    idx
}

fn kd_mean(rows: &[usize], temp: f64) -> f64 {
    rows.iter()
        .map(|&i| kd_row(row(&S, i), row(&T, i), temp))
        .sum::<f64>()
        / rows.len() as f64
}

#[test]
fn paced_admits_the_easiest_rows_first() {
    let kd = || KdConfig::new().with_temperature(2.0).init().unwrap();
    let cases: [(Difficulty, Score); 3] = [
        (Difficulty::TeacherLoss, Box::new(|i| ce(&T, i))),
        (
            Difficulty::TeacherConfidence,
            Box::new(|i| -softmax(row(&T, i), 1.0).iter().cloned().fold(0.0, f64::max)),
        ),
        (Difficulty::StudentLoss, Box::new(|i| ce(&S, i))),
    ];
    for (difficulty, score) in cases {
        // start 0.5 → 2 of 4 rows at epoch 0; linear to 1.0 over 10 epochs
        let paced = PacedConfig::new()
            .with_difficulty(difficulty)
            .init(kd())
            .unwrap();
        let want = kd_mean(&easiest(&score, 2), 2.0);
        let got = paced.forward(&input(0)).unwrap().value();
        close(
            &format!("{difficulty:?} at the start"),
            &[got],
            &[want],
            1e-12,
            0.0,
        )
        .unwrap();
        // epoch 4: 0.5 + 0.5·0.4 = 0.7 → ⌈2.8⌉ = 3 rows
        let want = kd_mean(&easiest(&score, 3), 2.0);
        let got = paced.forward(&input(4)).unwrap().value();
        close(
            &format!("{difficulty:?} at epoch 4"),
            &[got],
            &[want],
            1e-12,
            0.0,
        )
        .unwrap();
        // the end: the whole batch, the inner loss unchanged
        let full = kd().forward(&input(10)).unwrap().value();
        assert_eq!(paced.forward(&input(10)).unwrap().value(), full);
    }
    // the teacher-loss ranking puts the confidently wrong row last, the confidence one does not
    assert_eq!(easiest(|i| ce(&T, i), 4)[3], 2);
}

#[test]
fn paced_fraction_only_grows() {
    let paced = PacedConfig::new()
        .with_start(0.25)
        .with_epochs(8)
        .init(CrossEntropyConfig::new().init().unwrap())
        .unwrap();
    let fractions: Vec<f64> = (0..12)
        .map(|e| {
            paced
                .admitted(&input(0).progress(Progress::epoch(e, 12)))
                .unwrap()
        })
        .collect();
    assert_eq!(fractions[0], 0.25);
    assert!(fractions.windows(2).all(|w| w[1] >= w[0]), "{fractions:?}");
    assert_eq!(fractions[8], 1.0);
    assert_eq!(fractions[11], 1.0);
}

#[test]
fn paced_and_top_k_errors() {
    let bad = |r: Result<(), DistillError>, field: &str| match r {
        Err(DistillError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected an error on {field}, got {other:?}"),
    };
    let paced = |start, end| {
        PacedConfig::new()
            .with_start(start)
            .with_end(end)
            .init(CrossEntropyConfig::new().init().unwrap())
            .map(|_| ())
    };
    bad(paced(0.0, 1.0), "start");
    bad(paced(0.5, 1.5), "end");
    bad(paced(0.8, 0.5), "end");
    bad(paced(f64::NAN, 1.0), "start");
    let top = |start, end| {
        TopKMaskConfig::new()
            .with_start(start)
            .with_end(end)
            .init(CrossEntropyConfig::new().init().unwrap())
            .map(|_| ())
    };
    bad(top(-0.1, 1.0), "start");
    bad(top(0.6, 0.4), "end");
    bad(
        TopKMaskConfig::new()
            .with_min_kept(0)
            .init(CrossEntropyConfig::new().init().unwrap())
            .map(|_| ()),
        "min_kept",
    );
    // no progress to pace by
    let kd = KdConfig::new().init().unwrap();
    let no_progress = DistillInput::new(f64t(S.to_vec(), [4, C]), f64t(T.to_vec(), [4, C]))
        .targets(ints(Y.to_vec()));
    let err = PacedConfig::new()
        .init(kd.clone())
        .unwrap()
        .forward(&no_progress)
        .unwrap_err();
    assert!(matches!(err, DistillError::MissingInput { .. }), "{err}");
    let err = TopKMaskConfig::new()
        .init(kd)
        .unwrap()
        .forward(&no_progress)
        .unwrap_err();
    assert!(matches!(err, DistillError::MissingInput { .. }), "{err}");
    // a fused DKD term is a logged value: not a task term DOT can differentiate
    let mut dot = DotConfig::new()
        .with_task_terms(vec!["dkd/tckd".into()])
        .init()
        .unwrap();
    let dkd = DkdConfig::new().with_warmup_epochs(0).init().unwrap();
    let err = dot
        .step(
            0.1,
            Row {
                w: Param::from_tensor(f64t(vec![0.0; C], [1, C])),
            },
            |m: &Row| {
                dkd.forward(
                    &DistillInput::new(m.w.val(), f64t(vec![1.0, 0.0, 0.0, 0.0], [1, C]))
                        .targets(common::ints(vec![0])),
                )
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("logged value"), "{err}");
}

#[test]
fn top_k_mask_keeps_the_target_and_the_teachers_top_non_targets() {
    let temp = 3.0;
    let kd = KdConfig::new().with_temperature(temp).init().unwrap();
    // start 0.3 of the 3 non-target classes → ⌈0.9⌉ = 1 at epoch 0; 0.3 + 0.7·0.5 = 0.65 → 2
    // at epoch 5; all 3 at the end
    let top = TopKMaskConfig::new()
        .with_start(0.3)
        .with_epochs(10)
        .with_min_kept(1)
        .init(kd.clone())
        .unwrap();
    for (epoch, k) in [(0, 1), (5, 2), (10, 3)] {
        assert_eq!(top.kept(&input(epoch), C).unwrap(), k);
        let want: f64 = (0..4)
            .map(|i| {
                let (s, t, y) = (row(&S, i), row(&T, i), Y[i] as usize);
                let mut others: Vec<usize> = (0..C).filter(|&j| j != y).collect();
                others.sort_by(|a, b| t[*b].partial_cmp(&t[*a]).unwrap());
                let keep: Vec<usize> = std::iter::once(y)
                    .chain(others[..k].iter().cloned())
                    .collect();
                let pick = |z: &[f64]| keep.iter().map(|&j| z[j]).collect::<Vec<_>>();
                kd_row(&pick(s), &pick(t), temp)
            })
            .sum::<f64>()
            / 4.0;
        let got = top.forward(&input(epoch)).unwrap().value();
        close(&format!("top-{k} KD"), &[got], &[want], 1e-12, 0.0).unwrap();
    }
    assert_eq!(
        top.forward(&input(10)).unwrap().value(),
        kd.forward(&input(10)).unwrap().value()
    );
    // the cut input's targets are all 0 (the target comes first): DKD reads them
    let dkd = DkdConfig::new()
        .with_temperature(temp)
        .with_warmup_epochs(0)
        .init()
        .unwrap();
    let top_dkd = TopKMaskConfig::new().with_start(0.5).init(dkd).unwrap();
    assert!(top_dkd.forward(&input(0)).unwrap().value().is_finite());
    // by default at least two non-target classes stay
    assert_eq!(
        TopKMaskConfig::new()
            .with_start(0.1)
            .init(CrossEntropyConfig::new().init().unwrap())
            .unwrap()
            .kept(&input(0), C)
            .unwrap(),
        2
    );
}

/// One learnable logit row `w` `[1, C]`: the student of the DOT test.
#[derive(Module, Debug)]
struct Row {
    w: Param<Tensor<2>>,
}

#[test]
fn dot_matches_a_hand_computed_two_step_update() {
    let (a, b, temp, lr, wd) = (0.6, 0.4, 2.0, 0.1, 0.01);
    let (beta, delta) = (0.9, 0.075);
    let teacher = [1.5, -0.5, 0.3, 0.0];
    let y = 2usize;
    let kd = KdConfig::new().with_temperature(temp).init().unwrap();
    let loss = CrossEntropyConfig::new().init().unwrap().weighted(a) + kd.weighted(b);
    let mut dot = DotConfig::new().with_weight_decay(wd).init().unwrap();
    let w0 = vec![0.2, 0.1, -0.3, 0.5];
    let mut row = Row {
        w: Param::from_tensor(f64t(w0.clone(), [1, C])),
    };

    // by hand: ∇ CE = a (softmax(w) − e_y); ∇ KD = b T (softmax(w/T) − softmax(t/T))
    let grads = |w: &[f64]| {
        let (p, ps, pt) = (softmax(w, 1.0), softmax(w, temp), softmax(&teacher, temp));
        let task: Vec<f64> = (0..C)
            .map(|j| a * (p[j] - if j == y { 1.0 } else { 0.0 }))
            .collect();
        let kd: Vec<f64> = (0..C).map(|j| b * temp * (ps[j] - pt[j])).collect();
        (task, kd)
    };
    let (mut w, mut bt, mut bd) = (w0, vec![0.0; C], vec![0.0; C]);
    for step in 0..2 {
        let (gt, gd) = grads(&w);
        for j in 0..C {
            let gt = gt[j] + wd * w[j];
            bt[j] = if step == 0 {
                gt
            } else {
                (beta - delta) * bt[j] + gt
            };
            bd[j] = if step == 0 {
                gd[j]
            } else {
                (beta + delta) * bd[j] + gd[j]
            };
        }
        w = (0..C).map(|j| w[j] - lr * (bt[j] + bd[j])).collect();

        let (next, out) = dot
            .step(lr, row, |m: &Row| {
                let input = DistillInput::new(m.w.val(), f64t(teacher.to_vec(), [1, C]))
                    .targets(ints(vec![y as i64]));
                loss.forward(&input)
            })
            .unwrap();
        row = next;
        assert_eq!(out.values().len(), 2);
        close(
            &format!("w after step {}", step + 1),
            &values(row.w.val()),
            &w,
            1e-12,
            1e-15,
        )
        .unwrap();
    }
}

#[test]
fn dot_errors() {
    assert!(matches!(
        DotConfig::new().with_delta(0.95).init(),
        Err(DistillError::InvalidConfig { .. })
    ));
    assert!(matches!(
        DotConfig::new().with_momentum(0.1).with_delta(0.2).init(),
        Err(DistillError::InvalidConfig { .. })
    ));
    assert!(matches!(
        DotConfig::new().with_task_terms(vec![]).init(),
        Err(DistillError::InvalidConfig { .. })
    ));
    let mut dot = DotConfig::new()
        .with_task_terms(vec!["task".into()])
        .init()
        .unwrap();
    let row = Row {
        w: Param::from_tensor(f64t(vec![0.0; C], [1, C])),
    };
    let kd = KdConfig::new().init().unwrap();
    let err = dot
        .step(0.1, row, |m: &Row| {
            kd.forward(&DistillInput::new(
                m.w.val(),
                f64t(vec![1.0, 0.0, 0.0, 0.0], [1, C]),
            ))
        })
        .unwrap_err();
    assert!(matches!(err, DistillError::MissingInput { .. }), "{err}");
}
