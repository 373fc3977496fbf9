//! burn-train integration (`--features train`): a Distiller step on tiny data lowers the loss,
//! leaves the teacher untouched and gives it no gradient; cached teacher outputs are the same
//! as running the teacher; a short `SupervisedTraining` run with loss-term metrics.
#![cfg(feature = "train")]

mod common;

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::optim::AdamConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{Learner, SupervisedTraining, TrainStep};
use burn_distill::pipeline::{DistillBatch, Distiller, TermMetric};
use burn_distill::prelude::*;
use burn_distill::{Distillable, LossSum};
use common::Net;
use common::train::{ItemBatcher, items};

fn net(widths: &[usize], seed: u64, dev: &Device) -> Net {
    common::mlp(widths, seed, dev)
}

fn loss() -> LossSum {
    let kd = KdConfig::new().with_temperature(2.0).init().unwrap();
    CrossEntropyConfig::new().init().unwrap().weighted(0.5) + kd.weighted(0.5)
}

fn weights(n: &Net) -> Vec<f32> {
    n.layers
        .iter()
        .flat_map(|l| {
            l.weight
                .val()
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap()
        })
        .collect()
}

#[test]
fn a_distiller_step_trains_the_student_only() {
    let dev = Device::flex().autodiff();
    let teacher = net(&[4, 16, 3], 1, &dev);
    let before = weights(&teacher);
    let mut model = Distiller::new(net(&[4, 3], 2, &dev), teacher, loss());
    let item = ItemBatcher.batch(items(), &dev);
    let mut optim = AdamConfig::new().init();
    let mut losses = Vec::new();
    for _ in 0..30 {
        let out = TrainStep::step(&model, item.clone());
        losses.push(out.item.classification.loss.clone().into_scalar::<f32>());
        for layer in &model.teacher.layers {
            assert!(
                out.grads.get::<2>(layer.weight.id).is_none(),
                "no teacher gradient"
            );
        }
        assert!(
            out.grads
                .get::<2>(model.student.layers[0].weight.id)
                .is_some()
        );
        let names: Vec<&str> = out.item.terms.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["ce", "kd"]);
        model = TrainStep::optimize(model, &mut optim, 1e-2.into(), out.grads);
    }
    assert!(losses[29] < 0.8 * losses[0], "the loss falls: {losses:?}");
    assert_eq!(weights(&model.teacher), before, "the teacher never moves");

    // cached teacher outputs give the same loss as running the teacher
    let cached = DistillBatch {
        teacher: Some(model.teacher.run(&item.batch.input)),
        ..item.clone()
    };
    let value =
        |out: burn_distill::pipeline::DistillOutput| out.classification.loss.into_scalar::<f32>();
    assert_eq!(value(model.forward(item)), value(model.forward(cached)));
}

#[test]
fn supervised_training_runs_with_loss_term_metrics() {
    let dev = Device::flex().autodiff();
    let teacher = net(&[4, 16, 3], 3, &dev);
    let before = weights(&teacher);
    let student = net(&[4, 3], 4, &dev);
    let student_before = weights(&student);
    let model = Distiller::new(student, teacher, loss());
    let train = DataLoaderBuilder::new(ItemBatcher)
        .batch_size(16)
        .shuffle(1)
        .build(InMemDataset::new(items()));
    let valid = DataLoaderBuilder::new(ItemBatcher)
        .batch_size(16)
        .build(InMemDataset::new(items()));
    let dir = std::env::temp_dir().join(format!("burn-distill-train-{}", std::process::id()));
    let result = SupervisedTraining::new(&dir, train, valid)
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .metric_train_numeric(TermMetric::new("kd"))
        .metric_train_numeric(TermMetric::new("ce"))
        .num_epochs(3)
        .launch(Learner::new(model, AdamConfig::new().init(), 1e-2));
    assert_eq!(weights(&result.model.teacher), before);
    assert_ne!(
        weights(&result.model.student),
        student_before,
        "the student trained"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// With a MetaTeacher, each training step first runs its round on the item's quiz batch: the
/// meta-teacher's teacher moves, the frozen copy in the module does not, the student trains.
#[test]
fn a_distiller_with_a_meta_teacher_updates_that_teacher() {
    use burn_distill::meta::MetaTeacherConfig;
    let dev = Device::flex().autodiff();
    let teacher = net(&[4, 16, 3], 5, &dev);
    let before = weights(&teacher);
    let meta = MetaTeacherConfig::new()
        .with_teacher_lr(0.1)
        .init(
            teacher.clone(),
            burn::optim::SgdConfig::new().init(),
            loss(),
        )
        .unwrap();
    let mut model = Distiller::new(net(&[4, 3], 6, &dev), teacher, loss()).with_meta(meta, 1e-2);
    let all = items();
    let item = DistillBatch {
        quiz: Some(ItemBatcher.batch(all[..12].to_vec(), &dev).batch),
        progress: Some(Progress::epoch(0, 1)),
        ..ItemBatcher.batch(all[12..].to_vec(), &dev)
    };
    let mut optim = AdamConfig::new().init();
    for _ in 0..3 {
        let out = TrainStep::step(&model, item.clone());
        assert!(
            out.item
                .classification
                .loss
                .clone()
                .into_scalar::<f32>()
                .is_finite()
        );
        model = TrainStep::optimize(model, &mut optim, 1e-2.into(), out.grads);
    }
    assert_eq!(
        weights(&model.teacher),
        before,
        "the module's frozen copy stays"
    );
    assert_ne!(
        weights(&model.current_teacher()),
        before,
        "the meta-teacher's teacher learned"
    );
}

/// Every term name the crate's objectives produce (`dkd/tckd`, `dckd/nckd`, `kd#2`, …) is a
/// metric burn-train's file logger can write: a run with a metric per term of such a loss
/// completes and writes a log per metric. A metric for a term the loss lacks is refused
/// before the run, naming the terms it has.
#[test]
fn term_metrics_of_every_name_run_under_the_file_logger() {
    use burn_distill::logit::{DckdConfig, DkdConfig};
    let dev = Device::flex().autodiff();
    let teacher = net(&[4, 16, 3], 3, &dev);
    let student = net(&[4, 3], 4, &dev);
    let kd = || KdConfig::new().with_temperature(2.0).init().unwrap();
    let loss = CrossEntropyConfig::new().init().unwrap()
        + DkdConfig::new().with_warmup_epochs(0).init().unwrap()
        + DckdConfig::new().with_warmup_epochs(0).init().unwrap()
        + kd()
        + kd();
    // the terms, from one forward pass on a batch like the training ones
    let example = {
        let b = ItemBatcher.batch(items()[..8].to_vec(), &dev);
        let s = student.run(&b.batch.input).logits;
        let t = teacher.run(&b.batch.input).logits;
        DistillInput::new(s, t).targets(b.batch.targets)
    };
    let metrics = TermMetric::all(&loss, &example).unwrap();
    let names: Vec<String> = burn::train::metric::Metric::name(&metrics[1])
        .to_string()
        .split(' ')
        .map(String::from)
        .collect();
    assert_eq!(names.last().unwrap(), "dkd_tckd");
    // the name a log reader looks for, from the term's own name
    assert_eq!(
        burn::train::metric::Metric::name(&metrics[1]).to_string(),
        TermMetric::metric_name("dkd/tckd")
    );
    assert_eq!(TermMetric::metric_name("kd#2"), "Loss term kd_2");
    assert_eq!(metrics.len(), 7); // ce, dkd/tckd, dkd/nckd, dckd/tckd, dckd/nckd, kd, kd#2
    let Err(err) = TermMetric::checked("dkd/tkcd", &loss, &example) else {
        panic!("a term the loss lacks was accepted");
    };
    assert!(
        matches!(err, DistillError::UnknownTerm { ref terms, .. } if terms.len() == 7),
        "{err}"
    );
    assert!(TermMetric::checked("dkd/tckd", &loss, &example).is_ok());

    let model = Distiller::new(student, teacher, loss);
    let train = DataLoaderBuilder::new(ItemBatcher)
        .batch_size(16)
        .build(InMemDataset::new(items()));
    let valid = DataLoaderBuilder::new(ItemBatcher)
        .batch_size(16)
        .build(InMemDataset::new(items()));
    let dir = std::env::temp_dir().join(format!("burn-distill-terms-{}", std::process::id()));
    let mut training = SupervisedTraining::new(&dir, train, valid).num_epochs(1);
    for m in metrics {
        training = training.metric_train_numeric(m);
    }
    let result = training.launch(Learner::new(model, AdamConfig::new().init(), 1e-2));
    drop(result);
    let logs: Vec<String> = walk(&dir)
        .into_iter()
        .filter(|p| p.contains("Loss_term") || p.contains("Loss term"))
        .collect();
    assert!(logs.iter().any(|p| p.contains("dkd_tckd")), "{logs:?}");
    let _ = std::fs::remove_dir_all(dir);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

/// A distiller that tracks its own progress runs a warm-up loss under `SupervisedTraining`
/// with batches that carry none; its step count is in its record (a resumed run continues
/// it); `check` finds bad input before `launch` as a `Result`.
#[test]
fn a_distiller_tracks_progress_and_checks_a_batch() {
    let dev = Device::flex().autodiff();
    let warm = || {
        CrossEntropyConfig::new().init().unwrap()
            + DkdConfig::new().with_warmup_epochs(2).init().unwrap()
    };
    let item = ItemBatcher.batch(items(), &dev);
    // without progress, the warm-up has nothing to read: an error, before any training
    let blind = Distiller::new(net(&[4, 3], 6, &dev), net(&[4, 16, 3], 7, &dev), warm());
    assert!(matches!(
        blind.check(&item),
        Err(DistillError::MissingInput { .. })
    ));
    // a target outside the classes
    let mut bad = item.clone();
    bad.batch.targets = Tensor::<1, Int>::from_data(TensorData::new(vec![7i64; 48], [48]), &dev);
    let tracked = Distiller::new(net(&[4, 3], 6, &dev), net(&[4, 16, 3], 7, &dev), warm())
        .with_progress(3, 3);
    assert!(matches!(
        tracked.check(&bad),
        Err(DistillError::TargetOutOfRange { .. })
    ));
    assert!(tracked.check(&item).is_ok());
    // 48 items in batches of 16: 3 steps an epoch, 3 epochs
    let train = DataLoaderBuilder::new(ItemBatcher)
        .batch_size(16)
        .shuffle(2)
        .build(InMemDataset::new(items()));
    let valid = DataLoaderBuilder::new(ItemBatcher)
        .batch_size(16)
        .build(InMemDataset::new(items()));
    let dir = std::env::temp_dir().join(format!("burn-distill-progress-{}", std::process::id()));
    let result = SupervisedTraining::new(&dir, train, valid)
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .num_epochs(3)
        .launch(Learner::new(tracked, AdamConfig::new().init(), 1e-2));
    let model = result.model;
    assert_eq!(model.steps_taken(), 9);
    // the count travels with the record
    let fresh = Distiller::new(net(&[4, 3], 6, &dev), net(&[4, 16, 3], 7, &dev), warm())
        .with_progress(3, 3);
    let restored = fresh.load_record(model.clone().into_record());
    assert_eq!(restored.steps_taken(), 9);
    let _ = std::fs::remove_dir_all(dir);
}

/// burn-train's multi-device strategy with two workers (both on flex: the CPU has one device):
/// burn splits the loader between them (24 items each, batches of 16 and 8) and takes one
/// optimizer step per pair of batches, with their gradients summed — 2 steps an epoch, which
/// the distiller counts; the DKD warm-up reads that progress, the teacher never moves.
/// (DDP cannot run here: burn 0.22.1 has collective operations only on CUDA and remote
/// devices, and panics "Distributed operations are not supported for device Flex(Cpu)".)
#[test]
fn a_distiller_trains_under_the_multi_device_strategy() {
    use burn::train::{ExecutionStrategy, MultiDeviceOptim};
    let dev = Device::flex().autodiff();
    let teacher = net(&[4, 16, 3], 3, &dev);
    let before = weights(&teacher);
    let student = net(&[4, 3], 4, &dev);
    let student_before = weights(&student);
    let warm = CrossEntropyConfig::new().init().unwrap()
        + DkdConfig::new().with_warmup_epochs(2).init().unwrap();
    let model = Distiller::new(student, teacher, warm).with_progress(2, 3);
    let loader = || {
        DataLoaderBuilder::new(ItemBatcher)
            .batch_size(16)
            .build(InMemDataset::new(items()))
    };
    let dir = std::env::temp_dir().join(format!("burn-distill-multi-{}", std::process::id()));
    let strategy = ExecutionStrategy::multi(
        vec![dev.clone(), dev.clone()],
        MultiDeviceOptim::OptimMainDevice,
    );
    let result = SupervisedTraining::new(&dir, loader(), loader())
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .num_epochs(3)
        .with_training_strategy(strategy.into())
        .launch(Learner::new(model, AdamConfig::new().init(), 1e-2));
    assert_eq!(result.model.steps_taken(), 6);
    assert_eq!(weights(&result.model.teacher), before);
    assert_ne!(weights(&result.model.student), student_before);
    let _ = std::fs::remove_dir_all(dir);
}
