//! One MetaDistil round plus the student's step, against one plain KD step, for MLP student
//! (64-32-10) and teacher (64-256-256-10), batch 64, flex f32. Both include the student's SGD
//! step; the round adds the pilot, the quiz and the teacher's update.
//!
//! `cargo bench --bench meta`; the ratio goes in docs/metadistil.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use burn::nn::LinearConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use burn_distill::Distillable;
use burn_distill::meta::{Batch, MetaTeacherConfig};
use burn_distill::prelude::*;
use common::Net;
use criterion::{Criterion, criterion_group, criterion_main};

fn mlp(widths: &[usize], dev: &Device) -> Net {
    let net = Net {
        layers: widths
            .windows(2)
            .map(|w| LinearConfig::new(w[0], w[1]).init(dev))
            .collect(),
    };
    burn::module::Module::fork(net, dev)
}

fn bench(c: &mut Criterion) {
    let dev = Device::flex().autodiff();
    dev.seed(1);
    let student = mlp(&[64, 32, 10], &dev);
    let teacher = mlp(&[64, 256, 256, 10], &dev);
    let batch = |n: usize| {
        Batch::new(
            Tensor::<2>::random([n, 64], Distribution::Normal(0.0, 1.0), &dev),
            Tensor::<1, Int>::from_data(
                TensorData::new((0..n as i64).map(|i| i % 10).collect(), [n]),
                &dev,
            ),
        )
    };
    let (train, quiz) = (batch(64), batch(64));
    let loss = || {
        CrossEntropyConfig::new().init().unwrap().weighted(0.5)
            + KdConfig::new()
                .with_temperature(4.0)
                .init()
                .unwrap()
                .weighted(0.5)
    };
    let mut meta = MetaTeacherConfig::new()
        .init(teacher, SgdConfig::new().init(), loss())
        .unwrap();
    let p = Progress::epoch(0, 1);
    let mut group = c.benchmark_group("step/mlp-64-32-10_from_64-256-256-10_batch64");
    let mut optim = SgdConfig::new().init();
    let mut s = student.clone();
    group.bench_function("kd", |b| {
        b.iter(|| {
            let out = meta.student_loss(s.run(&train.input), &train, p).unwrap();
            let grads = GradientsParams::from_grads(out.total.backward(), &s);
            s = optim.step(0.01, s.clone(), grads);
        })
    });
    let mut s = student;
    group.bench_function("metadistil", |b| {
        b.iter(|| {
            black_box(meta.round(&s, &train, &quiz, p, 0.01).unwrap());
            let out = meta.student_loss(s.run(&train.input), &train, p).unwrap();
            let grads = GradientsParams::from_grads(out.total.backward(), &s);
            s = optim.step(0.01, s.clone(), grads);
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
