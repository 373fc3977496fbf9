//! The floor of any KD/DKD forward+backward on this CPU (issue 8): every student and teacher
//! logit must be exponentiated at least once, so the floor is exponentiating `2·N·C` floats.
//! Measured two ways, single-threaded, at the four logit shapes: `f32::exp` in a loop, and a
//! branch-free polynomial `exp` over chunks of 8 that LLVM vectorises (Cephes-style range
//! reduction, degree-6 polynomial, relative error ~2e-7 on the range KD sees).
//!
//! `cargo bench --bench floor`; the medians go in docs/performance.md.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

const SHAPES: [(usize, usize); 4] = [(64, 100), (256, 100), (256, 1000), (1024, 1000)];

/// `exp(x)` for 8 lanes at once, branch-free: `x = n·ln2 + r`, `|r| ≤ ln2/2`, `exp(r)` by a
/// degree-6 polynomial, `2ⁿ` through the exponent bits. `n` is rounded with the
/// `1.5·2²³` trick (a float add), so plain SSE2 vectorises it: no `roundps` needed.
#[inline(always)]
fn exp8(x: &[f32; 8], out: &mut [f32; 8]) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5·2²³
    for i in 0..8 {
        let v = x[i].clamp(-87.3, 88.7);
        let t = v * LOG2E + MAGIC;
        let n = t - MAGIC;
        let r = v - n * LN2_HI - n * LN2_LO;
        let p = 1.0
            + r * (1.0
                + r * (0.5
                    + r * (0.166_666_67
                        + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
        let ni = t.to_bits().wrapping_sub(MAGIC.to_bits());
        out[i] = p * f32::from_bits(ni.wrapping_add(127) << 23);
    }
}

fn poly_exp(src: &[f32], dst: &mut [f32]) {
    for (s, d) in src.chunks_exact(8).zip(dst.chunks_exact_mut(8)) {
        exp8(s.try_into().unwrap(), d.try_into().unwrap());
    }
    let tail = src.len() / 8 * 8;
    for (s, d) in src[tail..].iter().zip(&mut dst[tail..]) {
        *d = s.exp();
    }
}

fn bench(c: &mut Criterion) {
    // the polynomial is accurate where it will be used
    let probe: Vec<f32> = (0..4096).map(|i| -40.0 + i as f32 * 0.0123).collect();
    let mut got = vec![0.0; probe.len()];
    poly_exp(&probe, &mut got);
    let worst = probe
        .iter()
        .zip(&got)
        .map(|(x, y)| ((*y as f64 - (*x as f64).exp()) / (*x as f64).exp()).abs())
        .fold(0.0f64, f64::max);
    assert!(worst < 5e-7, "polynomial exp relative error {worst}");

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
        group.bench_with_input(BenchmarkId::new("poly8", &id), &(), |b, _| {
            b.iter(|| {
                poly_exp(&x, &mut y);
                black_box(&y);
            })
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
