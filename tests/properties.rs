//! Finite-difference gradient checks in f64 over proptest-generated inputs, and the invariants
//! the math promises.

mod common;

use burn::tensor::{DType, Tensor};
use burn_distill::curriculum::{CtkdConfig, Difficulty, PacedConfig, TopKMaskConfig};
use burn_distill::logit::{
    DckdConfig, DistConfig, JointTarget, LogitMseConfig, MlkdConfig, ProbMseConfig, Standardized,
    at_most_median, class_correlation, dkd_per_sample, kd_per_sample, mlkd_instance,
};
use burn_distill::math::{Decoupled, target_mask};
use burn_distill::prelude::*;
use common::Batch;
use common::*;
use proptest::prelude::*;

/// Batches of 1–4 rows, 3–7 classes, logits in ±4, temperatures in [0.5, 8).
fn batch() -> impl Strategy<Value = Batch> {
    batches(1..5, 3..8, Just(4.0), 0.5..8.0)
}

impl Batch {
    fn input(&self, s: Vec<f64>, t: Vec<f64>) -> DistillInput {
        DistillInput::new(f64t(s, [self.n, self.c]), f64t(t, [self.n, self.c]))
            .targets(ints(self.y.clone()))
            .progress(Progress::epoch(3, 10))
    }
}

/// Whether every row and column of the `[n, c]` logits spans more than 0.5.
fn spread_ok(x: &[f64], n: usize, c: usize) -> bool {
    let span = |v: Vec<f64>| {
        v.iter().cloned().fold(f64::MIN, f64::max) - v.iter().cloned().fold(f64::MAX, f64::min)
            > 0.5
    };
    (0..n).all(|i| span(x[i * c..(i + 1) * c].to_vec()))
        && (0..c).all(|j| span((0..n).map(|i| x[i * c + j]).collect()))
}

/// Analytic gradients of `loss` (teacher attached) against central differences, for the
/// student's and the teacher's logits.
fn check_grads(loss: &dyn Loss, b: &Batch) -> Result<(), TestCaseError> {
    let (s, t) = (
        f64t(b.s.clone(), [b.n, b.c]).require_grad(),
        f64t(b.t.clone(), [b.n, b.c]).require_grad(),
    );
    let input = DistillInput::new(s.clone(), t.clone())
        .targets(ints(b.y.clone()))
        .progress(Progress::epoch(3, 10))
        .attach_teacher();
    let grads = loss.forward(&input).unwrap().total.backward();
    let value = |s: Vec<f64>, t: Vec<f64>| loss.forward(&b.input(s, t)).unwrap().value();
    let num_s = numeric_grad(&|v| value(v, b.t.clone()), &b.s, 1e-6);
    let num_t = numeric_grad(&|v| value(b.s.clone(), v), &b.t, 1e-6);
    let ana_s = values(s.grad(&grads).expect("student gradient"));
    let fail = |m: String| TestCaseError::fail(format!("{loss:?}: {m}"));
    close("d/ds", &ana_s, &num_s, 1e-5, 1e-8).map_err(fail)?;
    if let Some(gt) = t.grad(&grads) {
        close("d/dt", &values(gt), &num_t, 1e-5, 1e-8).map_err(fail)?;
    } else {
        prop_assert!(
            num_t.iter().all(|v| v.abs() < 1e-8),
            "teacher gradient missing"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn kd_gradients_match_finite_differences(b in batch()) {
        for reduction in [Reduction::SampleMean, Reduction::ElementMean, Reduction::Sum] {
            let kd = KdConfig::new().with_temperature(b.temp).with_reduction(reduction).init().unwrap();
            check_grads(&kd, &b)?;
        }
    }

    #[test]
    fn dkd_gradients_match_finite_differences(b in batch(), alpha in 0.0f64..2.0, beta in 0.0f64..10.0) {
        let dkd = DkdConfig::new()
            .with_alpha(alpha)
            .with_beta(beta)
            .with_temperature(b.temp)
            .with_warmup_epochs(5)
            .init()
            .unwrap();
        check_grads(&dkd, &b)?;
    }

    #[test]
    fn ce_gradients_match_finite_differences(b in batch(), smoothing in 0.0f64..0.5) {
        let ce = CrossEntropyConfig::new().with_smoothing(smoothing).init().unwrap();
        check_grads(&ce, &b)?;
    }

    #[test]
    fn kd_is_zero_with_zero_gradient_when_student_equals_teacher(b in batch()) {
        let kd = KdConfig::new().with_temperature(b.temp).init().unwrap();
        let s = f64t(b.s.clone(), [b.n, b.c]).require_grad();
        let out = kd.forward(&DistillInput::new(s.clone(), f64t(b.s.clone(), [b.n, b.c]))).unwrap();
        prop_assert!(out.value().abs() < 1e-12);
        let g = values(s.grad(&out.total.backward()).unwrap());
        prop_assert!(g.iter().all(|v| v.abs() < 1e-12), "{g:?}");
    }

    #[test]
    fn invariant_to_a_constant_added_to_a_row(b in batch(), row in 0usize..4, shift in -50.0f64..50.0) {
        let row = row % b.n;
        let shifted = |x: &[f64]| -> Vec<f64> {
            x.iter().enumerate().map(|(i, v)| if i / b.c == row { v + shift } else { *v }).collect()
        };
        let losses: Vec<Box<dyn Loss>> = vec![
            KdConfig::new().with_temperature(b.temp).init().unwrap().boxed(),
            DkdConfig::new().with_temperature(b.temp).init().unwrap().boxed(),
            CrossEntropyConfig::new().init().unwrap().boxed(),
        ];
        for loss in &losses {
            let base = loss.forward(&b.input(b.s.clone(), b.t.clone())).unwrap().value();
            let s_shift = loss.forward(&b.input(shifted(&b.s), b.t.clone())).unwrap().value();
            let t_shift = loss.forward(&b.input(b.s.clone(), shifted(&b.t))).unwrap().value();
            prop_assert!((s_shift - base).abs() <= 1e-9 * (1.0 + base.abs()), "{}: {base} vs {s_shift}", loss.name());
            prop_assert!((t_shift - base).abs() <= 1e-9 * (1.0 + base.abs()), "{}: {base} vs {t_shift}", loss.name());
        }
    }

    #[test]
    fn dckd_dist_and_standardized_kd_gradients_match_finite_differences(b in batch()) {
        // (Mix's target is partly sg(bˢ): a finite difference moves it, the gradient does not,
        // so Mix is checked in `dckd_mix_gradient_treats_the_student_share_as_constant`)
        for joint in [JointTarget::Max, JointTarget::Teacher] {
            let dckd = DckdConfig::new().with_temperature(b.temp).with_joint(joint).init().unwrap();
            check_grads(&dckd, &b)?;
        }
        // Pearson correlation and standardisation are undefined for a constant row or column
        // (their eps is a kink of slope ~1/eps there, in the reference too): check their
        // gradients where they are defined
        if b.n > 1 && spread_ok(&b.s, b.n, b.c) && spread_ok(&b.t, b.n, b.c) {
            check_grads(&DistConfig::new().with_temperature(b.temp).with_beta(2.0).init().unwrap(), &b)?;
            check_grads(&Standardized::new(KdConfig::new().with_temperature(b.temp).init().unwrap()), &b)?;
        }
    }

    /// The difficulty curricula select rows and classes by the teacher; away from ties the
    /// selection is locally constant, and the gradient is that of the inner loss on the
    /// selection.
    #[test]
    fn curriculum_wrappers_gradients_match_finite_differences(b in batch(), start in 0.2f64..1.0) {
        let kd = KdConfig::new().with_temperature(b.temp).init().unwrap();
        check_grads(&PacedConfig::new().with_start(start).init(kd.clone()).unwrap(), &b)?;
        check_grads(&PacedConfig::new().with_start(start).with_difficulty(Difficulty::TeacherConfidence).init(kd.clone()).unwrap(), &b)?;
        check_grads(&TopKMaskConfig::new().with_start(start).init(kd).unwrap(), &b)?;
        let dkd = DkdConfig::new().with_temperature(b.temp).init().unwrap();
        check_grads(&TopKMaskConfig::new().with_start(start).init(dkd).unwrap(), &b)?;
    }

    /// DCKD's Mix target-class gradient equals the finite difference of KL(m ‖ bˢ(z)) with the
    /// mixture m = w·bᵀ + (1 − w)·bˢ(z₀) frozen at the evaluation point.
    #[test]
    fn dckd_mix_gradient_treats_the_student_share_as_constant(b in batch(), w in 0.0f64..1.0) {
        let dckd = DckdConfig::new().with_temperature(b.temp).with_beta(0.0).with_warmup_epochs(0)
            .with_joint(JointTarget::Mix(w)).init().unwrap();
        let s = f64t(b.s.clone(), [b.n, b.c]).require_grad();
        let input = DistillInput::new(s.clone(), f64t(b.t.clone(), [b.n, b.c])).targets(ints(b.y.clone()));
        let ana = values(s.grad(&dckd.forward(&input).unwrap().total.backward()).unwrap());
        let split = |z: Vec<f64>| {
            let mask = target_mask(ints(b.y.clone()), b.c);
            values(Decoupled::new(f64t(z, [b.n, b.c]) * (1.0 / b.temp), mask).log_binary.exp())
        };
        let (bt, bs0) = (split(b.t.clone()), split(b.s.clone()));
        let correct: Vec<bool> = (0..b.n).map(|i| {
            let row = &b.s[i * b.c..(i + 1) * b.c];
            let arg = (0..b.c).fold(0, |m, j| if row[j] > row[m] { j } else { m });
            arg == b.y[i] as usize
        }).collect();
        let frozen = |z: Vec<f64>| {
            let bs = split(z);
            let kl: f64 = (0..b.n * 2).map(|k| {
                let m = if correct[k / 2] { w * bt[k] + (1.0 - w) * bs0[k] } else { bt[k] };
                m * (m.ln() - bs[k].ln())
            }).sum();
            kl / b.n as f64 * b.temp * b.temp
        };
        let fd = numeric_grad(&frozen, &b.s, 1e-6);
        close("d/ds", &ana, &fd, 1e-5, 1e-8).map_err(TestCaseError::fail)?;
    }

    /// With the teacher-only joint target DCKD is DKD, term by term.
    #[test]
    fn dckd_with_teacher_joint_target_is_dkd(b in batch()) {
        let input = b.input(b.s.clone(), b.t.clone());
        let dkd = DkdConfig::new().with_temperature(b.temp).init().unwrap().forward(&input).unwrap().values();
        let dckd = DckdConfig::new().with_temperature(b.temp).with_joint(JointTarget::Teacher).init().unwrap().forward(&input).unwrap().values();
        for ((_, a), (_, b)) in dkd.iter().zip(&dckd) {
            prop_assert!((a - b).abs() <= 1e-12 * (1.0 + a.abs()), "{dkd:?} vs {dckd:?}");
        }
    }

    /// A student that is right with more target confidence than the teacher gets a zero
    /// target-class term under DCKD's `Max`, so its target logit is not pushed down.
    #[test]
    fn dckd_never_pulls_back_a_confident_correct_student(b in batch()) {
        // make every sample's target the student's arg-max, far more confident than the teacher
        let mut s = b.s.clone();
        for (i, &y) in b.y.iter().enumerate() { s[i * b.c + y as usize] = 20.0; }
        let mut t = b.t.clone();
        for (i, &y) in b.y.iter().enumerate() { t[i * b.c + y as usize] = -5.0; }
        let st = f64t(s.clone(), [b.n, b.c]).require_grad();
        let input = DistillInput::new(st.clone(), f64t(t.clone(), [b.n, b.c])).targets(ints(b.y.clone()));
        let dckd = DckdConfig::new().with_temperature(b.temp).with_beta(0.0).with_warmup_epochs(0).init().unwrap();
        let out = dckd.forward(&input).unwrap();
        prop_assert!(out.values()[0].1.abs() < 1e-12, "tckd {:?}", out.values());
        let g = values(st.grad(&out.total.backward()).unwrap());
        prop_assert!(g.iter().all(|v| v.abs() < 1e-12));
        // while DKD pulls the target down (positive gradient on the target logit)
        let dkd = DkdConfig::new().with_temperature(b.temp).with_beta(0.0).with_warmup_epochs(0).init().unwrap();
        let st = f64t(s, [b.n, b.c]).require_grad();
        let input = DistillInput::new(st.clone(), f64t(t, [b.n, b.c])).targets(ints(b.y.clone()));
        let g = values(st.grad(&dkd.forward(&input).unwrap().total.backward()).unwrap());
        prop_assert!(b.y.iter().enumerate().all(|(i, &y)| g[i * b.c + y as usize] > 0.0));
    }

    /// CTKD: dL/dθ equals λ times the finite difference of the loss in θ (reversal flips the
    /// sign and scales by |λ|).
    #[test]
    fn ctkd_theta_gradient_is_lambda_times_finite_difference(b in batch(), theta in -2.0f64..2.0, epoch in 0usize..12) {
        let ctkd_at = |theta: f64| {
            CtkdConfig::new().init(KdConfig::new().init().unwrap(), &device()).unwrap().with_theta(f64t(vec![theta], [1])).unwrap()
        };
        let input = b.input(b.s.clone(), b.t.clone()).progress(Progress::epoch(epoch, 240));
        let ctkd = ctkd_at(theta);
        let lambda = ctkd.lambda(Progress::epoch(epoch, 240)).unwrap();
        prop_assert!((-1.0..=0.0).contains(&lambda));
        let g = values(ctkd.theta().grad(&ctkd.forward(&input).unwrap().total.backward()).unwrap())[0];
        let fd = numeric_grad(&|v| ctkd_at(v[0]).forward(&input).unwrap().value(), &[theta], 1e-6)[0];
        prop_assert!((g - lambda * fd).abs() <= 1e-6 * (1.0 + fd.abs()), "{g} vs {lambda} * {fd}");
    }

    /// The DKD paper's identity, per sample: KD = TCKD + (1 − p_t^T) · NCKD.
    #[test]
    fn kd_decomposes_into_tckd_and_nckd(b in batch()) {
        let (s, t) = (f64t(b.s.clone(), [b.n, b.c]), f64t(b.t.clone(), [b.n, b.c]));
        let y = ints(b.y.clone());
        let kd = values(kd_per_sample(s.clone(), t.clone(), b.temp));
        let (tckd, nckd) = dkd_per_sample(s, t.clone(), y.clone(), b.temp);
        let p_target = burn::tensor::activation::softmax(t / b.temp, 1)
            .gather(1, y.unsqueeze_dim(1))
            .squeeze_dim::<1>(1);
        let rhs = values(tckd + (p_target.neg() + 1.0) * nckd);
        close("KD = TCKD + (1-p_t)NCKD", &rhs, &kd, 1e-9, 1e-12).map_err(TestCaseError::fail)?;
    }
}

/// DKD's student gradient (α = 1, β = 8, T = 1) on f64 logits of order 1e3 whose target is
/// not the arg-max but 15–35 below it, the other classes ≥ 60 apart (the same top class on both
/// sides): within 1e-10 of the closed
/// form computed here, where the target masses are tiny and `bₛ₀ − bₜ₀` is taken from them
/// directly (the other side, `bₛ₁ − bₜ₁`, is a difference of two numbers within 1e-6 of 1: the
/// kernel took it from there and lost 1e-3 of it).
#[test]
fn dkd_gradient_is_exact_at_large_logits_in_f64() {
    let (n, c) = (16, 10);
    let jitter = noise(1, 2 * n * c, 20.0);
    let gaps = noise(2, 2 * n, 10.0);
    // class j of row i at 100·((j + 3i) mod c) ± 20 on both sides (side 0: student, 1:
    // teacher): they share their top class, where the gradient is the TCKD part alone
    let logits = |side: usize| -> Vec<f64> {
        (0..n * c)
            .map(|k| 100.0 * ((k % c + 3 * (k / c)) % c) as f64 + jitter[side * n * c + k])
            .collect()
    };
    let (mut s, mut t) = (logits(0), logits(1));
    let argmax = |r: &[f64]| (0..c).fold(0, |m, j| if r[j] > r[m] { j } else { m });
    let mut y = Vec::new();
    for i in 0..n {
        let row = i * c..(i + 1) * c;
        let (top, top_t) = (argmax(&s[row.clone()]), argmax(&t[row]));
        let target = (0..c).find(|&j| j != top && j != top_t).unwrap();
        s[i * c + target] = s[i * c + top] - 25.0 - gaps[2 * i];
        t[i * c + target] = t[i * c + top_t] - 25.0 - gaps[2 * i + 1];
        y.push(target);
    }
    // the closed form: target d = bₛ₀ − bₜ₀; others −p̂ₛⱼ d + β (p̂ₛⱼ − p̂ₜⱼ); all over N
    let lse = |r: &[f64], skip: usize| {
        let kept = || (0..c).filter(move |&j| j != skip);
        let m = kept().map(|j| r[j]).fold(f64::NEG_INFINITY, f64::max);
        m + kept().map(|j| (r[j] - m).exp()).sum::<f64>().ln()
    };
    let mut want = Vec::new();
    for (i, &k) in y.iter().enumerate() {
        let (rs, rt) = (&s[i * c..(i + 1) * c], &t[i * c..(i + 1) * c]);
        let b0 = |r: &[f64]| (r[k] - lse(r, c)).exp();
        let d = b0(rs) - b0(rt);
        let (os, ot) = (lse(rs, k), lse(rt, k));
        for j in 0..c {
            let g = match j == k {
                true => d,
                false => {
                    let (ps, pt) = ((rs[j] - os).exp(), (rt[j] - ot).exp());
                    -ps * d + 8.0 * (ps - pt)
                }
            };
            want.push(g / n as f64);
        }
    }
    // the fused kernel to 1e-10 relative, each entry; the composed ops sum the two parts'
    // gradients in autodiff's order (β(p̂ₛ − p̂ₜ)/N ≈ ½ − ½ before or after the tiny TCKD part),
    // which holds them to a few ulps of ½ (1e-15) absolute
    for (fused, abs) in [(true, 1e-300), (false, 1e-15)] {
        let st = f64t(s.clone(), [n, c]).require_grad();
        let dkd = DkdConfig::new()
            .with_beta(8.0)
            .with_temperature(1.0)
            .with_warmup_epochs(0)
            .with_fused(fused)
            .init()
            .unwrap();
        let input = DistillInput::new(st.clone(), f64t(t.clone(), [n, c]))
            .targets(ints(y.iter().map(|&k| k as i64).collect()));
        let out = dkd.forward(&input).unwrap();
        let got = values(st.grad(&out.total.backward()).unwrap());
        close(&format!("d/ds (fused: {fused})"), &got, &want, 1e-10, abs).unwrap();
    }
}

/// Logits of magnitude 1e4 give finite losses and gradients (student and teacher) in f64 and
/// f32, for every logit objective.
#[test]
fn finite_for_logits_of_magnitude_1e4() {
    let (n, c) = (4, 6);
    let s: Vec<f64> = (0..n * c)
        .map(|i| {
            if i % 5 == 0 {
                1e4
            } else {
                -1e4 * ((i % 3) as f64)
            }
        })
        .collect();
    let t: Vec<f64> = (0..n * c)
        .map(|i| {
            if i % 7 == 1 {
                -1e4
            } else {
                1e4 * ((i % 2) as f64)
            }
        })
        .collect();
    let y = vec![0, 1, 2, 5];
    for dtype in [DType::F64, DType::F32] {
        for temp in [1.0, 4.0] {
            let losses: Vec<Box<dyn Loss>> = vec![
                KdConfig::new()
                    .with_temperature(temp)
                    .init()
                    .unwrap()
                    .boxed(),
                DkdConfig::new()
                    .with_temperature(temp)
                    .with_warmup_epochs(0)
                    .init()
                    .unwrap()
                    .boxed(),
                CrossEntropyConfig::new().init().unwrap().boxed(),
                DckdConfig::new()
                    .with_temperature(temp)
                    .with_warmup_epochs(0)
                    .init()
                    .unwrap()
                    .boxed(),
                DistConfig::new()
                    .with_temperature(temp)
                    .init()
                    .unwrap()
                    .boxed(),
                Standardized::new(KdConfig::new().with_temperature(temp).init().unwrap()).boxed(),
                CtkdConfig::new()
                    .with_lambda_start(-1.0)
                    .init(
                        DkdConfig::new().with_warmup_epochs(0).init().unwrap(),
                        &device(),
                    )
                    .unwrap()
                    .boxed(),
                ProbMseConfig::new()
                    .with_temperature(temp)
                    .init()
                    .unwrap()
                    .boxed(),
                PacedConfig::new()
                    .init(KdConfig::new().with_temperature(temp).init().unwrap())
                    .unwrap()
                    .boxed(),
                LogitMseConfig::new()
                    .with_temperature(temp)
                    .init()
                    .unwrap()
                    .boxed(),
                MlkdConfig::new()
                    .with_temperatures(vec![temp, 3.0])
                    .with_ce_weight(1.0)
                    .init()
                    .unwrap()
                    .boxed(),
                MlkdConfig::new()
                    .with_reference(false)
                    .init()
                    .unwrap()
                    .boxed(),
                TopKMaskConfig::new()
                    .init(
                        DkdConfig::new()
                            .with_temperature(temp)
                            .with_warmup_epochs(0)
                            .init()
                            .unwrap(),
                    )
                    .unwrap()
                    .boxed(),
            ];
            for loss in &losses {
                let st: Tensor<2> = tensor(s.clone(), [n, c], dtype).require_grad();
                let tt: Tensor<2> = tensor(t.clone(), [n, c], dtype).require_grad();
                let input = DistillInput::new(st.clone(), tt.clone())
                    .targets(ints(y.clone()))
                    .progress(Progress::epoch(20, 240))
                    .attach_teacher();
                let out = loss.forward(&input).unwrap();
                let v = out.value();
                assert!(
                    v.is_finite(),
                    "{} {dtype:?} T={temp}: loss {v}",
                    loss.name()
                );
                let grads = out.total.backward();
                for (who, leaf) in [("student", &st), ("teacher", &tt)] {
                    if let Some(g) = leaf.grad(&grads) {
                        let g = values(g);
                        assert!(
                            g.iter().all(|x| x.is_finite()),
                            "{} {dtype:?} T={temp}: {who} gradient {g:?}",
                            loss.name()
                        );
                    }
                }
            }
        }
    }
}

/// Every catalogued example objective (`Entry::example`) on the crate's example input, in
/// f64: the analytic gradient of each leaf it reads against central differences, at
/// coordinates proptest picks. A new objective with an example is checked here by being in the
/// catalog.
mod catalogued {
    use super::*;
    use burn_distill::{example_input, example_input_shifted};

    /// The gradient of each example leaf `loss` reads (in f64), by name.
    pub(super) fn leaf_grads(
        loss: &dyn Loss,
        dev: &burn::tensor::Device,
    ) -> Vec<(&'static str, Vec<f64>)> {
        let ex = example_input(dev, DType::F64);
        let grads = loss.forward(&ex.input).unwrap().total.backward();
        common::leaf_grads(&ex.leaves, &grads)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(6))]

        #[test]
        fn every_example_matches_finite_differences(picks in prop::collection::vec(0usize..1000, 4)) {
            let dev = common::device();
            let mut checked = 0;
            for entry in burn_distill::objectives() {
                let Some(build) = entry.example else { continue };
                let loss = build(&dev).unwrap();
                for (name, g) in leaf_grads(loss.as_ref(), &dev) {
                    for &p in &picks {
                        let i = p % g.len();
                        let h = 1e-6;
                        let at = |d: f64| loss.forward(&example_input_shifted(&dev, DType::F64, Some((name, i, d))).input).unwrap().value();
                        let num = (at(h) - at(-h)) / (2.0 * h);
                        prop_assert!(
                            (g[i] - num).abs() <= 1e-5 * num.abs() + 1e-7,
                            "{}: d/d{name}[{i}] = {} vs finite difference {num}", loss.name(), g[i]
                        );
                        checked += 1;
                    }
                }
            }
            // every example reads at least the student's logits or a tap
            prop_assert!(checked >= 4 * 20, "only {checked} coordinates checked");
        }
    }
}

/// The non-finite policy, for every catalogued objective: a NaN in any leaf it reads
/// propagates (a non-finite total, or `NonFinite` where the objective checks), never a panic;
/// under `finite()` it is always `NonFinite`.
#[test]
fn non_finite_input_follows_the_policy() {
    use burn_distill::example_input_shifted;
    let dev = common::device();
    let mut cases = 0;
    for entry in burn_distill::objectives() {
        // the example, or the learnable example in f64 (built anew for every case)
        let build = |dev: &burn::tensor::Device| match (entry.example, entry.learnable) {
            (Some(example), _) => Some(example(dev).unwrap()),
            (None, Some(learnable)) => {
                dev.seed(7);
                Some(learnable(dev, dev, DType::F64).unwrap())
            }
            (None, None) => None,
        };
        let Some(loss) = build(&dev) else { continue };
        for (name, _) in catalogued::leaf_grads(loss.as_ref(), &dev) {
            for bad in [f64::NAN, f64::INFINITY] {
                let input = example_input_shifted(&dev, DType::F64, Some((name, 0, bad))).input;
                match loss.forward(&input) {
                    Ok(out) => assert!(
                        !out.value().is_finite(),
                        "{}: {bad} in {name} gave a finite {}",
                        loss.name(),
                        out.value()
                    ),
                    Err(DistillError::NonFinite { .. }) => {}
                    Err(e) => panic!("{}: {bad} in {name}: {e}", loss.name()),
                }
                let err = build(&dev).unwrap().finite().forward(&input).unwrap_err();
                assert!(
                    matches!(err, DistillError::NonFinite { .. }),
                    "{}: {err}",
                    loss.name()
                );
                cases += 1;
            }
        }
    }
    assert!(cases >= 60, "only {cases} cases");
}

/// Bad input for every catalogued objective (so a new objective is covered by being
/// registered): an empty batch, teacher logits of another (generated) class count or batch, a
/// teacher tap of another batch, logits with no class, a teacher in f64 beside an f32 student.
/// Each gives the exact error variant, or — when the objective does not read that part — the
/// same value as the well-formed input; never a panic. The mixed-dtype input gives the f32
/// value.
fn bad_input_gives_the_exact_error_or_is_ignored(classes: usize, rows: usize) {
    use burn::tensor::{Int, TensorData};
    use burn_distill::{Feature, example_input};
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let dev = common::device();
    let f32t = |v: Vec<f64>, shape: [usize; 2]| common::tensor(v, shape, DType::F32);
    let mut failures = Vec::new();
    for entry in burn_distill::objectives() {
        let Some(build) = entry.example else { continue };
        let loss = build(&dev).unwrap();
        let ex = example_input(&dev, DType::F32);
        let good = loss.forward(&ex.input).unwrap().value();
        let teacher = match &ex.leaves[1] {
            ("logits_teacher", Feature::Embedding(t)) => t.clone(),
            _ => unreachable!("the example's second leaf is the teacher's logits"),
        };
        let none = Tensor::<1, Int>::from_data(TensorData::new(Vec::<i64>::new(), [0]), &dev);
        let map = Tensor::<4>::from_data(
            TensorData::new(vec![0.1f32; rows * 6 * 16], [rows, 6, 4, 4]),
            &dev,
        );
        type Expect = fn(&DistillError) -> bool;
        let empty: Expect = |e| {
            matches!(
                e,
                DistillError::EmptyBatch { .. } | DistillError::BatchTooSmall { got: 0, .. }
            )
        };
        let class_count: Expect = |e| matches!(e, DistillError::ClassMismatch { .. });
        let shape: Expect = |e| matches!(e, DistillError::ShapeMismatch { .. });
        let no_class: Expect = |e| {
            matches!(
                e,
                DistillError::EmptyBatch { .. } | DistillError::ClassMismatch { .. }
            )
        };
        let cases: Vec<(&str, DistillInput, Expect)> = vec![
            ("an empty batch", ex.input.select_rows(none), empty),
            (
                "a teacher of another class count",
                ex.input
                    .with_teacher_logits(f32t(vec![0.1; 6 * classes], [6, classes])),
                class_count,
            ),
            (
                "a teacher of another batch",
                ex.input
                    .with_teacher_logits(f32t(vec![0.1; rows * 5], [rows, 5])),
                shape,
            ),
            (
                "an embedding tap of another batch",
                ex.input
                    .clone()
                    .teacher_feature("embedding", f32t(vec![0.1; rows * 5], [rows, 5])),
                shape,
            ),
            (
                "a map tap of another batch",
                ex.input.clone().teacher_feature("feature", map),
                shape,
            ),
            (
                "a teacher of no class",
                ex.input.with_teacher_logits(f32t(vec![], [6, 0])),
                no_class,
            ),
        ];
        for (what, input, expected) in cases {
            let got = catch_unwind(AssertUnwindSafe(|| loss.forward(&input).map(|o| o.value())));
            let fine = match &got {
                Ok(Ok(v)) => *v == good,
                Ok(Err(e)) => expected(e),
                Err(_) => false,
            };
            if !fine {
                failures.push(format!(
                    "{}: {what} ({classes} classes, {rows} rows): {:?}",
                    loss.name(),
                    got.map_err(|_| "panic")
                ));
            }
        }
        let mixed = ex.input.with_teacher_logits(teacher.cast(DType::F64));
        match loss.forward(&mixed) {
            Ok(out) if (out.value() - good).abs() <= 1e-5 * good.abs().max(1.0) => {}
            other => failures.push(format!(
                "{}: an f64 teacher: {other:?} vs {good}",
                loss.name()
            )),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]
    #[test]
    fn bad_input_is_the_exact_error_or_ignored(
        classes in (1..12usize).prop_filter("another class count", |c| *c != 5),
        rows in (1..12usize).prop_filter("another batch", |r| *r != 6),
    ) {
        bad_input_gives_the_exact_error_or_is_ignored(classes, rows);
    }
}

/// MLKD's two readings of its masks, recomputed from its level functions: the reference code
/// scales each reduced level by the mask's fraction, `reference: false` sums the selected
/// samples (classes) with the same normalisation.
#[test]
fn mlkd_masks_scale_or_select() {
    let (n, c) = (5, 4);
    let uniform = |seed: u64| noise(seed, n * c, 3.0);
    let (s, t) = (f64t(uniform(1), [n, c]), f64t(uniform(2), [n, c]));
    let pt = burn::tensor::activation::softmax(t.clone(), 1);
    let mask = |x: Tensor<1>| -> Vec<f64> {
        at_most_median(x)
            .into_data()
            .try_to_vec::<bool>()
            .unwrap()
            .into_iter()
            .map(|b| b as u8 as f64)
            .collect()
    };
    let a = mask(pt.clone().max_dim(1).squeeze_dim(1));
    let b = mask(pt.sum_dim(0).squeeze_dim(0));
    let temp = 2.0;
    let inst = values(mlkd_instance(s.clone(), t.clone(), temp));
    let cls = values(class_correlation(s.clone(), t.clone(), temp));
    let frac = |m: &[f64]| m.iter().sum::<f64>() / m.len() as f64;
    let kd_scaled = inst.iter().sum::<f64>() / n as f64 * frac(&a);
    let kd_selected = inst.iter().zip(&a).map(|(v, m)| v * m).sum::<f64>() / n as f64;
    let cc_scaled = cls.iter().sum::<f64>() * frac(&b);
    let cc_selected: f64 = cls.iter().enumerate().map(|(k, v)| v * b[k % c]).sum();
    assert!(
        frac(&a) < 1.0 && frac(&b) < 1.0,
        "the masks select something"
    );
    for (reference, kd, cc) in [
        (true, kd_scaled, cc_scaled),
        (false, kd_selected, cc_selected),
    ] {
        let out = MlkdConfig::new()
            .with_temperatures(vec![temp])
            .with_reference(reference)
            .init()
            .unwrap()
            .forward(&DistillInput::new(s.clone(), t.clone()))
            .unwrap();
        let term = |name: &str| values(out.term(name).unwrap().clone())[0];
        close("mlkd/kd", &[term("mlkd/kd")], &[kd], 1e-12, 1e-14).unwrap();
        close("mlkd/cc", &[term("mlkd/cc")], &[cc], 1e-12, 1e-14).unwrap();
    }
}
