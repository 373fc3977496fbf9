//! The token family: finite-difference gradients in f64 (student and teacher) for every
//! divergence, its invariants, masking, accumulation and data parallelism, large logits, and
//! typed errors.

mod common;

use burn::tensor::{DType, Tensor};
use burn_distill::prelude::*;
use burn_distill::token::{
    ForwardKlConfig, JsdConfig, LogitCosineConfig, ReverseKlConfig, SkewDirection, SkewKlConfig,
    SymmetricKlConfig, TokenReduction, TvdConfig, shift_labels, shift_logits,
};
use common::*;
use proptest::prelude::*;

/// Every token objective, with a reduction, at temperature `temp`.
fn objectives(temp: f64, reduction: TokenReduction) -> Vec<Box<dyn Loss>> {
    // the fused forward KL and JSD, and their composed twins
    let twins = [true, false].into_iter().flat_map(|fused| {
        [
            ForwardKlConfig::new()
                .with_temperature(temp)
                .with_reduction(reduction)
                .with_fused(fused)
                .init()
                .unwrap()
                .boxed(),
            JsdConfig::new()
                .with_beta(0.3)
                .with_temperature(temp)
                .with_reduction(reduction)
                .with_fused(fused)
                .init()
                .unwrap()
                .boxed(),
        ]
    });
    let others: Vec<Box<dyn Loss>> = vec![
        ForwardKlConfig::new()
            .with_temperature(temp)
            .with_reduction(reduction)
            .with_cross_entropy(true)
            .init()
            .unwrap()
            .boxed(),
        ReverseKlConfig::new()
            .with_temperature(temp)
            .with_reduction(reduction)
            .with_t_squared(true)
            .init()
            .unwrap()
            .boxed(),
        SymmetricKlConfig::new()
            .with_ratio(0.7)
            .with_temperature(temp)
            .with_reduction(reduction)
            .init()
            .unwrap()
            .boxed(),
        SkewKlConfig::new()
            .with_alpha(0.2)
            .with_temperature(temp)
            .with_reduction(reduction)
            .init()
            .unwrap()
            .boxed(),
        SkewKlConfig::new()
            .with_direction(SkewDirection::Reverse)
            .with_alpha(0.4)
            .with_temperature(temp)
            .with_reduction(reduction)
            .init()
            .unwrap()
            .boxed(),
        TvdConfig::new()
            .with_temperature(temp)
            .with_reduction(reduction)
            .init()
            .unwrap()
            .boxed(),
        LogitCosineConfig::new()
            .with_reduction(reduction)
            .init()
            .unwrap()
            .boxed(),
    ];
    twins.chain(others).collect()
}

/// Tokens: `n` rows of `v` logits for student and teacher, and which rows count.
#[derive(Debug, Clone)]
struct Tokens {
    n: usize,
    v: usize,
    s: Vec<f64>,
    t: Vec<f64>,
    mask: Vec<bool>,
    temp: f64,
}

fn tokens() -> impl Strategy<Value = Tokens> {
    (1usize..6, 2usize..9, 0.5f64..4.0).prop_flat_map(|(n, v, temp)| {
        let logits = prop::collection::vec(-3.0f64..3.0, n * v);
        (
            logits.clone(),
            logits,
            prop::collection::vec(prop::bool::weighted(0.7), n),
        )
            .prop_map(move |(s, t, mask)| Tokens {
                n,
                v,
                s,
                t,
                mask,
                temp,
            })
    })
}

fn mask_tensor(mask: &[bool]) -> Tensor<1, burn::tensor::Bool> {
    ints(mask.iter().map(|&m| m as i64).collect()).equal_elem(1)
}

impl Tokens {
    fn input(&self, s: Tensor<2>, t: Tensor<2>) -> DistillInput {
        DistillInput::new(s, t).mask(mask_tensor(&self.mask))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Analytic gradients against central differences, in the student and the teacher.
    #[test]
    fn gradients_match_finite_differences(b in tokens()) {
        // the TVD's |·| has a kink at p_s = p_t: keep the two apart
        let apart = b.s.iter().zip(&b.t).all(|(s, t)| (s - t).abs() > 1e-2);
        for loss in objectives(b.temp, TokenReduction::TokenMean) {
            if loss.name() == "tvd" && !apart {
                continue;
            }
            let shape = [b.n, b.v];
            let (s, t) = (f64t(b.s.clone(), shape).require_grad(), f64t(b.t.clone(), shape).require_grad());
            let grads = loss
                .forward(&b.input(s.clone(), t.clone()).attach_teacher())
                .unwrap()
                .total
                .backward();
            let value = |sv: Vec<f64>, tv: Vec<f64>| {
                loss.forward(&b.input(f64t(sv, shape), f64t(tv, shape))).unwrap().value()
            };
            let num_s = numeric_grad(&|x| value(x, b.t.clone()), &b.s, 1e-6);
            let num_t = numeric_grad(&|x| value(b.s.clone(), x), &b.t, 1e-6);
            let fail = |m: String| TestCaseError::fail(format!("{}: {m}", loss.name()));
            close("d/ds", &values(s.grad(&grads).unwrap()), &num_s, 1e-5, 1e-8).map_err(fail)?;
            close("d/dt", &values(t.grad(&grads).unwrap()), &num_t, 1e-5, 1e-8).map_err(fail)?;
        }
    }

    /// The divergences are zero when the distributions are equal (the cross-entropy forms
    /// are the teacher's entropy, and so exceed the KL by exactly that); JSD and TVD are
    /// symmetric at β = 0.5 and bounded.
    #[test]
    fn invariants(b in tokens()) {
        let shape = [b.n, b.v];
        let same = b.input(f64t(b.s.clone(), shape), f64t(b.s.clone(), shape));
        for loss in objectives(b.temp, TokenReduction::Sum) {
            let v = loss.forward(&same).unwrap().value();
            if loss.name() == "forward_kl" && v.abs() > 1e-12 {
                // the cross-entropy form: the teacher's entropy
                prop_assert!(v > 0.0);
                continue;
            }
            prop_assert!(v.abs() < 1e-10, "{} at p_s = p_t: {v}", loss.name());
        }
        let input = b.input(f64t(b.s.clone(), shape), f64t(b.t.clone(), shape));
        let swapped = b.input(f64t(b.t.clone(), shape), f64t(b.s.clone(), shape));
        let sum = |l: &dyn Loss, i: &DistillInput| l.forward(i).unwrap().value();
        let jsd = JsdConfig::new().with_temperature(b.temp).with_reduction(TokenReduction::Sum).init().unwrap();
        prop_assert!((sum(&jsd, &input) - sum(&jsd, &swapped)).abs() < 1e-10);
        let valid = b.mask.iter().filter(|&&m| m).count() as f64;
        prop_assert!(sum(&jsd, &input) <= valid * std::f64::consts::LN_2 + 1e-12);
        let tvd = TvdConfig::new().with_temperature(b.temp).with_reduction(TokenReduction::Sum).init().unwrap();
        prop_assert!(sum(&tvd, &input) <= valid + 1e-12);
        // the cross-entropy form exceeds the KL by the teacher's entropy, token by token
        let kl = ForwardKlConfig::new().with_temperature(b.temp).with_reduction(TokenReduction::None).init().unwrap();
        let ce = ForwardKlConfig::new().with_temperature(b.temp).with_reduction(TokenReduction::None).with_cross_entropy(true).init().unwrap();
        let (kl, ce) = (values(kl.forward(&input).unwrap().total), values(ce.forward(&input).unwrap().total));
        for i in 0..b.n {
            let row: Vec<f64> = b.t[i * b.v..(i + 1) * b.v].iter().map(|z| z / b.temp).collect();
            let m = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + row.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
            let entropy: f64 = row.iter().map(|z| -(z - lse).exp() * (z - lse)).sum();
            let want = if b.mask[i] { kl[i] + entropy } else { 0.0 };
            prop_assert!((ce[i] - want).abs() < 1e-10, "row {i}: {} vs {want}", ce[i]);
        }
    }

    /// JSD(β) tends to 0 as β → 0 or 1 (the formula's limits), while β = 0 and 1 themselves
    /// are forward and reverse KL (TRL's and Liger's special cases).
    #[test]
    fn jsd_limits(b in tokens()) {
        let shape = [b.n, b.v];
        let input = b.input(f64t(b.s.clone(), shape), f64t(b.t.clone(), shape));
        let at = |beta: f64| JsdConfig::new().with_beta(beta).with_temperature(b.temp).init().unwrap().forward(&input).unwrap().value();
        let fkl = ForwardKlConfig::new().with_temperature(b.temp).init().unwrap().forward(&input).unwrap().value();
        let rkl = ReverseKlConfig::new().with_temperature(b.temp).init().unwrap().forward(&input).unwrap().value();
        prop_assert!((at(0.0) - fkl).abs() < 1e-12 && (at(1.0) - rkl).abs() < 1e-12);
        prop_assert!(at(1e-6).abs() < 1e-4 * (1.0 + fkl) && at(1.0 - 1e-6).abs() < 1e-4 * (1.0 + rkl));
    }

    /// `k` micro-batches (or ranks) with `DivideBy(total valid tokens)` sum to exactly the whole
    /// batch's `Mean` loss and gradient; `Mean` per micro-batch does not in general.
    #[test]
    fn accumulation_gives_the_whole_batch(b in tokens(), cut in 0usize..6) {
        let cut = cut.min(b.n);
        let shape = [b.n, b.v];
        let valid = b.mask.iter().filter(|&&m| m).count();
        let whole = JsdConfig::new().with_temperature(b.temp).init().unwrap();
        let s = f64t(b.s.clone(), shape).require_grad();
        let grads = whole.forward(&b.input(s.clone(), f64t(b.t.clone(), shape))).unwrap().total.backward();
        let want = values(s.grad(&grads).unwrap());
        let global = JsdConfig::new()
            .with_temperature(b.temp)
            .with_reduction(TokenReduction::DivideBy(valid.max(1) as f64))
            .init()
            .unwrap();
        let mut got = Vec::new();
        let mut value = 0.0;
        for (lo, hi) in [(0, cut), (cut, b.n)] {
            if lo == hi {
                continue;
            }
            let rows = hi - lo;
            let part = |x: &[f64]| x[lo * b.v..hi * b.v].to_vec();
            let s = f64t(part(&b.s), [rows, b.v]).require_grad();
            let input = DistillInput::new(s.clone(), f64t(part(&b.t), [rows, b.v]))
                .mask(mask_tensor(&b.mask[lo..hi]));
            let out = global.forward(&input).unwrap();
            value += out.value();
            got.extend(values(s.grad(&out.total.backward()).unwrap()));
        }
        let whole_value = whole.forward(&b.input(f64t(b.s.clone(), shape), f64t(b.t.clone(), shape))).unwrap().value();
        prop_assert!((value - whole_value).abs() < 1e-12 * (1.0 + whole_value.abs()));
        close("accumulated d/ds", &got, &want, 1e-12, 1e-15).map_err(TestCaseError::fail)?;
    }
}

/// An empty mask gives 0 and zero gradients, never NaN, under every reduction.
#[test]
fn empty_mask_is_zero() {
    for reduction in [
        TokenReduction::TokenMean,
        TokenReduction::ElementMean,
        TokenReduction::Sum,
        TokenReduction::DivideBy(4.0),
    ] {
        for loss in objectives(2.0, reduction) {
            let s = f64t(vec![1.0, -2.0, 0.5, 3.0, 0.0, 1.0], [2, 3]).require_grad();
            let t = f64t(vec![0.0, 2.0, -1.0, 1.0, 1.0, 1.0], [2, 3]).require_grad();
            let input = DistillInput::new(s.clone(), t.clone())
                .labels(ints(vec![-100, -100]), -100)
                .attach_teacher();
            let out = loss.forward(&input).unwrap();
            assert_eq!(out.value(), 0.0, "{}", loss.name());
            let grads = out.total.backward();
            for g in [s.grad(&grads), t.grad(&grads)].into_iter().flatten() {
                assert!(values(g).iter().all(|v| *v == 0.0), "{}", loss.name());
            }
        }
    }
}

/// A padded row full of NaN and infinities changes nothing: the loss and the gradients of the
/// other rows are those of the valid rows alone, and the padded row's gradient is 0.
#[test]
fn masked_rows_never_reach_the_loss() {
    let good_s = vec![1.0, -2.0, 0.5, 3.0, 0.0, 1.0];
    let good_t = vec![0.0, 2.0, -1.0, 1.0, 1.0, 1.0];
    let mut s_with = good_s.clone();
    s_with.extend([f64::NAN, f64::INFINITY, 1.0]);
    let mut t_with = good_t.clone();
    t_with.extend([f64::NEG_INFINITY, 0.0, f64::NAN]);
    for loss in objectives(1.5, TokenReduction::TokenMean) {
        let plain = loss
            .forward(&DistillInput::new(
                f64t(good_s.clone(), [2, 3]),
                f64t(good_t.clone(), [2, 3]),
            ))
            .unwrap()
            .value();
        let s = f64t(s_with.clone(), [3, 3]).require_grad();
        let input = DistillInput::new(s.clone(), f64t(t_with.clone(), [3, 3]))
            .labels(ints(vec![2, 0, -100]), -100);
        let out = loss.forward(&input).unwrap();
        assert!(
            (out.value() - plain).abs() < 1e-12,
            "{}: {} vs {plain}",
            loss.name(),
            out.value()
        );
        let g = values(s.grad(&out.total.backward()).unwrap());
        assert!(g.iter().all(|v| v.is_finite()), "{}: {g:?}", loss.name());
        assert!(g[6..].iter().all(|v| *v == 0.0), "{}", loss.name());
    }
}

/// Logits of magnitude 1e4 in f32: finite losses and gradients.
#[test]
fn finite_at_large_logits_in_f32() {
    let s: Vec<f64> = (0..12)
        .map(|i| {
            if i % 3 == 0 {
                1e4
            } else {
                -1e4 * (i as f64 / 12.0)
            }
        })
        .collect();
    let t: Vec<f64> = (0..12)
        .map(|i| {
            if i % 4 == 1 {
                -1e4
            } else {
                1e4 * (i as f64 / 12.0)
            }
        })
        .collect();
    for loss in objectives(1.0, TokenReduction::TokenMean) {
        let (sl, tl) = (
            tensor(s.clone(), [3, 4], DType::F32).require_grad(),
            tensor(t.clone(), [3, 4], DType::F32).require_grad(),
        );
        let out = loss
            .forward(&DistillInput::new(sl.clone(), tl.clone()).attach_teacher())
            .unwrap();
        assert!(out.value().is_finite(), "{}: {}", loss.name(), out.value());
        let grads = out.total.backward();
        for g in [sl.grad(&grads).unwrap(), tl.grad(&grads).unwrap()] {
            assert!(values(g).iter().all(|v| v.is_finite()), "{}", loss.name());
        }
    }
}

/// The causal shift: position `t` predicts label `t + 1`.
#[test]
fn causal_shift_aligns_positions_with_next_labels() {
    let z: Vec<f64> = (0..2 * 3 * 2).map(|i| i as f64).collect();
    let logits = Tensor::<3>::from_data(burn::tensor::TensorData::new(z, [2, 3, 2]), &device());
    let shifted = values(shift_logits(logits));
    assert_eq!(shifted, [0.0, 1.0, 2.0, 3.0, 6.0, 7.0, 8.0, 9.0]);
    let labels = Tensor::<2, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(vec![10i64, 11, 12, 20, 21, 22], [2, 3]),
        &device(),
    );
    let y: Vec<i64> = shift_labels(labels)
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap();
    assert_eq!(y, [11, 12, 21, 22]);
}

/// Typed errors: a vocabulary mismatch, a mask of the wrong length, β and α out of range.
#[test]
fn bad_input_is_a_typed_error() {
    let jsd = JsdConfig::new().init().unwrap();
    let err = jsd
        .forward(&DistillInput::new(
            f64t(vec![0.0; 6], [2, 3]),
            f64t(vec![0.0; 8], [2, 4]),
        ))
        .unwrap_err();
    assert!(
        matches!(
            err,
            DistillError::ClassMismatch {
                student: 3,
                teacher: 4,
                ..
            }
        ),
        "{err}"
    );
    let err = jsd
        .forward(
            &DistillInput::new(f64t(vec![0.0; 6], [2, 3]), f64t(vec![0.0; 6], [2, 3]))
                .labels(ints(vec![0, 1, 2]), -100),
        )
        .unwrap_err();
    assert!(
        matches!(err, DistillError::ShapeMismatch { ref what, .. } if what.contains("mask")),
        "{err}"
    );
    let err = jsd
        .forward(
            &DistillInput::new(f64t(vec![0.0; 6], [2, 3]), f64t(vec![0.0; 6], [2, 3]))
                .labels(ints(vec![3, -100]), -100),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            DistillError::TargetOutOfRange {
                target: 3,
                classes: 3,
                ..
            }
        ),
        "{err}"
    );
    for beta in [-0.1, 1.1, f64::NAN] {
        assert!(matches!(
            JsdConfig::new().with_beta(beta).init(),
            Err(DistillError::InvalidConfig { .. })
        ));
    }
    for alpha in [-0.1, 1.0, f64::INFINITY] {
        assert!(matches!(
            SkewKlConfig::new().with_alpha(alpha).init(),
            Err(DistillError::InvalidConfig { .. })
        ));
    }
    assert!(
        SkewKlConfig::new()
            .with_direction(SkewDirection::Reverse)
            .with_cross_entropy(true)
            .init()
            .is_err()
    );
    assert!(matches!(
        JsdConfig::new()
            .with_reduction(TokenReduction::DivideBy(0.0))
            .init(),
        Err(DistillError::InvalidConfig { .. })
    ));
    assert!(matches!(
        TvdConfig::new().with_temperature(0.0).init(),
        Err(DistillError::InvalidTemperature(_))
    ));
}

mod fused_and_sparse {
    use super::*;
    use burn::module::Param;
    use burn::tensor::Int;
    use burn_distill::token::{
        FusedLinearConfig, HiddenLoss, HiddenStateConfig, LmHead, LmHeads, MissingMass,
        TeacherHead, TokenDivergence, TopKConfig, TopKDivergence, TopKSupport,
    };

    fn det(n: usize, seed: u64, scale: f64) -> Vec<f64> {
        noise(seed, n, scale)
    }

    /// The fused lm-head path equals the dense objective on materialised logits — loss and
    /// the gradients of the student's hidden states, weight and bias and (attached) of the
    /// teacher's — for every chunk size, including ones that do not divide N, in f64.
    #[test]
    fn fused_linear_equals_the_dense_objective_for_every_chunk_size() {
        let (n, h, ht, v) = (7, 5, 4, 9);
        let mask = vec![true, true, false, true, true, false, true];
        let labels: Vec<i64> = (0..n as i64)
            .map(|i| if mask[i as usize] { i % v as i64 } else { -100 })
            .collect();
        let (xs, ws, bs) = (det(n * h, 1, 1.0), det(h * v, 2, 1.0), det(v, 3, 0.5));
        let (xt, wt) = (det(n * ht, 4, 1.0), det(ht * v, 5, 1.0));
        let leaf2 = |d: &[f64], s: [usize; 2]| f64t(d.to_vec(), s).require_grad();
        for (reduction, hard) in [
            (TokenReduction::TokenMean, 0.0),
            (TokenReduction::Sum, 0.4),
            (TokenReduction::DivideBy(3.0), 0.2),
        ] {
            // dense: materialise both logits, the objective plus the hard term
            let (x, w, b) = (
                leaf2(&xs, [n, h]),
                leaf2(&ws, [h, v]),
                f64t(bs.clone(), [v]).require_grad(),
            );
            let (x2, w2) = (leaf2(&xt, [n, ht]), leaf2(&wt, [ht, v]));
            let zs = x.clone().matmul(w.clone()) + b.clone().unsqueeze_dim(0);
            let zt = x2.clone().matmul(w2.clone());
            let jsd = |r| {
                JsdConfig::new()
                    .with_beta(0.3)
                    .with_temperature(2.0)
                    .with_reduction(r)
                    .init()
                    .unwrap()
            };
            let input = DistillInput::new(zs, zt)
                .labels(ints(labels.clone()), -100)
                .attach_teacher();
            let ce_total = {
                let ce = burn_distill::cross_entropy_per_sample(
                    x.clone().matmul(w.clone()) + b.clone().unsqueeze_dim(0),
                    ints(labels.iter().map(|&y| y.max(0)).collect()),
                    0.0,
                )
                .mask_fill(mask_tensor(&mask).bool_not(), 0.0)
                .sum();
                let valid = mask.iter().filter(|&&m| m).count() as f64;
                match reduction {
                    TokenReduction::TokenMean => ce * (1.0 / valid),
                    TokenReduction::DivideBy(g) => ce * (1.0 / g),
                    _ => ce,
                }
            };
            let dense = jsd(reduction).forward(&input).unwrap().total + ce_total * hard;
            let want_value = values(dense.clone())[0];
            let grads = dense.backward();
            let want: Vec<Vec<f64>> = vec![
                values(x.grad(&grads).unwrap()),
                values(w.grad(&grads).unwrap()),
                values(b.grad(&grads).unwrap()),
                values(x2.grad(&grads).unwrap()),
                values(w2.grad(&grads).unwrap()),
            ];
            for chunk in [1, 2, 3, 7, 50] {
                let fused = FusedLinearConfig::new()
                    .with_chunk_size(Some(chunk))
                    .with_reduction(reduction)
                    .with_hard_weight(hard)
                    .init(jsd(TokenReduction::None))
                    .unwrap();
                let (x, w, b) = (
                    leaf2(&xs, [n, h]),
                    leaf2(&ws, [h, v]),
                    f64t(bs.clone(), [v]).require_grad(),
                );
                let (x2, w2) = (leaf2(&xt, [n, ht]), leaf2(&wt, [ht, v]));
                let input = DistillInput::features_only()
                    .labels(ints(labels.clone()), -100)
                    .with(LmHeads {
                        student: LmHead::new(x.clone(), w.clone(), Some(b.clone())),
                        teacher: TeacherHead::Head(LmHead::new(x2.clone(), w2.clone(), None)),
                    })
                    .attach_teacher();
                let out = fused.forward(&input).unwrap();
                assert!(
                    (out.value() - want_value).abs() < 1e-12 * (1.0 + want_value.abs()),
                    "chunk {chunk}: {} vs {want_value}",
                    out.value()
                );
                let grads = out.total.backward();
                let got = [
                    values(x.grad(&grads).unwrap()),
                    values(w.grad(&grads).unwrap()),
                    values(b.grad(&grads).unwrap()),
                    values(x2.grad(&grads).unwrap()),
                    values(w2.grad(&grads).unwrap()),
                ];
                for (k, (g, want)) in got.iter().zip(&want).enumerate() {
                    close(
                        &format!("chunk {chunk} gradient {k}"),
                        g,
                        want,
                        1e-11,
                        1e-14,
                    )
                    .unwrap();
                }
            }
        }
    }

    /// A sparse teacher (top-k ids and log-probabilities, as a cache holds them) through the
    /// lm-head path equals `TopK` on materialised logits — value and the gradients of the
    /// student's hidden states, weight and bias — for forward KL, reverse KL and JSD with the
    /// tail bucket, a hard-label term, masked tokens and chunk sizes that do not divide N, in f64.
    #[test]
    fn fused_linear_with_a_sparse_teacher_equals_top_k_on_materialised_logits() {
        let (n, h, v, k) = (7, 5, 9, 3);
        let mask = vec![true, false, true, true, true, false, true];
        let labels: Vec<i64> = (0..n as i64)
            .map(|i| {
                if mask[i as usize] {
                    (i * 2) % v as i64
                } else {
                    -100
                }
            })
            .collect();
        let (xs, ws, bs) = (det(n * h, 11, 1.0), det(h * v, 12, 1.0), det(v, 13, 0.5));
        // the teacher's top 3 of a random distribution, as log-probabilities of the full softmax
        let zt = det(n * v, 14, 2.0);
        let (mut ids, mut lps) = (vec![], vec![]);
        for row in zt.chunks(v) {
            let lse = row.iter().map(|z| z.exp()).sum::<f64>().ln();
            let mut order: Vec<usize> = (0..v).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            for &i in &order[..k] {
                ids.push(i as i64);
                lps.push(row[i] - lse);
            }
        }
        let sparse_ids = || {
            Tensor::<2, Int>::from_data(
                burn::tensor::TensorData::new(ids.clone(), [n, k]),
                &device(),
            )
        };
        let leaf2 = |d: &[f64], s: [usize; 2]| f64t(d.to_vec(), s).require_grad();
        for divergence in [
            TopKDivergence::ForwardKl,
            TopKDivergence::ReverseKl,
            TopKDivergence::Jsd,
        ] {
            let top_k = |r| {
                TopKConfig::new()
                    .with_divergence(divergence)
                    .with_missing(MissingMass::SymmetricUniform)
                    .with_reduction(r)
                    .init()
                    .unwrap()
            };
            let (x, w, b) = (
                leaf2(&xs, [n, h]),
                leaf2(&ws, [h, v]),
                f64t(bs.clone(), [v]).require_grad(),
            );
            let zs = x.clone().matmul(w.clone()) + b.clone().unsqueeze_dim(0);
            let input = DistillInput::student(zs.clone())
                .labels(ints(labels.clone()), -100)
                .sparse_teacher(sparse_ids(), f64t(lps.clone(), [n, k]));
            let ce = burn_distill::cross_entropy_per_sample(
                zs,
                ints(labels.iter().map(|&y| y.max(0)).collect()),
                0.0,
            )
            .mask_fill(mask_tensor(&mask).bool_not(), 0.0)
            .sum()
                * (1.0 / mask.iter().filter(|&&m| m).count() as f64);
            let dense = top_k(TokenReduction::TokenMean)
                .forward(&input)
                .unwrap()
                .total
                + ce * 0.3;
            let want_value = values(dense.clone())[0];
            let grads = dense.backward();
            let want = [
                values(x.grad(&grads).unwrap()),
                values(w.grad(&grads).unwrap()),
                values(b.grad(&grads).unwrap()),
            ];
            for chunk in [1, 3, 7] {
                let fused = FusedLinearConfig::new()
                    .with_chunk_size(Some(chunk))
                    .with_hard_weight(0.3)
                    .init(top_k(TokenReduction::None))
                    .unwrap();
                let (x, w, b) = (
                    leaf2(&xs, [n, h]),
                    leaf2(&ws, [h, v]),
                    f64t(bs.clone(), [v]).require_grad(),
                );
                let input = DistillInput::features_only()
                    .labels(ints(labels.clone()), -100)
                    .with(LmHeads {
                        student: LmHead::new(x.clone(), w.clone(), Some(b.clone())),
                        teacher: TeacherHead::TopK {
                            ids: sparse_ids(),
                            log_probs: f64t(lps.clone(), [n, k]),
                        },
                    });
                let out = fused.forward(&input).unwrap();
                let what = format!("{divergence:?}, chunk {chunk}");
                assert!(
                    (out.value() - want_value).abs() < 1e-12 * (1.0 + want_value.abs()),
                    "{what}: {} vs {want_value}",
                    out.value()
                );
                let grads = out.total.backward();
                let got = [
                    values(x.grad(&grads).unwrap()),
                    values(w.grad(&grads).unwrap()),
                    values(b.grad(&grads).unwrap()),
                ];
                for (i, (g, want)) in got.iter().zip(&want).enumerate() {
                    close(&format!("{what}: gradient {i}"), g, want, 1e-11, 1e-14).unwrap();
                }
            }
        }
        // ids and log-probabilities of different shapes are a typed error
        let fused = FusedLinearConfig::new().init(top_k_none()).unwrap();
        let input = DistillInput::features_only().with(LmHeads {
            student: LmHead::new(f64t(xs.clone(), [n, h]), f64t(ws.clone(), [h, v]), None),
            teacher: TeacherHead::TopK {
                ids: sparse_ids(),
                log_probs: f64t(vec![0.0; n * 2], [n, 2]),
            },
        });
        assert!(matches!(
            fused.forward(&input),
            Err(DistillError::ShapeMismatch { .. })
        ));
    }

    /// The skew divergences from a sparse teacher equal their definitions written out in f64
    /// over the whole vocabulary (`Zero`: the teacher renormalised over its top k, 0 elsewhere),
    /// over the `k + 1` categories of the tail bucket (`SymmetricUniform`) or over the k with
    /// both renormalised (`Renormalize`; α = 0 is the plain forward KL), and their
    /// gradients equal central finite differences, for α = 0.1 and 0.6, with proptest inputs.
    #[test]
    fn top_k_skew_divergences_equal_their_definitions_and_finite_differences() {
        let (n, v, k) = (3, 6, 2);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(12));
        let strategy = (
            proptest::collection::vec(-4.0f64..4.0, n * v),
            proptest::collection::vec(-4.0f64..4.0, n * v),
        );
        runner
            .run(&strategy, |(zs, zt)| {
                // the teacher's top k, as log-probabilities of its full softmax
                let (mut ids, mut lps) = (vec![], vec![]);
                for row in zt.chunks(v) {
                    let lse = row.iter().map(|z| z.exp()).sum::<f64>().ln();
                    let mut order: Vec<usize> = (0..v).collect();
                    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                    for &i in &order[..k] {
                        ids.push(i as i64);
                        lps.push(row[i] - lse);
                    }
                }
                for (missing, divergence, alpha) in [
                    (MissingMass::Zero, TopKDivergence::SkewForwardKl, 0.1),
                    (MissingMass::Zero, TopKDivergence::SkewReverseKl, 0.6),
                    (
                        MissingMass::SymmetricUniform,
                        TopKDivergence::SkewForwardKl,
                        0.6,
                    ),
                    (
                        MissingMass::SymmetricUniform,
                        TopKDivergence::SkewReverseKl,
                        0.1,
                    ),
                    // α = 0: the plain forward KL between the two renormalised top-k
                    (MissingMass::Renormalize, TopKDivergence::SkewForwardKl, 0.0),
                    (MissingMass::Renormalize, TopKDivergence::SkewReverseKl, 0.4),
                ] {
                    let loss = TopKConfig::new()
                        .with_divergence(divergence)
                        .with_missing(missing)
                        .with_skew(alpha)
                        .with_reduction(TokenReduction::Sum)
                        .init()
                        .unwrap();
                    let sparse = || {
                        let ids = Tensor::<2, Int>::from_data(
                            burn::tensor::TensorData::new(ids.clone(), [n, k]),
                            &device(),
                        );
                        (ids, f64t(lps.clone(), [n, k]))
                    };
                    // the definition, row by row
                    let definition = |z: &[f64]| -> f64 {
                        let mut total = 0.0;
                        for r in 0..n {
                            let row = &z[r * v..(r + 1) * v];
                            let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
                            let q: Vec<f64> = row.iter().map(|x| (x - lse).exp()).collect();
                            let top: Vec<usize> = ids[r * k..(r + 1) * k]
                                .iter()
                                .map(|&i| i as usize)
                                .collect();
                            let pt: Vec<f64> =
                                lps[r * k..(r + 1) * k].iter().map(|l| l.exp()).collect();
                            // (teacher, student) over the categories the mode defines
                            let (p, s): (Vec<f64>, Vec<f64>) = match missing {
                                MissingMass::Zero => {
                                    let mass: f64 = pt.iter().sum();
                                    (0..v)
                                        .map(|i| {
                                            let t = top
                                                .iter()
                                                .position(|&j| j == i)
                                                .map_or(0.0, |a| pt[a] / mass);
                                            (t, q[i])
                                        })
                                        .unzip()
                                }
                                MissingMass::Renormalize => {
                                    let s: Vec<f64> = top.iter().map(|&i| q[i]).collect();
                                    let mp: f64 = pt.iter().sum();
                                    let ms: f64 = s.iter().sum();
                                    (
                                        pt.iter().map(|x| x / mp).collect(),
                                        s.iter().map(|x| x / ms).collect(),
                                    )
                                }
                                MissingMass::SymmetricUniform => {
                                    let mut p = pt.clone();
                                    let mut s: Vec<f64> = top.iter().map(|&i| q[i]).collect();
                                    p.push(1.0 - pt.iter().sum::<f64>());
                                    s.push(1.0 - s.iter().sum::<f64>());
                                    (p, s)
                                }
                            };
                            let kl = |a: &[f64], b: &[f64]| -> f64 {
                                a.iter()
                                    .zip(b)
                                    .filter(|(x, _)| **x > 0.0)
                                    .map(|(x, y)| x * (x / (alpha * x + (1.0 - alpha) * y)).ln())
                                    .sum()
                            };
                            total += match divergence {
                                TopKDivergence::SkewForwardKl => kl(&p, &s),
                                _ => kl(&s, &p),
                            };
                        }
                        total
                    };
                    let z = f64t(zs.clone(), [n, v]).require_grad();
                    let (ids_t, lps_t) = sparse();
                    let input = DistillInput::student(z.clone()).sparse_teacher(ids_t, lps_t);
                    let total = loss.forward(&input).unwrap().total;
                    let got = values(total.clone())[0];
                    let want = definition(&zs);
                    prop_assert!(
                        (got - want).abs() < 1e-10 * (1.0 + want.abs()),
                        "{missing:?} {divergence:?}: {got} vs {want}"
                    );
                    let grads = total.backward();
                    let analytic = values(z.grad(&grads).unwrap());
                    let numeric = numeric_grad(&|x| definition(&x), &zs, 1e-6);
                    close(
                        &format!("{missing:?} {divergence:?}"),
                        &analytic,
                        &numeric,
                        1e-6,
                        1e-8,
                    )
                    .map_err(TestCaseError::fail)?;
                }
                Ok(())
            })
            .unwrap();
        let bad = TopKConfig::new().with_skew(1.0).init();
        assert!(
            matches!(bad, Err(DistillError::InvalidConfig { .. })),
            "{bad:?}"
        );
        let infinite = TopKConfig::new()
            .with_divergence(TopKDivergence::SkewReverseKl)
            .with_skew(0.0)
            .init();
        assert!(matches!(infinite, Err(DistillError::InvalidConfig { .. })));
    }

    /// DistillKit's hinge with the teacher's own gap as the margin: the gradients of the
    /// student's logits and of the (attached) teacher's log-probabilities equal central finite
    /// differences in f64, with a masked token.
    #[test]
    fn sparse_ranking_hinge_gradients_equal_finite_differences() {
        use burn_distill::token::SparseRankingConfig;
        let (n, v, k) = (3, 7, 4);
        let zs = det(n * v, 21, 1.5);
        // distinct teacher values, well apart (pairs stay counted under the perturbation)
        let lps: Vec<f64> = (0..n * k)
            .map(|i| -0.3 - 0.4 * (i % k) as f64 - 0.01 * i as f64)
            .collect();
        let ids: Vec<i64> = (0..n * k).map(|i| ((i * 3) % v) as i64).collect();
        let mask = vec![true, false, true];
        let loss = SparseRankingConfig::new().init().unwrap();
        let run = |z: &[f64], lp: &[f64]| {
            let (z, lp) = (
                f64t(z.to_vec(), [n, v]).require_grad(),
                f64t(lp.to_vec(), [n, k]).require_grad(),
            );
            let ids = Tensor::<2, Int>::from_data(
                burn::tensor::TensorData::new(ids.clone(), [n, k]),
                &device(),
            );
            let input = DistillInput::student(z.clone())
                .sparse_teacher(ids, lp.clone())
                .attach_teacher()
                .mask(mask_tensor(&mask));
            let total = loss.forward(&input).unwrap().total;
            let value = values(total.clone())[0];
            let grads = total.backward();
            (
                value,
                values(z.grad(&grads).unwrap()),
                values(lp.grad(&grads).unwrap()),
            )
        };
        let (value, gz, gt) = run(&zs, &lps);
        assert!(value > 0.0);
        let nz = numeric_grad(&|z| run(&z, &lps).0, &zs, 1e-6);
        let nt = numeric_grad(&|t| run(&zs, &t).0, &lps, 1e-6);
        close("student logits", &gz, &nz, 1e-6, 1e-9).unwrap();
        close("teacher log-probabilities", &gt, &nt, 1e-6, 1e-9).unwrap();
        assert!(
            gt.iter().any(|g| g.abs() > 1e-6),
            "the margin carries a teacher gradient"
        );
    }

    /// The sampled-token estimator's gradient is `(lp_s − lp_t)·∇lp_s` — central differences of
    /// `c·lp_s(z)` with `c` held at its value — times the clipped importance weight when an old
    /// policy is given; masked tokens count nothing, and logits of magnitude 1e4 stay finite.
    #[test]
    fn sampled_token_gradient_is_the_score_function_estimate() {
        use burn_distill::token::{OldLogProbs, SampledTokenConfig};
        let (n, v) = (4, 6);
        let (zs, zt) = (det(n * v, 31, 2.0), det(n * v, 32, 2.0));
        let labels = vec![1i64, -100, 5, 0];
        let old = vec![-1.0, 0.0, -30.0, -0.5];
        let lp = |z: &[f64], r: usize, y: usize| {
            let row = &z[r * v..(r + 1) * v];
            let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
            row[y] - lse
        };
        for clip in [None, Some(1.5)] {
            let loss = SampledTokenConfig::new()
                .with_clip(clip)
                .with_reduction(TokenReduction::Sum)
                .init()
                .unwrap();
            let z = f64t(zs.clone(), [n, v]).require_grad();
            let mut input = DistillInput::new(z.clone(), f64t(zt.clone(), [n, v]))
                .labels(ints(labels.clone()), -100);
            if clip.is_some() {
                input = input.with(OldLogProbs(f64t(old.clone(), [n])));
            }
            let out = loss.forward(&input).unwrap();
            let got = values(z.grad(&out.total.backward()).unwrap());
            // the estimator, by finite differences of c_r · w_r · lp_s(z)_r
            let weight = |r: usize| -> f64 {
                let ls = lp(&zs, r, labels[r] as usize);
                clip.map_or(1.0, |c| (ls - old[r]).clamp(-20.0, 20.0).exp().min(c))
            };
            let f = |z: Vec<f64>| -> f64 {
                (0..n)
                    .filter(|&r| labels[r] >= 0)
                    .map(|r| {
                        let y = labels[r] as usize;
                        let c = lp(&zs, r, y) - lp(&zt, r, y);
                        c * weight(r) * lp(&z, r, y)
                    })
                    .sum()
            };
            let want = numeric_grad(&f, &zs, 1e-6);
            close(&format!("clip {clip:?}"), &got, &want, 1e-6, 1e-9).unwrap();
            assert!(got[v..2 * v].iter().all(|g| *g == 0.0), "the masked token");
        }
        let big = |seed| f64t(det(n * v, seed, 1e4), [n, v]);
        let input =
            DistillInput::new(big(33).require_grad(), big(34)).labels(ints(vec![0, 1, 2, 3]), -100);
        let loss = SampledTokenConfig::new().init().unwrap();
        assert!(loss.forward(&input).unwrap().value().is_finite());
        assert!(
            SampledTokenConfig::new()
                .with_clip(Some(0.0))
                .init()
                .is_err()
        );
    }

    fn top_k_none() -> burn_distill::token::TopK {
        TopKConfig::new()
            .with_reduction(TokenReduction::None)
            .init()
            .unwrap()
    }

    /// With a frozen teacher, the lm-head path runs the divergence's fused kernel on each
    /// chunk (no graph; the gradient written over the chunk's logits; two buffers reused from
    /// chunk to chunk). It equals the same path through the composed objective (a graph per
    /// chunk) — value and the gradients of the student's hidden states, weight and bias — for
    /// forward KL (T = 2 with T²), JSD(0.3), JSD(0) and JSD(1), every reduction, a hard-label
    /// term, masks (one with no valid token), chunk sizes that do not divide N and a
    /// PyTorch-layout head, in f64; and it is finite at logits of magnitude 1e4 in f32.
    #[test]
    fn fused_linear_kernel_path_equals_the_graph_path() {
        let (n, h, ht, v) = (7, 5, 4, 9);
        let inner = |which: usize, fused: bool| -> Box<dyn TokenDivergence> {
            let none = TokenReduction::None;
            match which {
                0 => Box::new(
                    ForwardKlConfig::new()
                        .with_temperature(2.0)
                        .with_t_squared(true)
                        .with_reduction(none)
                        .with_fused(fused)
                        .init()
                        .unwrap(),
                ),
                k => Box::new(
                    JsdConfig::new()
                        .with_beta([0.3, 0.0, 1.0][k - 1])
                        .with_temperature(1.5)
                        .with_reduction(none)
                        .with_fused(fused)
                        .init()
                        .unwrap(),
                ),
            }
        };
        let masks = [
            Some(vec![true, true, false, true, true, false, true]),
            Some(vec![false; 7]),
            None,
        ];
        struct Case<'a> {
            reduction: TokenReduction,
            hard: f64,
            mask: &'a Option<Vec<bool>>,
            chunk: usize,
            torch: bool,
            dtype: DType,
            scale: f64,
        }
        // value and the student's three gradients
        let run = |loss: Box<dyn TokenDivergence>, c: &Case| {
            let leaf = |len, seed, shape: [usize; 2]| {
                f64t(det(len, seed, c.scale), shape)
                    .cast(c.dtype)
                    .require_grad()
            };
            let x = leaf(n * h, 41, [n, h]);
            let w = match c.torch {
                true => leaf(h * v, 42, [v, h]),
                false => leaf(h * v, 42, [h, v]),
            };
            let b = f64t(det(v, 43, 0.5), [v]).cast(c.dtype).require_grad();
            let x2 = f64t(det(n * ht, 44, c.scale), [n, ht]).cast(c.dtype);
            let w2 = f64t(det(ht * v, 45, 1.0), [ht, v]).cast(c.dtype);
            let b2 = f64t(det(v, 46, 0.5), [v]).cast(c.dtype);
            let student = match c.torch {
                true => LmHead::torch(x.clone(), w.clone(), Some(b.clone())),
                false => LmHead::new(x.clone(), w.clone(), Some(b.clone())),
            };
            let input = DistillInput::features_only().with(LmHeads {
                student,
                teacher: TeacherHead::Head(LmHead::new(x2, w2, Some(b2))),
            });
            let input = match c.mask {
                Some(m) => {
                    let labels = (0..n).map(|i| if m[i] { (i % v) as i64 } else { -100 });
                    input.labels(ints(labels.collect()), -100)
                }
                None => input.targets(ints((0..n).map(|i| (3 * i % v) as i64).collect())),
            };
            let total = FusedLinearConfig::new()
                .with_chunk_size(Some(c.chunk))
                .with_reduction(c.reduction)
                .with_hard_weight(c.hard)
                .with_soft_weight(0.7)
                .init(loss)
                .unwrap()
                .forward(&input)
                .unwrap()
                .total;
            let value = values(total.clone());
            let grads = total.backward();
            [
                value,
                values(x.grad(&grads).unwrap()),
                values(w.grad(&grads).unwrap()),
                values(b.grad(&grads).unwrap()),
            ]
        };
        for which in 0..4 {
            assert!(inner(which, true).token_kernel().is_some());
            assert!(inner(which, false).token_kernel().is_none());
            for (reduction, hard) in [
                (TokenReduction::TokenMean, 0.0),
                (TokenReduction::Sum, 0.4),
                (TokenReduction::ElementMean, 0.2),
                (TokenReduction::DivideBy(3.0), 0.3),
            ] {
                for mask in &masks {
                    for chunk in [1, 3, 7, 50] {
                        for torch in [false, chunk == 3] {
                            let case = Case {
                                reduction,
                                hard,
                                mask,
                                chunk,
                                torch,
                                dtype: DType::F64,
                                scale: 1.0,
                            };
                            let got = run(inner(which, true), &case);
                            let want = run(inner(which, false), &case);
                            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                                let what = format!(
                                    "loss {which}, {reduction:?}, hard {hard}, mask {mask:?}, chunk {chunk}, torch {torch}, part {k}"
                                );
                                close(&what, g, w, 1e-12, 1e-14).unwrap();
                            }
                        }
                    }
                }
            }
            // logits of magnitude 1e4 in f32: finite value and gradients
            let case = Case {
                reduction: TokenReduction::TokenMean,
                hard: 0.5,
                mask: &masks[0],
                chunk: 3,
                torch: false,
                dtype: DType::F32,
                scale: 3e3,
            };
            for part in &run(inner(which, true), &case) {
                assert!(part.iter().all(|x| x.is_finite()), "loss {which}: {part:?}");
            }
        }
    }

    /// A frozen teacher given as logits: no teacher gradient, the same student gradient; the
    /// automatic chunk size; an input without `LmHeads` is a typed error.
    #[test]
    fn fused_linear_with_teacher_logits_and_errors() {
        let (n, h, v) = (4, 3, 6);
        let x = f64t(det(n * h, 7, 1.0), [n, h]).require_grad();
        let w = f64t(det(h * v, 8, 1.0), [h, v]).require_grad();
        let zt = f64t(det(n * v, 9, 2.0), [n, v]);
        let fkl = ForwardKlConfig::new()
            .with_reduction(TokenReduction::None)
            .init()
            .unwrap();
        let fused = FusedLinearConfig::new().init(fkl).unwrap();
        let input = DistillInput::features_only().with(LmHeads {
            student: LmHead::new(x.clone(), w.clone(), None),
            teacher: TeacherHead::Logits(zt.clone()),
        });
        let out = fused.forward(&input).unwrap();
        let dense = ForwardKlConfig::new()
            .init()
            .unwrap()
            .forward(&DistillInput::new(x.clone().matmul(w.clone()), zt))
            .unwrap();
        assert!((out.value() - dense.value()).abs() < 1e-12);
        let (g1, g2) = (out.total.backward(), dense.total.backward());
        close(
            "dh",
            &values(x.grad(&g1).unwrap()),
            &values(x.grad(&g2).unwrap()),
            1e-12,
            1e-14,
        )
        .unwrap();
        let err = fused.forward(&DistillInput::features_only()).unwrap_err();
        assert!(matches!(err, DistillError::MissingInput { .. }), "{err}");
        let per_mean = FusedLinearConfig::new()
            .init(ForwardKlConfig::new().init().unwrap())
            .unwrap();
        assert!(matches!(
            per_mean.forward(&input),
            Err(DistillError::InvalidConfig { .. })
        ));
        assert!(
            FusedLinearConfig::new()
                .with_reduction(TokenReduction::None)
                .init(ForwardKlConfig::new().init().unwrap())
                .is_err()
        );
    }

    /// Logit scale and soft-capping on either head: the lm-head path equals the dense
    /// objective on the transformed logits (value and the gradients of both heads' hidden
    /// states and weights), with and without a hard-label term; a bad transform is an error.
    #[test]
    fn fused_linear_applies_the_heads_logit_transforms() {
        let (n, h, v) = (5, 3, 7);
        let x = f64t(det(n * h, 61, 1.0), [n, h]).require_grad();
        let w = f64t(det(h * v, 62, 3.0), [h, v]).require_grad();
        let xt = f64t(det(n * h, 63, 1.0), [n, h]).require_grad();
        let wt = f64t(det(h * v, 64, 3.0), [h, v]).require_grad();
        let labels = Tensor::<1, Int>::from_data(
            burn::tensor::TensorData::new(vec![0i64, 3, -100, 6, 2], [n]),
            &device(),
        );
        for hard in [0.0, 0.4] {
            let jsd = JsdConfig::new()
                .with_beta(0.3)
                .with_temperature(1.5)
                .with_reduction(TokenReduction::None)
                .init()
                .unwrap();
            let fused = FusedLinearConfig::new()
                .with_chunk_size(Some(2))
                .with_hard_weight(hard)
                .init(jsd)
                .unwrap();
            let heads = LmHeads {
                student: LmHead::new(x.clone(), w.clone(), None)
                    .with_logit_scale(0.5)
                    .with_soft_cap(2.0),
                teacher: TeacherHead::Head(
                    LmHead::new(xt.clone(), wt.clone(), None).with_soft_cap(3.0),
                ),
            };
            let input = DistillInput::features_only()
                .labels(labels.clone(), -100)
                .with(heads)
                .attach_teacher();
            let out = fused.forward(&input).unwrap();
            // dense: the same transforms on materialised logits
            let zs = (x.clone().matmul(w.clone()) * 0.5 * 0.5).tanh() * 2.0;
            let zt = (xt.clone().matmul(wt.clone()) * (1.0 / 3.0)).tanh() * 3.0;
            let dense_jsd = JsdConfig::new()
                .with_beta(0.3)
                .with_temperature(1.5)
                .init()
                .unwrap();
            let dense_input = DistillInput::new(zs.clone(), zt)
                .labels(labels.clone(), -100)
                .attach_teacher();
            let mut dense = dense_jsd.forward(&dense_input).unwrap().total;
            if hard > 0.0 {
                // the mean cross-entropy over the four counted tokens
                let y = Tensor::<2, Int>::from_data(
                    burn::tensor::TensorData::new(vec![0i64, 3, 0, 6, 2], [n, 1]),
                    &device(),
                );
                let keep = f64t(vec![1.0, 1.0, 0.0, 1.0, 1.0], [n, 1]);
                let nll = -(burn::tensor::activation::log_softmax(zs, 1).gather(1, y) * keep).sum()
                    * (1.0 / 4.0);
                dense = dense + nll * hard;
            }
            assert!(
                (out.value() - values(dense.clone())[0]).abs() < 1e-12,
                "hard {hard}"
            );
            let (g1, g2) = (out.total.backward(), dense.backward());
            for (name, leaf) in [("h", &x), ("W", &w), ("h_t", &xt), ("W_t", &wt)] {
                close(
                    name,
                    &values(leaf.grad(&g1).unwrap()),
                    &values(leaf.grad(&g2).unwrap()),
                    1e-10,
                    1e-12,
                )
                .unwrap();
            }
        }
        let bad = LmHeads {
            student: LmHead::new(x.clone(), w.clone(), None).with_soft_cap(0.0),
            teacher: TeacherHead::Head(LmHead::new(xt.clone(), wt.clone(), None)),
        };
        let fkl = FusedLinearConfig::new()
            .init(
                ForwardKlConfig::new()
                    .with_reduction(TokenReduction::None)
                    .init()
                    .unwrap(),
            )
            .unwrap();
        assert!(matches!(
            fkl.forward(&DistillInput::features_only().with(bad)),
            Err(DistillError::InvalidConfig { .. })
        ));
    }

    /// Vocabularies of different sizes: `Aligned` equals its inner objective on logits padded
    /// (or truncated) by hand, with gradients only on the real entries; through `FusedLinear`
    /// two heads of different `V` equal the dense path; without `Aligned` both refuse.
    #[test]
    fn aligned_vocabularies_pad_or_truncate() {
        use burn_distill::token::{Aligned, VocabAlignment};
        let (n, h, vs, vt) = (4, 3, 5, 7);
        let x = f64t(det(n * h, 31, 1.0), [n, h]).require_grad();
        let w = f64t(det(h * vs, 32, 1.0), [h, vs]).require_grad();
        let zt = f64t(det(n * vt, 33, 2.0), [n, vt]);
        let jsd = || {
            JsdConfig::new()
                .with_beta(0.3)
                .with_reduction(TokenReduction::None)
                .init()
                .unwrap()
        };
        let zs = x.clone().matmul(w.clone());
        let padded = Tensor::cat(
            vec![
                zs.clone(),
                Tensor::<2>::zeros([n, vt - vs], (&device(), DType::F64)),
            ],
            1,
        );
        let by_hand = jsd()
            .forward(&DistillInput::new(padded, zt.clone()))
            .unwrap()
            .total;
        let aligned = Aligned::new(jsd(), VocabAlignment::Pad { logit: 0.0 }).unwrap();
        let got = aligned
            .forward(&DistillInput::new(zs.clone(), zt.clone()))
            .unwrap()
            .total;
        close(
            "pad",
            &values(got.clone()),
            &values(by_hand.clone()),
            1e-14,
            1e-15,
        )
        .unwrap();
        let truncated = jsd()
            .forward(&DistillInput::new(zs.clone(), zt.clone().narrow(1, 0, vs)))
            .unwrap()
            .total;
        let cut = Aligned::new(jsd(), VocabAlignment::Truncate).unwrap();
        let got_cut = cut
            .forward(&DistillInput::new(zs.clone(), zt.clone()))
            .unwrap()
            .total;
        close(
            "truncate",
            &values(got_cut),
            &values(truncated),
            1e-14,
            1e-15,
        )
        .unwrap();
        // a teacher smaller than the student cannot be truncated; without Aligned: refused
        let small = zt.clone().narrow(1, 0, 3);
        assert!(matches!(
            cut.forward(&DistillInput::new(zs.clone(), small)),
            Err(DistillError::ClassMismatch { .. })
        ));
        assert!(matches!(
            jsd().forward(&DistillInput::new(zs.clone(), zt.clone())),
            Err(DistillError::ClassMismatch { .. })
        ));
        assert!(Aligned::new(jsd(), VocabAlignment::Pad { logit: f64::NAN }).is_err());
        // through the lm-head, in chunks: the dense aligned path's value and gradients
        let fused = FusedLinearConfig::new()
            .with_chunk_size(Some(3))
            .init(aligned.clone())
            .unwrap();
        let input = DistillInput::features_only().with(LmHeads {
            student: LmHead::new(x.clone(), w.clone(), None),
            teacher: TeacherHead::Logits(zt.clone()),
        });
        let out = fused.forward(&input).unwrap();
        let dense = got.clone().mean();
        assert!((out.value() - values(dense.clone())[0]).abs() < 1e-12);
        let (g1, g2) = (out.total.backward(), dense.backward());
        close(
            "dh",
            &values(x.grad(&g1).unwrap()),
            &values(x.grad(&g2).unwrap()),
            1e-12,
            1e-14,
        )
        .unwrap();
        close(
            "dW",
            &values(w.grad(&g1).unwrap()),
            &values(w.grad(&g2).unwrap()),
            1e-12,
            1e-14,
        )
        .unwrap();
        let plain = FusedLinearConfig::new().init(jsd()).unwrap();
        assert!(matches!(
            plain.forward(&input),
            Err(DistillError::ShapeMismatch { .. })
        ));
    }

    /// The fused forward KL (KD's kernel per token) and JSD(β) (its own kernel; KD's at β = 0
    /// and 1) equal their composed twins — value and both gradients, masked rows, T ≠ 1 — in
    /// f64 and in f32, and at logits of magnitude 1e4; and the lm-head path through them gives
    /// bit-identical results on one thread and on two.
    #[test]
    fn fused_token_divergences_equal_composed_and_ignore_the_thread_count() {
        let (n, v) = (6, 11);
        let mask = [true, false, true, true, false, true];
        let loss = |which: usize, fused: bool, reduction| -> Box<dyn TokenDivergence> {
            match which {
                0 => Box::new(
                    ForwardKlConfig::new()
                        .with_temperature(2.0)
                        .with_reduction(reduction)
                        .with_fused(fused)
                        .init()
                        .unwrap(),
                ),
                k => Box::new(
                    JsdConfig::new()
                        .with_beta([0.3, 0.0, 1.0, 0.8][k - 1])
                        .with_temperature(2.0)
                        .with_reduction(reduction)
                        .with_fused(fused)
                        .init()
                        .unwrap(),
                ),
            }
        };
        let cases = [
            (DType::F64, 3.0, 1e-12),
            (DType::F32, 3.0, 2e-5),
            (DType::F32, 1e4, 2e-5),
        ];
        for which in 0..5 {
            for (dtype, scale, tol) in cases {
                let run = |fused: bool| {
                    let leaf = |seed| {
                        f64t(det(n * v, seed, scale), [n, v])
                            .cast(dtype)
                            .require_grad()
                    };
                    let (s, t) = (leaf(21), leaf(22));
                    let input = DistillInput::new(s.clone(), t.clone())
                        .mask(mask_tensor(&mask))
                        .attach_teacher();
                    let total = loss(which, fused, TokenReduction::TokenMean)
                        .forward(&input)
                        .unwrap()
                        .total;
                    let value = values(total.clone());
                    let grads = total.backward();
                    [
                        value,
                        values(s.grad(&grads).unwrap()),
                        values(t.grad(&grads).unwrap()),
                    ]
                };
                let (fused, composed) = (run(true), run(false));
                for (k, (f, c)) in fused.iter().zip(&composed).enumerate() {
                    let what = format!("loss {which}, {dtype:?}, scale {scale}, part {k}");
                    assert!(f.iter().all(|x| x.is_finite()), "{what}: {f:?}");
                    close(&what, f, c, tol, tol).unwrap();
                }
            }
        }

        // the lm-head path (gemm accumulation, the fused kernels): threads change nothing
        let (n, h, v) = (40, 16, 300);
        for which in [0, 1] {
            let run = |threads: usize| {
                burn_distill::fused::set_threads(threads);
                let leaf = |len, seed, shape| {
                    f64t(det(len, seed, 1.0), shape)
                        .cast(DType::F32)
                        .require_grad()
                };
                let (x, w) = (leaf(n * h, 31, [n, h]), leaf(h * v, 32, [h, v]));
                let zt = f64t(det(n * v, 33, 2.0), [n, v]).cast(DType::F32);
                let fused = FusedLinearConfig::new()
                    .with_chunk_size(Some(7))
                    .init(loss(which, true, TokenReduction::None))
                    .unwrap();
                let input = DistillInput::features_only().with(LmHeads {
                    student: LmHead::new(x.clone(), w.clone(), None),
                    teacher: TeacherHead::Logits(zt),
                });
                let total = fused.forward(&input).unwrap().total;
                let value = values(total.clone());
                let grads = total.backward();
                burn_distill::fused::set_threads(0);
                [
                    value,
                    values(x.grad(&grads).unwrap()),
                    values(w.grad(&grads).unwrap()),
                ]
            };
            let (one, two) = (run(1), run(2));
            for (k, (a, b)) in one.iter().zip(&two).enumerate() {
                assert!(
                    a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "loss {which}: part {k} differs between one and two threads"
                );
            }
        }
    }

    fn top_k_input(s: Tensor<2>, ids: Vec<i64>, lp: Vec<f64>, n: usize, k: usize) -> DistillInput {
        let ids =
            Tensor::<2, Int>::from_data(burn::tensor::TensorData::new(ids, [n, k]), &device());
        DistillInput::student(s).sparse_teacher(ids, f64t(lp, [n, k]))
    }

    /// JSD(β) from a teacher that is 0 outside its top k (`Zero`): each student probability
    /// outside adds `−(1 − β)·q·ln(1 − β)`; the value against the definition over all V.
    #[test]
    fn top_k_jsd_beta_with_zero_missing_mass_is_the_jsd_over_the_vocabulary() {
        let (v, k, beta) = (6, 3, 0.3);
        let s = det(v, 21, 2.0);
        let lp = [-0.4, -1.5, -2.5];
        let ids = [2usize, 0, 5];
        let top = TopKConfig::new()
            .with_divergence(TopKDivergence::Jsd)
            .with_beta(beta)
            .init()
            .unwrap();
        let got = top
            .forward(&top_k_input(
                f64t(s.clone(), [1, v]),
                ids.iter().map(|&i| i as i64).collect(),
                lp.to_vec(),
                1,
                k,
            ))
            .unwrap()
            .value();
        let z: f64 = s.iter().map(|x| x.exp()).sum();
        let q: Vec<f64> = s.iter().map(|x| x.exp() / z).collect();
        let mass: f64 = lp.iter().map(|x| x.exp()).sum();
        let mut p = vec![0.0; v];
        for (j, l) in ids.iter().zip(lp) {
            p[*j] = l.exp() / mass;
        }
        let kl = |a: &[f64], b: &[f64]| -> f64 {
            a.iter()
                .zip(b)
                .map(|(x, y)| if *x == 0.0 { 0.0 } else { x * (x / y).ln() })
                .sum()
        };
        let m: Vec<f64> = q
            .iter()
            .zip(&p)
            .map(|(q, p)| (1.0 - beta) * q + beta * p)
            .collect();
        let want = beta * kl(&p, &m) + (1.0 - beta) * kl(&q, &m);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        assert!(
            TopKConfig::new()
                .with_divergence(TopKDivergence::Jsd)
                .with_beta(1.0)
                .init()
                .is_err()
        );
    }

    /// A teacher entry at −∞ (a server that returned fewer than k tokens) is outside the
    /// support: each row equals the same teacher without that entry, for every divergence and
    /// missing-mass rule, with finite gradients; a masked row that is all −∞ adds nothing.
    #[test]
    fn top_k_entries_at_minus_infinity_are_outside_the_support() {
        let (n, v) = (3, 6);
        let s = det(n * v, 5, 2.0);
        // rows 0 and 1 hold ids 4, 1 (and row 0 a padded third slot); row 2 is masked padding
        let ninf = f64::NEG_INFINITY;
        let lp3 = vec![-0.7, -1.9, ninf, -1.1, -1.4, -2.0, ninf, ninf, ninf];
        let ids3 = vec![4, 1, 0, 4, 1, 2, 0, 0, 0];
        let lp2 = vec![-0.7, -1.9];
        let ids2 = vec![4, 1];
        let mask = mask_tensor(&[true, true, false]);
        for missing in [
            MissingMass::Zero,
            MissingMass::SymmetricUniform,
            MissingMass::Renormalize,
        ] {
            for div in [
                TopKDivergence::ForwardKl,
                TopKDivergence::ReverseKl,
                TopKDivergence::Jsd,
                TopKDivergence::Tvd,
                TopKDivergence::SkewForwardKl,
                TopKDivergence::SkewReverseKl,
            ] {
                let Ok(top) = TopKConfig::new()
                    .with_divergence(div)
                    .with_missing(missing)
                    .with_beta(0.3)
                    .with_reduction(TokenReduction::None)
                    .init()
                else {
                    continue;
                };
                let x = f64t(s.clone(), [n, v]).require_grad();
                let out = top
                    .forward(
                        &top_k_input(x.clone(), ids3.clone(), lp3.clone(), n, 3).mask(mask.clone()),
                    )
                    .unwrap();
                let rows = values(out.total.clone());
                let g = values(x.grad(&out.total.sum().backward()).unwrap());
                assert!(
                    g.iter().all(|x| x.is_finite()),
                    "{div:?} {missing:?}: {g:?}"
                );
                assert!(
                    g[2 * v..].iter().all(|&x| x == 0.0),
                    "{div:?} {missing:?}: masked row"
                );
                assert_eq!(rows[2], 0.0, "{div:?} {missing:?}: masked row");
                let alone = top
                    .forward(&top_k_input(
                        f64t(s[..v].to_vec(), [1, v]),
                        ids2.clone(),
                        lp2.clone(),
                        1,
                        2,
                    ))
                    .unwrap()
                    .value();
                assert!(
                    (rows[0] - alone).abs() < 1e-12,
                    "{div:?} {missing:?}: {} vs {alone}",
                    rows[0]
                );
            }
        }
    }

    /// With every token in the top k (k = V), the sparse teacher under `Zero` is the dense one:
    /// `TopK` equals the dense forward KL, JSD(½) and TVD.
    #[test]
    fn top_k_with_the_whole_vocabulary_is_the_dense_objective() {
        let (n, v) = (3, 5);
        let (s, t) = (det(n * v, 11, 2.0), det(n * v, 12, 2.0));
        let mut ids = Vec::new();
        let mut lp = Vec::new();
        for i in 0..n {
            let row = &t[i * v..(i + 1) * v];
            let m = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + row.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
            // in a shuffled order
            for j in [3, 0, 4, 1, 2] {
                ids.push(j as i64);
                lp.push(row[j] - lse);
            }
        }
        let dense_input = DistillInput::new(f64t(s.clone(), [n, v]), f64t(t.clone(), [n, v]));
        for (div, dense) in [
            (
                TopKDivergence::ForwardKl,
                ForwardKlConfig::new().init().unwrap().boxed(),
            ),
            (
                TopKDivergence::Jsd,
                JsdConfig::new().with_beta(0.5).init().unwrap().boxed(),
            ),
            (
                TopKDivergence::Tvd,
                TvdConfig::new().init().unwrap().boxed(),
            ),
        ] {
            let top = TopKConfig::new().with_divergence(div).init().unwrap();
            let got = top
                .forward(&top_k_input(
                    f64t(s.clone(), [n, v]),
                    ids.clone(),
                    lp.clone(),
                    n,
                    v,
                ))
                .unwrap()
                .value();
            let want = dense.forward(&dense_input).unwrap().value();
            assert!((got - want).abs() < 1e-12, "{div:?}: {got} vs {want}");
        }
        assert!(
            TopKConfig::new()
                .with_divergence(TopKDivergence::ReverseKl)
                .init()
                .is_err()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// `TopK`'s student gradient against central differences, every divergence and
        /// missing-mass rule (k < V).
        #[test]
        fn top_k_gradients_match_finite_differences(seed in 0u64..1000, k in 1usize..4) {
            let (n, v) = (3, 6);
            let s = det(n * v, seed, 2.0);
            let t = det(n * v, seed + 7, 2.0);
            let mut ids = Vec::new();
            let mut lp = Vec::new();
            for i in 0..n {
                let row = &t[i * v..(i + 1) * v];
                let m = row.iter().cloned().fold(f64::MIN, f64::max);
                let lse = m + row.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
                let mut order: Vec<usize> = (0..v).collect();
                order.sort_by(|a, b| row[*b].partial_cmp(&row[*a]).unwrap());
                for &j in &order[..k] {
                    ids.push(j as i64);
                    lp.push(row[j] - lse);
                }
            }
            for missing in [MissingMass::Zero, MissingMass::SymmetricUniform] {
                for div in [TopKDivergence::ForwardKl, TopKDivergence::ReverseKl, TopKDivergence::Jsd, TopKDivergence::Tvd] {
                    if div == TopKDivergence::ReverseKl && missing == MissingMass::Zero {
                        continue;
                    }
                    let top = TopKConfig::new().with_divergence(div).with_missing(missing).with_temperature(1.5).init().unwrap();
                    let x = f64t(s.clone(), [n, v]).require_grad();
                    let out = top.forward(&top_k_input(x.clone(), ids.clone(), lp.clone(), n, k)).unwrap();
                    prop_assert!(out.value().is_finite());
                    let g = values(x.grad(&out.total.backward()).unwrap());
                    let value = |sv: Vec<f64>| top.forward(&top_k_input(f64t(sv, [n, v]), ids.clone(), lp.clone(), n, k)).unwrap().value();
                    let num = numeric_grad(&value, &s, 1e-6);
                    close(&format!("{div:?} {missing:?}"), &g, &num, 1e-5, 1e-8).map_err(TestCaseError::fail)?;
                }
            }
        }

        /// `TopK` on the student's own top k (TRL's self-distillation support), JSD(β) with a
        /// tail bucket or renormalised: the value against a scalar transcription of the
        /// definition, and both logits' gradients against central differences.
        #[test]
        fn top_k_on_the_student_support_matches_its_definition(
            seed in 0u64..1000,
            k in 1usize..5,
            beta in prop::sample::select(vec![0.0, 0.3, 0.5, 1.0]),
            tail in any::<bool>(),
        ) {
            let (n, v) = (3, 6);
            let (s, t) = (det(n * v, seed, 2.0), det(n * v, seed + 3, 2.0));
            let missing = if tail { MissingMass::SymmetricUniform } else { MissingMass::Renormalize };
            let top = TopKConfig::new()
                .with_support(TopKSupport::Student(k))
                .with_divergence(TopKDivergence::Jsd)
                .with_beta(beta)
                .with_missing(missing)
                .init()
                .unwrap();
            let value = |sv: &[f64], tv: &[f64]| -> f64 {
                let log_softmax = |r: &[f64]| -> Vec<f64> {
                    let m = r.iter().cloned().fold(f64::MIN, f64::max);
                    let lse = m + r.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
                    r.iter().map(|z| z - lse).collect()
                };
                let mut total = 0.0;
                for i in 0..n {
                    let (ls, lt) = (log_softmax(&sv[i * v..(i + 1) * v]), log_softmax(&tv[i * v..(i + 1) * v]));
                    let mut order: Vec<usize> = (0..v).collect();
                    order.sort_by(|a, b| ls[*b].partial_cmp(&ls[*a]).unwrap());
                    let pick = |l: &[f64]| -> Vec<f64> {
                        let mut p: Vec<f64> = order[..k].iter().map(|&j| l[j].exp()).collect();
                        let mass: f64 = p.iter().sum();
                        match tail {
                            true => p.push(1.0 - mass),
                            false => p.iter_mut().for_each(|x| *x /= mass),
                        }
                        p
                    };
                    let (q, p) = (pick(&ls), pick(&lt));
                    let kl = |a: &[f64], b: &[f64]| -> f64 {
                        a.iter().zip(b).map(|(x, y)| if *x == 0.0 { 0.0 } else { x * (x / y).ln() }).sum()
                    };
                    total += match beta {
                        0.0 => kl(&p, &q),
                        1.0 => kl(&q, &p),
                        b => {
                            let m: Vec<f64> = q.iter().zip(&p).map(|(q, p)| (1.0 - b) * q + b * p).collect();
                            b * kl(&p, &m) + (1.0 - b) * kl(&q, &m)
                        }
                    };
                }
                total / n as f64
            };
            let (xs, xt) = (f64t(s.clone(), [n, v]).require_grad(), f64t(t.clone(), [n, v]).require_grad());
            let out = top.forward(&DistillInput::new(xs.clone(), xt.clone()).attach_teacher()).unwrap();
            let got = out.value();
            prop_assert!((got - value(&s, &t)).abs() < 1e-12, "{got} vs {}", value(&s, &t));
            let grads = out.total.backward();
            let (gs, gt) = (values(xs.grad(&grads).unwrap()), values(xt.grad(&grads).unwrap()));
            close("student", &gs, &numeric_grad(&|x| value(&x, &t), &s, 1e-6), 1e-5, 1e-8).map_err(TestCaseError::fail)?;
            close("teacher", &gt, &numeric_grad(&|x| value(&s, &x), &t, 1e-6), 1e-5, 1e-8).map_err(TestCaseError::fail)?;
        }

        /// `HiddenState`'s gradients (student and teacher taps, projections) against central
        /// differences, MSE and cosine, with a mask.
        #[test]
        fn hidden_state_gradients_match_finite_differences(seed in 0u64..1000) {
            let (n, hs, ht) = (4, 3, 5);
            let (s1, t2) = (det(n * hs, seed, 1.0), det(n * ht, seed + 1, 1.0));
            let wv = det(hs * ht, seed + 2, 1.0);
            let mask = vec![true, false, true, true];
            for loss in [HiddenLoss::Mse, HiddenLoss::Cosine] {
                let mut hidden = HiddenStateConfig::new(hs, ht, vec![("s1".into(), "t2".into())])
                    .with_loss(loss)
                    .init(&device())
                    .unwrap();
                let input = |s: Vec<f64>, t: Vec<f64>| {
                    DistillInput::features_only()
                        .student_feature("s1", f64t(s, [n, hs]))
                        .teacher_feature("t2", f64t(t, [n, ht]))
                        .mask(mask_tensor(&mask))
                };
                let value_at = |hidden: &burn_distill::token::HiddenState, s: Vec<f64>, t: Vec<f64>| hidden.forward(&input(s, t)).unwrap().value();
                hidden.projections[0].weight = Param::from_tensor(f64t(wv.clone(), [hs, ht]));
                let (sl, tl) = (f64t(s1.clone(), [n, hs]).require_grad(), f64t(t2.clone(), [n, ht]).require_grad());
                let tracked = DistillInput::features_only()
                    .student_feature("s1", sl.clone())
                    .teacher_feature("t2", tl.clone())
                    .mask(mask_tensor(&mask))
                    .attach_teacher();
                let grads = hidden.forward(&tracked).unwrap().total.backward();
                let num_s = numeric_grad(&|x| value_at(&hidden, x, t2.clone()), &s1, 1e-6);
                let num_t = numeric_grad(&|x| value_at(&hidden, s1.clone(), x), &t2, 1e-6);
                let fail = |m: String| TestCaseError::fail(format!("{loss:?}: {m}"));
                close("d/ds", &values(sl.grad(&grads).unwrap()), &num_s, 1e-5, 1e-8).map_err(fail)?;
                close("d/dt", &values(tl.grad(&grads).unwrap()), &num_t, 1e-5, 1e-8).map_err(fail)?;
                let gp = burn::optim::GradientsParams::from_grads(grads, &hidden);
                let gw = values(gp.get::<2>(hidden.projections[0].weight.id).unwrap());
                let num_w = numeric_grad(&|x| {
                    let mut h = hidden.clone();
                    h.projections[0].weight = Param::from_tensor(f64t(x, [hs, ht]));
                    value_at(&h, s1.clone(), t2.clone())
                }, &wv, 1e-6);
                close("d/dW", &gw, &num_w, 1e-5, 1e-8).map_err(fail)?;
            }
        }
    }
}

/// TAID and the adaptive KL: values against plain transcriptions of their definitions, and
/// gradients against finite differences (with what each holds constant held constant).
mod adaptive {
    use super::*;
    use burn_distill::token::{AdaptiveKlConfig, AklVariant, TaidConfig, TaidState};

    fn log_softmax(r: &[f64]) -> Vec<f64> {
        let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + r.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
        r.iter().map(|z| z - lse).collect()
    }

    /// `Σ p (log p − log q)` over the entries where `p > 0`.
    fn kl(lp: &[f64], lq: &[f64]) -> f64 {
        lp.iter()
            .zip(lq)
            .filter(|(p, _)| p.is_finite())
            .map(|(p, q)| p.exp() * (p - q))
            .sum()
    }

    /// TAID's mean over rows of `KL(p' ‖ p_s)`, the target built from `target_s` (the student
    /// logits the target sees, held apart so a finite difference can hold them fixed).
    fn taid(s: &[f64], target_s: &[f64], t: &[f64], v: usize, at: f64) -> f64 {
        let n = s.len() / v;
        (0..n)
            .map(|i| {
                let r = i * v..(i + 1) * v;
                let mix: Vec<f64> = target_s[r.clone()]
                    .iter()
                    .zip(&t[r.clone()])
                    .map(|(a, b)| (1.0 - at) * a + at * b)
                    .collect();
                kl(&log_softmax(&mix), &log_softmax(&s[r]))
            })
            .sum::<f64>()
            / n as f64
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// TAID at t ∈ [0, 1]: the value is the KL to the interpolated target; the student's
        /// gradient is the value's with the target held constant (it sees `sg(z_s)`), the
        /// teacher's (attached) the value's.
        #[test]
        fn taid_matches_its_definition(seed in 0u64..1000, at in 0.0f64..=1.0) {
            let (n, v) = (3, 5);
            let (s, t) = (noise(seed, n * v, 2.0), noise(seed + 1, n * v, 2.0));
            let loss = TaidConfig::new().with_t_start(at).init().unwrap();
            let (xs, xt) = (f64t(s.clone(), [n, v]).require_grad(), f64t(t.clone(), [n, v]).require_grad());
            let out = loss.forward(&DistillInput::new(xs.clone(), xt.clone()).attach_teacher()).unwrap();
            let want = taid(&s, &s, &t, v, at);
            prop_assert!((out.value() - want).abs() < 1e-12, "{} vs {want}", out.value());
            let grads = out.total.backward();
            let gs = values(xs.grad(&grads).unwrap());
            let gt = values(xt.grad(&grads).unwrap());
            close("student", &gs, &numeric_grad(&|x| taid(&x, &s, &t, v, at), &s, 1e-6), 1e-6, 1e-8).map_err(TestCaseError::fail)?;
            close("teacher", &gt, &numeric_grad(&|x| taid(&s, &s, &x, v, at), &t, 1e-6), 1e-6, 1e-8).map_err(TestCaseError::fail)?;
        }

        /// The authors' AKL: the value against a transcription of their code (teacher sorted
        /// in decreasing order, head = cumulative mass ≤ μ plus the first token, gaps with the
        /// student detached); the student's gradient is the KLs' with the weights held fixed,
        /// the teacher's the value's.
        #[test]
        fn official_akl_matches_the_authors_formula(seed in 0u64..1000, mu in 0.2f64..0.8) {
            let (n, v) = (3, 6);
            let (s, t) = (noise(seed, n * v, 2.0), noise(seed + 5, n * v, 2.0));
            // weights from (ws, t), KLs from (s, t)
            let akl = |s: &[f64], ws: &[f64], t: &[f64]| -> f64 {
                (0..n).map(|i| {
                    let r = i * v..(i + 1) * v;
                    let (ls, lw, lt) = (log_softmax(&s[r.clone()]), log_softmax(&ws[r.clone()]), log_softmax(&t[r]));
                    let mut order: Vec<usize> = (0..v).collect();
                    order.sort_by(|a, b| lt[*b].total_cmp(&lt[*a]));
                    let (mut cum, mut head, mut tail) = (0.0, 0.0, 0.0);
                    for (k, &j) in order.iter().enumerate() {
                        cum += lt[j].exp();
                        let gap = (lt[j].exp() - lw[j].exp()).abs();
                        if k == 0 || cum <= mu { head += gap } else { tail += gap }
                    }
                    (head * kl(&lt, &ls) + tail * kl(&ls, &lt)) / (head + tail)
                }).sum::<f64>() / n as f64
            };
            let loss = AdaptiveKlConfig::new().with_mu(mu).init().unwrap();
            let (xs, xt) = (f64t(s.clone(), [n, v]).require_grad(), f64t(t.clone(), [n, v]).require_grad());
            let out = loss.forward(&DistillInput::new(xs.clone(), xt.clone()).attach_teacher()).unwrap();
            let want = akl(&s, &s, &t);
            prop_assert!((out.value() - want).abs() < 1e-12, "{} vs {want}", out.value());
            let grads = out.total.backward();
            let gs = values(xs.grad(&grads).unwrap());
            let gt = values(xt.grad(&grads).unwrap());
            close("student", &gs, &numeric_grad(&|x| akl(&x, &s, &t), &s, 1e-6), 1e-6, 1e-8).map_err(TestCaseError::fail)?;
            close("teacher", &gt, &numeric_grad(&|x| akl(&s, &s, &x), &t, 1e-6), 1e-6, 1e-8).map_err(TestCaseError::fail)?;
        }
    }

    /// A student entry at −∞ is masked vocabulary (finite values and gradients, equal to the
    /// same row without that entry); identical distributions give 0; an empty mask 0.
    #[test]
    fn masked_vocabulary_identity_and_empty_masks() {
        let (n, v) = (2, 5);
        let s = noise(3, n * v, 2.0);
        let t = noise(4, n * v, 2.0);
        let mut masked = s.clone();
        masked[2] = f64::NEG_INFINITY;
        let mut t_masked = t.clone();
        t_masked[2] = f64::NEG_INFINITY;
        let losses: Vec<(&str, Box<dyn Loss>)> = vec![
            (
                "taid",
                TaidConfig::new().with_t_start(0.6).init().unwrap().boxed(),
            ),
            (
                "taid ce",
                TaidConfig::new()
                    .with_cross_entropy(true)
                    .init()
                    .unwrap()
                    .boxed(),
            ),
            ("akl", AdaptiveKlConfig::new().init().unwrap().boxed()),
            (
                "akl taid",
                AdaptiveKlConfig::new()
                    .with_variant(AklVariant::Taid)
                    .init()
                    .unwrap()
                    .boxed(),
            ),
        ];
        for (name, loss) in &losses {
            let x = f64t(masked.clone(), [n, v]).require_grad();
            let y = f64t(t.clone(), [n, v]).require_grad();
            let out = loss
                .forward(
                    &DistillInput::new(x.clone(), y.clone())
                        .attach_teacher()
                        .mask(mask_tensor(&[true, false])),
                )
                .unwrap();
            assert!(out.value().is_finite(), "{name}");
            let grads = out.total.backward();
            for g in [
                values(x.grad(&grads).unwrap()),
                values(y.grad(&grads).unwrap()),
            ] {
                assert!(g.iter().all(|g| g.is_finite()), "{name}: {g:?}");
            }
            // TAID: the target is −∞ there too, so the entry is gone from both sides: the same
            // as both rows without it (its student weight on the teacher's side cancels)
            if name.starts_with("taid") {
                let alone = loss
                    .forward(&DistillInput::new(
                        f64t(masked[..v].to_vec(), [1, v]),
                        f64t(t_masked[..v].to_vec(), [1, v]),
                    ))
                    .unwrap()
                    .value();
                assert!(
                    (out.value() - alone).abs() < 1e-12,
                    "{name}: {} vs {alone}",
                    out.value()
                );
            }
            let same = loss
                .forward(&DistillInput::new(
                    f64t(s.clone(), [n, v]),
                    f64t(s.clone(), [n, v]),
                ))
                .unwrap()
                .value();
            if *name == "taid" || *name == "akl" {
                assert!(same.abs() < 1e-12, "{name}: {same}");
            }
            let empty = loss
                .forward(
                    &DistillInput::new(f64t(s.clone(), [n, v]), f64t(t.clone(), [n, v]))
                        .mask(mask_tensor(&[false, false])),
                )
                .unwrap()
                .value();
            assert_eq!(empty, 0.0, "{name}");
        }
    }

    /// `t` moves once per step whatever the number of passes (gradient accumulation), not at
    /// all without progress, and its state saves and restores bit-identically.
    #[test]
    fn taid_state_is_per_step_and_restores_bit_identically() {
        let (n, v) = (2, 5);
        let run = |taid: &burn_distill::token::Taid, step: usize, seed: u64| {
            let s = f64t(noise(seed, n * v, 2.0), [n, v]);
            let t = f64t(noise(seed + 100, n * v, 2.0), [n, v]);
            let input = DistillInput::new(s, t).progress(Progress::epoch(0, 1).at_step(step, 10));
            taid.forward(&input).unwrap().value()
        };
        let config = TaidConfig::new().with_alpha(0.3).with_beta(0.5);
        let (a, b) = (config.init().unwrap(), config.init().unwrap());
        // `a` sees each step once, `b` twice (two micro-batches of the same loss)
        for step in 0..4 {
            let la = run(&a, step, step as u64);
            let lb = run(&b, step, step as u64);
            assert_eq!(la, lb);
            assert_eq!(run(&b, step, step as u64), lb);
            assert_eq!(a.t().to_bits(), b.t().to_bits(), "step {step}");
        }
        assert!(a.t() > 0.4, "t moved: {}", a.t());
        // evaluation without progress leaves the state alone
        let before = a.state();
        let s = f64t(noise(9, n * v, 2.0), [n, v]);
        a.forward(&DistillInput::new(s.clone(), s)).unwrap();
        assert_eq!(a.state(), before);
        // save, load into a fresh objective, and go on in step
        let dir = std::env::temp_dir().join(format!("taid-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("taid.json");
        use burn::config::Config;
        a.state().save(&file).unwrap();
        let c = config.init().unwrap();
        c.restore(TaidState::load(&file).unwrap()).unwrap();
        assert_eq!(c.state(), a.state());
        for step in 4..7 {
            assert_eq!(
                run(&a, step, step as u64).to_bits(),
                run(&c, step, step as u64).to_bits()
            );
            assert_eq!(a.t().to_bits(), c.t().to_bits());
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(c.restore(TaidState::new(2.0)).is_err());
    }
}

/// MiniLLM: the reward-to-go advantages against a loop over the definition (every discount and
/// normalisation), and the objective's gradient against the policy gradient plus the
/// single-step reverse KL's finite differences.
mod minillm {
    use super::*;
    use burn::tensor::Int;
    use burn_distill::token::{
        Discount, LengthNormalization, MiniLlmConfig, RewardToGoConfig, SequenceLength,
        reward_to_go,
    };

    fn advantages(
        r: &[f64],
        m: &[bool],
        t: usize,
        gamma: f64,
        d: Discount,
        l: LengthNormalization,
    ) -> Vec<f64> {
        let mut out = Vec::new();
        for (rs, ms) in r.chunks(t).zip(m.chunks(t)) {
            for start in 0..t {
                let w = |i: usize| match d {
                    Discount::Relative => gamma.powi((i - start) as i32),
                    Discount::Absolute => gamma.powi(i as i32),
                };
                let reward = |i: usize| if ms[i] { rs[i] } else { 0.0 };
                let sum: f64 = (start..t).map(|i| w(i) * reward(i)).sum();
                let len = match l {
                    LengthNormalization::None => 1.0,
                    LengthNormalization::Count => {
                        ((start..t).filter(|&i| ms[i]).count() as f64).max(1.0)
                    }
                    LengthNormalization::Discounted { masked } => (start..t)
                        .map(|i| w(i) * if ms[i] { 1.0 } else { masked })
                        .sum(),
                };
                out.push(if gamma == 0.0 {
                    reward(start)
                } else {
                    sum / len
                });
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn reward_to_go_matches_its_definition(
            seed in 0u64..1000,
            gamma in prop::sample::select(vec![0.0, 0.5, 0.9, 1.0]),
            absolute in any::<bool>(),
            norm in 0usize..3,
        ) {
            let (b, t) = (3, 5);
            let s = noise(seed, b * t, 1.0);
            let te = noise(seed + 1, b * t, 1.0);
            let m: Vec<bool> = (0..b * t).map(|i| !(i * 7 + seed as usize).is_multiple_of(4)).collect();
            let d = if absolute { Discount::Absolute } else { Discount::Relative };
            let l = [LengthNormalization::None, LengthNormalization::Count, LengthNormalization::Discounted { masked: 1e-4 }][norm];
            let config = RewardToGoConfig::new().with_gamma(gamma).with_discount(d).with_normalization(l);
            let mask = mask_tensor(&m).reshape([b, t]);
            let got = values(reward_to_go(f64t(s.clone(), [b, t]), f64t(te.clone(), [b, t]), Some(mask), &config));
            let r: Vec<f64> = te.iter().zip(&s).map(|(a, b)| a - b).collect();
            close("advantages", &got, &advantages(&r, &m, t, gamma, d, l), 1e-12, 1e-12).map_err(TestCaseError::fail)?;
        }
    }

    /// The student's gradient is `−Σ A_t ∇log q(y_t)` (advantages constant) plus the
    /// single-step reverse KL's, over the counted tokens.
    #[test]
    fn gradient_is_the_policy_gradient_plus_the_single_step_kl() {
        let (b, t, v) = (2, 4, 5);
        let n = b * t;
        let s = noise(3, n * v, 1.5);
        let te = noise(4, n * v, 1.5);
        let y: Vec<i64> = (0..n as i64).map(|i| (i * 3) % v as i64).collect();
        let keep = [true, true, true, false, true, true, false, false];
        let labels: Vec<i64> = y
            .iter()
            .zip(keep)
            .map(|(&y, k)| if k { y } else { -100 })
            .collect();
        let loss = MiniLlmConfig::new().init().unwrap();
        let input = |x: Tensor<2>| {
            let labels = Tensor::<1, Int>::from_data(
                burn::tensor::TensorData::new(labels.clone(), [n]),
                &device(),
            );
            DistillInput::new(x, f64t(te.clone(), [n, v]))
                .labels(labels, -100)
                .with(SequenceLength(t))
        };
        let x = f64t(s.clone(), [n, v]).require_grad();
        let out = loss.forward(&input(x.clone())).unwrap();
        let g = values(x.grad(&out.total.backward()).unwrap());
        // advantages at the current student, held fixed
        let log_softmax = |r: &[f64]| -> Vec<f64> {
            let m = r.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + r.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
            r.iter().map(|z| z - lse).collect()
        };
        let picked = |z: &[f64]| -> Vec<f64> {
            (0..n)
                .map(|i| log_softmax(&z[i * v..(i + 1) * v])[y[i] as usize])
                .collect()
        };
        let r: Vec<f64> = picked(&te)
            .iter()
            .zip(picked(&s))
            .map(|(a, b)| a - b)
            .collect();
        let a = advantages(
            &r,
            &keep,
            t,
            1.0,
            Discount::Relative,
            LengthNormalization::Count,
        );
        let counted = keep.iter().filter(|&&k| k).count() as f64;
        let surrogate = |z: Vec<f64>| -> f64 {
            let lq = picked(&z);
            (0..n)
                .filter(|&i| keep[i])
                .map(|i| {
                    let (ls, lt) = (
                        log_softmax(&z[i * v..(i + 1) * v]),
                        log_softmax(&te[i * v..(i + 1) * v]),
                    );
                    let kl: f64 = ls.iter().zip(&lt).map(|(p, q)| p.exp() * (p - q)).sum();
                    -a[i] * lq[i] + kl
                })
                .sum::<f64>()
                / counted
        };
        close(
            "d/dz_s",
            &g,
            &numeric_grad(&surrogate, &s, 1e-6),
            1e-6,
            1e-9,
        )
        .unwrap();
        assert!(out.term("minillm/policy").is_some() && out.term("minillm/single_step").is_some());
        // a row count that is not whole sequences is a typed error
        let bad = loss.forward(&input(f64t(s.clone(), [n, v])).with(SequenceLength(3)));
        assert!(
            matches!(bad, Err(DistillError::ShapeMismatch { .. })),
            "{bad:?}"
        );
    }
}

/// MFT's corrected teacher: where the teacher's arg-max is not the label, the label comes to
/// lead the old arg-max by θ; where it is, the label's probability rises by θ (to 1 when that
/// passes 1 − θ); a distribution either way (to the 1e-7 guard).
#[test]
fn mft_target_moves_the_label_by_the_threshold() {
    use burn::tensor::Int;
    use burn_distill::token::mft_target;
    let (n, v, theta) = (40, 7, 0.3);
    let z = noise(17, n * v, 3.0);
    let p = burn::tensor::activation::softmax(f64t(z, [n, v]), 1);
    let labels: Vec<i64> = (0..n as i64).map(|i| (i * 5) % v as i64).collect();
    let y = Tensor::<1, Int>::from_data(
        burn::tensor::TensorData::new(labels.clone(), [n]),
        &device(),
    );
    let before = values(p.clone());
    let after = values(mft_target(p, y, theta));
    let (mut led, mut raised) = (0, 0);
    for i in 0..n {
        let (old, row) = (&before[i * v..(i + 1) * v], &after[i * v..(i + 1) * v]);
        let yi = labels[i] as usize;
        assert!(
            (row.iter().sum::<f64>() - 1.0).abs() < 1e-6,
            "row {i} sums to 1"
        );
        assert!(
            row.iter().all(|&x| x >= -1e-15),
            "row {i} is a distribution"
        );
        let a = (0..v).max_by(|&j, &k| old[j].total_cmp(&old[k])).unwrap();
        if a != yi {
            led += 1;
            assert!((row[yi] - row[a] - theta).abs() < 1e-6, "row {i}: {row:?}");
        } else {
            raised += 1;
            let want = if old[yi] > 1.0 - theta {
                1.0
            } else {
                old[yi] + theta
            };
            assert!((row[yi] - want).abs() < 1e-6, "row {i}: {row:?}");
        }
    }
    assert!(
        led > 0 && raised > 0,
        "both branches: {led} led, {raised} raised"
    );
}

/// Model-Optimizer's balancer by hand: values matched to the logits term and to the task
/// loss, gradients scaled by the same ratios; zero intermediate terms are left alone.
#[test]
fn balance_matches_values_and_scales_gradients() {
    use burn_distill::token::balance;
    let scalar = |x: f64| f64t(vec![x], [1]).require_grad();
    for (i1, i2) in [(0.3, 0.5), (0.0, 0.0)] {
        let (s, l, a, b) = (scalar(2.5), scalar(0.8), scalar(i1), scalar(i2));
        let (total, inter) = balance(l.clone(), vec![a.clone(), b.clone()], Some(s.clone()), 0.5);
        let mean = (i1 + i2) / 2.0;
        let scaled_i = if mean > 0.0 { 0.8 } else { 0.0 };
        let kd = 0.8 + scaled_i;
        assert!((values(inter)[0] - scaled_i).abs() < 1e-15);
        assert!((values(total.clone())[0] - (2.5 + 2.5 * 0.5)).abs() < 1e-12);
        let g = total.backward();
        let ratio_kd = 2.5 / kd * 0.5;
        let ratio_i = if mean > 0.0 { 0.8 / mean } else { 1.0 };
        assert!((values(l.grad(&g).unwrap())[0] - ratio_kd).abs() < 1e-12);
        assert!((values(a.grad(&g).unwrap())[0] - 0.5 * ratio_i * ratio_kd).abs() < 1e-12);
        assert!((values(s.grad(&g).unwrap())[0] - 1.0).abs() < 1e-12);
    }
}

/// DistiLLM-2 against a plain transcription of its definition (fixed and adaptive α): the
/// value, and the student's gradient against finite differences with the student inside its
/// own mixture held fixed (it is detached there); an empty sequence adds 0.
mod distillm2 {
    use super::*;
    use burn::tensor::Int;
    use burn_distill::token::{DistiLlm2Config, SequenceLength};

    fn log_softmax(r: &[f64]) -> Vec<f64> {
        let m = r.iter().cloned().fold(f64::MIN, f64::max);
        let lse = m + r.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
        r.iter().map(|z| z - lse).collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn plain(
        s: &[f64],
        fixed: &[f64],
        t: &[f64],
        y: &[i64],
        len: usize,
        v: usize,
        anchors: Option<[f64; 2]>,
        beta: f64,
    ) -> f64 {
        let rows = s.len() / v;
        let seqs = rows / len;
        let (mut tea, mut rev) = (vec![0.0; seqs], vec![0.0; seqs]);
        for q in 0..seqs {
            let toks: Vec<usize> = (q * len..(q + 1) * len).filter(|&i| y[i] >= 0).collect();
            if toks.is_empty() {
                continue;
            }
            let lps: Vec<Vec<f64>> = toks
                .iter()
                .map(|&i| log_softmax(&s[i * v..(i + 1) * v]))
                .collect();
            let lfs: Vec<Vec<f64>> = toks
                .iter()
                .map(|&i| log_softmax(&fixed[i * v..(i + 1) * v]))
                .collect();
            let lts: Vec<Vec<f64>> = toks
                .iter()
                .map(|&i| log_softmax(&t[i * v..(i + 1) * v]))
                .collect();
            let k = toks.len() as f64;
            let ea = (toks
                .iter()
                .zip(&lps)
                .map(|(&i, l)| l[y[i] as usize])
                .sum::<f64>()
                / k)
                .exp();
            let eb = (toks
                .iter()
                .zip(&lts)
                .map(|(&i, l)| l[y[i] as usize])
                .sum::<f64>()
                / k)
                .exp();
            let (a1, a2) = match anchors {
                None => (0.1, 0.1),
                Some([g1, g2]) => (
                    (1.0 - 0.9 * g1 / (eb - ea + 1e-5)).clamp(0.01, 0.1),
                    (1.0 - 0.9 * g2 / (ea - eb + 1e-5)).clamp(0.01, 0.1),
                ),
            };
            for j in 0..toks.len() {
                let (lp, lf, lt) = (&lps[j], &lfs[j], &lts[j]);
                tea[q] += (0..v)
                    .map(|w| {
                        lt[w].exp() * (lt[w] - (a1 * lt[w].exp() + (1.0 - a1) * lp[w].exp()).ln())
                    })
                    .sum::<f64>()
                    / k;
                rev[q] += (0..v)
                    .map(|w| {
                        lp[w].exp() * (lp[w] - ((1.0 - a2) * lt[w].exp() + a2 * lf[w].exp()).ln())
                    })
                    .sum::<f64>()
                    / k;
            }
        }
        let pairs = seqs / 2;
        (0..pairs)
            .map(|p| (2.0 - beta) * tea[p] + beta * rev[pairs + p])
            .sum::<f64>()
            / pairs as f64
    }

    #[test]
    fn distillm2_matches_its_definition() {
        let (pairs, len, v) = (2, 3, 5);
        let n = 2 * pairs * len;
        let s = noise(21, n * v, 1.5);
        let t = noise(22, n * v, 1.5);
        let mut y: Vec<i64> = (0..n as i64).map(|i| (i * 3) % v as i64).collect();
        y[0] = -100;
        // the second rejected sequence is empty
        y[3 * len..4 * len].fill(-100);
        for (anchors, beta) in [(None, 1.0), (Some([0.02, -0.01]), 0.7)] {
            let loss = DistiLlm2Config::new()
                .with_anchors(anchors)
                .with_beta(beta)
                .init()
                .unwrap();
            let labels = Tensor::<1, Int>::from_data(
                burn::tensor::TensorData::new(y.clone(), [n]),
                &device(),
            );
            let x = f64t(s.clone(), [n, v]).require_grad();
            let input = DistillInput::new(x.clone(), f64t(t.clone(), [n, v]))
                .labels(labels, -100)
                .with(SequenceLength(len));
            let out = loss.forward(&input).unwrap();
            let want = plain(&s, &s, &t, &y, len, v, anchors, beta);
            assert!(
                (out.value() - want).abs() < 1e-12,
                "{anchors:?}: {} vs {want}",
                out.value()
            );
            let g = values(x.grad(&out.total.backward()).unwrap());
            let num = numeric_grad(&|z| plain(&z, &s, &t, &y, len, v, anchors, beta), &s, 1e-6);
            close(&format!("{anchors:?}"), &g, &num, 1e-6, 1e-9).unwrap();
            assert!(
                g[3 * len * v..4 * len * v].iter().all(|&x| x == 0.0),
                "empty sequence"
            );
        }
        let odd = DistiLlm2Config::new().init().unwrap().forward(
            &DistillInput::new(f64t(s.clone(), [n, v]), f64t(t.clone(), [n, v]))
                .labels(
                    Tensor::<1, Int>::from_data(
                        burn::tensor::TensorData::new(y.clone(), [n]),
                        &device(),
                    ),
                    -100,
                )
                .with(SequenceLength(5)),
        );
        assert!(
            matches!(odd, Err(DistillError::ShapeMismatch { .. })),
            "{odd:?}"
        );
    }
}

/// ULD: the byte-offset alignment by hand, the loss's invariance to relabelling either
/// vocabulary (it compares sorted probabilities), 0 with zero gradients between identical
/// sides, and its gradients against finite differences in f64.
mod uld {
    use super::*;
    use burn::tensor::Int;
    use burn_distill::token::{
        CrossTokenizer, MergeStrategy, TokenizedSide, UldAlignment, UldConfig,
        align_by_byte_offsets,
    };

    #[test]
    fn byte_offsets_group_tokens_that_end_together() {
        // "hello world": student "he|llo| wor|ld", teacher "hel|lo| world"
        let s = [(0, 2), (2, 5), (5, 9), (9, 11)];
        let t = [(0, 3), (3, 5), (5, 11)];
        let (gs, gt) = align_by_byte_offsets(&s, &t);
        assert_eq!(gs, vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(gt, vec![vec![0, 1], vec![2]]);
        // leftovers form one last pair
        let (gs, gt) = align_by_byte_offsets(&[(0, 2), (2, 4)], &[(0, 2), (2, 3)]);
        assert_eq!((gs, gt), (vec![vec![0], vec![1]], vec![vec![0], vec![1]]));
    }

    fn side(z: Vec<f64>, t: usize, v: usize, labels: Vec<i64>, offsets: Vec<i64>) -> TokenizedSide {
        let b = z.len() / (t * v);
        let int2 = |x: Vec<i64>| {
            Tensor::<1, Int>::from_data(burn::tensor::TensorData::new(x, [b * t]), &device())
                .reshape([b, t])
        };
        TokenizedSide {
            logits: f64t(z, [b * t, v]).reshape([b, t, v]),
            ids: int2(labels.iter().map(|&y| y.max(0)).collect()),
            labels: int2(labels),
            offsets: Some(
                Tensor::<1, Int>::from_data(
                    burn::tensor::TensorData::new(offsets, [b * t * 2]),
                    &device(),
                )
                .reshape([b, t, 2]),
            ),
        }
    }

    #[test]
    fn uld_is_blind_to_token_identities_and_matches_finite_differences() {
        let (ts, tt, vs, vt) = (5, 4, 6, 7);
        let zs = noise(41, ts * vs, 2.0);
        let zt = noise(42, tt * vt, 2.0);
        // answers "abcdef": student a|bc|d|ef (+ prompt), teacher ab|c|def
        let ls = vec![-100, 1, 2, 3, 4];
        let os = vec![0, 0, 0, 1, 1, 3, 3, 4, 4, 6];
        let lt = vec![-100, 5, 6, 0];
        let ot = vec![0, 0, 0, 2, 2, 3, 3, 6];
        for merge in [MergeStrategy::Observed, MergeStrategy::Bayesian] {
            let loss = UldConfig::new()
                .with_merge(merge)
                .with_alignment(UldAlignment::ByteOffsets)
                .init()
                .unwrap();
            let value = |s: Vec<f64>, t: Vec<f64>| -> f64 {
                let pair = CrossTokenizer {
                    student: side(s, ts, vs, ls.clone(), os.clone()),
                    teacher: side(t, tt, vt, lt.clone(), ot.clone()),
                };
                loss.forward(&DistillInput::features_only().with(pair))
                    .unwrap()
                    .value()
            };
            // relabelling the teacher's vocabulary (a permutation of its columns) changes nothing
            let permuted: Vec<f64> = zt
                .chunks(vt)
                .flat_map(|r| (0..vt).map(|j| r[(j + 3) % vt]).collect::<Vec<_>>())
                .collect();
            let lt_p: Vec<i64> = lt
                .iter()
                .map(|&y| {
                    if y < 0 {
                        y
                    } else {
                        ((y as usize + vt - 3) % vt) as i64
                    }
                })
                .collect();
            let base = value(zs.clone(), zt.clone());
            let pair = CrossTokenizer {
                student: side(zs.clone(), ts, vs, ls.clone(), os.clone()),
                teacher: side(permuted, tt, vt, lt_p, ot.clone()),
            };
            let relabelled = loss
                .forward(&DistillInput::features_only().with(pair))
                .unwrap()
                .value();
            assert!(
                (base - relabelled).abs() < 1e-12,
                "{merge:?}: {base} vs {relabelled}"
            );
            // gradients of both sides (the teacher attached)
            let (a, b) = (
                side(zs.clone(), ts, vs, ls.clone(), os.clone()),
                side(zt.clone(), tt, vt, lt.clone(), ot.clone()),
            );
            let (xa, xb) = (
                a.logits.clone().require_grad(),
                b.logits.clone().require_grad(),
            );
            let pair = CrossTokenizer {
                student: TokenizedSide {
                    logits: xa.clone(),
                    ..a
                },
                teacher: TokenizedSide {
                    logits: xb.clone(),
                    ..b
                },
            };
            let out = loss
                .forward(&DistillInput::features_only().with(pair).attach_teacher())
                .unwrap();
            let grads = out.total.backward();
            let (gs, gt) = (
                values(xa.grad(&grads).unwrap()),
                values(xb.grad(&grads).unwrap()),
            );
            close(
                "student",
                &gs,
                &numeric_grad(&|x| value(x, zt.clone()), &zs, 1e-6),
                1e-5,
                1e-8,
            )
            .unwrap();
            close(
                "teacher",
                &gt,
                &numeric_grad(&|x| value(zs.clone(), x), &zt, 1e-6),
                1e-5,
                1e-8,
            )
            .unwrap();
        }
        // identical sides: 0 with zero gradients
        let loss = UldConfig::new().init().unwrap();
        let a = side(zs.clone(), ts, vs, ls.clone(), os.clone());
        let x = a.logits.clone().require_grad();
        let pair = CrossTokenizer {
            student: TokenizedSide {
                logits: x.clone(),
                ..a.clone()
            },
            teacher: a,
        };
        let out = loss
            .forward(&DistillInput::features_only().with(pair))
            .unwrap();
        assert_eq!(out.value(), 0.0);
        assert!(
            values(x.grad(&out.total.backward()).unwrap())
                .iter()
                .all(|&g| g == 0.0)
        );
    }
}

/// A vocabulary entry at −∞ (in the student's logits, the teacher's or both) is masked
/// vocabulary for every softened divergence: the value equals the same objective without that
/// column, fused and composed alike, with finite gradients that are 0 there; at +∞ or NaN
/// the value is not finite (the crate's policy).
#[test]
fn minus_infinity_is_masked_vocabulary() {
    let (n, v) = (3, 6);
    let s = noise(51, n * v, 2.0);
    let t = noise(52, n * v, 2.0);
    let drop = |x: &[f64], col: usize| -> Vec<f64> {
        x.chunks(v)
            .flat_map(|r| {
                r.iter()
                    .enumerate()
                    .filter(|(j, _)| *j != col)
                    .map(|(_, x)| *x)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let objectives = |fused: bool| -> Vec<(String, Box<dyn Loss>)> {
        vec![
            (
                "fkl".into(),
                ForwardKlConfig::new()
                    .with_fused(fused)
                    .with_temperature(2.0)
                    .init()
                    .unwrap()
                    .boxed(),
            ),
            ("rkl".into(), ReverseKlConfig::new().init().unwrap().boxed()),
            (
                "jsd".into(),
                JsdConfig::new()
                    .with_beta(0.3)
                    .with_fused(fused)
                    .init()
                    .unwrap()
                    .boxed(),
            ),
            (
                "sym".into(),
                SymmetricKlConfig::new().init().unwrap().boxed(),
            ),
            ("skew".into(), SkewKlConfig::new().init().unwrap().boxed()),
            ("tvd".into(), TvdConfig::new().init().unwrap().boxed()),
        ]
    };
    for side in ["student", "teacher", "both"] {
        let (mut sm, mut tm) = (s.clone(), t.clone());
        for r in 0..n {
            if side != "teacher" {
                sm[r * v + 2] = f64::NEG_INFINITY;
            }
            if side != "student" {
                tm[r * v + 2] = f64::NEG_INFINITY;
            }
        }
        for fused in [true, false] {
            for (name, loss) in objectives(fused) {
                let (x, y) = (
                    f64t(sm.clone(), [n, v]).require_grad(),
                    f64t(tm.clone(), [n, v]).require_grad(),
                );
                let out = loss
                    .forward(&DistillInput::new(x.clone(), y.clone()).attach_teacher())
                    .unwrap();
                let without = loss
                    .forward(&DistillInput::new(
                        f64t(drop(&s, 2), [n, v - 1]),
                        f64t(drop(&t, 2), [n, v - 1]),
                    ))
                    .unwrap()
                    .value();
                assert!(
                    (out.value() - without).abs() < 1e-12,
                    "{name} {side} fused {fused}: {} vs {without}",
                    out.value()
                );
                let grads = out.total.backward();
                for g in [
                    values(x.grad(&grads).unwrap()),
                    values(y.grad(&grads).unwrap()),
                ] {
                    assert!(g.iter().all(|g| g.is_finite()), "{name} {side}: {g:?}");
                    assert!(
                        (0..n).all(|r| g[r * v + 2] == 0.0),
                        "{name} {side}: masked entry's gradient"
                    );
                }
            }
        }
    }
    for bad in [f64::INFINITY, f64::NAN] {
        let mut sb = s.clone();
        sb[1] = bad;
        for (name, loss) in objectives(true) {
            let value = loss
                .forward(&DistillInput::new(
                    f64t(sb.clone(), [n, v]),
                    f64t(t.clone(), [n, v]),
                ))
                .unwrap()
                .value();
            assert!(!value.is_finite(), "{name}: {bad} gave {value}");
        }
    }
}

/// The sampler: greedy at T = 0; draws whose frequencies match the softmax at T restricted to
/// the top k and the nucleus (within 5σ over 20,000 draws); −∞ never drawn; seeded repeats.
#[test]
fn sampler_draws_from_the_restricted_softmax() {
    use burn_distill::token::SamplerConfig;
    let z = [2.0, 1.0, 0.5, f64::NEG_INFINITY, -0.5, 1.5];
    let rows = 20_000;
    let logits = f64t(
        z.iter().copied().cycle().take(rows * z.len()).collect(),
        [rows, z.len()],
    );
    let draws = |config: SamplerConfig, key: u64| -> Vec<i64> {
        let t = config.init().unwrap().sample(logits.clone(), key).unwrap();
        t.into_data().convert::<i64>().try_to_vec::<i64>().unwrap()
    };
    assert!(
        draws(SamplerConfig::new().with_temperature(0.0), 0)
            .iter()
            .all(|&i| i == 0)
    );
    assert!(
        draws(
            SamplerConfig::new()
                .with_top_k(Some(1))
                .with_temperature(3.0),
            0
        )
        .iter()
        .all(|&i| i == 0)
    );
    let expected = |t: f64, k: usize, p: f64| -> Vec<f64> {
        let mut order: Vec<usize> = (0..z.len()).filter(|&j| z[j].is_finite()).collect();
        order.sort_by(|a, b| z[*b].total_cmp(&z[*a]));
        order.truncate(k);
        let w: Vec<f64> = order.iter().map(|&j| (z[j] / t).exp()).collect();
        let total: f64 = w.iter().sum();
        let (mut mass, mut keep) = (0.0, order.len());
        for (i, x) in w.iter().enumerate() {
            mass += x / total;
            if mass >= p {
                keep = i + 1;
                break;
            }
        }
        let kept: f64 = w[..keep].iter().sum();
        let mut out = vec![0.0; z.len()];
        for (i, &j) in order[..keep].iter().enumerate() {
            out[j] = w[i] / kept;
        }
        out
    };
    for (t, k, p) in [(1.0, 6, 1.0), (0.7, 3, 1.0), (1.3, 6, 0.8)] {
        let config = SamplerConfig::new()
            .with_temperature(t)
            .with_top_k(Some(k))
            .with_top_p(Some(p))
            .with_seed(9);
        let got = draws(config, 1);
        let want = expected(t, k, p);
        for (j, &q) in want.iter().enumerate() {
            let f = got.iter().filter(|&&i| i == j as i64).count() as f64 / rows as f64;
            let sigma = (q * (1.0 - q) / rows as f64).sqrt().max(1e-9);
            assert!(
                (f - q).abs() <= 5.0 * sigma + 1e-12,
                "T {t} k {k} p {p}: token {j} {f} vs {q}"
            );
        }
    }
    let config = || SamplerConfig::new().with_seed(3);
    assert_eq!(draws(config(), 5), draws(config(), 5));
    assert_ne!(draws(config(), 5), draws(config(), 6));
    assert!(SamplerConfig::new().with_top_p(Some(0.0)).init().is_err());
    assert!(SamplerConfig::new().with_top_k(Some(0)).init().is_err());
    assert!(SamplerConfig::new().with_temperature(-1.0).init().is_err());
    let dead = f64t(vec![f64::NEG_INFINITY; 3], [1, 3]);
    assert!(
        SamplerConfig::new()
            .init()
            .unwrap()
            .sample(dead, 0)
            .is_err()
    );
}
