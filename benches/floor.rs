//! The floor of any KD/DKD forward+backward on this CPU (issue 8): every student and teacher
//! logit must be exponentiated at least once, so the floor is exponentiating `2·N·C` floats.
//! Measured two ways, single-threaded, at the four logit shapes: `f32::exp` in a loop, and the
//! fused kernels' own vectorised `exp` ([`burn_distill::fused::exp_in_place`]: degree-6
//! polynomial, AVX2 + FMA when the CPU has them, relative error < 5e-7).
//!
//! `cargo bench --bench floor`; the medians go in docs/performance.md.

use std::hint::black_box;

use burn_distill::fused::exp_in_place;
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};

const SHAPES: [(usize, usize); 4] = [(64, 100), (256, 100), (256, 1000), (1024, 1000)];

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("floor/exp of 2·N·C floats");
    for (n, classes) in SHAPES {
        let len = 2 * n * classes;
        let x: Vec<f32> = (0..len)
            .map(|i| ((i * 7919) % 2000) as f32 * 0.005 - 5.0)
            .collect();
        let mut y = vec![0.0f32; len];
        let id = format!("{n}x{classes}");
        group.bench_with_input(BenchmarkId::new("f32::exp", &id), &(), |b, _| {
            b.iter(|| {
                for (s, d) in x.iter().zip(y.iter_mut()) {
                    *d = s.exp();
                }
                black_box(&y);
            })
        });
        group.bench_with_input(BenchmarkId::new("vectorised", &id), &(), |b, _| {
            b.iter_batched_ref(|| x.clone(), |y| exp_in_place(y), BatchSize::LargeInput)
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
