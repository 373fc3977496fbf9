//! Teaching-assistant chains (the order of the stages) and DGKD (reproducible, never-empty
//! guide drops; the loss is the mean over the kept guides).

mod common;

use burn_distill::pipeline::{DgkdConfig, Takd};
use burn_distill::prelude::*;
use common::*;

#[test]
fn takd_trains_each_stage_from_the_previous_one() {
    let kd = || KdConfig::new().init().unwrap();
    let chain = Takd::new()
        .stage("assistant 1", "A1".to_string(), kd())
        .stage("assistant 2", "A2".to_string(), kd())
        .stage("student", "S".to_string(), kd());
    assert_eq!(chain.names(), ["assistant 1", "assistant 2", "student"]);
    let mut log = Vec::new();
    let trained = chain
        .run("T".to_string(), |name, model, teacher, loss| {
            log.push(format!(
                "{name}: {model} from {teacher} with {}",
                loss.name()
            ));
            Ok::<_, DistillError>(format!("{model}*"))
        })
        .unwrap();
    assert_eq!(trained, ["A1*", "A2*", "S*"]);
    assert_eq!(
        log,
        [
            "assistant 1: A1 from T with kd",
            "assistant 2: A2 from A1* with kd",
            "student: S from A2* with kd"
        ]
    );
    // an error stops the chain
    let chain = Takd::new().stage("a", 1, kd()).stage("b", 2, kd());
    let mut calls = 0;
    let err = chain.run(0, |_, _, _, _| {
        calls += 1;
        Err::<i32, _>("diverged")
    });
    assert_eq!((err, calls), (Err("diverged"), 1));
}

#[test]
fn dgkd_drops_are_reproducible_and_never_empty() {
    let kd = KdConfig::new().init().unwrap();
    let dgkd = DgkdConfig::new().with_seed(5).init(kd.clone()).unwrap();
    let again = DgkdConfig::new().with_seed(5).init(kd.clone()).unwrap();
    let other = DgkdConfig::new().with_seed(6).init(kd.clone()).unwrap();
    let draws = |d: &burn_distill::pipeline::Dgkd<_>| -> Vec<Vec<usize>> {
        (0..200)
            .map(|step| d.kept(4, step / 50, step % 50))
            .collect()
    };
    assert_eq!(draws(&dgkd), draws(&again));
    assert_ne!(draws(&dgkd), draws(&other));
    let kept: usize = draws(&dgkd).iter().map(Vec::len).sum();
    let rate = kept as f64 / (200.0 * 4.0);
    assert!(
        (rate - 0.5).abs() < 0.07,
        "about half the guides kept: {rate}"
    );
    let greedy = DgkdConfig::new().with_drop(0.99).init(kd.clone()).unwrap();
    assert!((0..500).all(|s| !greedy.kept(3, 0, s).is_empty()));
    assert!(matches!(
        DgkdConfig::new().with_drop(1.0).init(kd),
        Err(DistillError::InvalidConfig { .. })
    ));
}

#[test]
fn dgkd_is_the_mean_of_the_inner_loss_over_kept_guides() {
    let kd = KdConfig::new().with_temperature(2.0).init().unwrap();
    let dgkd = DgkdConfig::new()
        .with_drop(0.4)
        .with_seed(9)
        .init(kd.clone())
        .unwrap();
    let s = f64t(vec![0.5, 1.0, -1.0, 2.0, 0.0, 0.3], [2, 3]);
    let guides = [
        f64t(vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0], [2, 3]),
        f64t(vec![0.2, 0.5, 2.0, 1.0, 1.0, -1.0], [2, 3]),
        f64t(vec![-1.0, 0.3, 0.1, 0.4, 0.2, 3.0], [2, 3]),
    ];
    for step in 0..12 {
        let input = DistillInput::new(s.clone(), guides[0].clone())
            .guide(guides[1].clone())
            .guide(guides[2].clone())
            .progress(Progress::epoch(1, 3).at_step(step, 12));
        let kept = dgkd.kept(3, 1, step);
        let want = kept
            .iter()
            .map(|&g| {
                kd.forward(&DistillInput::new(s.clone(), guides[g].clone()))
                    .unwrap()
                    .value()
            })
            .sum::<f64>()
            / kept.len() as f64;
        let got = dgkd.forward(&input).unwrap();
        close("dgkd", &[got.value()], &[want], 1e-12, 0.0).unwrap();
        assert_eq!(got.values()[0].0, "kd");
    }
    // without progress the drops have no key
    let input = DistillInput::new(s, guides[0].clone());
    assert!(matches!(
        dgkd.forward(&input),
        Err(DistillError::MissingInput { .. })
    ));
}
