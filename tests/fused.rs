//! The fused KD / DKD / DCKD kernels against the composed tensor-op versions they replace:
//! loss, student gradient and teacher gradient, across shapes, temperatures, targets, joint
//! rules and dtypes (f32 and f64), with proptest-generated inputs.

mod common;

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use burn_distill::fused;
use burn_distill::logit::{Dckd, DckdConfig, DkdConfig, JointTarget, KdConfig};
use burn_distill::{DistillInput, Loss, LossExt};
use common::{Batch, batches, close, device, ints, noise, tensor, values};
use proptest::prelude::*;

/// Batches of 1–5 rows, 3–39 classes, logits in ±(0.1 to 6), temperatures in [0.5, 8).
fn batch() -> impl Strategy<Value = Batch> {
    batches(1..6, 3..40, 0.1f64..6.0, 0.5..8.0)
}

/// Loss, student gradient and teacher gradient of `loss` (teacher attached).
fn run(loss: &dyn Loss, b: &Batch, dtype: DType) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let dev = device();
    let leaf = |v: &[f64]| {
        Tensor::<2>::from_data(TensorData::new(v.to_vec(), [b.n, b.c]), (&dev, dtype))
            .require_grad()
    };
    let (s, t) = (leaf(&b.s), leaf(&b.t));
    let y = Tensor::<1, Int>::from_data(TensorData::new(b.y.clone(), [b.n]), &dev);
    let input = DistillInput::new(s.clone(), t.clone())
        .targets(y)
        .attach_teacher();
    let out = loss.forward(&input).unwrap();
    let total = values(out.total.clone());
    let grads = out.total.backward();
    (
        total,
        values(s.grad(&grads).unwrap()),
        values(t.grad(&grads).unwrap()),
    )
}

/// Checks the fused version of one objective at `dtype` against the composed one in f64 (the
/// reference is always f64: in f32 the composed version's own rounding, not the fused one's,
/// dominates for large logits).
///
/// `weight` is the objective's largest factor on a KL divergence (its `α`, `β`): errors are
/// made in KL units, then multiplied by it and by `T²`.
fn agree(
    fused: &dyn Loss,
    composed: &dyn Loss,
    b: &Batch,
    dtype: DType,
    weight: f64,
) -> Result<(), String> {
    let (rel, abs) = match dtype {
        DType::F64 => (1e-10, 1e-12),
        _ => (2e-4, 2e-6),
    };
    // rounding errors grow with the softened logits' magnitude (a logit of 1e4 in f32 has an
    // ulp of 1e-3 itself)
    let size =
        b.s.iter()
            .chain(&b.t)
            .fold(1.0f64, |m, v| m.max(v.abs() / b.temp));
    let abs = abs * size * weight.max(1.0) * b.temp * b.temp;
    let (lf, sf, tf) = run(fused, b, dtype);
    let (lc, sc, tc) = run(composed, b, DType::F64);
    close("loss", &lf, &lc, rel, abs)?;
    close("student gradient", &sf, &sc, rel, abs)?;
    close("teacher gradient", &tf, &tc, rel, abs)
}

/// DCKD fused and composed, without warm-up.
fn dckd_versions(temp: f64, joint: JointTarget, mix: f64) -> (Dckd, Dckd) {
    let joint = match joint {
        JointTarget::Mix(_) => JointTarget::Mix(mix),
        other => other,
    };
    let cfg = DckdConfig::new()
        .with_temperature(temp)
        .with_joint(joint)
        .with_warmup_epochs(0);
    (cfg.init().unwrap(), cfg.with_fused(false).init().unwrap())
}

fn dtypes() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F64)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn kd_fused_equals_composed(b in batch(), dtype in dtypes()) {
        let cfg = KdConfig::new().with_temperature(b.temp);
        let (f, c) = (cfg.init().unwrap(), cfg.clone().with_fused(false).init().unwrap());
        agree(&f, &c, &b, dtype, 1.0).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn dkd_fused_equals_composed(b in batch(), dtype in dtypes(), alpha in 0.0f64..2.0, beta in 0.0f64..9.0) {
        let cfg = DkdConfig::new()
            .with_temperature(b.temp)
            .with_alpha(alpha)
            .with_beta(beta)
            .with_warmup_epochs(0);
        let (f, c) = (cfg.init().unwrap(), cfg.clone().with_fused(false).init().unwrap());
        agree(&f, &c, &b, dtype, alpha.max(beta)).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn dckd_fused_equals_composed(
        b in batch(),
        dtype in dtypes(),
        joint in prop_oneof![Just(JointTarget::Max), Just(JointTarget::Teacher), Just(JointTarget::Mix(0.5))],
        mix in 0.0f64..=1.0,
    ) {
        let (f, c) = dckd_versions(b.temp, joint, mix);
        agree(&f, &c, &b, dtype, 8.0).map_err(TestCaseError::fail)?;
    }
}

/// Fused DKD/DCKD terms are the composed terms' values (for logging) and add up to the total;
/// only the total is differentiable (`fused: false` gives differentiable terms).
#[test]
fn dkd_terms_are_the_composed_values() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(24));
    runner
        .run(&(batch(), 0usize..3), |(b, joint)| {
            let joint = [
                JointTarget::Teacher,
                JointTarget::Max,
                JointTarget::Mix(0.5),
            ][joint];
            let (f, c) = dckd_versions(b.temp, joint, 0.5);
            let (s, t, y) = b.leaves(DType::F64);
            let input = DistillInput::new(s.clone(), t).targets(y);
            let (of, oc) = (f.forward(&input).unwrap(), c.forward(&input).unwrap());
            let abs = 1e-12 * 64.0 * b.temp * b.temp;
            let (vf, vc) = (of.values(), oc.values());
            for ((nf, xf), (nc, xc)) in vf.iter().zip(&vc) {
                prop_assert_eq!(nf, nc);
                close(nf, &[*xf], &[*xc], 1e-10, abs).map_err(TestCaseError::fail)?;
            }
            close("sum", &[vf[0].1 + vf[1].1], &[of.value()], 1e-12, abs)
                .map_err(TestCaseError::fail)?;
            prop_assert!(of.total.is_tracked() && !of.term("dckd/nckd").unwrap().is_tracked());
            Ok(())
        })
        .unwrap();
}

/// Students that are right (so DCKD's joint rules act), with ties and huge logits.
#[test]
fn dckd_fused_equals_composed_on_correct_students_and_ties() {
    let b = Batch {
        n: 4,
        c: 4,
        s: vec![
            5.0, 1.0, 0.0, -1.0, // right, confident
            2.0, 2.0, 0.0, 1.0, // tie between target and another class
            1e4, -1e4, 0.0, 3.0, // right, huge
            0.0, 0.0, 0.0, 0.0, // all equal
        ],
        t: vec![
            1.0, 0.5, 0.0, 0.2, 3.0, 1.0, 0.0, 1.0, -1e4, 1e4, 0.0, 3.0, 0.1, 0.2, 0.3, 0.4,
        ],
        y: vec![0, 1, 0, 2],
        temp: 2.0,
    };
    for joint in [
        JointTarget::Max,
        JointTarget::Teacher,
        JointTarget::Mix(0.5),
    ] {
        let (f, c) = dckd_versions(b.temp, joint, 0.5);
        for dtype in [DType::F32, DType::F64] {
            agree(&f, &c, &b, dtype, 8.0).unwrap_or_else(|e| panic!("{joint:?} {dtype:?}: {e}"));
        }
    }
}

/// A frozen teacher: no teacher planes, the same student gradient; an untracked forward.
#[test]
fn frozen_teacher_and_inference() {
    let dev = device();
    let s = Tensor::<2>::from_floats([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], &dev).require_grad();
    let t = Tensor::<2>::from_floats([[0.5, 2.5, 0.0], [1.0, -2.0, 2.0]], &dev);
    let y = Tensor::<1, Int>::from_ints([1, 2], &dev);
    for loss in [
        Box::new(KdConfig::new().init().unwrap()) as Box<dyn Loss>,
        Box::new(DkdConfig::new().with_warmup_epochs(0).init().unwrap()),
    ] {
        let input = DistillInput::new(s.clone(), t.clone()).targets(y.clone());
        let grads = loss.forward(&input).unwrap().total.backward();
        assert!(t.grad(&grads).is_none());
        let g = values(s.grad(&grads).unwrap());
        // the student gradient of a KL sums to zero over each row
        assert!(g[..3].iter().sum::<f64>().abs() < 1e-6 && g[3..].iter().sum::<f64>().abs() < 1e-6);
        // no autodiff at all
        let plain =
            DistillInput::new(s.clone().inner(), t.clone().inner()).targets(y.clone().inner());
        let a = values(loss.forward(&plain).unwrap().total);
        let b = values(loss.forward(&input).unwrap().total);
        close("untracked", &a, &b, 1e-6, 1e-7).unwrap();
    }
}

/// A non-finite logit makes its row's loss and gradients NaN, as the composed ops do; the
/// other rows are untouched.
#[test]
fn non_finite_rows_give_nan() {
    let dev = device();
    let y = Tensor::<1, Int>::from_ints([0, 1], &dev);
    for bad in [f64::NAN, f64::INFINITY] {
        let s = Tensor::<2>::from_floats([[1.0, bad, 0.5], [0.0, -1.0, 3.0]], &dev).require_grad();
        let t = Tensor::<2>::from_floats([[0.5, 2.5, 0.0], [1.0, -2.0, 2.0]], &dev);
        for loss in [
            Box::new(
                KdConfig::new()
                    .with_reduction(burn_distill::Reduction::None)
                    .init()
                    .unwrap(),
            ) as Box<dyn Loss>,
            Box::new(DkdConfig::new().with_warmup_epochs(0).init().unwrap()),
        ] {
            let input = DistillInput::new(s.clone(), t.clone()).targets(y.clone());
            let out = loss.forward(&input).unwrap();
            assert!(
                values(out.total.clone()).iter().any(|v| v.is_nan()),
                "{bad}: the loss"
            );
            let g = values(s.grad(&out.total.sum().backward()).unwrap());
            assert!(g[..3].iter().all(|v| v.is_nan()), "{bad}: {g:?}");
        }
    }
}

/// The devices the fused kernels serve.
#[test]
fn supported_devices() {
    assert!(fused::supported(&Device::flex()));
    assert!(fused::supported(&Device::flex().autodiff()));
}

/// The fused kernels split their rows over threads: losses and gradients are bit-identical
/// for every thread count (each row is computed by one thread, in the same order).
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let (n, c) = (37, 129);
    let data = |seed: u64| noise(seed, n * c, 4.0);
    let (sv, tv) = (data(3), data(5));
    let y: Vec<i64> = (0..n as i64).map(|i| (i * 7) % c as i64).collect();
    let run = |threads: usize, dtype: DType| -> Vec<Vec<f64>> {
        burn_distill::fused::set_threads(threads);
        let losses: Vec<Box<dyn Loss>> = vec![
            KdConfig::new().init().unwrap().boxed(),
            DkdConfig::new()
                .with_warmup_epochs(0)
                .init()
                .unwrap()
                .boxed(),
            DckdConfig::new()
                .with_warmup_epochs(0)
                .init()
                .unwrap()
                .boxed(),
        ];
        let mut out = Vec::new();
        for loss in losses {
            let s = tensor(sv.clone(), [n, c], dtype).require_grad();
            let t = tensor(tv.clone(), [n, c], dtype).require_grad();
            let input = DistillInput::new(s.clone(), t.clone())
                .targets(ints(y.clone()))
                .attach_teacher();
            let o = loss.forward(&input).unwrap();
            out.push(vec![o.value()]);
            let grads = o.total.backward();
            out.push(values(s.grad(&grads).unwrap()));
            out.push(values(t.grad(&grads).unwrap()));
        }
        out
    };
    for dtype in [DType::F32, DType::F64] {
        let one = run(1, dtype);
        for threads in [2, 3, 8, 0] {
            let got = run(threads, dtype);
            assert!(
                got == one,
                "{threads} threads ({dtype:?}) differ from one thread"
            );
        }
    }
    burn_distill::fused::set_threads(0);
}
