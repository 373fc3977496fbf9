//! Every reference case in the golden directory, computed with the original authors' PyTorch
//! code: loss and gradients must agree within the tolerance of the case's dtype.
//!
//! The directory is `tests/golden` in this repository (a copy of the project's shared set), or
//! `BURN_DISTILL_GOLDEN_DIR`. Each `*.json` case is dispatched on its `method` through
//! [`RUNNERS`], one line per method. A runner reads optional parameters and inputs as the
//! set's README says (`null`: the reference was called without it; absent: no such part). A
//! case that fails or panics is reported as that case's failure and the others still run; a
//! method the crate does not have yet is counted and named. Every recorded gradient must be
//! checked by its runner (or listed in the case's `omitted_grads`). Where the reference itself
//! was not finite (`reference_nonfinite`), the crate's value must be finite and equal an exact
//! recomputation made here (`tests/common/exact.rs`).

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use burn::module::Param;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{DType, Gradients, Int, Tensor};
use burn_distill::Tempered;
use burn_distill::curriculum::CtkdConfig;
use burn_distill::feature::{
    AbConfig, AffinityConfig, AtConfig, Connector, FspConfig, HintConfig, IckdConfig, KtaConfig,
    MgdConfig, MgdMask, NstConfig, SrdConfig, VidConfig, factor_loss, hcl_stage, pad_l2_per_sample,
    partial_l2,
};
use burn_distill::logit::{
    DistConfig, DistPlusConfig, LogitMseConfig, MlkdConfig, ProbMseConfig, Standardized,
    batch_correlation, class_correlation, mlkd_instance,
};
use burn_distill::meta::{Batch, MetaTeacherConfig, PilotRate};
use burn_distill::prelude::*;
use burn_distill::relation::{CcConfig, CcKernel, DlkdConfig, PktConfig, RkdConfig, SpConfig};
use burn_distill::token::{
    ForwardKlConfig, FusedLinearConfig, HiddenLoss, HiddenStateConfig, JsdConfig, LmHead, LmHeads,
    MissingMass, ReverseKlConfig, SkewDirection, SkewKlConfig, SparseValues, SymmetricKlConfig,
    TeacherHead, TokenReduction, TopKConfig, TopKDivergence, TvdConfig, jsd_elements, tvd_elements,
};
use burn_distill::{Feature, Views};
use common::exact::Divergence;
use common::*;
use serde_json::Value;

type Runner = fn(&Case) -> Result<(), String>;

/// Which runner checks each `method` of the reference set.
const RUNNERS: &[(&str, Runner)] = &[
    // mdistiller's kd_loss and MetaDistil's CustomDistillKL are the same formula
    ("kd", kd),
    ("kd_custom_kl", kd),
    ("dkd", dkd),
    ("dist", dist),
    ("logit_std_kd", logit_std_kd),
    ("prob_mse_T2", prob_mse),
    ("ctkd_lambda_schedule", ctkd_lambda_schedule),
    ("ctkd_kd", ctkd),
    ("ctkd_dkd", ctkd),
    ("metadistil_meta_grad", meta_round),
    ("metadistil_meta_grad_dkd", meta_round),
    ("rkd", relational),
    ("pkt", relational),
    ("sp", relational),
    ("dlkd_align", dlkd),
    ("dlkd_corr", dlkd),
    ("dlkd_supcon", dlkd),
    ("at", at),
    ("fitnet_mse", fitnet),
    ("fitnet_convreg_mse", fitnet),
    ("mgd", mgd),
    ("gkd_generalized_jsd", trl),
    ("torchtune_forward_kl", torchtune),
    ("torchtune_forward_kl_chunked", torchtune),
    ("torchtune_reverse_kl", torchtune),
    ("torchtune_reverse_kl_chunked", torchtune),
    ("torchtune_symmetric_kl", torchtune),
    ("torchtune_symmetric_kl_chunked", torchtune),
    ("distillm_skew_forward_kl", distillm),
    ("distillm_skew_reverse_kl", distillm),
    ("distillkit_kl", distillkit),
    ("distillkit_jsd", distillkit),
    ("distillkit_tvd", distillkit),
    ("distillkit_hs_mse", distillkit_hidden),
    ("distillkit_hs_cosine", distillkit_hidden),
    ("liger_fused_linear_jsd", liger_fused_linear),
    ("liger_jsd_testref", liger_testref),
    ("liger_tvd_testref", liger_testref),
    ("logit_mse_temperature", logit_mse),
    // MetaDistil's NLP `--logits_mse` soft loss: the same formula at T = 1
    ("logit_mse", logit_mse),
    ("ab", ab),
    ("cc", cc),
    ("fsp", fsp),
    ("ofd", ofd),
    ("reviewkd_hcl", reviewkd_hcl),
    ("vid", vid),
    ("nst", nst),
    ("ft", ft),
    ("cckd", cckd),
    ("ickd_chsim", ickd),
    ("kta", kta),
    ("kta_affinity", affinity),
    ("pad_l2", pad_l2),
    ("srd", srd),
    ("dist_plus", dist_plus),
    ("mlkd_kd", mlkd_level),
    ("mlkd_cc", mlkd_level),
    ("mlkd_bc", mlkd_level),
    ("mlkd_full", mlkd_full),
];

/// A runner's answer for a case whose variant the crate does not have yet: counted as not
/// implemented (with the reason), not as a failure.
const NOT_YET: &str = "not implemented: ";

type Array = (Vec<usize>, Vec<f64>);

/// One parsed case.
struct Case {
    method: String,
    dtype: DType,
    params: Value,
    inputs: BTreeMap<String, Array>,
    /// The loss: one value, or (`params.loss_shape`) every element of a non-scalar loss.
    loss: Option<Vec<f64>>,
    grads: BTreeMap<String, Vec<f64>>,
    outputs: BTreeMap<String, Vec<f64>>,
    /// Recorded gradients the reference could not give (`omitted_grads`).
    omitted: BTreeSet<String>,
    /// What the reference returned as NaN/inf: the loss, and gradients by input name.
    nonfinite_loss: bool,
    nonfinite_grads: BTreeSet<String>,
    /// The recorded gradients a runner compared.
    checked: RefCell<BTreeSet<String>>,
    /// A runner's (relative, absolute) tolerance where the case says the reference is less
    /// precise than its dtype.
    tolerance: std::cell::Cell<Option<(f64, f64)>>,
}

fn number(v: &Value) -> Result<f64, String> {
    match v {
        Value::String(s) => s.parse().map_err(|_| format!("not a number: {s}")),
        v => v.as_f64().ok_or_else(|| format!("not a number: {v}")),
    }
}

/// A recorded value: `{shape, data}`, a list of numbers, or one number.
fn array(v: &Value) -> Result<Array, String> {
    if let Value::Array(list) = v {
        let data: Vec<f64> = list.iter().map(number).collect::<Result<_, _>>()?;
        return Ok((vec![data.len()], data));
    }
    if !v.is_object() {
        return Ok((vec![], vec![number(v)?]));
    }
    let shape = v["shape"]
        .as_array()
        .ok_or("an array without a shape")?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize).ok_or("a bad dimension"))
        .collect::<Result<_, _>>()?;
    let data = v["data"]
        .as_array()
        .ok_or("an array without data")?
        .iter()
        .map(number)
        .collect::<Result<_, _>>()?;
    Ok((shape, data))
}

impl Case {
    fn parse(v: &Value) -> Result<Self, String> {
        let map = |key: &str| -> Result<BTreeMap<String, Array>, String> {
            match v[key].as_object() {
                None => Ok(BTreeMap::new()),
                Some(o) => o
                    .iter()
                    .map(|(k, a)| Ok((k.clone(), array(a).map_err(|e| format!("{k}: {e}"))?)))
                    .collect(),
            }
        };
        let data = |m: BTreeMap<String, Array>| m.into_iter().map(|(k, (_, d))| (k, d)).collect();
        let flagged = &v["reference_nonfinite"];
        let names = |v: &Value| -> BTreeSet<String> {
            match v {
                Value::Array(a) => a
                    .iter()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect(),
                Value::Object(o) => o.keys().cloned().collect(),
                _ => BTreeSet::new(),
            }
        };
        Ok(Self {
            method: v["method"].as_str().ok_or("no method")?.to_string(),
            dtype: match v["dtype"].as_str() {
                Some("float32") => DType::F32,
                _ => DType::F64,
            },
            params: v["params"].clone(),
            inputs: map("inputs")?,
            loss: (!v["loss"].is_null())
                .then(|| array(&v["loss"]).map(|(_, d)| d))
                .transpose()?,
            grads: data(map("grads")?),
            outputs: data(map("outputs")?),
            omitted: names(&v["omitted_grads"]),
            nonfinite_loss: flagged["loss"].as_bool().unwrap_or(false),
            nonfinite_grads: names(&flagged["grads"]),
            checked: RefCell::default(),
            tolerance: Default::default(),
        })
    }

    /// The parameter `key`; `None` when it is `null` (not passed) or absent.
    fn opt(&self, key: &str) -> Option<f64> {
        self.params.get(key).and_then(|v| number(v).ok())
    }

    /// The parameter `key`, which must be a number.
    fn param(&self, key: &str) -> Result<f64, String> {
        self.opt(key)
            .ok_or_else(|| format!("param `{key}` is missing"))
    }

    fn has(&self, name: &str) -> bool {
        self.inputs.contains_key(name)
    }

    fn input(&self, name: &str) -> Result<&Array, String> {
        self.inputs
            .get(name)
            .ok_or_else(|| format!("input `{name}` is missing"))
    }

    /// The float input `name` as a tracked leaf of the case's dtype.
    fn leaf<const D: usize>(&self, name: &str) -> Result<Tensor<D>, String> {
        let (shape, data) = self.input(name)?;
        let shape: [usize; D] = shape
            .as_slice()
            .try_into()
            .map_err(|_| format!("input `{name}` has rank {}, not {D}", shape.len()))?;
        Ok(tensor(data.clone(), shape, self.dtype).require_grad())
    }

    /// The float input `name` as a constant.
    fn constant<const D: usize>(&self, name: &str) -> Result<Tensor<D>, String> {
        Ok(self.leaf::<D>(name)?.detach().set_require_grad(false))
    }

    fn targets(&self, name: &str) -> Result<Tensor<1, Int>, String> {
        Ok(ints(
            self.input(name)?.1.iter().map(|&v| v as i64).collect(),
        ))
    }

    /// (relative, absolute) tolerance of the dtype, as the golden README gives it.
    fn tolerance(&self) -> (f64, f64) {
        if let Some(t) = self.tolerance.get() {
            return t;
        }
        match self.dtype {
            DType::F32 => (1e-5, 1e-6),
            _ => (1e-10, 1e-12),
        }
    }

    /// Compares the loss with the reference, or, where the reference was not finite, requires
    /// a finite value equal to `exact`.
    fn expect_loss(&self, got: f64, exact: Option<f64>) -> Result<(), String> {
        let (rel, abs) = self.tolerance();
        match self.loss.as_deref() {
            Some(&[want]) if want.is_finite() && !self.nonfinite_loss => {
                close("loss", &[got], &[want], rel, abs)
            }
            _ => {
                let exact = exact.ok_or(
                    "the reference loss is not finite and this method has no exact recomputation",
                )?;
                close("loss (exact recomputation)", &[got], &[exact], rel, abs)
            }
        }
    }

    /// Compares a loss of any shape with the reference's elements (row-major), then checks the
    /// gradients of the leaves of its sum, as [`check`](Self::check) does.
    fn check_elements<const D: usize>(
        &self,
        loss: Tensor<D>,
        leaves: &[(&str, Feature)],
    ) -> Result<(), String> {
        let want = self.loss.as_deref().ok_or("no loss")?;
        let (rel, abs) = self.tolerance();
        close("loss", &values(loss.clone()), want, rel, abs)?;
        let grads = loss.sum().backward();
        for (name, leaf) in leaves {
            self.expect_grad(name, grad(leaf, &grads), None)?;
        }
        Ok(())
    }

    /// The named inputs as tracked taps, with their names (for [`check`](Self::check)).
    fn taps(&self, names: &[&str]) -> Result<Vec<(String, Feature)>, String> {
        names
            .iter()
            .map(|n| Ok((n.to_string(), tap(self, n)?)))
            .collect()
    }

    /// Compares the gradient of input `name` with the reference (or, where the reference was
    /// not finite, with `exact`), and marks it checked. A gradient the case does not record is
    /// not compared.
    fn expect_grad(
        &self,
        name: &str,
        got: Option<Vec<f64>>,
        exact: Option<&dyn Fn() -> Vec<f64>>,
    ) -> Result<(), String> {
        let Some(want) = self.grads.get(name) else {
            return Ok(());
        };
        self.checked.borrow_mut().insert(name.to_string());
        let got = got.ok_or_else(|| format!("no gradient for {name}"))?;
        let (rel, abs) = self.tolerance();
        let flagged = self.nonfinite_grads.contains(name) || want.iter().any(|v| !v.is_finite());
        if !flagged {
            return close(&format!("d/d{name}"), &got, want, rel, abs);
        }
        let exact = exact.ok_or_else(|| {
            format!(
                "the reference d/d{name} is not finite and this method has no exact recomputation"
            )
        })?;
        close(&format!("d/d{name} (exact)"), &got, &exact(), rel, abs)
    }

    /// The loss and the gradients of the tracked `leaves` (any rank, as taps) after one
    /// backward pass; the gradients are returned for the parameters' checks.
    fn check(&self, out: LossOutput, leaves: &[(&str, Feature)]) -> Result<Gradients, String> {
        self.expect_loss(out.value(), None)?;
        let grads = out.total.backward();
        for (name, leaf) in leaves {
            self.expect_grad(name, grad(leaf, &grads), None)?;
        }
        Ok(grads)
    }

    /// Checks the gradients of a linear layer in torch's layout.
    fn expect_linear(
        &self,
        layer: &burn::nn::Linear,
        gp: &GradientsParams,
        w: &str,
        b: &str,
    ) -> Result<(), String> {
        let gw = gp.get::<2>(layer.weight.id).map(|g| values(g.transpose()));
        let gb = layer
            .bias
            .as_ref()
            .and_then(|b| gp.get::<1>(b.id))
            .map(values);
        self.expect_grad(w, gw, None)?;
        self.expect_grad(b, gb, None)
    }

    /// Checks the gradient of a vector parameter (batch-norm scale and shift).
    fn expect_param(
        &self,
        param: &Param<Tensor<1>>,
        gp: &GradientsParams,
        name: &str,
    ) -> Result<(), String> {
        self.expect_grad(name, gp.get::<1>(param.id).map(values), None)
    }

    /// Checks the gradients of a conv layer's weight and bias.
    fn expect_conv(
        &self,
        layer: &burn::nn::conv::Conv2d,
        gp: &GradientsParams,
        w: &str,
        b: &str,
    ) -> Result<(), String> {
        let gb = layer.bias.as_ref().and_then(|b| gp.get::<1>(b.id));
        self.expect_grad(w, gp.get::<4>(layer.weight.id).map(values), None)?;
        self.expect_grad(b, gb.map(values), None)
    }

    /// Recorded gradients no runner compared (and the reference did not omit).
    fn unchecked(&self) -> Vec<String> {
        let checked = self.checked.borrow();
        self.grads
            .keys()
            .filter(|k| !checked.contains(*k) && !self.omitted.contains(*k))
            .cloned()
            .collect()
    }
}

fn grad(leaf: &Feature, grads: &Gradients) -> Option<Vec<f64>> {
    match leaf {
        Feature::Map(t) => t.grad(grads).map(values),
        Feature::Embedding(t) => t.grad(grads).map(values),
    }
}

fn e(err: DistillError) -> String {
    err.to_string()
}

/// A tracked feature tap of rank 2 or 4 from the case's input `name`.
fn tap(case: &Case, name: &str) -> Result<Feature, String> {
    match case.input(name)?.0.len() {
        4 => Ok(Feature::Map(case.leaf::<4>(name)?)),
        2 => Ok(Feature::Embedding(case.leaf::<2>(name)?)),
        r => Err(format!("tap `{name}` has rank {r}")),
    }
}

/// The tracked student and teacher logits.
fn logits(case: &Case) -> Result<(Tensor<2>, Tensor<2>), String> {
    Ok((case.leaf("logits_student")?, case.leaf("logits_teacher")?))
}

fn as_taps(s: &Tensor<2>, t: &Tensor<2>) -> [(&'static str, Feature); 2] {
    [
        ("logits_student", Feature::Embedding(s.clone())),
        ("logits_teacher", Feature::Embedding(t.clone())),
    ]
}

fn kd(case: &Case) -> Result<(), String> {
    let (s, t) = logits(case)?;
    let temperature = case.param("temperature")?;
    let kd = KdConfig::new()
        .with_temperature(temperature)
        .init()
        .map_err(e)?;
    let input = DistillInput::new(s.clone(), t.clone()).attach_teacher();
    let out = kd.forward(&input).map_err(e)?;
    let (sv, tv) = (
        &case.input("logits_student")?.1,
        &case.input("logits_teacher")?.1,
    );
    let c = case.input("logits_student")?.0[1];
    let exact = exact::kd(sv, tv, c, temperature);
    case.expect_loss(out.value(), Some(exact.loss))?;
    let grads = out.total.backward();
    case.expect_grad(
        "logits_student",
        s.grad(&grads).map(values),
        Some(&|| exact.ds.clone()),
    )?;
    case.expect_grad(
        "logits_teacher",
        t.grad(&grads).map(values),
        Some(&|| exact.dt.clone()),
    )
}

fn dkd(case: &Case) -> Result<(), String> {
    let (s, t) = logits(case)?;
    let (alpha, beta, temperature) = (
        case.param("alpha")?,
        case.param("beta")?,
        case.param("temperature")?,
    );
    let dkd = DkdConfig::new()
        .with_alpha(alpha)
        .with_beta(beta)
        .with_temperature(temperature)
        .with_warmup_epochs(0)
        .init()
        .map_err(e)?;
    let input = DistillInput::new(s.clone(), t.clone())
        .targets(case.targets("target")?)
        .attach_teacher();
    let out = dkd.forward(&input).map_err(e)?;
    let (sv, tv) = (
        &case.input("logits_student")?.1,
        &case.input("logits_teacher")?.1,
    );
    let y: Vec<usize> = case
        .input("target")?
        .1
        .iter()
        .map(|&v| v as usize)
        .collect();
    let c = case.input("logits_student")?.0[1];
    let exact = |s: &[f64], t: &[f64]| exact::dkd(s, t, &y, c, [alpha, beta], temperature);
    case.expect_loss(out.value(), Some(exact(sv, tv)))?;
    let grads = out.total.backward();
    let fd_s = || numeric_grad(&|v| exact(&v, tv), sv, 1e-5);
    case.expect_grad("logits_student", s.grad(&grads).map(values), Some(&fd_s))?;
    // the reference's teacher gradient is NaN (not recorded): ours must be finite
    let gt = values(t.grad(&grads).ok_or("no teacher gradient")?);
    if gt.iter().any(|v| !v.is_finite()) {
        return Err("teacher gradient is not finite".into());
    }
    Ok(())
}

fn dist(case: &Case) -> Result<(), String> {
    let (s, t) = logits(case)?;
    let dist = DistConfig::new()
        .with_beta(case.param("beta")?)
        .with_gamma(case.param("gamma")?)
        .with_temperature(case.param("tau")?)
        .with_eps(case.param("eps")?)
        .init()
        .map_err(e)?;
    let input = DistillInput::new(s.clone(), t.clone()).attach_teacher();
    case.check(dist.forward(&input).map_err(e)?, &as_taps(&s, &t))
        .map(drop)
}

/// torchdistill's `LogitStdKDLoss`: `alpha · CE + beta · T² · KD` on standardised logits; with
/// `alpha: null`, the soft loss alone, without `T²`.
fn logit_std_kd(case: &Case) -> Result<(), String> {
    let (s, t) = logits(case)?;
    let alpha = case.opt("alpha");
    let kd = KdConfig::new()
        .with_temperature(case.param("temperature")?)
        .with_t_squared(alpha.is_some())
        .init()
        .map_err(e)?;
    let kd = Standardized::new(kd)
        .with_eps(case.opt("eps").unwrap_or(1e-7))
        .map_err(e)?;
    let mut input = DistillInput::new(s.clone(), t.clone()).attach_teacher();
    let out = match alpha {
        Some(alpha) => {
            input = input.targets(case.targets("target")?);
            let beta = case.opt("beta").unwrap_or(1.0 - alpha);
            let ce = CrossEntropyConfig::new().init().map_err(e)?;
            (ce.weighted(alpha) + kd.weighted(beta)).forward(&input)
        }
        None => kd.forward(&input),
    };
    case.check(out.map_err(e)?, &as_taps(&s, &t)).map(drop)
}

fn prob_mse(case: &Case) -> Result<(), String> {
    let (s, t) = logits(case)?;
    let loss = ProbMseConfig::new()
        .with_temperature(case.param("temperature")?)
        .init()
        .map_err(e)?;
    let input = DistillInput::new(s.clone(), t.clone()).attach_teacher();
    case.check(loss.forward(&input).map_err(e)?, &as_taps(&s, &t))
        .map(drop)
}

/// CTKD's λ schedule: `CosineDecay(max, min, loops)` at CTKD's (1-based) epochs.
fn ctkd_lambda_schedule(case: &Case) -> Result<(), String> {
    let ctkd = CtkdConfig::new()
        .with_lambda_start(case.param("decay_max")?)
        .with_lambda_end(case.param("decay_min")?)
        .with_lambda_epochs(case.param("decay_loops")? as usize)
        .init(KdConfig::new().init().map_err(e)?, &device())
        .map_err(e)?;
    let (rel, abs) = case.tolerance();
    let epochs = &case.input("epoch")?.1;
    // the input epoch is CTKD's; ours counts from 0
    let got: Vec<f64> = epochs
        .iter()
        .map(|&ep| ctkd.lambda(Progress::epoch((ep as usize).saturating_sub(1), 240)))
        .collect::<Result<_, _>>()
        .map_err(e)?;
    let want = case
        .outputs
        .get("cosine_decay")
        .ok_or("no cosine_decay output")?;
    // epoch 0 does not exist in CTKD (λ = cosine(0) = 0 there, also ours at epoch 0)
    close("lambda", &got[1..], &want[1..], rel, abs)?;
    close(
        "lambda at start",
        &[ctkd.lambda(Progress::epoch(0, 240)).map_err(e)?],
        &[want[1]],
        rel,
        abs,
    )
}

/// CTKD's global temperature over KD (`ctkd_kd`) or DKD (`ctkd_dkd`, α and β as given): the
/// temperature, the loss and the gradients of both logits and of θ. Where the reference's θ
/// gradient is NaN (DKD's inexact target mask), the case records the exact one.
fn ctkd(case: &Case) -> Result<(), String> {
    match case.method.as_str() {
        "ctkd_dkd" => ctkd_over(
            case,
            DkdConfig::new()
                .with_alpha(case.param("dkd_alpha")?)
                .with_beta(case.param("dkd_beta")?)
                .with_warmup_epochs(0)
                .init()
                .map_err(e)?,
        ),
        _ => ctkd_over(case, KdConfig::new().init().map_err(e)?),
    }
}

fn ctkd_over<L: Tempered + Clone + 'static>(case: &Case, inner: L) -> Result<(), String> {
    let (s, t) = logits(case)?;
    let theta = case.leaf::<1>("theta")?;
    let lambda = case.param("lambda")?;
    let ctkd = CtkdConfig::new()
        .with_t_start(case.param("t_start")?)
        .with_t_range(case.param("t_end")?)
        .with_lambda_start(lambda)
        .with_lambda_end(lambda)
        .init(inner, &device())
        .map_err(e)?
        .with_theta(theta.clone())
        .map_err(e)?;
    let (rel, abs) = case.tolerance();
    let want_t = case.outputs.get("temperature").ok_or("no temperature")?;
    close("temperature", &[ctkd.temperature()], want_t, rel, abs)?;
    let mut input = DistillInput::new(s.clone(), t.clone())
        .attach_teacher()
        .progress(Progress::epoch(0, 1));
    if case.has("target") {
        input = input.targets(case.targets("target")?);
    }
    let grads = case.check(ctkd.forward(&input).map_err(e)?, &as_taps(&s, &t))?;
    // the reference records θ's gradient through the reversal layer (λ applied)
    let exact = || {
        case.outputs
            .get("dloss_dtheta_exact_mask_after_reversal")
            .cloned()
            .unwrap_or_default()
    };
    case.expect_grad("theta", theta.grad(&grads).map(values), Some(&exact))
}

/// A tanh MLP from the case's torch-layout layers `{p}_W`/`{p}_b` (one layer) or
/// `{p}_W1`/`{p}_b1`, `{p}_W2`, … (any depth), with the names of each layer's weights.
fn mlp(case: &Case, p: &str) -> Result<(Net, Vec<(String, String)>), String> {
    let names: Vec<(String, String)> = if case.has(&format!("{p}_W")) {
        vec![(format!("{p}_W"), format!("{p}_b"))]
    } else {
        (1..)
            .map(|i| (format!("{p}_W{i}"), format!("{p}_b{i}")))
            .take_while(|(w, _)| case.has(w))
            .collect()
    };
    if names.is_empty() {
        return Err(format!("no layers `{p}_W…`"));
    }
    let layers = names
        .iter()
        .map(|(w, b)| {
            Ok(torch_linear(
                &case.input(w)?.1,
                &case.input(b)?.1,
                case.dtype,
            ))
        })
        .collect::<Result<_, String>>()?;
    Ok((Net { layers }, names))
}

/// One MetaDistil round on the case's tiny student and teacher: the pilot's quiz loss and
/// d quiz / d teacher and student parameters, to 1e-6 relative (the finite-difference
/// meta-gradient against the authors' second-order autograd). With `pilot_steps` k > 1 and
/// batches `x_1`/`y_1` … `x_k`/`y_k`, the pilot takes one step on each.
fn meta_round(case: &Case) -> Result<(), String> {
    let (student, s_names) = mlp(case, "s")?;
    let (teacher, t_names) = mlp(case, "t")?;
    let temperature = case.param("temperature")?;
    let loss = if case.method == "metadistil_meta_grad_dkd" {
        let dkd = DkdConfig::new()
            .with_alpha(case.param("dkd_alpha")?)
            .with_beta(case.param("dkd_beta")?)
            .with_temperature(temperature)
            .with_warmup_epochs(0)
            .init()
            .map_err(e)?;
        let ce = CrossEntropyConfig::new().init().map_err(e)?;
        ce.weighted(case.param("ce_weight")?) + dkd
    } else {
        let alpha = case.param("alpha")?;
        let kd = KdConfig::new()
            .with_temperature(temperature)
            .init()
            .map_err(e)?;
        let ce = CrossEntropyConfig::new().init().map_err(e)?;
        ce.weighted(1.0 - alpha) + kd.weighted(alpha)
    };
    let steps = case.opt("pilot_steps").unwrap_or(1.0) as usize;
    let meta = MetaTeacherConfig::new()
        .with_pilot_rate(PilotRate::Fixed(case.param("eta")?))
        .with_pilot_steps(steps)
        .init(teacher, SgdConfig::new().init(), loss)
        .map_err(e)?;
    let batch = |x: &str, y: &str| -> Result<Batch<Tensor<2>>, String> {
        Ok(Batch::new(case.constant::<2>(x)?, case.targets(y)?))
    };
    let quiz = batch("xq", "yq")?;
    let progress = Progress::epoch(0, 1);
    let g = if case.has("x_1") {
        let next = (1..=steps)
            .map(|i| batch(&format!("x_{i}"), &format!("y_{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        meta.meta_gradient_ahead(&student, &next, &quiz, progress, 0.0)
    } else {
        meta.meta_gradient(&student, &batch("x", "y")?, &quiz, progress, 0.0)
    }
    .map_err(e)?;
    let (rel, abs) = (1e-6, 1e-10);
    let want = case.loss.as_deref().ok_or("no loss")?;
    close("quiz loss", &[g.quiz_loss], want, rel, abs)?;
    let layers = meta
        .teacher()
        .layers
        .iter()
        .zip(&t_names)
        .map(|l| (l, &g.teacher));
    let layers = layers.chain(student.layers.iter().zip(&s_names).map(|l| (l, &g.student)));
    for ((layer, (w, b)), grads) in layers {
        let (gw, gb) = torch_grads(layer, grads);
        close(&format!("d quiz/d{w}"), &gw, &case.grads[w], rel, abs)?;
        close(&format!("d quiz/d{b}"), &gb, &case.grads[b], rel, abs)?;
        case.checked.borrow_mut().extend([w.clone(), b.clone()]);
    }
    Ok(())
}

/// A relational objective on the taps `feat_student` and `feat_teacher` (teacher attached).
fn relational(case: &Case) -> Result<(), String> {
    let loss: Box<dyn Loss> = match case.method.as_str() {
        "rkd" => RkdConfig::new()
            .with_distance_weight(case.param("distance_weight")?)
            .with_angle_weight(case.param("angle_weight")?)
            .with_eps(case.param("eps")?)
            .init()
            .map_err(e)?
            .boxed(),
        "pkt" => PktConfig::new()
            .with_eps(case.param("eps")?)
            .init()
            .map_err(e)?
            .boxed(),
        _ => SpConfig::new().init().map_err(e)?.boxed(),
    };
    let (s, t) = (tap(case, "feat_student")?, tap(case, "feat_teacher")?);
    let input = DistillInput::features_only()
        .feature("embedding", s.clone(), t.clone())
        .attach_teacher();
    let out = loss.forward(&input).map_err(e)?;
    if case.method != "pkt" {
        return case
            .check(out, &[("feat_student", s), ("feat_teacher", t)])
            .map(drop);
    }
    // the reference's student gradient is NaN on an all-zero row: the closed form instead
    case.expect_loss(out.value(), None)?;
    let grads = out.total.backward();
    let ((sd, sv), (td, tv)) = (case.input("feat_student")?, case.input("feat_teacher")?);
    let eps = case.param("eps")?;
    let exact = || exact::pkt_student_grad(sv, sd[1], tv, td[1], eps);
    case.expect_grad("feat_student", grad(&s, &grads), Some(&exact))?;
    case.expect_grad("feat_teacher", grad(&t, &grads), None)
}

/// DLKD's three parts, each with the case's head weights (torch layout) and the other weights
/// zero; the gradients of the taps and of every head parameter. SupCon without `labels` is
/// SimCLR's form.
fn dlkd(case: &Case) -> Result<(), String> {
    let method = case.method.as_str();
    let (s, t) = (tap(case, "feat_student")?, tap(case, "feat_teacher")?);
    let (ds, dt) = (
        case.input("feat_student")?.0[1],
        case.input("feat_teacher")?.0[1],
    );
    let rows = case.input("feat_student")?.0[0];
    let only = |w: &str| if method.ends_with(w) { 1.0 } else { 0.0 };
    let labels = case.has("labels");
    let mut config = DlkdConfig::new(ds, dt)
        .with_ce_weight(0.0)
        .with_align_weight(only("align"))
        .with_corr_weight(only("corr"))
        .with_supcon_weight(only("supcon"))
        .with_supcon_labels(labels);
    if let Some(tau) = case.opt("temperature") {
        config = if method == "dlkd_corr" {
            config.with_corr_temperature(tau)
        } else {
            config
                .with_supcon_temperature(tau)
                .with_supcon_base_temperature(case.opt("base_temperature").unwrap_or(tau))
        };
    }
    if let Some(dim) = case.opt("feat_dim") {
        config = config.with_embed_dim(dim as usize);
    }
    let mut dlkd = config.init(&device()).map_err(e)?;
    let linear = |w: &str, b: &str| -> Result<burn::nn::Linear, String> {
        Ok(torch_linear(
            &case.input(w)?.1,
            &case.input(b)?.1,
            case.dtype,
        ))
    };
    let vector = |name: &str| -> Result<Param<Tensor<1>>, String> {
        Ok(Param::from_tensor(case.constant::<1>(name)?))
    };
    let supcon = method == "dlkd_supcon";
    if supcon {
        dlkd.embed_student.linear = linear("embed_s_weight", "embed_s_bias")?;
        dlkd.embed_teacher.linear = linear("embed_t_weight", "embed_t_bias")?;
    } else {
        let head = if method == "dlkd_align" {
            &mut dlkd.align_head
        } else {
            &mut dlkd.corr_head
        };
        head.fc1 = linear("mlp_fc1_weight", "mlp_fc1_bias")?;
        head.fc2 = linear("mlp_fc2_weight", "mlp_fc2_bias")?;
        head.bn.gamma = vector("mlp_bn_weight")?;
        head.bn.beta = vector("mlp_bn_bias")?;
    }
    let mut input = DistillInput::features_only()
        .feature("embedding", s.clone(), t.clone())
        .views(Views::image_major(rows / 4, 4))
        .attach_teacher();
    if supcon && labels {
        input = input.targets(case.targets("labels")?);
    }
    let out = dlkd.forward(&input).map_err(e)?;
    let grads = case.check(out, &[("feat_student", s), ("feat_teacher", t)])?;
    let gp = GradientsParams::from_grads(grads, &dlkd);
    if supcon {
        case.expect_linear(
            &dlkd.embed_student.linear,
            &gp,
            "embed_s_weight",
            "embed_s_bias",
        )?;
        case.expect_linear(
            &dlkd.embed_teacher.linear,
            &gp,
            "embed_t_weight",
            "embed_t_bias",
        )
    } else {
        let head = if method == "dlkd_align" {
            &dlkd.align_head
        } else {
            &dlkd.corr_head
        };
        case.expect_linear(&head.fc1, &gp, "mlp_fc1_weight", "mlp_fc1_bias")?;
        case.expect_linear(&head.fc2, &gp, "mlp_fc2_weight", "mlp_fc2_bias")?;
        case.expect_param(&head.bn.gamma, &gp, "mlp_bn_weight")?;
        case.expect_param(&head.bn.beta, &gp, "mlp_bn_bias")
    }
}

/// Attention transfer over one stage (`feat_student`) or several (`feat_student_0`, …).
fn at(case: &Case) -> Result<(), String> {
    let stages: Vec<String> = if case.has("feat_student") {
        vec![String::new()]
    } else {
        (0..)
            .map(|i| format!("_{i}"))
            .take_while(|k| case.has(&format!("feat_student{k}")))
            .collect()
    };
    let mut input = DistillInput::features_only().attach_teacher();
    let mut taps = Vec::new();
    for k in &stages {
        let (fs, ft) = (format!("feat_student{k}"), format!("feat_teacher{k}"));
        let (s, t) = (tap(case, &fs)?, tap(case, &ft)?);
        input = input.feature(format!("stage{k}"), s.clone(), t.clone());
        taps.push((fs, s));
        taps.push((ft, t));
    }
    let at = AtConfig::new()
        .with_features(stages.iter().map(|k| format!("stage{k}")).collect())
        .with_p(case.param("p")?)
        .with_weight(1.0)
        .init()
        .map_err(e)?;
    let taps: Vec<(&str, Feature)> = taps.iter().map(|(n, f)| (n.as_str(), f.clone())).collect();
    case.check(at.forward(&input).map_err(e)?, &taps).map(drop)
}

/// Sets a conv layer's weight and bias from the case's `[out, in, kh, kw]` inputs (burn's
/// layout is torch's).
fn set_conv(
    case: &Case,
    w: &str,
    b: &str,
    into: &mut burn::nn::conv::Conv2d,
) -> Result<(), String> {
    into.weight = Param::from_tensor(case.constant::<4>(w)?);
    into.bias = Some(Param::from_tensor(case.constant::<1>(b)?));
    Ok(())
}

/// FitNet: the plain hint (no connector) and mdistiller's ConvReg connector with the case's
/// weights, batch norm in training mode.
fn fitnet(case: &Case) -> Result<(), String> {
    let (s, t) = (tap(case, "feat_student")?, tap(case, "feat_teacher")?);
    let shape = |name: &str| -> Result<[usize; 3], String> {
        case.input(name)?.0[1..]
            .try_into()
            .map_err(|_| format!("`{name}` is not a map"))
    };
    let connector = case.method == "fitnet_convreg_mse";
    let mut hint = HintConfig::new(shape("feat_student")?, shape("feat_teacher")?)
        .with_connector(connector)
        .init(&device())
        .map_err(e)?;
    if let Some(reg) = hint.connector.as_mut() {
        let Connector::Conv(c) = &mut reg.conv else {
            return Err("a 1x1 connector expected".into());
        };
        set_conv(case, "conv_weight", "conv_bias", c)?;
        reg.bn.gamma = Param::from_tensor(case.constant::<1>("bn_weight")?);
        reg.bn.beta = Param::from_tensor(case.constant::<1>("bn_bias")?);
    }
    let input = DistillInput::features_only()
        .feature("feature", s.clone(), t.clone())
        .attach_teacher();
    let out = hint.forward(&input).map_err(e)?;
    let grads = case.check(out, &[("feat_student", s), ("feat_teacher", t)])?;
    if let Some(reg) = &hint.connector {
        let gp = GradientsParams::from_grads(grads, &hint);
        let Connector::Conv(c) = &reg.conv else {
            return Err("a 1x1 connector expected".into());
        };
        case.expect_conv(c, &gp, "conv_weight", "conv_bias")?;
        case.expect_param(&reg.bn.gamma, &gp, "bn_weight")?;
        case.expect_param(&reg.bn.beta, &gp, "bn_bias")?;
    }
    Ok(())
}

/// MGD with the case's recorded mask and conv weights: loss and the gradients of both maps and
/// every conv parameter. Without `align_weight` (equal channel counts) there is no align conv.
fn mgd(case: &Case) -> Result<(), String> {
    let spatial = case.params["mask"]
        .as_str()
        .is_some_and(|m| m.starts_with("spatial"));
    let mask = if spatial {
        MgdMask::Spatial
    } else {
        MgdMask::Channel
    };
    let mut mgd = MgdConfig::new(
        case.param("student_channels")? as usize,
        case.param("teacher_channels")? as usize,
    )
    .with_mask(mask)
    .with_lambda(Some(case.param("lambda_mgd")?))
    .with_alpha(Some(case.param("alpha_mgd")?))
    .init(&device())
    .map_err(e)?;
    match (mgd.align.as_mut(), case.has("align_weight")) {
        (Some(align), true) => set_conv(case, "align_weight", "align_bias", align)?,
        (None, false) => {}
        (Some(_), false) => return Err("an align conv the reference does not have".into()),
        (None, true) => return Err("no align conv, but the reference has one".into()),
    }
    set_conv(case, "gen0_weight", "gen0_bias", &mut mgd.generator.conv1)?;
    set_conv(case, "gen2_weight", "gen2_bias", &mut mgd.generator.conv2)?;
    let (s, t) = (case.leaf::<4>("preds_S")?, case.leaf::<4>("preds_T")?);
    let loss = mgd.forward_with_mask(s.clone(), t.clone(), case.constant::<4>("mask")?);
    let out = LossOutput::single("mgd", loss);
    let grads = case.check(
        out,
        &[("preds_S", Feature::Map(s)), ("preds_T", Feature::Map(t))],
    )?;
    let gp = GradientsParams::from_grads(grads, &mgd);
    if let Some(align) = &mgd.align {
        case.expect_conv(align, &gp, "align_weight", "align_bias")?;
    }
    case.expect_conv(&mgd.generator.conv1, &gp, "gen0_weight", "gen0_bias")?;
    case.expect_conv(&mgd.generator.conv2, &gp, "gen2_weight", "gen2_bias")
}

/// A token case's logits as `[N, V]` leaves (a `[B, T, V]` input is flattened), with their
/// values and the vocabulary size.
fn token_leaf(case: &Case, name: &str) -> Result<(Tensor<2>, Vec<f64>, usize), String> {
    let (shape, data) = case.input(name)?;
    let v = *shape.last().ok_or("a scalar logit input")?;
    let n = data.len() / v.max(1);
    let leaf = tensor(data.clone(), [n, v], case.dtype).require_grad();
    Ok((leaf, data.clone(), v))
}

/// Which tokens count: `labels != ignore_index` (`labels`, `label` or `true_labels`), or the
/// `mask` input (true = counted); `None` when the case has neither.
fn token_mask(case: &Case) -> Result<Option<Vec<bool>>, String> {
    let ignore = case.opt("ignore_index").unwrap_or(-100.0);
    for name in ["labels", "label", "true_labels"] {
        if case.has(name) {
            return Ok(Some(
                case.input(name)?.1.iter().map(|&y| y != ignore).collect(),
            ));
        }
    }
    match case.has("mask") {
        true => Ok(Some(
            case.input("mask")?.1.iter().map(|&m| m != 0.0).collect(),
        )),
        false => Ok(None),
    }
}

fn bools(mask: &[bool]) -> Tensor<1, burn::tensor::Bool> {
    ints(mask.iter().map(|&m| m as i64).collect()).equal_elem(1)
}

/// How a token case is checked: the objective, the exact recomputation's divergence,
/// temperature, `T²` and divisor (of the number of valid tokens).
struct TokenCheck<'a> {
    loss: Box<dyn Loss>,
    divergence: Divergence,
    temperature: f64,
    t_squared: bool,
    divide: &'a dyn Fn(usize) -> f64,
}

/// Runs a token objective on the case's `student_logits` / `teacher_logits` (teacher
/// attached) and its mask: the loss (one value, or per token where the reference returns
/// its unreduced elements) and both logits' gradients.
fn token_case(case: &Case, check: TokenCheck) -> Result<(), String> {
    let (s, sv, v) = token_leaf(case, "student_logits")?;
    let (t, tv, _) = token_leaf(case, "teacher_logits")?;
    let mask = token_mask(case)?;
    let mut input = DistillInput::new(s.clone(), t.clone()).attach_teacher();
    if let Some(m) = &mask {
        input = input.mask(bools(m));
    }
    let out = check.loss.forward(&input).map_err(e)?;
    let exact = |s: &[f64], t: &[f64]| {
        exact::token(
            s,
            t,
            v,
            mask.as_deref(),
            check.divergence,
            check.temperature,
            check.t_squared,
            check.divide,
        )
    };
    let total = out.total.clone();
    if total.dims()[0] == 1 {
        case.expect_loss(out.value(), Some(exact(&sv, &tv)))?;
    } else {
        // the reference's unreduced elements [rows, V]: compare each token's sum over V
        let want = case.loss.as_deref().ok_or("no loss")?;
        let per_token: Vec<f64> = want.chunks(v).map(|r| r.iter().sum()).collect();
        let got = values(total.clone());
        let got: Vec<f64> = match &mask {
            Some(m) if per_token.len() < got.len() => got
                .into_iter()
                .zip(m)
                .filter_map(|(g, &keep)| keep.then_some(g))
                .collect(),
            _ => got,
        };
        let (rel, abs) = case.tolerance();
        close("per-token loss", &got, &per_token, rel, abs)?;
    }
    let grads = total.sum().backward();
    let fd_s = || numeric_grad(&|x| exact(&x, &tv), &sv, 1e-5);
    let fd_t = || numeric_grad(&|x| exact(&sv, &x), &tv, 1e-5);
    case.expect_grad("student_logits", s.grad(&grads).map(values), Some(&fd_s))?;
    case.expect_grad("teacher_logits", t.grad(&grads).map(values), Some(&fd_t))
}

/// `max(valid, 1)`: the mean over the valid tokens (an empty mask gives 0).
fn per_valid(valid: usize) -> f64 {
    valid.max(1) as f64
}

/// TRL's `generalized_jsd_loss`: the mixture JSD(β), its reductions and `num_items_in_batch`.
fn trl(case: &Case) -> Result<(), String> {
    let (beta, temperature) = (case.param("beta")?, case.opt("temperature").unwrap_or(1.0));
    let vocab = *case.input("student_logits")?.0.last().unwrap_or(&1) as f64;
    let items = case.opt("num_items_in_batch");
    let reduction = match (case.params["reduction"].as_str(), items) {
        (_, Some(n)) => TokenReduction::Global(n),
        (Some("batchmean"), _) => TokenReduction::Mean,
        (Some("mean"), _) => TokenReduction::ElementMean,
        (Some("sum"), _) => TokenReduction::Sum,
        (Some("none"), _) => TokenReduction::None,
        (r, _) => return Err(format!("reduction {r:?}")),
    };
    let divide = move |valid: usize| match reduction {
        TokenReduction::Global(n) => n,
        TokenReduction::ElementMean => per_valid(valid) * vocab,
        TokenReduction::Sum | TokenReduction::None => 1.0,
        _ => per_valid(valid),
    };
    let loss = JsdConfig::new()
        .with_beta(beta)
        .with_temperature(temperature)
        .with_reduction(reduction)
        .init()
        .map_err(e)?;
    token_case(
        case,
        TokenCheck {
            loss: loss.boxed(),
            divergence: Divergence::Jsd(beta),
            temperature,
            t_squared: false,
            divide: &divide,
        },
    )
}

/// torchtune's forward (a cross-entropy), reverse and symmetric KL, plain and chunked (the
/// chunks change nothing but the order of the sums).
fn torchtune(case: &Case) -> Result<(), String> {
    let normalize = case.params["normalize"].as_bool().unwrap_or(true);
    let reduction = match normalize {
        true => TokenReduction::Mean,
        false => TokenReduction::Sum,
    };
    let divide = move |valid: usize| if normalize { per_valid(valid) } else { 1.0 };
    let (loss, divergence) = match case.method.trim_end_matches("_chunked") {
        "torchtune_forward_kl" => (
            ForwardKlConfig::new()
                .with_cross_entropy(true)
                .with_reduction(reduction)
                .init()
                .map_err(e)?
                .boxed(),
            Divergence::Forward {
                cross_entropy: true,
            },
        ),
        "torchtune_reverse_kl" => (
            ReverseKlConfig::new()
                .with_reduction(reduction)
                .init()
                .map_err(e)?
                .boxed(),
            Divergence::Reverse,
        ),
        _ => {
            let ratio = case.param("sym_kd_ratio")?;
            (
                SymmetricKlConfig::new()
                    .with_ratio(ratio)
                    .with_cross_entropy(true)
                    .with_reduction(reduction)
                    .init()
                    .map_err(e)?
                    .boxed(),
                Divergence::Symmetric {
                    ratio,
                    cross_entropy: true,
                },
            )
        }
    };
    token_case(
        case,
        TokenCheck {
            loss,
            divergence,
            temperature: 1.0,
            t_squared: false,
            divide: &divide,
        },
    )
}

/// DistiLLM's skew forward KL (a cross-entropy against the mixture) and skew reverse KL.
fn distillm(case: &Case) -> Result<(), String> {
    let alpha = case.param("lam")?;
    let forward = case.method == "distillm_skew_forward_kl";
    let loss = SkewKlConfig::new()
        .with_direction(match forward {
            true => SkewDirection::Forward,
            false => SkewDirection::Reverse,
        })
        .with_alpha(alpha)
        .with_cross_entropy(forward)
        .init()
        .map_err(e)?;
    let divergence = match forward {
        true => Divergence::SkewForward {
            alpha,
            cross_entropy: true,
        },
        false => Divergence::SkewReverse(alpha),
    };
    token_case(
        case,
        TokenCheck {
            loss: loss.boxed(),
            divergence,
            temperature: 1.0,
            t_squared: false,
            divide: &per_valid,
        },
    )
}

/// DistillKit's dense KL, JSD (β = 0.5) and TVD: `T²`, the sum over the masked tokens divided
/// by their number.
fn distillkit(case: &Case) -> Result<(), String> {
    if case.params["signal"].as_str() == Some("sparse") {
        return distillkit_sparse(case);
    }
    let temperature = case.param("temperature")?;
    let (loss, divergence): (Box<dyn Loss>, _) = match case.method.as_str() {
        "distillkit_kl" => (
            ForwardKlConfig::new()
                .with_temperature(temperature)
                .with_t_squared(true)
                .init()
                .map_err(e)?
                .boxed(),
            Divergence::Forward {
                cross_entropy: false,
            },
        ),
        "distillkit_jsd" => (
            JsdConfig::new()
                .with_beta(0.5)
                .with_temperature(temperature)
                .with_t_squared(true)
                .init()
                .map_err(e)?
                .boxed(),
            Divergence::Jsd(0.5),
        ),
        _ => (
            TvdConfig::new()
                .with_temperature(temperature)
                .with_t_squared(true)
                .init()
                .map_err(e)?
                .boxed(),
            Divergence::Tvd,
        ),
    };
    token_case(
        case,
        TokenCheck {
            loss,
            divergence,
            temperature,
            t_squared: true,
            divide: &per_valid,
        },
    )
}

/// DistillKit's sparse (top-k) signal: the teacher's top-k ids and log-probabilities, zero or
/// symmetric-uniform missing mass, `T²`, the sum over the masked tokens divided by their number.
fn distillkit_sparse(case: &Case) -> Result<(), String> {
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
        .init()
        .map_err(e)?;
    let (s, sv, v) = token_leaf(case, "student_logits")?;
    let (ids_shape, ids) = case.input("target_ids")?;
    let k = *ids_shape.last().ok_or("no k")?;
    let n = ids.len() / k;
    let ids = Tensor::<2, Int>::from_data(
        burn::tensor::TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [n, k]),
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
        TopKDivergence::ForwardKl => Some(exact::sparse_kl(
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
        )),
        _ => empty.then_some(0.0),
    };
    case.expect_loss(out.value(), exact)?;
    let grads = out.total.backward();
    let zeros = || vec![0.0; sv.len()];
    let exact: Option<&dyn Fn() -> Vec<f64>> = if empty { Some(&zeros) } else { None };
    case.expect_grad("student_logits", s.grad(&grads).map(values), exact)
}

/// DistillKit's hidden-state MSE and cosine over a layer mapping, with the case's projections
/// (torch layout `[Ht, Hs]`, no bias) and token mask.
fn distillkit_hidden(case: &Case) -> Result<(), String> {
    let pairs: Vec<(usize, usize)> = case.params["layer_mapping"]
        .as_array()
        .ok_or("no layer_mapping")?
        .iter()
        .map(|p| Some((p[0].as_u64()? as usize, p[1].as_u64()? as usize)))
        .collect::<Option<_>>()
        .ok_or("a bad layer_mapping")?;
    let width = |name: &str| -> Result<usize, String> {
        Ok(*case.input(name)?.0.last().ok_or("a scalar hidden state")?)
    };
    let (hs, ht) = (width("student_hidden_0")?, width("teacher_hidden_0")?);
    let config = HiddenStateConfig::new(
        hs,
        ht,
        pairs
            .iter()
            .map(|(i, j)| (format!("student_hidden_{i}"), format!("teacher_hidden_{j}")))
            .collect(),
    )
    .with_loss(match case.method.as_str() {
        "distillkit_hs_cosine" => HiddenLoss::Cosine,
        _ => HiddenLoss::Mse,
    })
    .with_projection(case.has("projection_0_weight"));
    let mut hidden = config.init(&device()).map_err(e)?;
    for (i, p) in hidden.projections.iter_mut().enumerate() {
        let (_, w) = case.input(&format!("projection_{i}_weight"))?;
        // torch [Ht, Hs] → burn [Hs, Ht]
        let wt: Vec<f64> = (0..hs * ht).map(|k| w[(k % ht) * hs + k / ht]).collect();
        p.weight = Param::from_tensor(tensor(wt, [hs, ht], case.dtype));
    }
    let mut input = DistillInput::features_only().attach_teacher();
    let mut leaves = Vec::new();
    for name in case.inputs.keys() {
        let side = if name.starts_with("student_hidden_") {
            true
        } else if name.starts_with("teacher_hidden_") {
            false
        } else {
            continue;
        };
        let (leaf, _, _) = token_leaf(case, name)?;
        input = match side {
            true => input.student_feature(name.clone(), leaf.clone()),
            false => input.teacher_feature(name.clone(), leaf.clone()),
        };
        leaves.push((name.clone(), leaf));
    }
    if let Some(m) = token_mask(case)? {
        input = input.mask(bools(&m));
    }
    let out = hidden.forward(&input).map_err(e)?;
    case.expect_loss(out.value(), None)?;
    let grads = out.total.backward();
    for (name, leaf) in &leaves {
        case.expect_grad(name, leaf.grad(&grads).map(values), None)?;
    }
    let gp = GradientsParams::from_grads(grads, &hidden);
    for (i, p) in hidden.projections.iter().enumerate() {
        let g = gp.get::<2>(p.weight.id).map(|g| values(g.transpose()));
        case.expect_grad(&format!("projection_{i}_weight"), g, None)?;
    }
    Ok(())
}

/// Liger's `LigerFusedLinearJSDLoss` (the pure-torch chunked path): JSD(β) at `T` through
/// both lm-heads plus a hard-label cross-entropy, each a mean over the valid tokens, in chunks.
fn liger_fused_linear(case: &Case) -> Result<(), String> {
    let (hard, soft) = (
        case.param("weight_hard_loss")?,
        case.param("weight_soft_loss")?,
    );
    if hard > 0.0 && case.dtype == DType::F64 {
        // the case says: the reference computes its cross-entropy in float32, so only ~1e-7
        // relative accuracy holds for loss and gradients
        case.tolerance.set(Some((1e-6, 1e-9)));
    }
    let jsd = JsdConfig::new()
        .with_beta(case.param("beta")?)
        .with_temperature(case.param("temperature")?)
        .with_reduction(TokenReduction::None)
        .init()
        .map_err(e)?;
    let fused = FusedLinearConfig::new()
        .with_chunk_size(case.opt("chunk_size").map(|c| c as usize))
        .with_soft_weight(soft)
        .with_hard_weight(hard)
        .init(jsd)
        .map_err(e)?;
    let head = |x: &str,
                w: &str,
                b: &str|
     -> Result<(LmHead, Tensor<2>, Tensor<2>, Option<Tensor<1>>), String> {
        let (x, w) = (case.leaf::<2>(x)?, case.leaf::<2>(w)?);
        let b = match case.has(b) {
            true => Some(case.leaf::<1>(b)?),
            false => None,
        };
        Ok((LmHead::torch(x.clone(), w.clone(), b.clone()), x, w, b))
    };
    let (student, x, w, b) = head("student_input", "student_weight", "student_bias")?;
    let (teacher, ..) = head("teacher_input", "teacher_weight", "teacher_bias")?;
    let ignore = case.opt("ignore_index").unwrap_or(-100.0) as i64;
    let labels = ints(
        case.input("true_labels")?
            .1
            .iter()
            .map(|&y| y as i64)
            .collect(),
    );
    let input = DistillInput::features_only()
        .labels(labels, ignore)
        .with(LmHeads {
            student,
            teacher: TeacherHead::Head(teacher),
        });
    let out = fused.forward(&input).map_err(e)?;
    case.expect_loss(out.value(), None)?;
    let grads = out.total.backward();
    case.expect_grad("student_input", x.grad(&grads).map(values), None)?;
    case.expect_grad("student_weight", w.grad(&grads).map(values), None)?;
    case.expect_grad(
        "student_bias",
        b.and_then(|b| b.grad(&grads)).map(values),
        None,
    )
}

/// Liger's pure-torch test references: the JSD on log-probabilities and the TVD on
/// probabilities given directly (gradients in those coordinates), through the crate's
/// element functions and [`TokenReduction::apply`].
fn liger_testref(case: &Case) -> Result<(), String> {
    let jsd = case.method == "liger_jsd_testref";
    let (s_name, t_name) = if jsd { ("log_q", "log_p") } else { ("q", "p") };
    let (s, _, v) = token_leaf(case, s_name)?;
    let (t, _, _) = token_leaf(case, t_name)?;
    let elements = match jsd {
        true => jsd_elements(s.clone(), t.clone(), case.param("beta")?),
        false => tvd_elements(s.clone(), t.clone()),
    };
    let reduction = match case.params["reduction"].as_str() {
        None | Some("batchmean") => TokenReduction::Mean,
        Some("mean") => TokenReduction::ElementMean,
        Some("sum") => TokenReduction::Sum,
        Some(_) => TokenReduction::None,
    };
    let mask = token_mask(case)?.map(|m| bools(&m));
    let total = reduction.apply(elements.sum_dim(1).squeeze_dim(1), mask, v);
    if total.dims()[0] == 1 {
        case.expect_loss(values(total.clone())[0], None)?;
    } else {
        let want = case.loss.as_deref().ok_or("no loss")?;
        let per_token: Vec<f64> = want.chunks(v).map(|r| r.iter().sum()).collect();
        let (rel, abs) = case.tolerance();
        close("per-row loss", &values(total.clone()), &per_token, rel, abs)?;
    }
    let grads = total.sum().backward();
    case.expect_grad(s_name, s.grad(&grads).map(values), None)?;
    case.expect_grad(t_name, t.grad(&grads).map(values), None)
}

/// What one case came to.
enum Outcome {
    Passed,
    Failed(String),
    NotImplemented,
}

fn run_case(path: &std::path::Path) -> (String, Outcome) {
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    let value = std::fs::read_to_string(path)
        .map_err(|err| err.to_string())
        .and_then(|text| serde_json::from_str::<Value>(&text).map_err(|err| err.to_string()));
    let value = match value {
        Ok(v) => v,
        Err(msg) => return (name, Outcome::Failed(format!("unreadable case: {msg}"))),
    };
    let method = value["method"].as_str().unwrap_or_default().to_string();
    let label = format!("{name} ({method})");
    let Some((_, runner)) = RUNNERS.iter().find(|(m, _)| *m == method) else {
        return (method, Outcome::NotImplemented);
    };
    let case = match Case::parse(&value) {
        Ok(case) => case,
        Err(msg) => return (label, Outcome::Failed(format!("unreadable case: {msg}"))),
    };
    let outcome = match catch_unwind(AssertUnwindSafe(|| runner(&case))) {
        Ok(Ok(())) => match case.unchecked() {
            missing if missing.is_empty() => Outcome::Passed,
            missing => Outcome::Failed(format!("recorded gradients not checked: {missing:?}")),
        },
        Ok(Err(msg)) if msg.starts_with(NOT_YET) => return (case.method, Outcome::NotImplemented),
        Ok(Err(msg)) => Outcome::Failed(msg),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Outcome::Failed(format!("panicked: {msg}"))
        }
    };
    (label, outcome)
}

#[test]
fn golden_cases() {
    // heads built by a config (DLKD's batch norm) take the device's default float dtype: the
    // cases are mostly f64, and f32 cases give their dtype explicitly
    configure_f64();
    // KD, DKD and DCKD objectives built with their defaults take the fused kernels here
    assert!(burn_distill::fused::supported(&device()));
    let dir = std::env::var_os("BURN_DISTILL_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("golden directory {}: {err}", dir.display()))
        .filter_map(|f| f.ok().map(|f| f.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter(|p| p.file_name().is_some_and(|n| n != "INDEX.json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no cases in {}", dir.display());

    let (mut passed, mut failed, mut missing) = (0, Vec::new(), BTreeMap::<String, usize>::new());
    for path in &files {
        match run_case(path) {
            (_, Outcome::Passed) => passed += 1,
            (label, Outcome::Failed(msg)) => failed.push(format!("{label}: {msg}")),
            (method, Outcome::NotImplemented) => *missing.entry(method).or_default() += 1,
        }
    }
    let absent: usize = missing.values().sum();
    for (method, count) in &missing {
        println!("golden: method `{method}` not implemented ({count} cases)");
    }
    for f in &failed {
        println!("golden: FAILED {f}");
    }
    println!(
        "golden: {passed} passed, {} failed, {absent} not implemented, {} total ({})",
        failed.len(),
        files.len(),
        dir.display()
    );
    assert!(
        failed.is_empty(),
        "golden mismatches:\n{}",
        failed.join("\n")
    );
    assert!(passed > 0, "no golden case ran");
}

/// `leaves` borrowed as `check` takes them.
fn borrowed(leaves: &[(String, Feature)]) -> Vec<(&str, Feature)> {
    leaves
        .iter()
        .map(|(n, f)| (n.as_str(), f.clone()))
        .collect()
}

/// A tap's tensor as a map or as rows.
fn map(f: &Feature) -> Result<Tensor<4>, String> {
    match f {
        Feature::Map(t) => Ok(t.clone()),
        Feature::Embedding(_) => Err("a map [N, C, H, W] is needed".into()),
    }
}

/// The objective `loss` on one tap `name` built from the inputs `student` and `teacher`
/// (teacher attached), checked with their gradients.
fn on_tap(case: &Case, loss: &dyn Loss, student: &str, teacher: &str) -> Result<(), String> {
    let leaves = case.taps(&[student, teacher])?;
    let input = DistillInput::features_only()
        .feature("tap", leaves[0].1.clone(), leaves[1].1.clone())
        .attach_teacher();
    case.check(loss.forward(&input).map_err(e)?, &borrowed(&leaves))
        .map(drop)
}

/// MetaDistil's `MSEWithTemperature`.
fn logit_mse(case: &Case) -> Result<(), String> {
    let (s, t) = logits(case)?;
    let loss = LogitMseConfig::new()
        .with_temperature(case.param("temperature")?)
        .init()
        .map_err(e)?;
    let input = DistillInput::new(s.clone(), t.clone()).attach_teacher();
    case.check(loss.forward(&input).map_err(e)?, &as_taps(&s, &t))
        .map(drop)
}

/// mdistiller's `single_stage_nst_loss` (weight 1). The reference detaches its
/// teacher-teacher term and the crate does not: the teacher's gradient is the reference's plus
/// that term's, recomputed here (the two maps have one spatial size, so nothing is pooled).
fn nst(case: &Case) -> Result<(), String> {
    let loss = NstConfig::new()
        .with_features(vec!["tap".into()])
        .with_weight(1.0)
        .init()
        .map_err(e)?;
    let leaves = case.taps(&["feat_student", "feat_teacher"])?;
    let input = DistillInput::features_only()
        .feature("tap", leaves[0].1.clone(), leaves[1].1.clone())
        .attach_teacher();
    let out = loss.forward(&input).map_err(e)?;
    case.expect_loss(out.value(), None)?;
    let grads = out.total.backward();
    case.expect_grad("feat_student", grad(&leaves[0].1, &grads), None)?;
    let t = case.leaf::<4>("feat_teacher")?;
    let [n, c, h, w] = t.dims();
    let f = t.clone().reshape([n, c, h * w]);
    let f = f.clone() / f.square().sum_dim(2).sqrt();
    let self_term = f.clone().matmul(f.swap_dims(1, 2)).square().mean();
    let extra = values(
        t.grad(&self_term.backward())
            .ok_or("no self-term gradient")?,
    );
    let reference = case
        .grads
        .get("feat_teacher")
        .ok_or("no teacher gradient")?;
    let want: Vec<f64> = reference.iter().zip(&extra).map(|(r, x)| r + x).collect();
    let (rel, abs) = case.tolerance();
    close(
        "d/dfeat_teacher (+ the self term)",
        &grad(&leaves[1].1, &grads).ok_or("no teacher gradient")?,
        &want,
        rel,
        abs,
    )?;
    case.checked.borrow_mut().insert("feat_teacher".into());
    Ok(())
}

/// RepDistiller's `FactorTransfer` loss on two factors (the paraphraser and translator are the
/// reference's callers, not part of the case).
fn ft(case: &Case) -> Result<(), String> {
    let leaves = case.taps(&["feat_student", "feat_teacher"])?;
    let loss = factor_loss(
        map(&leaves[0].1)?,
        map(&leaves[1].1)?,
        case.param("p1")?,
        case.param("p2")?,
    );
    case.check(LossOutput::single("ft", loss), &borrowed(&leaves))
        .map(drop)
}

/// torchdistill's `CCKDLoss` on the outputs of its linear heads.
fn cckd(case: &Case) -> Result<(), String> {
    let kernel = &case.params["kernel_config"];
    let kernel = match kernel["type"].as_str() {
        Some("bilinear") => CcKernel::Bilinear,
        Some("gaussian") => CcKernel::Gaussian {
            gamma: number(&kernel["gamma"])?,
            order: number(&kernel["max_p"])? as usize,
        },
        other => return Err(format!("{NOT_YET}CCKD kernel {other:?}")),
    };
    let loss = CcConfig::new()
        .with_kernel(kernel)
        .with_batch_mean(case.params["reduction"].as_str() == Some("batchmean"))
        .with_feature("tap".into())
        .init()
        .map_err(e)?;
    on_tap(
        case,
        &loss,
        "student_linear_output",
        "teacher_linear_output",
    )
}

/// torchdistill's `ChSimLoss` over its feature pairs (`student_feat_i`, `teacher_feat_i`) with
/// their weights.
fn ickd(case: &Case) -> Result<(), String> {
    let pairs = case.params["feature_pairs"]
        .as_object()
        .ok_or("no feature_pairs")?;
    let weights = pairs
        .values()
        .map(|p| number(&p["weight"]))
        .collect::<Result<Vec<_>, _>>()?;
    let mut input = DistillInput::features_only().attach_teacher();
    let mut leaves = Vec::new();
    for i in 0..weights.len() {
        let pair = case.taps(&[&format!("student_feat_{i}"), &format!("teacher_feat_{i}")])?;
        input = input.feature(format!("pair{i}"), pair[0].1.clone(), pair[1].1.clone());
        leaves.extend(pair);
    }
    let loss = IckdConfig::new()
        .with_features((0..weights.len()).map(|i| format!("pair{i}")).collect())
        .with_weights(weights)
        .init(&device())
        .map_err(e)?;
    case.check(loss.forward(&input).map_err(e)?, &borrowed(&leaves))
        .map(drop)
}

/// torchdistill's reduction names: `'mean'` and `'sum'` (and the KL's `'batchmean'`).
fn reduction(case: &Case, mean: Reduction) -> Result<Reduction, String> {
    match case.params["reduction"].as_str() {
        Some("mean") | Some("batchmean") => Ok(mean),
        Some("sum") => Ok(Reduction::Sum),
        other => Err(format!("{NOT_YET}reduction {other:?}")),
    }
}

/// torchdistill's `KTALoss`: its `'mean'` averages every element for `p = 1`, samples otherwise.
fn kta(case: &Case) -> Result<(), String> {
    let p = case.param("p")?;
    let mean = if p == 1.0 {
        Reduction::Mean
    } else {
        Reduction::BatchMean
    };
    let loss = KtaConfig::new()
        .with_p(p)
        .with_q(case.param("q")?)
        .with_reduction(reduction(case, mean)?)
        .with_feature("tap".into())
        .init()
        .map_err(e)?;
    on_tap(case, &loss, "feature_adapter_output", "paraphraser_output")
}

/// torchdistill's `AffinityLoss`.
fn affinity(case: &Case) -> Result<(), String> {
    let loss = AffinityConfig::new()
        .with_reduction(reduction(case, Reduction::BatchMean)?)
        .with_feature("tap".into())
        .init()
        .map_err(e)?;
    on_tap(case, &loss, "student_output", "teacher_output")
}

/// torchdistill's `PADL2Loss` on given log-variances (the objective computes them with its
/// variance branch; the math is the case's).
fn pad_l2(case: &Case) -> Result<(), String> {
    let leaves = case.taps(&["log_variances", "student_embed", "teacher_embed"])?;
    let rows = |f: &Feature| f.clone().flatten();
    let per_sample = pad_l2_per_sample(
        rows(&leaves[1].1),
        rows(&leaves[2].1),
        rows(&leaves[0].1),
        case.param("eps")?,
    );
    let loss = reduction(case, Reduction::BatchMean)?.apply(per_sample, 1);
    case.check(LossOutput::single("pad_l2", loss), &borrowed(&leaves))
        .map(drop)
}

/// `loss` on the logits `student_logits` / `teacher_logits` and the tap `student_features` /
/// `teacher_features` (teacher attached), checked with all four gradients.
fn on_logits_and_tap(case: &Case, loss: &dyn Loss) -> Result<(), String> {
    let mut leaves = case.taps(&["student_features", "teacher_features"])?;
    let (s, t) = (
        case.leaf::<2>("student_logits")?,
        case.leaf::<2>("teacher_logits")?,
    );
    let input = DistillInput::new(s.clone(), t.clone())
        .feature("tap", leaves[0].1.clone(), leaves[1].1.clone())
        .attach_teacher();
    leaves.push(("student_logits".into(), Feature::Embedding(s)));
    leaves.push(("teacher_logits".into(), Feature::Embedding(t)));
    case.check(loss.forward(&input).map_err(e)?, &borrowed(&leaves))
        .map(drop)
}

/// torchdistill's `SRDLoss` (features already projected).
fn srd(case: &Case) -> Result<(), String> {
    if case.params["reduction"].as_str() != Some("batchmean") {
        return Err(format!(
            "{NOT_YET}SRD's KL reduction {:?}",
            case.params["reduction"]
        ));
    }
    let loss = SrdConfig::new()
        .with_feature("tap".into())
        .with_exponent(case.param("exponent")?)
        .with_temperature(case.param("temperature")?)
        .init(&device())
        .map_err(e)?;
    on_logits_and_tap(case, &loss)
}

/// torchdistill's `DISTPlusLoss`.
fn dist_plus(case: &Case) -> Result<(), String> {
    let loss = DistPlusConfig::new()
        .with_beta(case.param("beta")?)
        .with_gamma(case.param("gamma")?)
        .with_iota(case.param("iota")?)
        .with_kappa(case.param("kappa")?)
        .with_temperature(case.param("tau")?)
        .with_eps(case.param("eps")?)
        .with_feature("tap".into())
        .init()
        .map_err(e)?;
    on_logits_and_tap(case, &loss)
}

/// One of MLKD's level functions (`kd_loss`, `cc_loss`, `bc_loss`), reduced or not.
fn mlkd_level(case: &Case) -> Result<(), String> {
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
fn mlkd_full(case: &Case) -> Result<(), String> {
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

/// Named tracked taps, as [`Case::taps`] returns them.
type Taps = Vec<(String, Feature)>;

/// The taps `{prefix}_0`, `{prefix}_1`, … of the case (stage order).
fn stages(case: &Case, prefix: &str) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}_{i}"))
        .take_while(|n| case.has(n))
        .collect()
}

/// The input of a multi-stage feature case (`feat_student_i` / `feat_teacher_i` as taps
/// `stage{i}`, teacher attached) and its leaves.
fn staged_input(case: &Case) -> Result<(DistillInput, Taps, usize), String> {
    let k = stages(case, "feat_student").len();
    let mut input = DistillInput::features_only().attach_teacher();
    let mut leaves = Vec::new();
    for i in 0..k {
        let pair = case.taps(&[&format!("feat_student_{i}"), &format!("feat_teacher_{i}")])?;
        input = input.feature(format!("stage{i}"), pair[0].1.clone(), pair[1].1.clone());
        leaves.extend(pair);
    }
    Ok((input, leaves, k))
}

fn stage_names(k: usize) -> Vec<String> {
    (0..k).map(|i| format!("stage{i}")).collect()
}

/// `[C, H, W]` of the case's map `name`.
fn chw(case: &Case, name: &str) -> Result<[usize; 3], String> {
    case.input(name)?.0[1..]
        .try_into()
        .map_err(|_| format!("`{name}` is not a map"))
}

/// RepDistiller's `ABLoss` (the returned per-layer list summed): equal shapes, no connector.
fn ab(case: &Case) -> Result<(), String> {
    let (input, leaves, k) = staged_input(case)?;
    if case.opt("feat_num") != Some(k as f64) {
        return Err(format!("feat_num is not the {k} stages given"));
    }
    let shapes = |side: &str| -> Result<Vec<[usize; 3]>, String> {
        (0..k)
            .map(|i| chw(case, &format!("feat_{side}_{i}")))
            .collect()
    };
    let ab = AbConfig::new(stage_names(k), shapes("student")?, shapes("teacher")?)
        .with_margin(case.param("margin")?)
        .init(&device())
        .map_err(e)?;
    case.check(ab.forward(&input).map_err(e)?, &borrowed(&leaves))
        .map(drop)
}

/// RepDistiller's `Correlation` (CC between consecutive samples).
fn cc(case: &Case) -> Result<(), String> {
    let loss = CcConfig::new()
        .with_kernel(CcKernel::Consecutive)
        .with_feature("tap".into())
        .init()
        .map_err(e)?;
    on_tap(case, &loss, "feat_student", "feat_teacher")
}

/// RepDistiller's `FSP` (the returned per-pair list summed: weight 1).
fn fsp(case: &Case) -> Result<(), String> {
    let (input, leaves, k) = staged_input(case)?;
    let fsp = FspConfig::new(stage_names(k))
        .with_weight(1.0)
        .init()
        .map_err(e)?;
    case.check(fsp.forward(&input).map_err(e)?, &borrowed(&leaves))
        .map(drop)
}

/// mdistiller's OFD `feat_loss`: the partial L2 summed over channels and positions, averaged
/// over the batch ([`partial_l2`]).
fn ofd(case: &Case) -> Result<(), String> {
    let leaves = case.taps(&["feat_student", "feat_teacher"])?;
    let (_, margin) = case.input("margin")?;
    let margin = tensor(margin.clone(), [margin.len()], case.dtype);
    let loss = partial_l2(map(&leaves[0].1)?, map(&leaves[1].1)?, margin);
    case.check(LossOutput::single("ofd", loss), &borrowed(&leaves))
        .map(drop)
}

/// mdistiller's ReviewKD `hcl_loss` over every stage (pools of 4, 2 and 1).
fn reviewkd_hcl(case: &Case) -> Result<(), String> {
    let levels: Vec<f64> = case.params["pool_levels"]
        .as_array()
        .ok_or("no pool_levels")?
        .iter()
        .map(number)
        .collect::<Result<_, _>>()?;
    if levels != [4.0, 2.0, 1.0] {
        return Err(format!("{NOT_YET}pool levels {levels:?}"));
    }
    let (_, leaves, k) = staged_input(case)?;
    let total = (0..k)
        .map(|i| {
            Ok(hcl_stage(
                map(&leaves[2 * i].1)?,
                map(&leaves[2 * i + 1].1)?,
            ))
        })
        .reduce(|a: Result<Tensor<1>, String>, b| Ok(a? + b?))
        .ok_or("no stages")??;
    case.check(LossOutput::single("review_kd", total), &borrowed(&leaves))
        .map(drop)
}

/// mdistiller's `vid_loss` with the case's regressor (three bias-free 1×1 convolutions, ReLU
/// between) and log-scales: the loss and the gradients of both maps and every parameter.
fn vid(case: &Case) -> Result<(), String> {
    let leaves = case.taps(&["feat_student", "feat_teacher"])?;
    let (cs, ct) = (chw(case, "feat_student")?[0], chw(case, "feat_teacher")?[0]);
    let mid = case.input("w1")?.0[0];
    let mut vid = VidConfig::new(vec!["tap".into()], vec![[cs, ct]])
        .with_mid_channels(Some(mid))
        .with_eps(case.param("eps")?)
        .init(&device())
        .map_err(e)?;
    let regressor = &mut vid.regressors[0];
    for (conv, w) in regressor.convs.iter_mut().zip(["w1", "w2", "w3"]) {
        conv.weight = Param::from_tensor(case.constant::<4>(w)?);
    }
    regressor.log_scale = Param::from_tensor(case.constant::<1>("log_scale")?);
    let input = DistillInput::features_only()
        .feature("tap", leaves[0].1.clone(), leaves[1].1.clone())
        .attach_teacher();
    let grads = case.check(vid.forward(&input).map_err(e)?, &borrowed(&leaves))?;
    let gp = GradientsParams::from_grads(grads, &vid);
    let regressor = &vid.regressors[0];
    for (conv, w) in regressor.convs.iter().zip(["w1", "w2", "w3"]) {
        case.expect_grad(w, gp.get::<4>(conv.weight.id).map(values), None)?;
    }
    case.expect_param(&regressor.log_scale, &gp, "log_scale")
}
