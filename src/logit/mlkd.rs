//! MLKD: multi-level logit distillation (instance, batch and class correlations at several
//! temperatures).

use crate::loss::LossExt;
use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, FloatDType, Tensor};

use crate::check::{check_non_negative, check_temperature};
use crate::cross_entropy::cross_entropy_per_sample;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::logit::kd_per_sample;
use crate::loss::{Loss, LossOutput};

/// MLKD's instance-level term per sample: `T² · KL(softmax(zᵗ/T) ‖ softmax(zˢ/T))`, `[N]`
/// (the reference's `kd_loss(…, reduce=False)`).
pub fn mlkd_instance(student: Tensor<2>, teacher: Tensor<2>, temperature: f64) -> Tensor<1> {
    kd_per_sample(student, teacher, temperature) * (temperature * temperature)
}

/// MLKD's class-level term before reduction: `(Mᵗ − Mˢ)² / C` with `M = PᵀP` `[C, C]`,
/// `P = softmax(z/T)` (the reference's `cc_loss(…, reduce=False)`; `reduce=True` is its sum).
pub fn class_correlation(student: Tensor<2>, teacher: Tensor<2>, temperature: f64) -> Tensor<2> {
    let c = student.dims()[1];
    let gram = |z: Tensor<2>| {
        let p = softmax(z * (1.0 / temperature), 1);
        p.clone().transpose().matmul(p)
    };
    (gram(teacher) - gram(student)).square() * (1.0 / c as f64)
}

/// MLKD's batch-level term before reduction: `(Mᵗ − Mˢ)² / N` with `M = PPᵀ` `[N, N]` (the
/// reference's `bc_loss(…, reduce=False)`; `reduce=True` is its sum).
pub fn batch_correlation(student: Tensor<2>, teacher: Tensor<2>, temperature: f64) -> Tensor<2> {
    let n = student.dims()[0];
    let gram = |z: Tensor<2>| {
        let p = softmax(z * (1.0 / temperature), 1);
        p.clone().matmul(p.transpose())
    };
    (gram(teacher) - gram(student)).square() * (1.0 / n as f64)
}

/// `x ≤ median(x)`, the median interpolated linearly between the two middle values
/// (`numpy.percentile(x, 50)`), computed on the device.
pub fn at_most_median(x: Tensor<1>) -> Tensor<1, Bool> {
    let n = x.dims()[0];
    let sorted = x.clone().sort(0);
    let (lo, hi) = ((n - 1) / 2, n / 2);
    let a = sorted.clone().slice(lo..lo + 1);
    let b = sorted.slice(hi..hi + 1);
    let median = a.clone() + (b - a) * if lo == hi { 0.0 } else { 0.5 };
    x.lower_equal(median.expand([n]))
}

/// Configuration of [`Mlkd`]; the defaults are the reference's (CIFAR-100: `T₀ = 4`, weights 1).
#[derive(Config, Debug)]
pub struct MlkdConfig {
    /// The temperatures `T₀, T₁, …` every level is computed at (the reference: the configured
    /// `T₀` and then 3, 5, 2, 6).
    #[config(default = "vec![4.0, 3.0, 5.0, 2.0, 6.0]")]
    pub temperatures: Vec<f64>,
    /// Weight of each distillation term (the reference's `KD.LOSS.KD_WEIGHT`).
    #[config(default = 1.0)]
    pub kd_weight: f64,
    /// Weight of the cross-entropy on each view (the reference's `KD.LOSS.CE_WEIGHT`, 1 there):
    /// 0 leaves the task loss to a [`CrossEntropy`](crate::CrossEntropy) beside this one.
    #[config(default = 0.0)]
    pub ce_weight: f64,
    /// The feature tap holding the strongly augmented view's logits `[N, C]` (student and
    /// teacher); `None`: one view, and no strong-view term.
    #[config(default = "None")]
    pub strong: Option<String>,
    /// Reproduce the reference code's arithmetic (see [`Mlkd`]); `false` applies the masks as
    /// selections and computes the strong-view term on the strong view at every temperature.
    #[config(default = true)]
    pub reference: bool,
}

impl MlkdConfig {
    /// Validates the temperatures and weights.
    pub fn init(&self) -> Result<Mlkd, DistillError> {
        if self.temperatures.is_empty() {
            return Err(DistillError::config(
                Mlkd::NAME,
                "temperatures",
                "[]",
                "names at least one temperature",
            ));
        }
        for &t in &self.temperatures {
            check_temperature(t)?;
        }
        check_non_negative(Mlkd::NAME, "kd_weight", self.kd_weight)?;
        check_non_negative(Mlkd::NAME, "ce_weight", self.ce_weight)?;
        Ok(Mlkd {
            config: self.clone(),
        })
    }
}

/// Multi-level logit distillation (Jin, Wang, Lin, CVPR 2023, *Multi-Level Logit
/// Distillation*; Jin-Ying/Multi-Level-Logit-Distillation `KD_ours.py`). With
/// `P = softmax(z/T)` at every temperature `T` of the list, the teacher's confidence
/// `cₙ = maxⱼ softmax(zᵗₙ)ⱼ` and class mass `m_c = Σₙ softmax(zᵗₙ)_c`, the sample mask
/// `a = [c ≤ median c]` and the class mask `b = [m ≤ median m]`:
///
/// ```text
/// kd = w Σ_T  frac(a) · meanₙ T² KL(pᵗ ‖ pˢ)                 (weak view)
///    + w Σ_T  meanₙ T² KL(pᵗ ‖ pˢ)                          (strong view, if given)
/// cc = w Σ_T  frac(b) · Σ (PᵗᵀPᵗ − PˢᵀPˢ)² / C
/// bc = w Σ_T  frac(a) · Σ (PᵗPᵗᵀ − PˢPˢᵀ)² / N
/// ce = w_ce (CE(zˢ_weak, y) + CE(zˢ_strong, y))             (only with ce_weight > 0)
/// ```
///
/// Terms `"mlkd/kd"`, `"mlkd/cc"`, `"mlkd/bc"` and `"mlkd/ce"`.
///
/// **Where the code and the paper differ** (the default, `reference: true`, follows the code,
/// which produced the published numbers): the code multiplies each *reduced* loss by its
/// mask (`(scalar × mask).mean()`), which scales it by the mask's fraction `frac(·)` instead of
/// selecting samples; its strong-view term uses the *weak* logits at its last two temperatures
/// (2 and 6); and its strong-view class and batch terms are computed and discarded. With
/// `reference: false` the masks select (`kd = w Σ_T Σ_{n∈a} T² KLₙ / N`, the correlations
/// sum only the masked columns, with the same normalisations) and the strong-view term uses
/// the strong logits at every temperature. The masks keep the samples and classes at or
/// *below* the median confidence, as the code does.
///
/// # Shapes
/// - logits `[N, C]`; the strong view's tap `[N, C]`; targets `[N]` when `ce_weight > 0`
#[derive(Debug, Clone)]
pub struct Mlkd {
    config: MlkdConfig,
}

crate::loss::objective!(Mlkd, "mlkd");

impl Mlkd {
    /// One level summed over the temperatures: each of `levels` reduced with `mask` (a scale
    /// by its fraction, or a selection of the columns).
    fn level(&self, levels: &[Tensor<2>], mask: &Tensor<1, Bool>) -> Tensor<1> {
        let m = mask
            .clone()
            .float()
            .cast(FloatDType::from(levels[0].dtype()));
        let total = levels
            .iter()
            .map(|x| match self.config.reference {
                true => x.clone().sum() * m.clone().mean(),
                false => (x.clone() * m.clone().unsqueeze_dim::<2>(0)).sum(),
            })
            .reduce(|a, b| a + b)
            .expect("at least one temperature, checked at init");
        total * self.config.kd_weight
    }
}

impl Loss for Mlkd {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let checked = input.of(Self::NAME).within(BOUND);
        let (s, t) = checked.logits()?;
        let n = s.dims()[0];
        let strong = match &self.config.strong {
            Some(tap) => Some(checked.rows(tap, n)?),
            None => None,
        };
        if let Some((ss, _)) = &strong
            && ss.dims() != s.dims()
        {
            return Err(checked.shape(
                "the strong view's logits".into(),
                s.dims().to_vec(),
                ss.dims().to_vec(),
            ));
        }
        let pt = softmax(t.clone().detach(), 1);
        let samples = at_most_median(pt.clone().max_dim(1).squeeze_dim(1));
        let classes = at_most_median(pt.sum_dim(0).squeeze_dim(0));
        let temps = &self.config.temperatures;
        // the instance level as a [1, N] row, so that the mask selects its columns
        let instance = |s: &Tensor<2>, t: &Tensor<2>, temp| {
            mlkd_instance(s.clone(), t.clone(), temp).unsqueeze_dim::<2>(0) * (1.0 / n as f64)
        };
        let weak: Vec<Tensor<2>> = temps.iter().map(|&temp| instance(&s, &t, temp)).collect();
        let mut kd = self.level(&weak, &samples);
        if let Some((ss, ts)) = &strong {
            // the reference's strong term reuses the weak view from its fourth temperature on
            let split = if self.config.reference {
                3
            } else {
                temps.len()
            };
            for (i, &temp) in temps.iter().enumerate() {
                let term = match i < split {
                    true => instance(ss, ts, temp),
                    false => weak[i].clone(),
                };
                kd = kd + term.sum() * self.config.kd_weight;
            }
        }
        let per_temperature = |f: fn(Tensor<2>, Tensor<2>, f64) -> Tensor<2>| -> Vec<Tensor<2>> {
            temps
                .iter()
                .map(|&temp| f(s.clone(), t.clone(), temp))
                .collect()
        };
        let cc = self.level(&per_temperature(class_correlation), &classes);
        let bc = self.level(&per_temperature(batch_correlation), &samples);
        let mut terms = vec![
            (format!("{}/kd", Self::NAME), kd),
            (format!("{}/cc", Self::NAME), cc),
            (format!("{}/bc", Self::NAME), bc),
        ];
        if self.config.ce_weight > 0.0 {
            let y = checked.targets(n, s.dims()[1])?;
            let mut ce = cross_entropy_per_sample(s.clone(), y.clone(), 0.0).mean();
            if let Some((ss, _)) = strong {
                ce = ce + cross_entropy_per_sample(ss, y, 0.0).mean();
            }
            terms.push((format!("{}/ce", Self::NAME), ce * self.config.ce_weight));
        }
        Ok(LossOutput::from_terms(terms))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e30;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Mlkd"],
    paper: "Jin, Wang, Lin, CVPR 2023, *Multi-Level Logit Distillation*",
    doc: "mlkd.md",
    bound: Some(BOUND),
    example: Some(|_| Ok(MlkdConfig::new().with_ce_weight(1.0).init()?.boxed())),
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss Mlkd = logit::MlkdConfig())),
    golden: crate::registry::golden!["mlkd_kd" => golden::mlkd_level, "mlkd_cc" => golden::mlkd_level, "mlkd_bc" => golden::mlkd_level, "mlkd_full" => golden::mlkd_full],
}];

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn median_mask_matches_numpy() {
        let dev = Device::flex();
        let mask = |v: &[f32]| {
            at_most_median(Tensor::<1>::from_floats(v, &dev))
                .into_data()
                .try_to_vec::<bool>()
                .unwrap()
        };
        // odd: the middle value itself is kept
        assert_eq!(mask(&[3.0, 1.0, 2.0]), [false, true, true]);
        // even: numpy's median is the midpoint 2.5
        assert_eq!(mask(&[4.0, 1.0, 3.0, 2.0]), [false, true, false, true]);
        assert_eq!(mask(&[7.0]), [true]);
    }

    #[test]
    fn one_temperature_one_view_is_a_scaled_kd() {
        let dev = Device::flex();
        let s = Tensor::<2>::from_floats([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]], &dev);
        let t = Tensor::<2>::from_floats([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]], &dev);
        let out = MlkdConfig::new()
            .with_temperatures(vec![2.0])
            .init()
            .unwrap()
            .forward(&DistillInput::new(s.clone(), t.clone()))
            .unwrap();
        // two samples: one is at or below the median confidence, so frac = 1/2
        let kd = mlkd_instance(s, t, 2.0).mean().into_scalar::<f32>() * 0.5;
        let got = out.term("mlkd/kd").unwrap().clone().into_scalar::<f32>();
        assert!((got - kd).abs() < 1e-6, "{got} vs {kd}");
    }
}

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// One of MLKD's level functions (`kd_loss`, `cc_loss`, `bc_loss`), reduced or not.
    pub(crate) fn mlkd_level(case: &Case) -> Result<(), String> {
        let (s, t) = logits(case)?;
        let temperature = case.param("temperature")?;
        let reduce = case.params["reduce"].as_bool().ok_or("no `reduce`")?;
        let leaves = as_taps(&s, &t);
        match case.method.as_str() {
            "mlkd_kd" => {
                let per_sample = mlkd_instance(s, t, temperature);
                match reduce {
                    true => case.check_elements(per_sample.mean(), &leaves),
                    false => case.check_elements(per_sample, &leaves),
                }
            }
            method => {
                let level = match method {
                    "mlkd_cc" => class_correlation(s, t, temperature),
                    _ => batch_correlation(s, t, temperature),
                };
                match reduce {
                    true => case.check_elements(level.sum(), &leaves),
                    false => case.check_elements(level, &leaves),
                }
            }
        }
    }

    /// MLKD's `KD_ours.forward_train` total (the trainer sums the components' means), with its
    /// components in `outputs`.
    pub(crate) fn mlkd_full(case: &Case) -> Result<(), String> {
        let cfg = &case.params["cfg"];
        let temperatures = case.params["temperatures_used"]
            .as_array()
            .ok_or("no temperatures_used")?
            .iter()
            .map(number)
            .collect::<Result<Vec<_>, _>>()?;
        if temperatures.first().copied() != Some(number(&cfg["KD.TEMPERATURE"])?) {
            return Err("temperatures_used does not start at KD.TEMPERATURE".into());
        }
        let loss = MlkdConfig::new()
            .with_temperatures(temperatures)
            .with_kd_weight(number(&cfg["KD.LOSS.KD_WEIGHT"])?)
            .with_ce_weight(number(&cfg["KD.LOSS.CE_WEIGHT"])?)
            .with_strong(Some("strong".into()))
            .init()
            .map_err(e)?;
        let sw = case.leaf::<2>("student_logits_weak")?;
        let ss = case.leaf::<2>("student_logits_strong")?;
        let tw = case.constant::<2>("teacher_logits_weak")?;
        let ts = case.constant::<2>("teacher_logits_strong")?;
        let input = DistillInput::new(sw.clone(), tw)
            .feature("strong", ss.clone(), ts)
            .targets(case.targets("target")?);
        let out = loss.forward(&input).map_err(e)?;
        let (rel, abs) = case.tolerance();
        for (part, name) in [
            ("kd", "loss_kd"),
            ("cc", "loss_cc"),
            ("bc", "loss_bc"),
            ("ce", "loss_ce"),
        ] {
            let got = out
                .term(&format!("mlkd/{part}"))
                .ok_or_else(|| format!("no term mlkd/{part}"))?;
            let want = case
                .outputs
                .get(name)
                .ok_or_else(|| format!("no output {name}"))?;
            close(name, &values(got.clone()), want, rel, abs)?;
        }
        case.check(
            out,
            &[
                ("student_logits_weak", Feature::Embedding(sw)),
                ("student_logits_strong", Feature::Embedding(ss)),
            ],
        )
        .map(drop)
    }
}
