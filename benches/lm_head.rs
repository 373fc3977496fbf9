//! The fused lm-head path (`token::FusedLinear`) against the unfused one (matmul to `[N, V]`
//! logits, then the loss) on flex, f32: forward + backward w.r.t. the student's hidden states,
//! lm-head weight and bias, teacher frozen, for forward KL and JSD(0.5), at N = 2,048 and
//! 8,192 tokens, H = 512, V = 32,000. Time: criterion medians. Memory: this binary's global
//! allocator counts live heap bytes; the peak above the inputs during one forward + backward is
//! printed for each path before the timings.
//!
//! `cargo bench --bench lm_head` (many minutes: one N = 8,192 step is ~10¹² flops);
//! `LM_HEAD_N=2048`, `LM_HEAD_LOSSES=forward_kl`, `LM_HEAD_THREADS=1,2` and `LM_HEAD_CHUNK=66`
//! narrow it; a criterion filter that matches nothing (`-- none`) prints the memory lines
//! alone. `benches/pytorch/lm_head.py` runs it beside PyTorch and Liger-Kernel; results go in
//! docs/performance.md.

use burn::tensor::{Device, Distribution, Tensor};
use burn_distill::prelude::*;
use burn_distill::token::{
    ForwardKlConfig, FusedLinearConfig, JsdConfig, LmHead, LmHeads, TeacherHead, TokenDivergence,
    TokenReduction,
};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

#[path = "../tests/common/counting.rs"]
mod counting;

use counting::{Counting, extra};

#[global_allocator]
static ALLOC: Counting = Counting;

const H: usize = 512;
const V: usize = 32_000;

/// Student hidden states, weight and bias (tracked), teacher hidden states and weight.
struct Inputs {
    h: Tensor<2>,
    w: Tensor<2>,
    b: Tensor<1>,
    ht: Tensor<2>,
    wt: Tensor<2>,
}

fn inputs(n: usize, dev: &Device) -> Inputs {
    let r =
        |shape: [usize; 2], s: f64| Tensor::<2>::random(shape, Distribution::Normal(0.0, s), dev);
    Inputs {
        h: r([n, H], 1.0),
        w: r([H, V], 0.05),
        b: Tensor::<1>::zeros([V], dev),
        ht: r([n, H], 1.0),
        wt: r([H, V], 0.05),
    }
}

fn divergence(name: &str) -> Box<dyn TokenDivergence> {
    let none = TokenReduction::None;
    match name {
        "forward_kl" => Box::new(ForwardKlConfig::new().with_reduction(none).init().unwrap()),
        _ => Box::new(JsdConfig::new().with_reduction(none).init().unwrap()),
    }
}

fn dense(name: &str) -> Box<dyn Loss> {
    match name {
        "forward_kl" => ForwardKlConfig::new().init().unwrap().boxed(),
        _ => JsdConfig::new().init().unwrap().boxed(),
    }
}

/// One fused forward + backward; the gradients are dropped.
fn fused(x: &Inputs, loss: &dyn Loss) {
    let (h, w, b) = (
        x.h.clone().require_grad(),
        x.w.clone().require_grad(),
        x.b.clone().require_grad(),
    );
    let input = DistillInput::features_only().with(LmHeads {
        student: LmHead::new(h, w, Some(b)),
        teacher: TeacherHead::Head(LmHead::new(x.ht.clone(), x.wt.clone(), None)),
    });
    drop(loss.forward(&input).unwrap().total.backward());
}

/// The unfused forward + backward: both logits materialised, then the loss.
fn unfused(x: &Inputs, loss: &dyn Loss) {
    let (h, w, b) = (
        x.h.clone().require_grad(),
        x.w.clone().require_grad(),
        x.b.clone().require_grad(),
    );
    let zs = h.matmul(w) + b.unsqueeze_dim(0);
    let zt = x.ht.clone().matmul(x.wt.clone());
    drop(
        loss.forward(&DistillInput::new(zs, zt))
            .unwrap()
            .total
            .backward(),
    );
}

/// A comma-separated list from the environment variable `var`, or `default`.
fn list<T: std::str::FromStr + Clone>(var: &str, default: &[T]) -> Vec<T> {
    match std::env::var(var) {
        Ok(v) => v.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => default.to_vec(),
    }
}

/// Tokens per chunk: `LM_HEAD_CHUNK=66`, or the objective's default.
fn chunk_size() -> Option<usize> {
    std::env::var("LM_HEAD_CHUNK")
        .ok()
        .and_then(|c| c.parse().ok())
}

/// `LM_HEAD_N` (token counts, default 2048,8192), `LM_HEAD_LOSSES` (default
/// forward_kl,jsd), `LM_HEAD_THREADS` (thread counts, each a rayon pool that flex's matmul,
/// its element-wise ops and the fused kernels share; default all cores).
fn bench(c: &mut Criterion) {
    let dev = Device::flex().autodiff();
    let cores = rayon::current_num_threads();
    for n in list("LM_HEAD_N", &[2048, 8192]) {
        let x = inputs(n, &dev);
        let logits_mb = (n * V * 4) as f64 / (1 << 20) as f64;
        for name in list::<String>("LM_HEAD_LOSSES", &["forward_kl".into(), "jsd".into()]) {
            let name = name.as_str();
            let chunked = FusedLinearConfig::new()
                .with_chunk_size(chunk_size())
                .init(divergence(name))
                .unwrap();
            let (d, f) = (dense(name), &chunked as &dyn Loss);
            let mem_u = extra(|| unfused(&x, d.as_ref())) as f64 / (1 << 20) as f64;
            let mem_f = extra(|| fused(&x, f)) as f64 / (1 << 20) as f64;
            println!(
                "memory N={n} {name}: unfused {mem_u:.0} MiB, fused {mem_f:.0} MiB ({:.1}% of unfused; one [N, V] logits tensor is {logits_mb:.0} MiB)",
                100.0 * mem_f / mem_u
            );
            for threads in list("LM_HEAD_THREADS", &[cores]) {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("a thread pool");
                let mut group =
                    c.benchmark_group(format!("lm-head N={n} H={H} V={V} threads={threads}"));
                group.sample_size(10);
                group.bench_function(BenchmarkId::new(name, "unfused"), |bch| {
                    bch.iter(|| pool.install(|| unfused(&x, d.as_ref())))
                });
                group.bench_function(BenchmarkId::new(name, "fused"), |bch| {
                    bch.iter(|| pool.install(|| fused(&x, f)))
                });
                group.finish();
            }
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(std::time::Duration::from_millis(100)).measurement_time(std::time::Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
