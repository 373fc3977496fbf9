//! Distillation from a sparse teacher: its top-k tokens and their log-probabilities.

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Int, Tensor};

use super::forward_kl::forward_kl_elements;
use super::jsd::jsd_elements;
use super::sampled_token::tail_bucket;
use super::skew_kl::log_skew_mixture;
use super::tokens::{TokenReduction, outside_zero, uncounted};
use crate::check::{check_count, check_fraction, check_temperature};
use crate::error::DistillError;
use crate::fused;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};
use crate::math::{Temperature, log_add_exp, log1mexp, logsumexp};

/// The divergence [`TopK`] takes between the sparse teacher and the student.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum TopKDivergence {
    /// `KL(p_t ‖ p_s)`.
    ForwardKl,
    /// `KL(p_s ‖ p_t)` (needs [`MissingMass::SymmetricUniform`]: with the teacher zero outside
    /// its top k it is infinite).
    ReverseKl,
    /// The generalized JSD(β) of TRL and GKD, `β·KL(p_t ‖ m) + (1 − β)·KL(p_s ‖ m)` with
    /// `m = (1 − β)·p_s + β·p_t`, β = [`TopKConfig::beta`] (0.5: the symmetric JSD; 0 and 1:
    /// forward and reverse KL, as TRL special-cases them).
    Jsd,
    /// The total variation `½ Σ |p_t − p_s|`.
    Tvd,
    /// DistiLLM's skew forward KL `KL(p_t ‖ α·p_t + (1 − α)·p_s)`, α = [`TopKConfig::skew`].
    SkewForwardKl,
    /// DistiLLM's skew reverse KL `KL(p_s ‖ α·p_s + (1 − α)·p_t)`, α = [`TopKConfig::skew`]
    /// (with [`MissingMass::Zero`] each student probability outside the top k adds
    /// `−q·ln α`, so α must be positive there).
    SkewReverseKl,
}

/// What the teacher's probability mass outside its top k becomes (DistillKit's
/// `MissingProbabilityHandling`).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum MissingMass {
    /// Zero: the teacher is renormalised inside its top k and is 0 elsewhere; the student keeps
    /// its whole distribution (the divergences are exact between the two).
    Zero,
    /// One extra bucket for the rest, for both distributions: the teacher's `1 − Σ_k p` and the
    /// student's `1 − Σ_k q` form a `(k+1)`-th category.
    SymmetricUniform,
    /// Both distributions restricted to the teacher's top k and renormalised over them
    /// (Model-Optimizer's `TopKLogitsKLLoss`): the divergence between the two conditionals on
    /// the top k, blind to how much mass the student puts elsewhere.
    Renormalize,
}

/// Where [`TopK`]'s tokens come from.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum TopKSupport {
    /// The sparse teacher's ids and values ([`DistillInput::sparse_teacher`]).
    Teacher,
    /// The student's own top `k` tokens: the teacher is given as full logits and gathered
    /// there (TRL's `compute_topk_self_distillation_loss`, where the student proposes and the
    /// teacher grades its proposals). The ids carry no gradient.
    Student(usize),
}

/// What a sparse teacher's values are (DistillKit's `log_values`).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum SparseValues {
    /// Log-probabilities over the whole vocabulary: the top k's mass may fall short of 1.
    LogProbs,
    /// Raw logits of the top-k tokens: the teacher is their softmax over the k, and nothing is
    /// known of the rest ([`MissingMass::Zero`] or [`MissingMass::Renormalize`] applies).
    Logits,
}

/// Configuration of [`TopK`].
#[derive(Config, Debug)]
pub struct TopKConfig {
    /// Where the `k` tokens come from.
    #[config(default = "TopKSupport::Teacher")]
    pub support: TopKSupport,
    /// The divergence.
    #[config(default = "TopKDivergence::ForwardKl")]
    pub divergence: TopKDivergence,
    /// What the teacher's missing mass becomes.
    #[config(default = "MissingMass::Zero")]
    pub missing: MissingMass,
    /// What the sparse teacher's values are.
    #[config(default = "SparseValues::LogProbs")]
    pub values: SparseValues,
    /// The distillation temperature `T` (> 0): the student's logits are divided by it, the
    /// teacher's stored log-probabilities re-tempered from `generation_temperature` to it.
    #[config(default = 1.0)]
    pub temperature: f64,
    /// The temperature the stored log-probabilities were computed at (> 0).
    #[config(default = 1.0)]
    pub generation_temperature: f64,
    /// Multiply by `T²` (DistillKit does).
    #[config(default = false)]
    pub t_squared: bool,
    /// How per-token values become the total.
    #[config(default = "TokenReduction::TokenMean")]
    pub reduction: TokenReduction,
    /// The smallest missing mass: a top-k sum is clamped to `1 − eps` before the missing
    /// bucket's log (DistillKit's 1e-6), so a teacher whose top k hold all the mass in its
    /// precision gets a finite bucket. Any `eps` in `[f32::MIN_POSITIVE, 0.5)` survives the
    /// computation's float type (f32 or f64: the bucket is `log(−expm1(·))` of the clamped log
    /// mass, exact where `1 − eps` rounds to 1).
    #[config(default = 1e-6)]
    pub eps: f64,
    /// α ∈ [0, 1) of the skew divergences: the matched distribution's own share of the mixture
    /// (DistiLLM's 0.1).
    #[config(default = 0.1)]
    pub skew: f64,
    /// β ∈ [0, 1] of [`TopKDivergence::Jsd`]: the teacher's share of the mixture.
    #[config(default = 0.5)]
    pub beta: f64,
    /// Gather the student's log-probabilities at the teacher's ids with the fused kernel
    /// where the device has one (flex, ndarray; f32 or f64): one pass over each row of
    /// logits, no `[N, V]` log-softmax. `false`: the composed `log_softmax(z/T).gather`.
    #[config(default = true)]
    pub fused: bool,
}

impl TopKConfig {
    /// Validates the configuration and builds the objective.
    pub fn init(&self) -> Result<TopK, DistillError> {
        check_fraction(TopK::NAME, "skew", self.skew, false)?;
        check_fraction(TopK::NAME, "beta", self.beta, true)?;
        if let TopKSupport::Student(k) = self.support {
            check_count(TopK::NAME, "support (the student's k)", k, 1)?;
            if self.missing == MissingMass::Zero {
                return Err(DistillError::config(
                    TopK::NAME,
                    "missing",
                    "Zero",
                    "on the student's support the teacher is known everywhere: use SymmetricUniform or Renormalize",
                ));
            }
        }
        if self.divergence == TopKDivergence::Jsd
            && self.missing == MissingMass::Zero
            && self.beta == 1.0
        {
            return Err(DistillError::config(
                TopK::NAME,
                "beta",
                self.beta,
                "JSD(1) is the reverse KL, infinite from a teacher that is 0 outside its top k: use SymmetricUniform or β < 1",
            ));
        }
        if self.divergence == TopKDivergence::SkewReverseKl
            && self.missing == MissingMass::Zero
            && self.skew == 0.0
        {
            return Err(DistillError::config(
                TopK::NAME,
                "skew",
                self.skew,
                "the skew reverse KL at α = 0 from a teacher that is 0 outside its top k is infinite: use SymmetricUniform or α > 0",
            ));
        }
        if self.divergence == TopKDivergence::ReverseKl && self.missing == MissingMass::Zero {
            return Err(DistillError::config(
                TopK::NAME,
                "missing",
                "Zero",
                "the reverse KL from a teacher that is 0 outside its top k is infinite: use SymmetricUniform",
            ));
        }
        self.reduction.check(TopK::NAME)?;
        if self.values == SparseValues::Logits && self.missing == MissingMass::SymmetricUniform {
            return Err(DistillError::config(
                TopK::NAME,
                "missing",
                format!("{:?}", self.missing),
                "a teacher given as top-k logits has no known missing mass: use Zero or Renormalize",
            ));
        }
        if !(self.eps >= f32::MIN_POSITIVE as f64 && self.eps < 0.5) {
            return Err(DistillError::config(
                TopK::NAME,
                "eps",
                self.eps,
                "must be in [1.2e-38, 0.5) (a smaller mass underflows in float32)",
            ));
        }
        Ok(TopK {
            config: TopKConfig {
                temperature: check_temperature(self.temperature)?,
                generation_temperature: check_temperature(self.generation_temperature)?,
                ..self.clone()
            },
        })
    }
}

/// The log of the missing mass `1 − eˣ` from the log `x` of the mass present, at least `eps`.
fn log_one_minus_exp(x: Tensor<2>, eps: f64) -> Tensor<2> {
    log1mexp(x.clamp_max((-eps).ln_1p()))
}

/// The teacher's stored top-k log-probabilities (or logits) `[N, k]` re-tempered by
/// `α = gT / T` and normalised over the top k (`Zero`: logits and log-probabilities alike) or
/// with the leftover mass (`SymmetricUniform`).
fn retemper(log_probs: Tensor<2>, alpha: f64, missing: MissingMass, eps: f64) -> Tensor<2> {
    match (missing, alpha == 1.0) {
        (MissingMass::SymmetricUniform, true) => log_probs,
        (MissingMass::Zero | MissingMass::Renormalize, _) => {
            let scaled = log_probs * alpha;
            scaled.clone() - logsumexp(scaled)
        }
        (MissingMass::SymmetricUniform, false) => {
            let leftover = log_one_minus_exp(logsumexp(log_probs.clone()), eps) * alpha;
            let scaled = log_probs * alpha;
            let z = log_add_exp(logsumexp(scaled.clone()), leftover);
            scaled - z
        }
    }
}

/// Per-token divergence `[N]` between a sparse teacher (its re-tempered log-probabilities
/// `teacher` `[N, k]`) and the student, whose full-vocabulary log-probabilities at the same ids
/// are `student` `[N, k]`, with `config`'s divergence, missing mass, `eps`, skew α and β.
///
/// A teacher entry at −∞ is outside the support (a server that returned fewer than k
/// tokens): the student's entry there is dropped too, so it counts as the student's mass
/// outside the top k; its terms are 0 and its gradients 0.
pub fn top_k_rows(student: Tensor<2>, teacher: Tensor<2>, config: &TopKConfig) -> Tensor<1> {
    let (missing, eps) = (config.missing, config.eps);
    let outside = teacher.clone().equal_elem(f64::NEG_INFINITY);
    let student = student.mask_fill(outside.clone(), f64::NEG_INFINITY);
    // the student's mass outside the teacher's top k, `1 − Σ_k q`
    let rest = |b: &Tensor<2>| -(b.clone().exp().sum_dim(1)) + 1.0;
    let rows = match missing {
        MissingMass::SymmetricUniform | MissingMass::Renormalize => {
            let (a, b, outside) = match missing {
                MissingMass::SymmetricUniform => {
                    let bucket = |x: Tensor<2>| tail_bucket(x, (-eps).ln_1p());
                    let n = outside.dims()[0];
                    let bucket_outside =
                        Tensor::<2, Int>::zeros([n, 1], &outside.device()).equal_elem(1);
                    (
                        bucket(teacher),
                        bucket(student.clone()),
                        // the bucket is always in the support
                        Tensor::cat(vec![outside, bucket_outside], 1),
                    )
                }
                // the teacher comes renormalised; the student is here
                _ => (teacher, student.clone() - logsumexp(student), outside),
            };
            divergence_elements(a, b, &outside, config).sum_dim(1)
        }
        MissingMass::Zero => {
            let sparse = divergence_elements(teacher, student.clone(), &outside, config).sum_dim(1);
            match config.divergence {
                TopKDivergence::ForwardKl | TopKDivergence::ReverseKl => sparse,
                // outside the top k: p_t = 0, m = (1 − β)·q, so each q adds −(1 − β)·q·ln(1 − β)
                TopKDivergence::Jsd if config.beta == 0.0 => sparse,
                TopKDivergence::Jsd => {
                    let b = 1.0 - config.beta;
                    sparse - rest(&student) * (b * b.ln())
                }
                TopKDivergence::Tvd => sparse + rest(&student) * 0.5,
                // p_t = 0 outside the top k: there the mixture is p_t's share alone
                TopKDivergence::SkewForwardKl => sparse,
                // and there it is α·q, so each q adds q·ln(q / αq) = −q·ln α
                TopKDivergence::SkewReverseKl => sparse - rest(&student) * config.skew.ln(),
            }
        }
    };
    rows.squeeze_dim(1)
}

/// The divergence's terms `[N, k]` between the teacher's `a` and the student's `b`
/// log-probabilities on a support, 0 (with zero gradients) where `outside`.
fn divergence_elements(
    a: Tensor<2>,
    b: Tensor<2>,
    outside: &Tensor<2, Bool>,
    config: &TopKConfig,
) -> Tensor<2> {
    outside_zero(a, b, outside, |a, b| match config.divergence {
        // with the teacher 0 outside its top k the reverse KL needs the bucket (init checks)
        TopKDivergence::ForwardKl => forward_kl_elements(b, a),
        TopKDivergence::ReverseKl => forward_kl_elements(a, b),
        TopKDivergence::Jsd => jsd_elements(b, a, config.beta),
        TopKDivergence::Tvd => (a.exp() - b.exp()).abs() * 0.5,
        TopKDivergence::SkewForwardKl => {
            forward_kl_elements(log_skew_mixture(a.clone(), b, config.skew), a)
        }
        TopKDivergence::SkewReverseKl => {
            forward_kl_elements(log_skew_mixture(b.clone(), a, config.skew), b)
        }
    })
}

/// Distillation from a sparse teacher (DistillKit's offline top-k signal, ~300 bytes a token
/// at k = 64 instead of the whole vocabulary): the teacher is given as the ids of its top-k
/// tokens and their log-probabilities, or their logits ([`SparseValues`];
/// [`DistillInput::sparse_teacher`]), the student as its full logits `[N, V]`. With `q = softmax(z_s / T)` gathered at the ids and the teacher's
/// log-probabilities re-tempered from the generation temperature to `T`:
///
/// - [`MissingMass::Zero`]: the teacher renormalised over its top k and 0 elsewhere; the
///   forward KL, JSD and TVD are exact between it and the student's whole distribution;
/// - [`MissingMass::Renormalize`]: both distributions restricted to the top k and
///   renormalised there; the divergence is between those `k`-category conditionals;
/// - [`MissingMass::SymmetricUniform`]: both distributions get a `(k+1)`-th bucket with
///   their missing mass, and the divergence is taken over `k + 1` categories (computed in log
///   space: DistillKit's is NaN when a float32 top-k sum reaches 1).
///
/// `[T²] · reduce_tokens D(p_t, p_s)` over the rows the mask admits. One term, `"top_k"`.
///
/// # Shapes
/// - student logits `[N, V]`; sparse teacher ids and log-probabilities `[N, k]`; mask `[N]`
#[derive(Debug, Clone)]
pub struct TopK {
    config: TopKConfig,
}

crate::loss::objective!(TopK, "top_k");

/// Through [`FusedLinear`](super::FusedLinear) with a [`TeacherHead::TopK`](super::TeacherHead)
/// (built with `TokenReduction::None`): a top-k cache distilled with the logits never built.
impl super::TokenDivergence for TopK {}

impl Loss for TopK {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let input = input.of(Self::NAME).masked();
        let temperature = Temperature::Fixed(c.temperature);
        // with the logits read (the teacher's when dense), for the bound's check
        let (student, teacher, mask, v, (read_s, read_t)) = match c.support {
            TopKSupport::Teacher => {
                let s = input.student_logits()?;
                let [n, v] = s.dims();
                let mask = input.mask(n)?;
                input.targets_if_any(n, v)?;
                let (ids, lp) = input.sparse_teacher(n, v)?;
                let k = ids.dims()[1];
                let s = uncounted(s, mask.as_ref(), 0.0);
                let lp = uncounted(lp, mask.as_ref(), (1.0 / k as f64).ln());
                let gathered = c
                    .fused
                    .then(|| fused::gather_log_softmax(&s, &ids, c.temperature));
                let student = match gathered.flatten() {
                    Some(student) => student,
                    None => log_softmax(temperature.scale(s.clone()), 1).gather(1, ids),
                };
                let alpha = c.generation_temperature / c.temperature;
                let teacher = retemper(lp, alpha, c.missing, c.eps);
                (student, teacher, mask, v, (s, None))
            }
            TopKSupport::Student(k) => {
                let (s, t) = input.logits()?;
                let [n, v] = s.dims();
                if k > v {
                    return Err(DistillError::TooFewClasses {
                        objective: Self::NAME.into(),
                        min: k,
                        got: v,
                    });
                }
                let mask = input.mask(n)?;
                input.targets_if_any(n, v)?;
                let log_q = |z: Tensor<2>| {
                    log_softmax(temperature.scale(uncounted(z, mask.as_ref(), 0.0)), 1)
                };
                let read = (s.clone(), Some(t.clone()));
                let student = log_q(s);
                let ids = student.clone().detach().topk_with_indices(k, 1).1;
                let teacher = log_q(t).gather(1, ids.clone());
                let student = student.gather(1, ids);
                (
                    student,
                    retemper(teacher, 1.0, c.missing, c.eps),
                    mask,
                    v,
                    read,
                )
            }
        };
        let rows = top_k_rows(student, teacher, c);
        let total = c.reduction.apply(rows, mask, v);
        let out = LossOutput::single(
            Self::NAME,
            match c.t_squared {
                true => temperature.times_squared(total),
                false => total,
            },
        );
        match &read_t {
            Some(t) => input.settle_logits(BOUND, out, &read_s, t),
            None => input.settle(BOUND, out, &[("the student logits", &read_s)]),
        }
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e38;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["TopK"],
    paper: "a sparse top-k teacher with DistillKit's missing-mass handling",
    doc: "token.md",
    bound: Some(BOUND),
    example: Some(|_| {
        Ok(TopKConfig::new()
            .with_missing(MissingMass::SymmetricUniform)
            .with_divergence(TopKDivergence::Jsd)
            .init()?
            .boxed())
    }),
    learnable: None,
    twins: Some(|fused| {
        let top_k = |missing| {
            TopKConfig::new()
                .with_temperature(2.0)
                .with_missing(missing)
                .with_fused(fused)
                .init()
        };
        Ok(vec![
            ("top-k KL".into(), 1.0, top_k(MissingMass::Zero)?.boxed()),
            (
                "top-k KL, tail bucket".into(),
                1.0,
                top_k(MissingMass::SymmetricUniform)?.boxed(),
            ),
        ])
    }),
    method: Some(crate::registry::method!(loss TopK = token::TopKConfig())),
    golden: crate::registry::golden![
        "modelopt_mcore_topk_kl" => golden::modelopt_megatron,
        "trl_topk_sd" => golden::trl_student_support,
        "trl_server_forward_kl_topk" => golden::trl_server_topk,
        "trl_server_sparse_top1" => golden::trl_server_top1,
    ],
}];

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{DType, Device, Int, TensorData};

    /// The fused gathered log-softmax against its composed twin, values and gradients, in
    /// f64 and f32, at a width the kernel's lanes do not divide, with −∞ entries (masked
    /// vocabulary; one of them gathered) and a row that is all −∞ but one entry.
    #[test]
    fn the_fused_gathered_log_softmax_equals_the_composed_one() {
        let dev = Device::flex().autodiff();
        let (n, v, k, t) = (5, 1003, 7, 1.7);
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 2e-5)] {
            let mut z: Vec<f64> = (0..n * v)
                .map(|i| ((i * 7919 % 1000) as f64 / 100.0 - 5.0) * (1.0 + (i % 3) as f64))
                .collect();
            z[3] = f64::NEG_INFINITY;
            z[v + 11] = f64::NEG_INFINITY;
            for j in 0..v {
                if j != 5 {
                    z[4 * v + j] = f64::NEG_INFINITY;
                }
            }
            let ids: Vec<i64> = (0..n * k).map(|i| ((i * 131 + 3) % v) as i64).collect();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [n, k]), &dev);
            let g: Vec<f64> = (0..n * k).map(|i| (i % 5) as f64 - 1.5).collect();
            let g = Tensor::<2>::from_data(TensorData::new(g, [n, k]), (&dev, dtype));
            let run = |fused: bool| {
                let z = Tensor::<2>::from_data(TensorData::new(z.clone(), [n, v]), (&dev, dtype))
                    .require_grad();
                let out = match fused {
                    true => fused::gather_log_softmax(&z, &ids, t).expect("flex has the kernel"),
                    false => log_softmax(z.clone() * (1.0 / t), 1).gather(1, ids.clone()),
                };
                // the gathered −∞ entry gives −∞; weight it 0 (its gradient is 0 either way)
                let finite = out.clone().is_finite();
                let total = (out.clone().mask_fill(finite.clone().bool_not(), 0.0) * g.clone())
                    .mask_fill(finite.bool_not(), 0.0)
                    .sum();
                let grads = total.backward();
                let grad = z.grad(&grads).unwrap();
                let as_vec =
                    |x: Tensor<2>| x.into_data().convert::<f64>().try_to_vec::<f64>().unwrap();
                (as_vec(out), as_vec(grad))
            };
            let ((out_f, grad_f), (out_c, grad_c)) = (run(true), run(false));
            for (a, b) in out_f.iter().zip(&out_c).chain(grad_f.iter().zip(&grad_c)) {
                let same = a == b || (a - b).abs() <= tol * b.abs().max(1.0);
                assert!(same, "{dtype:?}: fused {a} vs composed {b}");
            }
        }
    }

    #[test]
    fn logits_need_zero_missing_mass_and_eps_must_survive_f32() {
        let logits = TopKConfig::new()
            .with_values(SparseValues::Logits)
            .with_missing(MissingMass::SymmetricUniform);
        assert!(matches!(
            logits.init().unwrap_err(),
            DistillError::InvalidConfig { ref field, .. } if field == "missing"
        ));
        let tiny = TopKConfig::new().with_eps(1e-40);
        assert!(matches!(
            tiny.init().unwrap_err(),
            DistillError::InvalidConfig { ref field, .. } if field == "eps"
        ));
    }

    /// A float32 teacher whose top k hold all its mass: with `eps = 1e-8` (which `1 − eps`
    /// rounds away in f32) the missing bucket is `ln 1e-8`, and the loss finite.
    #[test]
    fn a_full_top_k_in_f32_with_eps_1e8_is_finite() {
        let dev = Device::flex();
        let f32 = |x: Vec<f64>, shape: [usize; 2]| {
            Tensor::<2>::from_data(burn::tensor::TensorData::new(x, shape), (&dev, DType::F32))
        };
        let s = f32(vec![3.0, 1.0, 0.0, -1.0], [1, 4]);
        let ids = Tensor::<2, Int>::from_ints([[0, 1]], &dev);
        let lp = f32(vec![0.0, -200.0], [1, 2]);
        let loss = TopKConfig::new()
            .with_missing(MissingMass::SymmetricUniform)
            .with_eps(1e-8)
            .init()
            .unwrap()
            .forward(&DistillInput::student(s).sparse_teacher(ids, lp))
            .unwrap()
            .value();
        // q = softmax(s) at the ids, the student's rest as its own bucket; the teacher is
        // [1, e⁻²⁰⁰, 1e-8]: KL = −log q₀ + 1e-8·(ln 1e-8 − ln q_rest), to f32's precision
        let z: f64 = [3.0f64, 1.0, 0.0, -1.0].iter().map(|v| v.exp()).sum();
        let (q0, rest) = (
            3f64.exp() / z,
            (1f64.exp() + 1.0 + (-1f64).exp()) / z - 1f64.exp() / z,
        );
        let want = -q0.ln() + 1e-8 * (1e-8f64.ln() - rest.ln());
        assert!((loss - want).abs() < 1e-5, "{loss} vs {want}");
    }
}

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// DistillKit's sparse (top-k) signal: the teacher's top-k ids and log-probabilities, zero or
    /// symmetric-uniform missing mass, `T²`, the sum over the masked tokens divided by their number.
    pub(crate) fn distillkit_sparse(case: &Case) -> Result<(), String> {
        let teacher_values = match case.params["log_values"].as_bool() {
            Some(false) => SparseValues::Logits,
            _ => SparseValues::LogProbs,
        };
        let temperature = case.param("temperature")?;
        let divergence = match case.method.as_str() {
            "distillkit_kl" => TopKDivergence::ForwardKl,
            "distillkit_jsd" => TopKDivergence::Jsd,
            _ => TopKDivergence::Tvd,
        };
        let missing = match case.params["missing_probability_handling"].as_str() {
            Some("SYMMETRIC_UNIFORM") => MissingMass::SymmetricUniform,
            _ => MissingMass::Zero,
        };
        let loss = TopKConfig::new()
            .with_divergence(divergence)
            .with_missing(missing)
            .with_values(teacher_values)
            .with_temperature(temperature)
            .with_generation_temperature(case.opt("generation_temperature").unwrap_or(1.0))
            .with_t_squared(true)
            .with_eps(case.opt("eps").unwrap_or(1e-6))
            .with_reduction(super::super::tokens::golden::distillkit_reduction(case))
            .init()
            .map_err(e)?;
        let (s, sv, v) = token_leaf(case, "student_logits")?;
        let (ids_shape, ids) = case.input("target_ids")?;
        let k = *ids_shape.last().ok_or("no k")?;
        let n = ids.len() / k;
        let ids = Tensor::<2, Int>::from_data(
            burn::tensor::TensorData::new(
                ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [n, k],
            ),
            &device(),
        );
        let (_, lp) = case.input("target_values")?;
        let lp = tensor(lp.clone(), [n, k], case.dtype);
        let mask = token_mask(case)?;
        let mut input = DistillInput::student(s.clone()).sparse_teacher(ids, lp);
        if let Some(m) = &mask {
            input = input.mask(bools(m));
        }
        let out = loss.forward(&input).map_err(e)?;
        // the reference divides 0 by 0 on an empty mask (the exact value is 0, with zero
        // gradients), and its symmetric-uniform KL is NaN where a float32 top-k sum reaches 1
        let empty = mask.as_ref().is_some_and(|m| m.iter().all(|&x| !x));
        let exact = match divergence {
            TopKDivergence::ForwardKl => Some(
                exact::sparse_kl(
                    &sv,
                    v,
                    &case.input("target_ids")?.1,
                    &case.input("target_values")?.1,
                    k,
                    mask.as_deref(),
                    [
                        temperature,
                        case.opt("generation_temperature").unwrap_or(1.0) / temperature,
                    ],
                    missing == MissingMass::SymmetricUniform,
                    case.opt("eps").unwrap_or(1e-6),
                ) * match case.opt("num_items_in_batch") {
                    // the exact mean over the valid tokens, as a sum over num_items_in_batch
                    Some(items) => {
                        per_valid(
                            mask.as_ref()
                                .map_or(n, |m| m.iter().filter(|&&x| x).count()),
                        ) / items
                    }
                    None => 1.0,
                },
            ),
            _ => empty.then_some(0.0),
        };
        case.expect_loss(out.value(), exact)?;
        let grads = out.total.backward();
        let zeros = || vec![0.0; sv.len()];
        let exact: Option<&dyn Fn() -> Vec<f64>> = if empty { Some(&zeros) } else { None };
        case.expect_grad("student_logits", s.grad(&grads).map(values), exact)
    }

    /// TRL's missing mass: a tail bucket whose log-mass is capped at −1e-7 (`eps` is the mass
    /// `1 − e^{−1e-7}` that cap leaves), or renormalisation.
    fn trl_missing(case: &Case, key: &str) -> Result<(MissingMass, f64), String> {
        let tail = case.param(key)? != 0.0;
        let eps = -(-1e-7f64).exp_m1();
        Ok(match tail {
            true => (MissingMass::SymmetricUniform, eps),
            false => (MissingMass::Renormalize, eps),
        })
    }

    /// The ids input `name` `[…, k]` as `[N, k]`.
    fn sparse_ids(case: &Case, name: &str) -> Result<Tensor<2, Int>, String> {
        let (shape, ids) = case.input(name)?;
        let k = *shape.last().ok_or("no k")?;
        Ok(ints(ids.iter().map(|&i| i as i64).collect()).reshape([ids.len() / k, k]))
    }

    /// TRL's `compute_topk_self_distillation_loss`: the student's top k, JSD(α) over them with a
    /// tail bucket or renormalised, per token, both logits' gradients.
    pub(crate) fn trl_student_support(case: &Case) -> Result<(), String> {
        let (s, _, _) = token_leaf(case, "student_logits")?;
        let (t, _, _) = token_leaf(case, "teacher_logits")?;
        let (missing, eps) = trl_missing(case, "distillation_add_tail")?;
        let loss = TopKConfig::new()
            .with_support(TopKSupport::Student(
                case.param("distillation_topk")? as usize
            ))
            .with_divergence(TopKDivergence::Jsd)
            .with_beta(case.param("distillation_alpha")?)
            .with_missing(missing)
            .with_eps(eps)
            .with_reduction(TokenReduction::None)
            .init()
            .map_err(e)?;
        let input = DistillInput::new(s.clone(), t.clone()).attach_teacher();
        let rows = loss.forward(&input).map_err(e)?.total;
        case.check_elements(
            rows,
            &[
                ("student_logits", crate::input::Feature::Embedding(s)),
                ("teacher_logits", crate::input::Feature::Embedding(t)),
            ],
        )
    }

    /// A TRL server loss: `TopK` with the student's given log-probabilities as its logits, the
    /// mask from the labels, the mean over the valid tokens or `num_items_in_batch`.
    fn trl_server(
        case: &Case,
        config: TopKConfig,
        ids: Tensor<2, Int>,
        log_probs: Tensor<2>,
        teacher: &[(&str, Tensor<2>)],
    ) -> Result<(), String> {
        let (s, _, _) = token_leaf(case, "student_log_probs")?;
        let reduction = match case.opt("num_items_in_batch") {
            Some(n) => TokenReduction::DivideBy(n),
            None => TokenReduction::TokenMean,
        };
        let loss = config.with_reduction(reduction).init().map_err(e)?;
        let mut input = DistillInput::student(s.clone())
            .sparse_teacher(ids, log_probs)
            .attach_teacher();
        if let Some(m) = token_mask(case)? {
            input = input.mask(bools(&m));
        }
        let out = loss.forward(&input).map_err(e)?;
        case.expect_loss(out.value(), None)?;
        let grads = out.total.backward();
        case.expect_grad_through_log_softmax(
            "student_log_probs",
            s.grad(&grads).map(values),
            None,
        )?;
        for (name, leaf) in teacher {
            case.expect_grad(name, leaf.grad(&grads).map(values), None)?;
        }
        Ok(())
    }

    /// TRL's server forward KL on the teacher's top k (−∞ where it returned fewer).
    pub(crate) fn trl_server_topk(case: &Case) -> Result<(), String> {
        let (missing, eps) = trl_missing(case, "loss_add_tail")?;
        let ids = sparse_ids(case, "teacher_topk_token_ids")?;
        let (lp, _, _) = token_leaf(case, "teacher_topk_logprobs")?;
        let config = TopKConfig::new().with_missing(missing).with_eps(eps);
        trl_server(
            case,
            config,
            ids,
            lp.clone(),
            &[("teacher_topk_logprobs", lp)],
        )
    }

    /// TRL's server sparse top-1 JSD(β): the support is the teacher's top-1 token and the
    /// sampled (reverse) token, the second dropped where they coincide; β = 1 keeps the reverse
    /// token alone.
    pub(crate) fn trl_server_top1(case: &Case) -> Result<(), String> {
        let beta = case.param("beta")?;
        let (missing, eps) = trl_missing(case, "loss_add_tail")?;
        let (top_leaf, rev_leaf) = (
            case.leaf::<2>("teacher_top1_logprobs")?,
            case.leaf::<2>("reverse_teacher_logprobs")?,
        );
        let column = |leaf: &Tensor<2>| {
            let [b, t] = leaf.dims();
            leaf.clone().reshape([b * t, 1])
        };
        let top = sparse_ids(case, "teacher_top1_token_ids")?;
        let top = top.clone().reshape([top.dims()[0] * top.dims()[1], 1]);
        let rev = sparse_ids(case, "reverse_token_ids")?;
        let rev = rev.clone().reshape([rev.dims()[0] * rev.dims()[1], 1]);
        let (lp_top, lp_rev) = (column(&top_leaf), column(&rev_leaf));
        let (ids, lp) = match beta == 1.0 {
            true => (rev, lp_rev),
            false => {
                let same = top.clone().equal(rev.clone());
                (
                    Tensor::cat(vec![top, rev], 1),
                    Tensor::cat(vec![lp_top, lp_rev.mask_fill(same, f64::NEG_INFINITY)], 1),
                )
            }
        };
        let config = TopKConfig::new()
            .with_divergence(TopKDivergence::Jsd)
            .with_beta(beta)
            .with_missing(missing)
            .with_eps(eps);
        let leaves = [
            ("teacher_top1_logprobs", top_leaf),
            ("reverse_teacher_logprobs", rev_leaf),
        ];
        trl_server(case, config, ids, lp, &leaves)
    }

    /// The Megatron plugin's `TopKLogitsKLLoss`: the teacher's top k of `t/T`, both sides
    /// renormalised over those k, `KL(p_t ‖ p_s)` (`reverse`: `KL(p_s ‖ p_t)`) per position
    /// `[b, s]`, no `T²`, the teacher detached.
    pub(crate) fn modelopt_megatron(case: &Case) -> Result<(), String> {
        use super::super::hidden_state::golden::{megatron_check, megatron_rows};
        let (p, ps) = megatron_rows(case, "predictions")?;
        let (_, ts) = megatron_rows(case, "targets")?;
        let temperature = case.param("temperature")?;
        let k = case.param("top_k")? as usize;
        let (log_probs, ids) = log_softmax(ts / temperature, 1).topk_with_indices(k, 1);
        let loss = TopKConfig::new()
            .with_divergence(match case.params["reverse"].as_bool() {
                Some(true) => TopKDivergence::ReverseKl,
                _ => TopKDivergence::ForwardKl,
            })
            .with_missing(MissingMass::Renormalize)
            .with_temperature(temperature)
            .with_generation_temperature(temperature)
            .with_reduction(TokenReduction::None)
            .init()
            .map_err(e)?;
        let input = DistillInput::student(ps).sparse_teacher(ids, log_probs);
        let rows = loss.forward(&input).map_err(e)?.total;
        megatron_check(case, &p, rows)
    }
}
