//! Every objective on every enabled backend: forward and backward of each objective (with its
//! learnable parts), the combinators and a MetaTeacher round, compared with flex in f64.
//!
//! Always: flex in f32. With `--features ndarray`: ndarray (f32 and f64). With
//! `--features wgpu`: wgpu on the adapter `BURN_DISTILL_WGPU` names (`cpu`, the default, for
//! Mesa's software Vulkan, which the test then checks it got; `gpu` for a discrete GPU). With
//! `--features cuda`: CUDA device 0 when `BURN_DISTILL_CUDA=1`. With `--features tch`:
//! libtorch's CPU device when `BURN_DISTILL_LIBTORCH=1` (otherwise skipped with a printed
//! reason). Half precision: the logit objectives in f16 and bf16 on every backend that supports
//! them.

mod common;

use burn::module::Param;
use burn::optim::SgdConfig;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use burn_distill::curriculum::CtkdConfig;
use burn_distill::golden::moved;
use burn_distill::logit::{
    DckdConfig, DistConfig, LogitMseConfig, MlkdConfig, ProbMseConfig, Standardized,
};
use burn_distill::meta::{Batch, MetaTeacherConfig, PilotRate};
use burn_distill::prelude::*;
use burn_distill::{ExampleInput, Feature, LossSum, example_input};
use common::{Net, close, configure_f64, noise, values};

/// The reference: flex (the default device here) in f64.
fn reference() -> Device {
    Device::flex().autodiff()
}

/// A backend under test: its device, the float dtype it runs in, and the tolerance for it.
struct Backend {
    name: String,
    device: Device,
    dtype: DType,
}

impl Backend {
    fn tolerance(&self) -> (f64, f64) {
        match self.dtype {
            DType::F64 => (1e-9, 1e-12),
            DType::F32 => (2e-3, 2e-4),
            DType::F16 => (3e-2, 3e-3),
            _ => (8e-2, 8e-3),
        }
    }
}

fn backends() -> Vec<Backend> {
    #[allow(unused_mut)] // pushed to under the backend features
    let mut v = vec![Backend {
        name: "flex f32".into(),
        device: Device::flex().autodiff(),
        dtype: DType::F32,
    }];
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)] // burn 0.22 deprecates ndarray; the crate still supports it
    for dtype in [DType::F32, DType::F64] {
        v.push(Backend {
            name: format!("ndarray {dtype:?}"),
            device: Device::ndarray().autodiff(),
            dtype,
        });
    }
    #[cfg(feature = "wgpu")]
    {
        use burn::tensor::DeviceKind;
        let want = std::env::var("BURN_DISTILL_WGPU").unwrap_or_else(|_| "cpu".into());
        let kind = if want == "gpu" {
            DeviceKind::DiscreteGpu(0)
        } else {
            DeviceKind::Cpu
        };
        let device = Device::wgpu(kind);
        let shown = format!("{device:?}");
        println!("wgpu adapter: {shown}");
        if want != "gpu" {
            assert!(
                shown.contains("Cpu"),
                "expected the CPU (software Vulkan) adapter, got {shown}"
            );
        }
        v.push(Backend {
            name: format!("wgpu {want} f32"),
            device: device.autodiff(),
            dtype: DType::F32,
        });
    }
    #[cfg(feature = "cuda")]
    if std::env::var("BURN_DISTILL_CUDA").as_deref() == Ok("1") {
        v.push(Backend {
            name: "cuda f32".into(),
            device: Device::cuda(0).autodiff(),
            dtype: DType::F32,
        });
    } else {
        println!("cuda: skipped (set BURN_DISTILL_CUDA=1 on a machine with a GPU)");
    }
    #[cfg(feature = "tch")]
    if std::env::var("BURN_DISTILL_LIBTORCH").as_deref() == Ok("1") {
        for (name, dtype) in [("libtorch f32", DType::F32), ("libtorch f64", DType::F64)] {
            #[allow(deprecated)] // burn-tch is deprecated in burn 0.22, still a supported backend
            let device = Device::libtorch().autodiff();
            v.push(Backend {
                name: name.into(),
                device,
                dtype,
            });
        }
    } else {
        println!(
            "libtorch: skipped (needs the libtorch of PyTorch 2.9.0; set BURN_DISTILL_LIBTORCH=1)"
        );
    }
    v
}

/// The same deterministic data on any device and dtype.
fn data<const D: usize>(shape: [usize; D], seed: u64, scale: f64) -> TensorData {
    TensorData::new(noise(seed, shape.iter().product(), scale), shape)
}

fn leaf<const D: usize>(
    shape: [usize; D],
    seed: u64,
    scale: f64,
    device: &Device,
    dtype: DType,
) -> Tensor<D> {
    Tensor::<D>::from_data(data(shape, seed, scale), (device, dtype)).require_grad()
}

fn ints(v: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

/// A loss value and the gradients of the leaves, as f64.
type Evaluated = (f64, Vec<Vec<f64>>);

/// Loss value and the gradient of every leaf of the crate's example input, as f64.
fn evaluate(loss: &dyn Loss, ex: &ExampleInput) -> Evaluated {
    let out = loss
        .forward(&ex.input)
        .unwrap_or_else(|e| panic!("{}: {e}", loss.name()));
    let value = out.value();
    let grads = out.total.backward();
    let gradients = ex
        .leaves
        .iter()
        .map(|(_, leaf)| match leaf {
            Feature::Map(t) => t.grad(&grads).map(values),
            Feature::Embedding(t) => t.grad(&grads).map(values),
        })
        .map(Option::unwrap_or_default)
        .collect();
    (value, gradients)
}

/// Every catalogued objective with an example (built on `device`), then the composed
/// versions of the fused objectives and the combinators.
fn stateless(device: &Device) -> Vec<Box<dyn Loss>> {
    let mut out: Vec<Box<dyn Loss>> = burn_distill::objectives()
        .into_iter()
        .filter_map(|e| e.example)
        .map(|build| build(device).unwrap())
        .collect();
    assert!(out.len() >= 20, "the catalog lost its examples");
    out.extend(logit_objectives().into_iter().skip(4));
    out.push(
        (CrossEntropyConfig::new().init().unwrap().weighted(0.3)
            + kd().weighted(0.7)
            + dkd().named("dkd2").weighted_by(Schedule::Linear {
                start: 0.0,
                end: 1.0,
                epochs: 5,
            }))
        .boxed(),
    );
    out.push((LossSum::new() + kd() + kd()).boxed());
    out
}

fn kd() -> burn_distill::logit::Kd {
    KdConfig::new().with_temperature(2.0).init().unwrap()
}

fn dkd() -> burn_distill::logit::Dkd {
    DkdConfig::new().with_warmup_epochs(0).init().unwrap()
}

/// The logit objectives, fused where the backend has it, then composed.
fn logit_objectives() -> Vec<Box<dyn Loss>> {
    vec![
        CrossEntropyConfig::new().init().unwrap().boxed(),
        kd().boxed(),
        dkd().boxed(),
        DckdConfig::new()
            .with_warmup_epochs(0)
            .init()
            .unwrap()
            .boxed(),
        KdConfig::new()
            .with_temperature(2.0)
            .with_fused(false)
            .init()
            .unwrap()
            .boxed(),
        DkdConfig::new()
            .with_warmup_epochs(0)
            .with_fused(false)
            .init()
            .unwrap()
            .boxed(),
        DckdConfig::new()
            .with_warmup_epochs(0)
            .with_fused(false)
            .init()
            .unwrap()
            .boxed(),
        DistConfig::new().init().unwrap().boxed(),
        LogitMseConfig::new().init().unwrap().boxed(),
        MlkdConfig::new()
            .with_ce_weight(1.0)
            .init()
            .unwrap()
            .boxed(),
        Standardized::new(kd()).boxed(),
        ProbMseConfig::new()
            .with_temperature(2.0)
            .init()
            .unwrap()
            .boxed(),
    ]
}

/// Objectives with parameters, built on `device` in `dtype` from one set of weights drawn on
/// the reference device, so every backend gets the same weights: every descriptor's learnable
/// example, and CTKD over KD (its inner objective is another family's).
fn with_parameters(device: &Device, dtype: DType) -> Vec<Box<dyn Loss>> {
    // the draws come from the reference device's seeded generator: one caller at a time, or
    // two tests running side by side interleave them and get different weights
    static DRAWS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _draws = DRAWS.lock().unwrap_or_else(|p| p.into_inner());
    let r = reference();
    let mut out: Vec<Box<dyn Loss>> = Vec::new();
    for (i, learnable) in burn_distill::objectives()
        .iter()
        .filter_map(|d| d.learnable)
        .enumerate()
    {
        r.seed(11 + i as u64);
        out.push(learnable(&r, device, dtype).unwrap());
    }
    r.seed(10);
    let ctkd = CtkdConfig::new()
        .with_lambda_start(-0.5)
        .init(KdConfig::new().init().unwrap(), &r)
        .unwrap();
    out.push(moved(ctkd, device, dtype));
    out
}

fn compare(
    backend: &Backend,
    name: &str,
    got: (f64, Vec<Vec<f64>>),
    want: &(f64, Vec<Vec<f64>>),
) -> Result<(), String> {
    let (rel, abs) = backend.tolerance();
    let scale = want.0.abs().max(1.0);
    close(
        &format!("{} {name}: loss", backend.name),
        &[got.0],
        &[want.0],
        rel,
        abs * scale,
    )?;
    for (k, (g, w)) in got.1.iter().zip(&want.1).enumerate() {
        if g.len() != w.len() {
            return Err(format!(
                "{} {name}: gradient {k} present on one side only",
                backend.name
            ));
        }
        let gscale = w.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-6);
        close(
            &format!("{} {name}: gradient {k}", backend.name),
            g,
            w,
            rel,
            abs * gscale,
        )?;
    }
    Ok(())
}

#[test]
fn every_objective_matches_flex_f64_on_every_backend() {
    configure_f64();
    let r = reference();
    let reference_values: Vec<(String, Evaluated)> = stateless(&r)
        .into_iter()
        .chain(with_parameters(&r, DType::F64))
        .map(|loss| {
            (
                loss.name().to_string(),
                evaluate(loss.as_ref(), &example_input(&r, DType::F64)),
            )
        })
        .collect();
    let mut failures = Vec::new();
    for backend in backends() {
        let losses: Vec<Box<dyn Loss>> = stateless(&backend.device)
            .into_iter()
            .chain(with_parameters(&backend.device, backend.dtype))
            .collect();
        assert_eq!(losses.len(), reference_values.len());
        for (loss, (name, want)) in losses.iter().zip(&reference_values) {
            let got = evaluate(
                loss.as_ref(),
                &example_input(&backend.device, backend.dtype),
            );
            if let Err(e) = compare(&backend, name, got, want) {
                failures.push(e);
            }
        }
        println!(
            "{}: {} objectives checked (fused KD/DKD/DCKD kernels: {})",
            backend.name,
            losses.len(),
            match burn_distill::fused::supported(&backend.device) {
                true => "yes",
                false => "no, composed",
            }
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A MetaTeacher round's meta-gradient (first-order, finite difference) on every backend.
#[test]
fn meta_teacher_matches_flex_f64_on_every_backend() {
    configure_f64();
    let net = |widths: &[usize], seed: u64, device: &Device, dtype: DType| -> Net {
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| burn::nn::Linear {
                weight: Param::from_tensor(leaf([w[0], w[1]], seed + i as u64, 0.8, device, dtype)),
                bias: Some(Param::from_tensor(leaf(
                    [w[1]],
                    seed + 10 + i as u64,
                    0.3,
                    device,
                    dtype,
                ))),
            })
            .collect();
        Net { layers }
    };
    let run = |device: &Device, dtype: DType| -> Vec<f64> {
        let kd = KdConfig::new().with_temperature(2.0).init().unwrap();
        let meta = MetaTeacherConfig::new()
            .with_pilot_rate(PilotRate::Fixed(0.5))
            .init(
                net(&[3, 5, 4], 20, device, dtype),
                SgdConfig::new().init(),
                CrossEntropyConfig::new().init().unwrap().weighted(0.5) + kd.weighted(0.5),
            )
            .unwrap();
        let student = net(&[3, 4], 30, device, dtype);
        let batch = Batch::new(
            leaf([6, 3], 40, 1.5, device, dtype).detach(),
            ints(vec![0, 1, 2, 3, 0, 1], device),
        );
        let quiz = Batch::new(
            leaf([5, 3], 41, 1.5, device, dtype).detach(),
            ints(vec![3, 2, 1, 0, 0], device),
        );
        let g = meta
            .meta_gradient(&student, &batch, &quiz, Progress::epoch(0, 1), 0.0)
            .unwrap();
        meta.teacher()
            .layers
            .iter()
            .flat_map(|l| values(g.teacher.get::<2>(l.weight.id).unwrap()))
            .collect()
    };
    let want = run(&reference(), DType::F64);
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for backend in backends() {
        let got = run(&backend.device, backend.dtype);
        // the finite difference runs in the backend's dtype: f32 keeps about 3 digits
        let (rel, abs) = if backend.dtype == DType::F64 {
            (1e-6, 1e-9)
        } else {
            (3e-2, 3e-3)
        };
        close(
            &format!("{} meta-gradient", backend.name),
            &got,
            &want,
            rel,
            abs * scale,
        )
        .unwrap();
    }
}

/// The logit objectives in f16 and bf16: finite, and within half-precision tolerance of f64,
/// on every backend that supports the dtype; finite at logits of ±1e4 (no ±1000 masking).
#[test]
fn logit_objectives_in_half_precision() {
    configure_f64();
    let logit = logit_objectives();
    let r = reference();
    let want: Vec<_> = logit
        .iter()
        .map(|l| evaluate(l.as_ref(), &example_input(&r, DType::F64)))
        .collect();
    let mut devices: Vec<(String, Device)> = vec![("flex".into(), Device::flex().autodiff())];
    for b in backends()
        .into_iter()
        .filter(|b| b.dtype == DType::F32 && !b.name.starts_with("flex"))
    {
        let base = b
            .name
            .rsplit_once(' ')
            .map_or(b.name.as_str(), |(n, _)| n)
            .to_string();
        devices.push((base, b.device));
    }
    let mut checked = 0;
    for (name, device) in devices {
        for dtype in [DType::F16, DType::BF16] {
            if !device.supports_dtype(dtype) {
                println!("{name} {dtype:?}: not supported by the backend, skipped");
                continue;
            }
            let backend = Backend {
                name: format!("{name} {dtype:?}"),
                device: device.clone(),
                dtype,
            };
            for (loss, want) in logit.iter().zip(&want) {
                let got = evaluate(loss.as_ref(), &example_input(&device, dtype));
                compare(&backend, loss.name(), got, want).unwrap();
                // extreme logits stay finite
                let big = |seed| {
                    Tensor::<2>::from_data(data([6, 5], seed, 1e4), (&device, dtype)).require_grad()
                };
                let (s, t) = (big(8), big(9));
                let input = DistillInput::new(s.clone(), t.clone())
                    .targets(ints(vec![0, 1, 2, 3, 4, 0], &device))
                    .guide(big(10).detach())
                    .progress(Progress::epoch(2, 10))
                    .attach_teacher();
                let out = loss.forward(&input).unwrap();
                assert!(
                    out.value().is_finite(),
                    "{name} {dtype:?} {}: {} at ±1e4",
                    loss.name(),
                    out.value()
                );
                let g = values(s.grad(&out.total.backward()).unwrap());
                assert!(
                    g.iter().all(|v| v.is_finite()),
                    "{name} {dtype:?} {}: gradient at ±1e4",
                    loss.name()
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no backend supports half precision");
}

/// Learnable objectives read taps (and logits) in their parameters' float type: narrower
/// inputs are widened exactly (f32 taps into f64 parameters give the f64 value up to the taps'
/// f32 rounding; f16 into f32 parameters a finite loss), wider ones are a `DtypeMismatch`
/// naming both types — never burn's "dtype mismatch" panic.
#[test]
fn learnable_objectives_fit_their_parameters_dtype() {
    configure_f64();
    let dev = Device::flex().autodiff();
    let all_f64 = with_parameters(&dev, DType::F64);
    let wide = with_parameters(&dev, DType::F64);
    let narrow = with_parameters(&dev, DType::F32);
    assert!(all_f64.len() >= 14);
    for ((reference, loss), small) in all_f64.iter().zip(&wide).zip(&narrow) {
        // the same numbers rounded to f32, widened: the f64 value up to that rounding
        let want = reference
            .forward(&example_input(&dev, DType::F64).input)
            .unwrap()
            .value();
        let got = loss
            .forward(&example_input(&dev, DType::F32).input)
            .unwrap()
            .value();
        assert!(
            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{}: {got} vs {want}",
            loss.name()
        );

        // wider inputs: refused by name, unless the objective converts them itself (CTKD reads
        // its θ as a number)
        match small.forward(&example_input(&dev, DType::F64).input) {
            Err(DistillError::DtypeMismatch {
                expected, actual, ..
            }) => assert_eq!((expected.as_str(), actual.as_str()), ("F32", "F64")),
            Ok(out) => assert!(
                (out.value() - want).abs() <= 1e-4 * want.abs().max(1.0),
                "{}: {} vs {want}",
                small.name(),
                out.value()
            ),
            Err(e) => panic!("{}: {e}", small.name()),
        }
        let half = small
            .forward(&example_input(&dev, DType::F16).input)
            .unwrap()
            .value();
        assert!(half.is_finite(), "{}: {half}", small.name());
    }
}

/// The fused objectives (KD, DKD, DCKD under each joint rule, the token forward KL, JSD at
/// β = 0.3, 0 and 1) against their composed twins, on every backend with a kernel for them —
/// the CPU kernels, and with `--features wgpu` or `cuda` the CubeCL ones — in that backend's
/// dtype: values, student and teacher gradients, with the teacher tracked and frozen, at
/// widths below and above a cube's 256 units, a single row, targets on and off the student's
/// arg-max, and logits of ±1e4. The fused path is also deterministic: a second run gives the
/// same bits.
#[test]
fn fused_kernels_equal_the_composed_ops_on_every_backend() {
    configure_f64();
    // every descriptor's fused-kernel instances: (name, largest weight on a divergence times
    // T², objective), with the kernel or with the composed ops
    let twins = |fused: bool| -> Vec<(String, f64, Box<dyn Loss>)> {
        burn_distill::objectives()
            .iter()
            .filter_map(|d| d.twins)
            .flat_map(|twins| twins(fused).unwrap())
            .collect()
    };
    // (rows, classes, logit scale); the first has more rows than a grid dimension of 65,535
    // cubes holds on some GPUs (checked for KD alone: the others launch the same way)
    let shapes = [
        (66_000, 3, 2.0),
        (1, 3, 3.0),
        (7, 37, 5.0),
        (5, 1000, 4.0),
        (70, 300, 2.0),
        (4, 300, 1e4),
    ];
    let mut failures = Vec::new();
    let mut checked = 0;
    for backend in backends() {
        if !burn_distill::fused::supported(&backend.device) {
            println!("{}: no fused kernels, skipped", backend.name);
            continue;
        }
        let (device, dtype) = (&backend.device, backend.dtype);
        for (seed, &(n, c, scale)) in shapes.iter().enumerate() {
            let seed = 100 + 3 * seed as u64;
            let mut s = noise(seed, n * c, scale);
            let t = noise(seed + 1, n * c, scale);
            // targets: every other row on the student's arg-max (DCKD's "correct" branch)
            let y: Vec<i64> = (0..n).map(|i| ((7 * i + 1) % c) as i64).collect();
            for (i, &yi) in y.iter().enumerate().step_by(2) {
                let row = &mut s[i * c..(i + 1) * c];
                let top = row.iter().cloned().fold(f64::MIN, f64::max);
                row[yi as usize] = top + scale.min(10.0) * 0.1;
            }
            // the teacher's top 4 tokens a row and their log-probabilities (for `TopK`)
            let k = c.min(4);
            let (mut ids, mut lps) = (Vec::new(), Vec::new());
            for row in t.chunks(c) {
                let top = row.iter().cloned().fold(f64::MIN, f64::max);
                let lse = top + row.iter().map(|v| (v - top).exp()).sum::<f64>().ln();
                let mut order: Vec<usize> = (0..c).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                ids.extend(order[..k].iter().map(|&j| j as i64));
                lps.extend(order[..k].iter().map(|&j| row[j] - lse));
            }
            let top_ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [n, k]), device);
            let top_log_probs =
                Tensor::<2>::from_data(TensorData::new(lps, [n, k]), (device, dtype));
            for tracked in [true, false] {
                let run = |loss: &dyn Loss| {
                    let tensor = |v: &[f64]| {
                        Tensor::<2>::from_data(TensorData::new(v.to_vec(), [n, c]), (device, dtype))
                            .require_grad()
                    };
                    let (st, tt) = (tensor(&s), tensor(&t));
                    let input = DistillInput::new(st.clone(), tt.clone())
                        .targets(ints(y.clone(), device))
                        .sparse_teacher(top_ids.clone(), top_log_probs.clone());
                    let input = match tracked {
                        true => input.attach_teacher(),
                        false => input,
                    };
                    let out = loss.forward(&input).unwrap();
                    let value = values(out.total.clone());
                    let grads = out.total.backward();
                    let gs = values(st.grad(&grads).unwrap());
                    let gt = tt.grad(&grads).map(values).unwrap_or_default();
                    (value, gs, gt)
                };
                let some = if n < 1000 { usize::MAX } else { 1 };
                for ((name, weight, fused), (_, _, composed)) in
                    twins(true).iter().zip(twins(false)).take(some)
                {
                    let what = format!(
                        "{} {name} [{n}, {c}] ×{scale} tracked={tracked}",
                        backend.name
                    );
                    let (got, want) = (run(fused.as_ref()), run(composed.as_ref()));
                    let again = run(fused.as_ref());
                    if got != again {
                        failures.push(format!("{what}: a second run differs"));
                    }
                    // both sides round in `dtype`; errors grow with the softened logits
                    let (rel, abs) = match dtype {
                        DType::F64 => (1e-10, 1e-12),
                        _ => (2e-4, 2e-6),
                    };
                    let abs = abs * scale.max(1.0) * weight;
                    let checks = [
                        ("loss", &got.0, &want.0),
                        ("student gradient", &got.1, &want.1),
                        ("teacher gradient", &got.2, &want.2),
                    ];
                    for (part, g, w) in checks {
                        if scale > 1e3 && g.iter().any(|v| !v.is_finite()) {
                            failures.push(format!("{what}: {part} not finite"));
                        }
                        if let Err(e) = close(&format!("{what}: {part}"), g, w, rel, abs) {
                            failures.push(e);
                        }
                    }
                    checked += 1;
                }
            }
        }
        println!("{}: fused == composed checked", backend.name);
    }
    assert!(checked > 0);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// On every backend with fused kernels, a non-finite logit makes its row's loss and gradient
/// NaN, as the composed ops do (the CPU kernels test it explicitly; the CubeCL ones let it flow
/// through their sums).
#[test]
fn fused_kernels_propagate_non_finite_logits() {
    use burn_distill::Reduction;
    for backend in backends() {
        if !burn_distill::fused::supported(&backend.device) {
            continue;
        }
        let (device, dtype) = (&backend.device, backend.dtype);
        for bad in [f64::NAN, f64::INFINITY] {
            let tensor = |v: Vec<f64>| {
                Tensor::<2>::from_data(TensorData::new(v, [2, 3]), (device, dtype)).require_grad()
            };
            let s = tensor(vec![1.0, bad, 0.5, 0.0, -1.0, 3.0]);
            let t = tensor(vec![0.5, 2.5, 0.0, 1.0, -2.0, 2.0]);
            let losses: Vec<Box<dyn Loss>> = vec![
                KdConfig::new()
                    .with_reduction(Reduction::None)
                    .init()
                    .unwrap()
                    .boxed(),
                DkdConfig::new()
                    .with_warmup_epochs(0)
                    .init()
                    .unwrap()
                    .boxed(),
            ];
            for loss in losses {
                let input =
                    DistillInput::new(s.clone(), t.clone()).targets(ints(vec![0, 1], device));
                let out = loss.forward(&input).unwrap();
                let what = format!("{} {} at {bad}", backend.name, loss.name());
                assert!(
                    values(out.total.clone()).iter().any(|v| v.is_nan()),
                    "{what}: the loss"
                );
                let g = values(s.grad(&out.total.sum().backward()).unwrap());
                assert!(g[..3].iter().all(|v| v.is_nan()), "{what}: {g:?}");
            }
        }
    }
}
