//! TAID: distillation towards a target that moves from the student to the teacher, at a pace
//! that adapts to how fast the loss falls.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;

use super::forward_kl::{forward_kl_elements, teacher_cross_entropy_elements};
use super::tokens::{TokenReduction, outside_zero, uncounted};
use crate::check::{check_fraction, check_non_negative};
use crate::error::DistillError;
use crate::input::{DistillInput, Progress};
use crate::loss::{Loss, LossOutput};

/// Per-token values `[N]` of TAID at interpolation `t`: the target
/// `p_t' = softmax((1 − t)·sg(z_s) + t·z_t)` and `KL(p_t' ‖ p_s)`, or with `cross_entropy`
/// TAID's own `H(p_t', p_s) = −Σ p_t' log p_s`. A vocabulary entry at −∞ (in the student's
/// logits, or in the target's) is masked vocabulary: it adds nothing.
pub fn taid_rows(student: Tensor<2>, teacher: Tensor<2>, t: f64, cross_entropy: bool) -> Tensor<1> {
    let neg = f64::NEG_INFINITY;
    let masked = student.clone().equal_elem(neg);
    // the ends are taken exactly, so an entry at −∞ on the side with weight 0 does not give 0·∞
    let mix = match t {
        0.0 => student.clone().detach(),
        1.0 => teacher,
        t => student.clone().detach() * (1.0 - t) + teacher * t,
    };
    let masked = masked.bool_or(mix.clone().equal_elem(neg));
    let (log_target, log_ps) = (log_softmax(mix, 1), log_softmax(student, 1));
    outside_zero(log_ps, log_target, &masked, |ls, lt| match cross_entropy {
        true => teacher_cross_entropy_elements(ls, lt),
        false => forward_kl_elements(ls, lt),
    })
    .sum_dim(1)
    .squeeze_dim(1)
}

/// Configuration of [`Taid`].
#[derive(Config, Debug)]
pub struct TaidConfig {
    /// `t` at the start of training, in `[0, 1]`.
    #[config(default = 0.4)]
    pub t_start: f64,
    /// `t` at the end of training, in `[t_start, 1]`.
    #[config(default = 1.0)]
    pub t_end: f64,
    /// The step size `α ≥ 0` of the adaptive increase.
    #[config(default = 5e-4)]
    pub alpha: f64,
    /// The momentum `β ∈ [0, 1)` of the loss's relative decrease.
    #[config(default = 0.99)]
    pub beta: f64,
    /// Let `t` run ahead of its linear schedule when the loss falls (TAID's default); `false`
    /// is TAID's `disable_adaptive`: `t` follows the schedule.
    #[config(default = true)]
    pub adaptive: bool,
    /// TAID's code's `H(p_t', p_s)` instead of the KL: the same student gradient, a value
    /// larger by the target's entropy, and a teacher gradient of its own (the paper writes
    /// the KL, which is the default).
    #[config(default = false)]
    pub cross_entropy: bool,
    /// How per-token values become the total.
    #[config(default = "TokenReduction::TokenMean")]
    pub reduction: TokenReduction,
}

impl TaidConfig {
    /// Validates the configuration and builds the objective.
    pub fn init(&self) -> Result<Taid, DistillError> {
        check_fraction(Taid::NAME, "t_start", self.t_start, true)?;
        check_fraction(Taid::NAME, "t_end", self.t_end, true)?;
        if self.t_end < self.t_start {
            return Err(DistillError::config(
                Taid::NAME,
                "t_end",
                self.t_end,
                "must be at least t_start",
            ));
        }
        check_non_negative(Taid::NAME, "alpha", self.alpha)?;
        if self.alpha > 1.0 {
            return Err(DistillError::config(
                Taid::NAME,
                "alpha",
                self.alpha,
                "must be at most 1 (a step of α·(1 − t) would pass t = 1)",
            ));
        }
        check_fraction(Taid::NAME, "beta", self.beta, false)?;
        self.reduction.check(Taid::NAME)?;
        Ok(Taid {
            config: self.clone(),
            state: Arc::new(Mutex::new(TaidState::new(self.t_start))),
        })
    }
}

/// The losses seen at one training step, not yet folded into `t`.
#[derive(Config, Debug, PartialEq)]
pub struct TaidStep {
    /// The step's epoch.
    pub epoch: usize,
    /// The step within the epoch.
    pub step: usize,
    /// The fraction of training done at the step ([`Progress::fraction`]).
    pub fraction: f64,
    /// The sum of the step's finite losses.
    pub loss_sum: f64,
    /// How many losses were summed.
    pub count: usize,
}

/// [`Taid`]'s state: save it with [`Config::save`] beside a checkpoint and restore it with
/// [`Taid::restore`]; the values round-trip exactly (JSON of the shortest representation that
/// reads back bit-identical).
#[derive(Config, Debug, PartialEq)]
pub struct TaidState {
    /// The interpolation `t` the next loss is computed at.
    pub t: f64,
    /// The momentum of the loss's relative decrease.
    #[config(default = 0.0)]
    pub momentum: f64,
    /// The last step's mean loss (`None` before the first).
    #[config(default = "None")]
    pub previous_loss: Option<f64>,
    /// The current step's losses, folded in when the next step begins.
    #[config(default = "None")]
    pub pending: Option<TaidStep>,
}

/// Temporally Adaptive Interpolated Distillation (Shing et al., ICLR 2025,
/// [arXiv:2501.16937](https://arxiv.org/abs/2501.16937); SakanaAI/TAID): the student learns
/// from an intermediate distribution that moves from its own towards the teacher's,
///
/// ```text
/// p_t' = softmax((1 − t)·sg(z_s) + t·z_t)          (interpolated in logit space)
/// L    = reduce_tokens KL(p_t' ‖ p_s)
/// ```
///
/// and `t` rises from `t_start` to `t_end`: at least linearly with training progress, faster
/// while the loss falls. After each step with mean loss `ℓ`,
///
/// ```text
/// m ← β·m + (1 − β)·(ℓ_prev − ℓ)/(ℓ_prev + 1e-15)
/// t ← min(t_end, max(t_start + (t_end − t_start)·progress, t + α·sigmoid(m)·(1 − t)))
/// ```
///
/// (`adaptive: false`: `t` is the linear schedule). A step is identified by the input's
/// [`Progress`]: every forward pass with the same progress adds its loss to that step (so
/// gradient accumulation and repeated evaluation of one batch count once), and the step is
/// folded into `t` when a pass with another progress arrives, or at [`end_step`](Self::end_step).
/// A pass without progress (evaluation) changes nothing, nor does a non-finite loss. Reading
/// the loss for the update synchronises with the device once per pass with progress.
///
/// TAID's code computes the cross-entropy `H(p_t', p_s)` (`cross_entropy: true`), divides by
/// the mask's sum with no guard (an empty mask is NaN; here 0) and gives a NaN teacher
/// gradient at a student logit of −∞ (here a masked vocabulary entry: 0, with zero gradients).
/// One term, `"taid"`.
///
/// # Shapes
/// - student and teacher logits `[N, V]`; mask `[N]` (optional); progress (for the schedule)
#[derive(Debug, Clone)]
pub struct Taid {
    config: TaidConfig,
    state: Arc<Mutex<TaidState>>,
}

crate::loss::objective!(Taid, "taid");

impl Taid {
    fn lock(&self) -> MutexGuard<'_, TaidState> {
        // a poisoned lock still holds a consistent state: every write is one assignment
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The interpolation `t` the next loss is computed at.
    pub fn t(&self) -> f64 {
        self.lock().t
    }

    /// A copy of the state (`t`, momentum, the last loss, the pending step).
    pub fn state(&self) -> TaidState {
        self.lock().clone()
    }

    /// Replaces the state (from [`state`](Self::state), or a saved one read with
    /// [`Config::load`]); a `t` outside `[t_start, t_end]` or a non-finite value is an error.
    pub fn restore(&self, state: TaidState) -> Result<(), DistillError> {
        let c = &self.config;
        if !(state.t >= c.t_start && state.t <= c.t_end) {
            return Err(DistillError::config(
                Self::NAME,
                "state.t",
                state.t,
                "must be in [t_start, t_end]",
            ));
        }
        let finite = state.momentum.is_finite()
            && state.previous_loss.is_none_or(f64::is_finite)
            && state
                .pending
                .as_ref()
                .is_none_or(|p| p.loss_sum.is_finite() && p.fraction.is_finite());
        if !finite {
            return Err(DistillError::config(
                Self::NAME,
                "state",
                format!("{state:?}"),
                "must be finite",
            ));
        }
        *self.lock() = state;
        Ok(())
    }

    /// TAID's `update_t`: folds one step's loss into `t` at training `fraction` and returns the
    /// adaptive step `δ = α·sigmoid(m)·(1 − t)`; the first call only records the loss (`None`).
    pub fn update(&self, loss: f64, fraction: f64) -> Option<f64> {
        let c = &self.config;
        let mut s = self.lock();
        let delta = s.previous_loss.map(|prev| {
            let relative = (prev - loss) / (prev + 1e-15);
            s.momentum = c.beta * s.momentum + (1.0 - c.beta) * relative;
            let delta = c.alpha * (1.0 / (1.0 + (-s.momentum).exp())) * (1.0 - s.t);
            let target = c.t_start + (c.t_end - c.t_start) * fraction;
            s.t = match c.adaptive {
                true => c.t_end.min(target.max(s.t + delta)),
                false => target,
            };
            delta
        });
        s.previous_loss = Some(loss);
        delta
    }

    /// Folds the pending step's mean loss into `t` now (instead of at the next step's first
    /// pass) and returns the adaptive step, `None` when nothing was pending or on the first step.
    pub fn end_step(&self) -> Option<f64> {
        let pending = self.lock().pending.take()?;
        self.update(pending.loss_sum / pending.count as f64, pending.fraction)
    }

    /// Adds a pass's finite loss to the step `progress` names (the previous step already
    /// folded in).
    fn record(&self, loss: f64, progress: &Progress) {
        if !loss.is_finite() {
            return;
        }
        let mut s = self.lock();
        match s.pending.as_mut() {
            Some(p) => {
                p.loss_sum += loss;
                p.count += 1;
            }
            None => {
                s.pending = Some(TaidStep::new(
                    progress.epoch,
                    progress.step,
                    progress.fraction(),
                    loss,
                    1,
                ))
            }
        }
    }
}

impl Loss for Taid {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let checked = input.of(Self::NAME).masked();
        let (zs, zt) = checked.logits()?;
        let [n, v] = zs.dims();
        let mask = checked.mask(n)?;
        checked.targets_if_any(n, v)?;
        let progress = input.get_progress();
        if let Some(p) = &progress {
            // a new step folds the previous one in before its loss is computed
            let same = |s: &TaidStep| s.epoch == p.epoch && s.step == p.step;
            if self.lock().pending.as_ref().is_some_and(|s| !same(s)) {
                self.end_step();
            }
        }
        let (zs, zt) = (
            uncounted(zs, mask.as_ref(), 0.0),
            uncounted(zt, mask.as_ref(), 0.0),
        );
        let rows = taid_rows(zs.clone(), zt.clone(), self.t(), c.cross_entropy);
        let out = LossOutput::single(Self::NAME, c.reduction.apply(rows, mask, v));
        let out = checked.settle_logits(BOUND, out, &zs, &zt)?;
        if let Some(p) = &progress
            && c.reduction != TokenReduction::None
        {
            self.record(out.value(), p);
        }
        Ok(out)
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e30;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Taid"],
    paper: "Shing et al., ICLR 2025 (TAID)",
    doc: "token.md",
    bound: Some(BOUND),
    // at t = 1 (the target is the teacher's): below 1 the target holds the student constant,
    // which the suites' finite differences cannot see (tests/token.rs checks that gradient)
    example: Some(|_| {
        Ok(TaidConfig::new()
            .with_t_start(1.0)
            .with_t_end(1.0)
            .init()?
            .boxed())
    }),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss Taid = token::TaidConfig())),
    golden: crate::registry::golden![
        "taid_loss" => golden::loss,
        "taid_forward_steps" => golden::forward_steps,
        "taid_update_t" => golden::update_t,
    ],
}];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_schedule_is_refused_at_init() {
        for config in [
            TaidConfig::new().with_t_start(0.9).with_t_end(0.5),
            TaidConfig::new().with_t_end(1.5),
            TaidConfig::new().with_beta(1.0),
            TaidConfig::new().with_alpha(-1e-3),
        ] {
            assert!(config.init().is_err(), "{config:?}");
        }
    }

    /// By hand: losses 2, 1 at fractions 0, ½ with α = 0.2, β = 0.9 from t = 0.4, t_end = 1:
    /// m = 0.1·½ = 0.05, δ = 0.2·sigmoid(0.05)·0.6, and the schedule's 0.7 wins.
    #[test]
    fn update_follows_the_formula() {
        let taid = TaidConfig::new()
            .with_alpha(0.2)
            .with_beta(0.9)
            .init()
            .unwrap();
        assert_eq!(taid.update(2.0, 0.0), None);
        assert_eq!(taid.t(), 0.4);
        let delta = taid.update(1.0, 0.5).unwrap();
        let want = 0.2 / (1.0 + (-0.05f64).exp()) * 0.6;
        assert!((delta - want).abs() < 1e-15);
        assert!((taid.t() - 0.7).abs() < 1e-15);
        assert!((taid.state().momentum - 0.05).abs() < 1e-15);
    }
}

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// TAID's `compute_loss` at the reference's float32 `t`, by a plain f64 transcription (the
    /// oracle where the reference is not finite): the cross-entropy form, masked vocabulary
    /// entries at −∞ skipped, 0 on an empty mask.
    pub(crate) fn exact_loss(s: &[f64], t: &[f64], v: usize, mask: &[bool], at: f64) -> f64 {
        exact::masked_mean(s, t, v, mask, |rs, rt| {
            let mix: Vec<f64> = rs
                .iter()
                .zip(rt)
                .map(|(s, t)| match *s == f64::NEG_INFINITY {
                    true => f64::NEG_INFINITY,
                    false => (1.0 - at) * s + at * t,
                })
                .collect();
            let (lt, ls) = (exact::log_softmax(&mix), exact::log_softmax(rs));
            -lt.iter()
                .zip(&ls)
                .filter(|(a, b)| a.is_finite() && b.is_finite())
                .map(|(a, b)| a.exp() * b)
                .sum::<f64>()
        })
    }

    /// One TAID loss evaluation: the loss and both logits' gradients (the teacher attached).
    fn check_step(
        case: &Case,
        taid: &Taid,
        [s_name, t_name, m_name]: [&str; 3],
        progress: Option<Progress>,
        want: Option<f64>,
    ) -> Result<(), String> {
        let (s, sv, v) = token_leaf(case, s_name)?;
        let (t, tv, _) = token_leaf(case, t_name)?;
        let mask: Vec<bool> = case.input(m_name)?.1.iter().map(|&m| m != 0.0).collect();
        let at = taid.t();
        let mut input = DistillInput::new(s.clone(), t.clone())
            .attach_teacher()
            .mask(bools(&mask));
        if let Some(p) = progress {
            input = input.progress(p);
        }
        let out = taid.forward(&input).map_err(e)?;
        let exact = |s: &[f64], t: &[f64]| exact_loss(s, t, v, &mask, at);
        match want {
            Some(w) => {
                let (rel, abs) = case.tolerance();
                close(&format!("loss ({s_name})"), &[out.value()], &[w], rel, abs)?;
            }
            None => case.expect_loss(out.value(), Some(exact(&sv, &tv)))?,
        }
        let grads = out.total.backward();
        let fd_s = || numeric_grad(&|x| exact(&x, &tv), &sv, 1e-6);
        let fd_t = || numeric_grad(&|x| exact(&sv, &x), &tv, 1e-6);
        case.expect_grad(s_name, s.grad(&grads).map(values), Some(&fd_s))?;
        case.expect_grad(t_name, t.grad(&grads).map(values), Some(&fd_t))
    }

    /// TAID's `compute_loss` at a given `t` (the cross-entropy form).
    pub(crate) fn loss(case: &Case) -> Result<(), String> {
        let at = case.opt("t_float32_value").unwrap_or(case.param("t")?);
        let taid = TaidConfig::new()
            .with_t_start(at)
            .with_cross_entropy(true)
            .init()
            .map_err(e)?;
        check_step(
            case,
            &taid,
            ["logits", "teacher_logits", "mask"],
            None,
            None,
        )
    }

    /// TAID as the case's `constructor` builds it (the cross-entropy form).
    fn constructed(case: &Case) -> Result<Taid, String> {
        let c = &case.params["constructor"];
        let get = |k: &str| c[k].as_f64().ok_or(format!("constructor.{k}"));
        TaidConfig::new()
            .with_t_start(get("t_start")?)
            .with_t_end(get("t_end")?)
            .with_alpha(get("alpha")?)
            .with_beta(get("beta")?)
            .with_adaptive(!c["disable_adaptive"].as_bool().unwrap_or(false))
            .with_cross_entropy(true)
            .init()
            .map_err(e)
    }

    /// `TAID.forward` over several steps: each step's loss at the current `t`, then `update_t`.
    pub(crate) fn forward_steps(case: &Case) -> Result<(), String> {
        let taid = constructed(case)?;
        let steps = case.params["global_steps"]
            .as_array()
            .ok_or("global_steps")?
            .iter()
            .map(|s| s.as_u64().map(|s| s as usize).ok_or("a step"))
            .collect::<Result<Vec<_>, _>>()?;
        let total = case.param("estimated_stepping_batches")? as usize;
        let losses = case.loss.clone().ok_or("no loss")?;
        let series = |k: &str| case.outputs.get(k).ok_or(format!("outputs.{k}"));
        let (t_used, t_after) = (series("t_used")?, series("t_after")?);
        let (rel, _) = case.tolerance();
        for (k, &step) in steps.iter().enumerate() {
            close("t used", &[taid.t()], &[t_used[k]], rel, 1e-7)?;
            let names = [
                format!("logits_{k}"),
                format!("teacher_logits_{k}"),
                format!("mask_{k}"),
            ];
            let progress = Progress::epoch(0, 1).at_step(step, total);
            check_step(
                case,
                &taid,
                [&names[0], &names[1], &names[2]],
                Some(progress),
                Some(losses[k]),
            )?;
            taid.end_step();
            close("t after", &[taid.t()], &[t_after[k]], rel, 1e-7)?;
        }
        Ok(())
    }

    /// `TAID.update_t` over a series of losses: `t`, the momentum and `δ` after each call.
    pub(crate) fn update_t(case: &Case) -> Result<(), String> {
        let taid = constructed(case)?;
        let steps = case.params["global_steps"]
            .as_array()
            .ok_or("global_steps")?;
        let total = case.param("num_train_steps")?;
        let (_, losses) = case.input("losses")?;
        let want = case.loss.clone().ok_or("no loss")?;
        let series = |k: &str| case.outputs.get(k).ok_or(format!("outputs.{k}"));
        let (momentum, deltas) = (series("momentum_after")?, series("delta_t")?);
        let tol = 1e-6;
        for (k, (loss, step)) in losses.iter().zip(steps).enumerate() {
            let step = step.as_f64().ok_or("a step")?;
            let delta = taid.update(*loss, step / total);
            close(
                &format!("t after call {k}"),
                &[taid.t()],
                &[want[k]],
                tol,
                tol,
            )?;
            close(
                &format!("momentum after call {k}"),
                &[taid.state().momentum],
                &[momentum[k]],
                tol,
                tol,
            )?;
            let want_delta = deltas[k];
            match delta {
                None if want_delta.is_nan() => {}
                Some(d) => close(&format!("δ of call {k}"), &[d], &[want_delta], tol, tol)?,
                None => return Err(format!("call {k}: no δ, expected {want_delta}")),
            }
        }
        Ok(())
    }
}
