//! Forward + backward (w.r.t. the student's logits, teacher frozen) of the logit objectives on
//! flex, f32, at [64,100], [256,100], [256,1000], [1024,1000]:
//! KD, DKD and DCKD fused (on every core, and on one thread) and composed, KD as a naive
//! scalar single-pass loop, DIST composed. With `--features ndarray` / `wgpu`: KD and DKD
//! fused and composed on those backends too.
//!
//! Also the sparse-teacher top-k objective at vocabulary scale (`[1024, 32000]`, k = 64,
//! forward KL, with the teacher's missing mass at zero and as a tail bucket): the fused
//! gathered log-softmax against its composed twin (`log_softmax(z/T).gather`).
//!
//! `cargo bench --bench logit`; medians go in docs/performance.md.

use std::hint::black_box;

use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use burn_distill::logit::{DckdConfig, DistConfig};
use burn_distill::prelude::*;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main};

const SHAPES: [(usize, usize); 4] = [(64, 100), (256, 100), (256, 1000), (1024, 1000)];

/// KD's forward and backward as the obvious single pass per row with the standard library's
/// `exp`: the baseline issue 8 quotes (~11 ns per element here).
fn kd_loop(s: &[f32], t: &[f32], c: usize, temp: f32, grad: &mut [f32]) -> f32 {
    let n = s.len() / c;
    let mut total = 0.0;
    for r in 0..n {
        let (s, t, g) = (&s[r * c..][..c], &t[r * c..][..c], &mut grad[r * c..][..c]);
        let ms = s.iter().fold(f32::MIN, |m, &v| m.max(v));
        let mt = t.iter().fold(f32::MIN, |m, &v| m.max(v));
        let (mut ss, mut st) = (0.0, 0.0);
        for j in 0..c {
            ss += ((s[j] - ms) / temp).exp();
            st += ((t[j] - mt) / temp).exp();
        }
        let (ls, lt) = (ss.ln(), st.ln());
        for j in 0..c {
            let (lps, lpt) = ((s[j] - ms) / temp - ls, (t[j] - mt) / temp - lt);
            let (ps, pt) = (lps.exp(), lpt.exp());
            total += pt * (lpt - lps);
            g[j] = temp / n as f32 * (ps - pt);
        }
    }
    total * temp * temp / n as f32
}

/// Random student and teacher logits `[n, classes]` (σ = 2) and targets on `dev`.
fn batch(n: usize, classes: usize, dev: &Device) -> (Tensor<2>, Tensor<2>, Tensor<1, Int>) {
    let logits = || Tensor::<2>::random([n, classes], Distribution::Normal(0.0, 2.0), dev);
    let y = TensorData::new((0..n as i64).map(|i| i % classes as i64).collect(), [n]);
    (logits(), logits(), Tensor::from_data(y, dev))
}

/// Forward + backward (w.r.t. the student) of each objective on one batch; with `wait`, each
/// step also waits for that (lazy, asynchronous) device to finish.
fn bench_objectives(
    group: &mut BenchmarkGroup<WallTime>,
    objectives: &[(&str, Box<dyn Loss>)],
    (s, t, y): &(Tensor<2>, Tensor<2>, Tensor<1, Int>),
    wait: Option<&Device>,
) {
    for (name, loss) in objectives {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let s = s.clone().require_grad();
                let input = DistillInput::new(s.clone(), t.clone()).targets(y.clone());
                let grads = loss.forward(&input).unwrap().total.backward();
                black_box(s.grad(&grads).unwrap());
                if let Some(device) = wait {
                    device.sync().unwrap();
                }
            })
        });
    }
}

/// KD and DKD, fused and composed.
fn kd_and_dkd() -> Vec<(&'static str, Box<dyn Loss>)> {
    let (kd, dkd) = (KdConfig::new(), DkdConfig::new().with_warmup_epochs(0));
    vec![
        ("kd/fused", Box::new(kd.init().unwrap())),
        (
            "kd/composed",
            Box::new(kd.with_fused(false).init().unwrap()),
        ),
        ("dkd/fused", Box::new(dkd.init().unwrap())),
        (
            "dkd/composed",
            Box::new(dkd.with_fused(false).init().unwrap()),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let dev = Device::flex().autodiff();
    let dckd = DckdConfig::new().with_warmup_epochs(0);
    let mut objectives = kd_and_dkd();
    objectives.extend([
        (
            "dckd/fused",
            Box::new(dckd.init().unwrap()) as Box<dyn Loss>,
        ),
        (
            "dckd/composed",
            Box::new(dckd.clone().with_fused(false).init().unwrap()),
        ),
        ("dist/composed", Box::new(DistConfig::new().init().unwrap())),
    ]);
    for (n, classes) in SHAPES {
        let mut group = c.benchmark_group(format!("forward+backward {n}x{classes}"));
        let data = batch(n, classes, &dev);
        bench_objectives(&mut group, &objectives, &data, None);
        // the fused kernels on one thread (the rows above use every core)
        burn_distill::fused::set_threads(1);
        let one: Vec<(&str, Box<dyn Loss>)> = vec![
            (
                "kd/fused-1thread",
                Box::new(KdConfig::new().init().unwrap()),
            ),
            (
                "dkd/fused-1thread",
                Box::new(DkdConfig::new().with_warmup_epochs(0).init().unwrap()),
            ),
            ("dckd/fused-1thread", Box::new(dckd.init().unwrap())),
        ];
        bench_objectives(&mut group, &one, &data, None);
        burn_distill::fused::set_threads(0);
        let (sv, tv) = (
            data.0.into_data().try_to_vec::<f32>().unwrap(),
            data.1.into_data().try_to_vec::<f32>().unwrap(),
        );
        let mut g = vec![0.0; n * classes];
        group.bench_function(BenchmarkId::from_parameter("kd/loop"), |b| {
            b.iter(|| black_box(kd_loop(&sv, &tv, classes, 4.0, &mut g)))
        });
        group.finish();
    }
}

/// With `--features ndarray`: KD and DKD fused and composed on burn's ndarray backend, at the
/// two large shapes.
#[cfg(feature = "ndarray")]
#[allow(deprecated)] // burn 0.22 deprecates ndarray; the crate still supports it
fn ndarray(c: &mut Criterion) {
    let dev = Device::ndarray().autodiff();
    let objectives = kd_and_dkd();
    for (n, classes) in SHAPES[2..].iter().copied() {
        let mut group = c.benchmark_group(format!("ndarray forward+backward {n}x{classes}"));
        bench_objectives(&mut group, &objectives, &batch(n, classes, &dev), None);
        group.finish();
    }
}

#[cfg(not(feature = "ndarray"))]
fn ndarray(_: &mut Criterion) {}

/// With `--features wgpu`: KD and DKD fused (the CubeCL kernels) and composed (burn's fused
/// element-wise and reduction kernels) on wgpu, at the two large shapes, each step waiting for
/// the device. The adapter is Mesa's software Vulkan unless `BURN_DISTILL_WGPU=gpu`.
#[cfg(feature = "wgpu")]
fn cube(c: &mut Criterion) {
    use burn::tensor::DeviceKind;
    let kind = match std::env::var("BURN_DISTILL_WGPU").as_deref() {
        Ok("gpu") => DeviceKind::DiscreteGpu(0),
        _ => DeviceKind::Cpu,
    };
    let dev = Device::wgpu(kind).autodiff();
    for (n, classes) in SHAPES[2..].iter().copied() {
        let mut group = c.benchmark_group(format!("wgpu forward+backward {n}x{classes}"));
        bench_objectives(
            &mut group,
            &kd_and_dkd(),
            &batch(n, classes, &dev),
            Some(&dev),
        );
        group.finish();
    }
}

#[cfg(not(feature = "wgpu"))]
fn cube(_: &mut Criterion) {}

/// `TopK` at vocabulary scale, fused and composed (the student's gathered log-softmax).
fn top_k(c: &mut Criterion) {
    use burn_distill::token::{MissingMass, TopKConfig};
    let dev = Device::flex().autodiff();
    let (n, v, k) = (1024, 32_000, 64);
    let s = Tensor::<2>::random([n, v], Distribution::Normal(0.0, 2.0), &dev);
    // a teacher's top 64 of a random distribution: distinct ids, log-probabilities summing < 0
    let ids: Vec<i64> = (0..n * k)
        .map(|i| ((i % k) * 499 + (i / k) * 7) as i64 % v as i64)
        .collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [n, k]), &dev);
    let lp = Tensor::<2>::random([n, k], Distribution::Uniform(-9.0, -5.0), &dev);
    let mut group = c.benchmark_group(format!("top-k forward+backward {n}x{v} k={k}"));
    group.sample_size(10);
    for (missing, label) in [
        (MissingMass::Zero, "zero"),
        (MissingMass::SymmetricUniform, "tail bucket"),
    ] {
        for fused in [true, false] {
            let loss = TopKConfig::new()
                .with_missing(missing)
                .with_fused(fused)
                .init()
                .unwrap();
            let name = format!("{label}/{}", if fused { "fused" } else { "composed" });
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    let z = s.clone().require_grad();
                    let input =
                        DistillInput::student(z.clone()).sparse_teacher(ids.clone(), lp.clone());
                    let grads = loss.forward(&input).unwrap().total.backward();
                    black_box(z.grad(&grads).unwrap());
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = bench, ndarray, cube, top_k
}
criterion_main!(benches);
