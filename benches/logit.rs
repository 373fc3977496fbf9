//! Forward + backward (w.r.t. the student's logits) of the logit objectives (KD, DKD, DCKD,
//! DIST) on flex, f32, at the shapes of issue 2: [64,100], [256,100], [256,1000], [1024,1000].
//!
//! `cargo bench --bench logit`; medians go in docs/performance.md.

use std::hint::black_box;

use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_distill::logit::{DckdConfig, DistConfig};
use burn_distill::prelude::*;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

const SHAPES: [(usize, usize); 4] = [(64, 100), (256, 100), (256, 1000), (1024, 1000)];

fn bench(c: &mut Criterion) {
    let dev = Device::flex().autodiff();
    let kd = KdConfig::new().init().unwrap();
    let dkd = DkdConfig::new().with_warmup_epochs(0).init().unwrap();
    let dckd = DckdConfig::new().with_warmup_epochs(0).init().unwrap();
    let dist = DistConfig::new().init().unwrap();
    let objectives: [(&str, &dyn Loss); 4] =
        [("kd", &kd), ("dkd", &dkd), ("dckd", &dckd), ("dist", &dist)];
    for (name, loss) in objectives {
        let mut group = c.benchmark_group(format!("{name}/forward+backward"));
        for (n, classes) in SHAPES {
            let s = Tensor::<2>::random([n, classes], Distribution::Normal(0.0, 2.0), &dev);
            let t = Tensor::<2>::random([n, classes], Distribution::Normal(0.0, 2.0), &dev);
            let y = Tensor::<1, Int>::from_data(
                burn::tensor::TensorData::new(
                    (0..n as i64).map(|i| i % classes as i64).collect(),
                    [n],
                ),
                &dev,
            );
            group.bench_with_input(
                BenchmarkId::from_parameter(format!("{n}x{classes}")),
                &(),
                |b, _| {
                    b.iter(|| {
                        let s = s.clone().require_grad();
                        let input = DistillInput::new(s.clone(), t.clone()).targets(y.clone());
                        let grads = loss.forward(&input).unwrap().total.backward();
                        black_box(s.grad(&grads).unwrap().into_data());
                    })
                },
            );
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
