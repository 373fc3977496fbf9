//! DistiLLM-2: contrastive distillation on teacher- and student-generated sequences with skew
//! KLs whose mixing weights adapt per sequence.

use burn::config::Config;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Int, Tensor};

use super::forward_kl::forward_kl_elements;
use super::jsd::jsd_elements;
use super::minillm::SequenceLength;
use super::tokens::uncounted;
use crate::check::{check_fraction, check_positive};
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};
use crate::math::log_add_exp;
use crate::registry::Descriptor;

/// The per-token divergences of [`distillm2_sequences`].
#[derive(Config, Debug, Copy, PartialEq)]
pub enum DistiLlm2Form {
    /// DistiLLM-2's skew KLs: teacher side `KL(p_t ‖ α₁p_t + (1 − α₁)p_s)`, student side
    /// `KL(p_s ‖ (1 − α₂)p_t + α₂·sg(p_s))` (the student inside its own mixture detached).
    Skew,
    /// GKD's (`loss_type = "gkd"`): both sides `0.9·KL(p_t ‖ m) + 0.1·KL(p_s ‖ m)`,
    /// `m = 0.9·p_t + 0.1·p_s`.
    Gkd,
    /// Plain KLs (`loss_type = "kd"`): `KL(p_t ‖ p_s)` and `KL(p_s ‖ p_t)`; with `reference_sign`
    /// the student side is DistiLLM-2's `Σ p_s (log p_t − log p_s) = −KL(p_s ‖ p_t)` (its sign
    /// defect, harmless there since "kd" reads only the teacher side).
    Kl {
        /// Reproduce the reference's negated student side.
        reference_sign: bool,
    },
}

/// How [`distillm2_sequences`] and [`DistiLlm2`] are computed.
#[derive(Config, Debug)]
pub struct DistiLlm2Config {
    /// The per-token divergences.
    #[config(default = "DistiLlm2Form::Skew")]
    pub form: DistiLlm2Form,
    /// The teacher side's base mixing weight α₁ ∈ (0, 1) (0.1).
    #[config(default = 0.1)]
    pub alpha_teacher: f64,
    /// The student side's base mixing weight α₂ ∈ (0, 1) (0.1).
    #[config(default = 0.1)]
    pub alpha_student: f64,
    /// The adaptive α's anchors `(g₁, g₂)`: per sequence
    /// `α₁ = clip(1 − (1 − base₁)·g₁ / (e^{mean log p_t(y)} − e^{mean log p_s(y)} + 1e-5), 0.01, base₁)`
    /// and `α₂` likewise with `g₂` and the gap reversed, differentiable inside the clip. `None`:
    /// the fixed base α (what the shipped trainer always uses: its adaptive branch is dead).
    #[config(default = "None")]
    pub anchors: Option<[f64; 2]>,
    /// The weight β of the student-generated (rejected) part: `(2 − β)·chosen + β·rejected`.
    #[config(default = 1.0)]
    pub beta: f64,
    /// Raise β from 1 to 1.5 over the first half of training (`1 + 0.5·min(1, 2·progress)`;
    /// reads the input's progress).
    #[config(default = false)]
    pub gradual_beta: bool,
    /// Average each sequence's token values (`average_log_prob`, the trainer's); `false` sums.
    #[config(default = true)]
    pub average: bool,
}

impl DistiLlm2Config {
    /// Validates the configuration and builds the objective.
    pub fn init(&self) -> Result<DistiLlm2, DistillError> {
        for (field, v) in [
            ("alpha_teacher", self.alpha_teacher),
            ("alpha_student", self.alpha_student),
        ] {
            check_fraction(DistiLlm2::NAME, field, v, false)?;
            check_positive(DistiLlm2::NAME, field, v)?;
        }
        if let Some(a) = self.anchors
            && !a.iter().all(|x| x.is_finite())
        {
            return Err(DistillError::config(
                DistiLlm2::NAME,
                "anchors",
                format!("{a:?}"),
                "must be finite",
            ));
        }
        check_fraction(DistiLlm2::NAME, "beta", self.beta / 2.0, true)?;
        Ok(DistiLlm2 {
            config: self.clone(),
        })
    }
}

/// [`distillm2_sequences`]'s per-sequence values `[S]`.
#[derive(Debug, Clone)]
pub struct DistiLlm2Sequences {
    /// The student's log-probability of the labels (mean or sum over the counted tokens).
    pub student_log_probs: Tensor<1>,
    /// The teacher's.
    pub teacher_log_probs: Tensor<1>,
    /// The teacher-side divergence (DistiLLM-2's `tea_pos_kl`).
    pub teacher_side: Tensor<1>,
    /// The student-side divergence (`ref_pos_kl`).
    pub student_side: Tensor<1>,
}

/// DistiLLM-2's per-sequence values (`get_batch_logps`) from logits `[S·T, V]` (row `s·T + t`,
/// already aligned with the labels: shift a causal model's outputs first), labels `[S·T]` and
/// the mask of the counted tokens `[S·T]`. An empty sequence gives 0 (the reference's 0/0).
pub fn distillm2_sequences(
    student: Tensor<2>,
    teacher: Tensor<2>,
    labels: Tensor<1, Int>,
    mask: Tensor<1, Bool>,
    length: usize,
    config: &DistiLlm2Config,
) -> DistiLlm2Sequences {
    let [n, _] = student.dims();
    let sequences = n / length;
    let (lp, lt) = (log_softmax(student, 1), log_softmax(teacher, 1));
    let y = labels.reshape([n, 1]);
    let weights = mask.float().cast(lp.dtype()).reshape([sequences, length]);
    let count = weights.clone().sum_dim(1).clamp_min(1.0);
    let sums = |x: Tensor<1>| -> Tensor<1> {
        (x.reshape([sequences, length]) * weights.clone())
            .sum_dim(1)
            .squeeze_dim(1)
    };
    let means = |x: Tensor<1>| sums(x) / count.clone().squeeze_dim(1);
    let per_sequence = |x: Tensor<1>| match config.average {
        true => means(x),
        false => sums(x),
    };
    let picked = |l: &Tensor<2>| l.clone().gather(1, y.clone()).reshape([n]);
    let (a, b) = (picked(&lp), picked(&lt));
    let (student_log_probs, teacher_log_probs) = (per_sequence(a.clone()), per_sequence(b.clone()));
    let rows = |x: Tensor<2>| x.sum_dim(1).squeeze_dim::<1>(1);
    let (teacher_side, student_side) = match config.form {
        DistiLlm2Form::Skew => {
            // α per sequence (fixed, or adaptive from the gap of the mean token probabilities
            // of the labels), then per token `[n, 1]`
            let per_token = |a: Tensor<1>| {
                a.reshape([sequences, 1])
                    .expand([sequences, length])
                    .reshape([n, 1])
            };
            let (a1, a2) = match config.anchors {
                None => {
                    let fixed =
                        |base: f64| Tensor::<2>::full([n, 1], base, (&lp.device(), lp.dtype()));
                    (fixed(config.alpha_teacher), fixed(config.alpha_student))
                }
                Some([g1, g2]) => {
                    let (ea, eb) = (means(a).exp(), means(b).exp());
                    let adaptive = |base: f64, g: f64, gap: Tensor<1>| {
                        ((gap + 1e-5).recip() * (-(1.0 - base) * g) + 1.0).clamp(0.01, base)
                    };
                    (
                        per_token(adaptive(config.alpha_teacher, g1, eb.clone() - ea.clone())),
                        per_token(adaptive(config.alpha_student, g2, ea - eb)),
                    )
                }
            };
            let m1 = log_add_exp(
                lt.clone() + a1.clone().log(),
                lp.clone() + (-a1 + 1.0).log(),
            );
            let m2 = log_add_exp(
                lt.clone() + (-a2.clone() + 1.0).log(),
                lp.clone().detach() + a2.log(),
            );
            (
                rows(forward_kl_elements(m1, lt)),
                rows(forward_kl_elements(m2, lp)),
            )
        }
        DistiLlm2Form::Gkd => {
            let gkd = rows(jsd_elements(lp, lt, 0.9));
            (gkd.clone(), gkd)
        }
        DistiLlm2Form::Kl { reference_sign } => {
            let reverse = rows(forward_kl_elements(lt.clone(), lp.clone()));
            (
                rows(forward_kl_elements(lp, lt)),
                match reference_sign {
                    true => -reverse,
                    false => reverse,
                },
            )
        }
    };
    DistiLlm2Sequences {
        student_log_probs,
        teacher_log_probs,
        teacher_side: per_sequence(teacher_side),
        student_side: per_sequence(student_side),
    }
}

/// DistiLLM-2 (Ko et al., ICML 2025, *DistiLLM-2: A Contrastive Approach Boosts the
/// Distillation of LLMs*, [arXiv:2503.07067](https://arxiv.org/abs/2503.07067);
/// jongwooko/distillm-2): on pairs of a teacher-generated ("chosen") and a student-generated
/// ("rejected") response, the skew forward KL pulls the student up where the teacher wrote
/// and the skew reverse KL pushes it down where it wrote itself:
///
/// ```text
/// L = mean_pairs [(2 − β)·KL(p_t ‖ α₁p_t + (1 − α₁)p_s)|chosen + β·KL(p_s ‖ (1 − α₂)p_t + α₂·sg(p_s))|rejected]
/// ```
///
/// each a mean over the sequence's counted tokens ([`distillm2_sequences`]). The rows are the
/// `2B` sequences, chosen first, each `T` positions ([`SequenceLength`]); the labels are the
/// responses' tokens with an ignore index on the prompts and the padding. Terms
/// `"distillm2/chosen"` and `"distillm2/rejected"`.
///
/// # Shapes
/// - student and teacher logits `[2B·T, V]`; labels `[2B·T]`; [`SequenceLength`] `T`
#[derive(Debug, Clone)]
pub struct DistiLlm2 {
    config: DistiLlm2Config,
}

crate::loss::objective!(DistiLlm2, "distillm2");

impl Loss for DistiLlm2 {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let checked = input.of(Self::NAME).masked();
        let (zs, zt) = checked.logits()?;
        let [n, v] = zs.dims();
        let mask = checked
            .mask(n)?
            .unwrap_or_else(|| Tensor::<1, Int>::ones([n], &zs.device()).equal_elem(1));
        let y = checked.targets(n, v)?;
        let SequenceLength(t) =
            *checked.extra::<SequenceLength>("the sequences' length (SequenceLength)")?;
        if t == 0 || !n.is_multiple_of(2 * t) {
            return Err(DistillError::ShapeMismatch {
                objective: Self::NAME.into(),
                what: "rows as [2 · pairs, SequenceLength]".into(),
                expected: vec![2 * n.div_ceil(2 * t.max(1)), t],
                actual: vec![n],
            });
        }
        let beta = match c.gradual_beta {
            true => {
                let p = checked.progress("for the gradual β")?.fraction();
                1.0 + 0.5 * (2.0 * p).min(1.0)
            }
            false => c.beta,
        };
        let keep = Some(mask.clone());
        let (zs, zt) = (
            uncounted(zs, keep.as_ref(), 0.0),
            uncounted(zt, keep.as_ref(), 0.0),
        );
        let out = distillm2_sequences(zs.clone(), zt.clone(), y, mask, t, c);
        let pairs = n / (2 * t);
        let chosen = out.teacher_side.slice(0..pairs).mean() * (2.0 - beta);
        let rejected = out.student_side.slice(pairs..2 * pairs).mean() * beta;
        let out = LossOutput::from_terms(vec![
            (format!("{}/chosen", Self::NAME), chosen),
            (format!("{}/rejected", Self::NAME), rejected),
        ]);
        checked.settle_logits(BOUND, out, &zs, &zt)
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e30;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["DistiLlm2"],
    paper: "Ko et al., ICML 2025 (DistiLLM-2)",
    doc: "token.md",
    bound: Some(BOUND),
    // its input is sequences (SequenceLength), which the shared example does not have;
    // tests/token.rs checks its gradients
    example: None,
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss DistiLlm2 = token::DistiLlm2Config())),
    golden: crate::registry::golden![
        "distillm2_logps" => golden::logps,
        "distillm2_loss" => golden::loss,
    ],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;
    use crate::token::{shift_labels, shift_logits};

    /// The case's `loss_type` and anchors as a configuration.
    fn configured(case: &Case) -> Result<DistiLlm2Config, String> {
        let form = match case.params["loss_type"].as_str() {
            Some(t) if t.contains("distillm") => DistiLlm2Form::Skew,
            Some("gkd") => DistiLlm2Form::Gkd,
            _ => DistiLlm2Form::Kl {
                reference_sign: true,
            },
        };
        // the adaptive α applies to "distillm_v2" with both anchors given
        let anchors = match (
            case.params["loss_type"].as_str(),
            case.opt("logp_logq"),
            case.opt("logq_logp"),
        ) {
            (Some("distillm_v2"), Some(a), Some(b)) => Some([a, b]),
            _ => None,
        };
        Ok(DistiLlm2Config::new()
            .with_form(form)
            .with_alpha_teacher(case.opt("base_alpha_1").unwrap_or(0.1))
            .with_alpha_student(case.opt("base_alpha_2").unwrap_or(0.1))
            .with_anchors(anchors)
            .with_beta(case.opt("beta").unwrap_or(1.0)))
    }

    /// `[B, T, V]` leaf, its causal shift `[B·(T−1), V]`, and the shifted labels and mask.
    fn shifted(
        case: &Case,
        logits: &str,
        labels: Tensor<2, Int>,
    ) -> Result<(Tensor<3>, Tensor<2>, Tensor<1, Int>, Tensor<1, Bool>), String> {
        let z = case.leaf::<3>(logits)?;
        let y = shift_labels(labels);
        let mask = y.clone().not_equal_elem(-100);
        let y = y.clone().mask_fill(mask.clone().bool_not(), 0);
        Ok((z.clone(), shift_logits(z), y, mask))
    }

    fn labels(case: &Case, name: &str) -> Result<Tensor<2, Int>, String> {
        let (shape, _) = case.input(name)?;
        Ok(case.targets(name)?.reshape([shape[0], shape[1]]))
    }

    /// `get_batch_logps`: `[logps, tea_logps, tea_pos_kl, ref_pos_kl]` per sequence.
    pub(crate) fn logps(case: &Case) -> Result<(), String> {
        let config = configured(case)?
            .with_average(case.params["average_log_prob"].as_bool() != Some(false));
        let y = labels(case, "labels")?;
        let t = y.dims()[1];
        let (zs, s, y1, mask) = shifted(case, "logits", y)?;
        let zt_leaf = case.leaf::<3>("tea_logits")?;
        let zt = shift_logits(zt_leaf.clone());
        let out = distillm2_sequences(s, zt, y1, mask, t - 1, &config);
        let all = Tensor::cat(
            vec![
                out.student_log_probs,
                out.teacher_log_probs,
                out.teacher_side,
                out.student_side,
            ],
            0,
        );
        // a fully masked sequence: the reference divides 0 by 0 (NaN, in every gradient
        // too); the crate gives it 0 and zero gradients, and the other sequences what they
        // give without it
        let want: Vec<f64> = case
            .loss
            .as_deref()
            .ok_or("no loss")?
            .iter()
            .map(|w| if w.is_nan() { 0.0 } else { *w })
            .collect();
        let (rel, abs) = case.tolerance();
        close(
            "per-sequence outputs",
            &values(all.clone()),
            &want,
            rel,
            abs,
        )?;
        let grads = all.sum().backward();
        let (shape, sv) = case.input("logits")?;
        let (_, tv) = case.input("tea_logits")?;
        let (_, yv) = case.input("labels")?;
        let [b, t, v] = [shape[0], shape[1], shape[2]];
        let kept: Vec<usize> = (0..b)
            .filter(|&i| yv[i * t + 1..(i + 1) * t].iter().any(|&y| y != -100.0))
            .collect();
        let alone = |leaf_of_student: bool| -> Vec<f64> {
            let pick = |d: &[f64]| {
                kept.iter()
                    .flat_map(|&i| d[i * t * v..(i + 1) * t * v].to_vec())
                    .collect::<Vec<_>>()
            };
            let k = kept.len();
            let (xs, xt) = (
                tensor::<3>(pick(sv), [k, t, v], case.dtype).require_grad(),
                tensor::<3>(pick(tv), [k, t, v], case.dtype).require_grad(),
            );
            let yk: Vec<i64> = kept
                .iter()
                .flat_map(|&i| {
                    yv[i * t..(i + 1) * t]
                        .iter()
                        .map(|&y| y as i64)
                        .collect::<Vec<_>>()
                })
                .collect();
            let y = ints(yk).reshape([k, t]);
            let mask = shift_labels(y.clone()).not_equal_elem(-100);
            let y1 = shift_labels(y).mask_fill(mask.clone().bool_not(), 0);
            let out = distillm2_sequences(
                shift_logits(xs.clone()),
                shift_logits(xt.clone()),
                y1,
                mask,
                t - 1,
                &config,
            );
            let g = Tensor::cat(
                vec![
                    out.student_log_probs,
                    out.teacher_log_probs,
                    out.teacher_side,
                    out.student_side,
                ],
                0,
            )
            .sum()
            .backward();
            let got = values(
                if leaf_of_student {
                    xs.grad(&g)
                } else {
                    xt.grad(&g)
                }
                .unwrap_or_else(|| Tensor::zeros([k, t, v], &device())),
            );
            let mut full = vec![0.0; b * t * v];
            for (j, &i) in kept.iter().enumerate() {
                full[i * t * v..(i + 1) * t * v].copy_from_slice(&got[j * t * v..(j + 1) * t * v]);
            }
            full
        };
        let (exact_s, exact_t) = (|| alone(true), || alone(false));
        case.expect_grad("logits", zs.grad(&grads).map(values), Some(&exact_s))?;
        case.expect_grad(
            "tea_logits",
            zt_leaf.grad(&grads).map(values),
            Some(&exact_t),
        )
    }

    /// `get_batch_loss_metrics`: chosen and rejected padded to one length and stacked, the
    /// teacher detached, `(2 − β)·chosen + β·rejected` averaged over the pairs.
    pub(crate) fn loss(case: &Case) -> Result<(), String> {
        let config = configured(case)?;
        let (chosen, rejected) = (
            labels(case, "chosen_labels")?,
            labels(case, "rejected_labels")?,
        );
        let width = chosen.dims()[1].max(rejected.dims()[1]);
        let pad = |y: Tensor<2, Int>| {
            let [b, t] = y.dims();
            match t < width {
                true => Tensor::cat(
                    vec![y, Tensor::<2, Int>::full([b, width - t], -100, &device())],
                    1,
                ),
                false => y,
            }
        };
        let y = Tensor::cat(vec![pad(chosen), pad(rejected)], 0);
        let (zs, s, y1, mask) = shifted(case, "student_logits", y)?;
        let zt = shift_logits(case.constant::<3>("teacher_logits")?);
        let loss = config.init().map_err(e)?;
        let input = DistillInput::new(s, zt)
            .targets(y1)
            .mask(mask)
            .with(SequenceLength(width - 1));
        let out = loss.forward(&input).map_err(e)?;
        case.expect_loss(out.value(), None)?;
        let grads = out.total.backward();
        case.expect_grad("student_logits", zs.grad(&grads).map(values), None)
    }
}
