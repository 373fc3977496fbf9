//! The reference-case harness (feature `golden`, which the crate's own tests turn on): a case
//! computed by the original authors' or maintainers' code (`tests/golden/README.md` gives the
//! schema and every convention), its parsing, comparisons at the tolerance of its dtype, exact
//! recomputations where the reference is not finite ([`exact`]), and [`run`], which dispatches
//! each case on its `method` through the descriptors of the objectives
//! ([`Descriptor::golden`](crate::Descriptor::golden)): every objective's file holds the runner
//! of the methods it answers.
//!
//! A runner reads parameters with [`Case::opt`] / [`Case::param`] (`null` = not passed) and
//! inputs with [`Case::has`] / [`Case::leaf`] (absent = no such part), and checks every recorded
//! gradient ([`Case::expect_grad`]): a case whose recorded gradients a runner skipped fails.
#![allow(missing_docs)]

pub mod exact;

use exact::PerToken;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

pub use burn::module::Param;
pub use burn::optim::GradientsParams;
pub use burn::tensor::{DType, Device, Gradients, Int, Tensor, TensorData};
pub use serde_json::Value;

pub use crate::error::DistillError;
pub use crate::input::{DistillInput, Feature, Progress, Views};
pub use crate::loss::{Loss, LossExt, LossOutput, Reduction};
pub use crate::registry::moved;

/// How a case of one method is checked.
pub type Runner = fn(&Case) -> Result<(), String>;

/// A runner's answer for a case whose variant the crate does not have yet: counted as not
/// implemented (with the reason), not as a failure.
pub const NOT_YET: &str = "not implemented: ";

pub type Array = (Vec<usize>, Vec<f64>);

/// One parsed case.
pub struct Case {
    pub method: String,
    pub dtype: DType,
    pub params: Value,
    pub inputs: BTreeMap<String, Array>,
    /// The loss: one value, or (`params.loss_shape`) every element of a non-scalar loss.
    pub loss: Option<Vec<f64>>,
    pub grads: BTreeMap<String, Vec<f64>>,
    pub outputs: BTreeMap<String, Vec<f64>>,
    /// Recorded gradients the reference could not give (`omitted_grads`).
    pub omitted: BTreeSet<String>,
    /// What the reference returned as NaN/inf: the loss, and gradients by input name.
    pub nonfinite_loss: bool,
    pub nonfinite_grads: BTreeSet<String>,
    /// The recorded gradients a runner compared.
    pub checked: RefCell<BTreeSet<String>>,
    /// A runner's (relative, absolute) tolerance where the case says the reference is less
    /// precise than its dtype.
    pub tolerance: std::cell::Cell<Option<(f64, f64)>>,
}

/// A recorded number: a number, a string of one (`"inf"`, `"nan"`), or a flag (`false` = 0,
/// `true` = 1; Model-Optimizer's plugin outputs record flags beside the loss).
pub fn number(v: &Value) -> Result<f64, String> {
    match v {
        Value::Bool(b) => Ok(f64::from(u8::from(*b))),
        Value::String(s) => s.parse().map_err(|_| format!("not a number: {s}")),
        v => v.as_f64().ok_or_else(|| format!("not a number: {v}")),
    }
}

/// A recorded value: `{shape, data}`, a list of numbers, or one number.
pub fn array(v: &Value) -> Result<Array, String> {
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
    pub fn parse(v: &Value) -> Result<Self, String> {
        let map = |key: &str| -> Result<BTreeMap<String, Array>, String> {
            match v[key].as_object() {
                None => Ok(BTreeMap::new()),
                Some(o) => o
                    .iter()
                    .map(|(k, a)| Ok((k.clone(), array(a).map_err(|e| format!("{k}: {e}"))?)))
                    .collect(),
            }
        };
        let data = |m: BTreeMap<String, Array>| -> BTreeMap<String, Vec<f64>> {
            m.into_iter().map(|(k, (_, d))| (k, d)).collect()
        };
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
            // numeric outputs; others (alignment groups, per-row records) stay in the raw case
            outputs: match v["outputs"].as_object() {
                None => BTreeMap::new(),
                Some(o) => o
                    .iter()
                    .filter_map(|(k, a)| array(a).ok().map(|(_, d)| (k.clone(), d)))
                    .collect(),
            },
            omitted: names(&v["omitted_grads"]),
            nonfinite_loss: flagged["loss"].as_bool().unwrap_or(false),
            nonfinite_grads: names(&flagged["grads"]),
            checked: RefCell::default(),
            tolerance: Default::default(),
        })
    }

    /// The parameter `key`; `None` when it is `null` (not passed) or absent.
    pub fn opt(&self, key: &str) -> Option<f64> {
        self.params.get(key).and_then(|v| number(v).ok())
    }

    /// The parameter `key`, which must be a number.
    pub fn param(&self, key: &str) -> Result<f64, String> {
        self.opt(key)
            .ok_or_else(|| format!("param `{key}` is missing"))
    }

    pub fn has(&self, name: &str) -> bool {
        self.inputs.contains_key(name)
    }

    pub fn input(&self, name: &str) -> Result<&Array, String> {
        self.inputs
            .get(name)
            .ok_or_else(|| format!("input `{name}` is missing"))
    }

    /// The float input `name` as a tracked leaf of the case's dtype.
    pub fn leaf<const D: usize>(&self, name: &str) -> Result<Tensor<D>, String> {
        let (shape, data) = self.input(name)?;
        let shape: [usize; D] = shape
            .as_slice()
            .try_into()
            .map_err(|_| format!("input `{name}` has rank {}, not {D}", shape.len()))?;
        Ok(tensor(data.clone(), shape, self.dtype).require_grad())
    }

    /// The float input `name` as a constant.
    pub fn constant<const D: usize>(&self, name: &str) -> Result<Tensor<D>, String> {
        Ok(self.leaf::<D>(name)?.detach().set_require_grad(false))
    }

    pub fn targets(&self, name: &str) -> Result<Tensor<1, Int>, String> {
        Ok(ints(
            self.input(name)?.1.iter().map(|&v| v as i64).collect(),
        ))
    }

    /// (relative, absolute) tolerance of the dtype, as the golden README gives it.
    pub fn tolerance(&self) -> (f64, f64) {
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
    pub fn expect_loss(&self, got: f64, exact: Option<f64>) -> Result<(), String> {
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
    pub fn check_elements<const D: usize>(
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
    pub fn taps(&self, names: &[&str]) -> Result<Vec<(String, Feature)>, String> {
        names
            .iter()
            .map(|n| Ok((n.to_string(), tap(self, n)?)))
            .collect()
    }

    /// Compares the gradient of input `name` with the reference (or, where the reference was
    /// not finite, with `exact`), and marks it checked. A gradient the case does not record is
    /// not compared.
    pub fn expect_grad(
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

    /// Compares the gradient of input `name`, log-probabilities `[…, V]` to the reference and
    /// logits to the crate (the same loss, through one more log-softmax): the reference's `g`
    /// becomes `g − softmax(x)·Σ_V g` row by row before the comparison. Where the reference
    /// is not finite, the gradient must be `exact` (of the crate's logits).
    pub fn expect_grad_through_log_softmax(
        &self,
        name: &str,
        got: Option<Vec<f64>>,
        exact: Option<&dyn Fn() -> Vec<f64>>,
    ) -> Result<(), String> {
        let Some(want) = self.grads.get(name) else {
            return Ok(());
        };
        if self.nonfinite_grads.contains(name) || want.iter().any(|v| !v.is_finite()) {
            return self.expect_grad(name, got, exact);
        }
        self.checked.borrow_mut().insert(name.to_string());
        let got = got.ok_or_else(|| format!("no gradient for {name}"))?;
        let (shape, x) = self.input(name)?;
        let v = *shape.last().ok_or("a scalar input")?;
        let want: Vec<f64> = want
            .chunks(v)
            .zip(x.chunks(v))
            .flat_map(|(g, x)| {
                let sum: f64 = g.iter().sum();
                g.iter()
                    .zip(x)
                    .map(move |(g, x)| g - x.exp() * sum)
                    .collect::<Vec<_>>()
            })
            .collect();
        let (rel, abs) = self.tolerance();
        close(
            &format!("d/d{name} (through log-softmax)"),
            &got,
            &want,
            rel,
            abs,
        )
    }

    /// The loss and the gradients of the tracked `leaves` (any rank, as taps) after one
    /// backward pass; the gradients are returned for the parameters' checks.
    pub fn check(&self, out: LossOutput, leaves: &[(&str, Feature)]) -> Result<Gradients, String> {
        self.expect_loss(out.value(), None)?;
        let grads = out.total.backward();
        for (name, leaf) in leaves {
            self.expect_grad(name, grad(leaf, &grads), None)?;
        }
        Ok(grads)
    }

    /// Checks the gradients of a linear layer in torch's layout.
    pub fn expect_linear(
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
    pub fn expect_param(
        &self,
        param: &Param<Tensor<1>>,
        gp: &GradientsParams,
        name: &str,
    ) -> Result<(), String> {
        self.expect_grad(name, gp.get::<1>(param.id).map(values), None)
    }

    /// Checks the gradients of a conv layer's weight and bias.
    pub fn expect_conv(
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
    pub fn unchecked(&self) -> Vec<String> {
        let checked = self.checked.borrow();
        self.grads
            .keys()
            .filter(|k| !checked.contains(*k) && !self.omitted.contains(*k))
            .cloned()
            .collect()
    }
}

pub fn grad(leaf: &Feature, grads: &Gradients) -> Option<Vec<f64>> {
    match leaf {
        Feature::Map(t) => t.grad(grads).map(values),
        Feature::Embedding(t) => t.grad(grads).map(values),
    }
}

pub fn e(err: DistillError) -> String {
    err.to_string()
}

/// A tracked feature tap of rank 2 or 4 from the case's input `name`.
pub fn tap(case: &Case, name: &str) -> Result<Feature, String> {
    match case.input(name)?.0.len() {
        4 => Ok(Feature::Map(case.leaf::<4>(name)?)),
        2 => Ok(Feature::Embedding(case.leaf::<2>(name)?)),
        r => Err(format!("tap `{name}` has rank {r}")),
    }
}

/// The tracked student and teacher logits.
pub fn logits(case: &Case) -> Result<(Tensor<2>, Tensor<2>), String> {
    Ok((case.leaf("logits_student")?, case.leaf("logits_teacher")?))
}

pub fn as_taps(s: &Tensor<2>, t: &Tensor<2>) -> [(&'static str, Feature); 2] {
    [
        ("logits_student", Feature::Embedding(s.clone())),
        ("logits_teacher", Feature::Embedding(t.clone())),
    ]
}

/// Sets a conv layer's weight and bias from the case's `[out, in, kh, kw]` inputs (burn's
/// layout is torch's).
pub fn set_conv(
    case: &Case,
    w: &str,
    b: &str,
    into: &mut burn::nn::conv::Conv2d,
) -> Result<(), String> {
    into.weight = Param::from_tensor(case.constant::<4>(w)?);
    into.bias = Some(Param::from_tensor(case.constant::<1>(b)?));
    Ok(())
}

/// A tanh MLP from the case's torch-layout layers `{p}_W`/`{p}_b` (one layer) or
/// `{p}_W1`/`{p}_b1`, `{p}_W2`, … (any depth), with the names of each layer's weights.
pub fn mlp(case: &Case, p: &str) -> Result<(Net, Vec<(String, String)>), String> {
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

/// A token case's logits as `[N, V]` leaves (a `[B, T, V]` input is flattened), with their
/// values and the vocabulary size.
pub fn token_leaf(case: &Case, name: &str) -> Result<(Tensor<2>, Vec<f64>, usize), String> {
    let (shape, data) = case.input(name)?;
    let v = *shape.last().ok_or("a scalar logit input")?;
    let n = data.len() / v.max(1);
    let leaf = tensor(data.clone(), [n, v], case.dtype).require_grad();
    Ok((leaf, data.clone(), v))
}

/// Which tokens count: `labels != ignore_index` (`labels`, `label` or `true_labels`), or the
/// `mask` input (true = counted); `None` when the case has neither.
pub fn token_mask(case: &Case) -> Result<Option<Vec<bool>>, String> {
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

pub fn bools(mask: &[bool]) -> Tensor<1, burn::tensor::Bool> {
    ints(mask.iter().map(|&m| m as i64).collect()).equal_elem(1)
}

/// How a token case is checked: the objective, the exact recomputation's divergence,
/// temperature, `T²` and divisor (of the number of valid tokens).
pub struct TokenCheck<'a> {
    pub loss: Box<dyn Loss>,
    pub divergence: PerToken,
    pub temperature: f64,
    pub t_squared: bool,
    pub divide: &'a dyn Fn(usize) -> f64,
}

/// Runs a token objective on the case's `student_logits` / `teacher_logits` (teacher
/// attached) and its mask: the loss (one value, or per token where the reference returns
/// its unreduced elements) and both logits' gradients.
pub fn token_case(case: &Case, check: TokenCheck) -> Result<(), String> {
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
pub fn per_valid(valid: usize) -> f64 {
    valid.max(1) as f64
}

/// `leaves` borrowed as `check` takes them.
pub fn borrowed(leaves: &[(String, Feature)]) -> Vec<(&str, Feature)> {
    leaves
        .iter()
        .map(|(n, f)| (n.as_str(), f.clone()))
        .collect()
}

/// A tap's tensor as a map or as rows.
pub fn map(f: &Feature) -> Result<Tensor<4>, String> {
    match f {
        Feature::Map(t) => Ok(t.clone()),
        Feature::Embedding(_) => Err("a map [N, C, H, W] is needed".into()),
    }
}

/// The objective `loss` on one tap `name` built from the inputs `student` and `teacher`
/// (teacher attached), checked with their gradients.
pub fn on_tap(case: &Case, loss: &dyn Loss, student: &str, teacher: &str) -> Result<(), String> {
    let leaves = case.taps(&[student, teacher])?;
    let input = DistillInput::features_only()
        .feature("tap", leaves[0].1.clone(), leaves[1].1.clone())
        .attach_teacher();
    case.check(loss.forward(&input).map_err(e)?, &borrowed(&leaves))
        .map(drop)
}

/// torchdistill's reduction names: `'mean'` and `'sum'` (and the KL's `'batchmean'`).
pub fn reduction(case: &Case, mean: Reduction) -> Result<Reduction, String> {
    match case.params["reduction"].as_str() {
        Some("mean") | Some("batchmean") => Ok(mean),
        Some("sum") => Ok(Reduction::Sum),
        other => Err(format!("{NOT_YET}reduction {other:?}")),
    }
}

/// `loss` on the logits `student_logits` / `teacher_logits` and the tap `student_features` /
/// `teacher_features` (teacher attached), checked with all four gradients.
pub fn on_logits_and_tap(case: &Case, loss: &dyn Loss) -> Result<(), String> {
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

/// Named tracked taps, as [`Case::taps`] returns them.
pub type Taps = Vec<(String, Feature)>;

/// The taps `{prefix}_0`, `{prefix}_1`, … of the case (stage order).
pub fn stages(case: &Case, prefix: &str) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}_{i}"))
        .take_while(|n| case.has(n))
        .collect()
}

/// The input of a multi-stage feature case (`feat_student_i` / `feat_teacher_i` as taps
/// `stage{i}`, teacher attached) and its leaves.
pub fn staged_input(case: &Case) -> Result<(DistillInput, Taps, usize), String> {
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

pub fn stage_names(k: usize) -> Vec<String> {
    (0..k).map(|i| format!("stage{i}")).collect()
}

/// `[C, H, W]` of the case's map `name`.
pub fn chw(case: &Case, name: &str) -> Result<[usize; 3], String> {
    case.input(name)?.0[1..]
        .try_into()
        .map_err(|_| format!("`{name}` is not a map"))
}

/// What one case came to.
pub enum Outcome {
    Passed,
    Failed(String),
    NotImplemented,
}

/// One case: its label (or method) and what it came to; `None` when no objective of the
/// module `family` answers its method.
pub fn run_case(path: &Path, runners: Lookup, family: &str) -> (String, Option<Outcome>) {
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    let value = std::fs::read_to_string(path)
        .map_err(|err| err.to_string())
        .and_then(|text| serde_json::from_str::<Value>(&text).map_err(|err| err.to_string()));
    let value = match value {
        Ok(v) => v,
        Err(msg) => {
            return (
                name,
                Some(Outcome::Failed(format!("unreadable case: {msg}"))),
            );
        }
    };
    let method = value["method"].as_str().unwrap_or_default().to_string();
    let label = format!("{name} ({method})");
    let runner = match runners(&method) {
        Some((module, runner)) if module == family => runner,
        _ => return (method, None),
    };
    let case = match Case::parse(&value) {
        Ok(case) => case,
        Err(msg) => {
            return (
                label,
                Some(Outcome::Failed(format!("unreadable case: {msg}"))),
            );
        }
    };
    let outcome = match catch_unwind(AssertUnwindSafe(|| runner(&case))) {
        Ok(Ok(())) => match case.unchecked() {
            missing if missing.is_empty() => Outcome::Passed,
            missing => Outcome::Failed(format!("recorded gradients not checked: {missing:?}")),
        },
        Ok(Err(msg)) if msg.starts_with(NOT_YET) => {
            return (case.method, Some(Outcome::NotImplemented));
        }
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
    (label, Some(outcome))
}

/// An autodiff flex device; tensors get their dtype explicitly (see [`tensor`]).
pub fn device() -> Device {
    Device::flex().autodiff()
}

/// A float tensor of `dtype` from row-major `data`.
pub fn tensor<const D: usize>(data: Vec<f64>, shape: [usize; D], dtype: DType) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data, shape), (&device(), dtype))
}

/// An f64 tensor from row-major `data`.
pub fn f64t<const D: usize>(data: Vec<f64>, shape: [usize; D]) -> Tensor<D> {
    tensor(data, shape, DType::F64)
}

/// Int targets.
pub fn ints(data: Vec<i64>) -> Tensor<1, Int> {
    let n = data.len();
    Tensor::from_data(TensorData::new(data, [n]), &device())
}

/// A tensor's values as `f64`.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().convert::<f64>().try_to_vec::<f64>().unwrap()
}

/// `Err` naming the worst element when `got` and `want` differ by more than
/// `abs + rel · |want|` anywhere; a non-finite `got` always fails.
pub fn close(what: &str, got: &[f64], want: &[f64], rel: f64, abs: f64) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    let mut worst: Option<(usize, f64)> = None;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (abs + rel * w.abs());
        if !g.is_finite() || excess > 0.0 {
            let e = if g.is_finite() { excess } else { f64::INFINITY };
            if worst.is_none_or(|(_, x)| e > x) {
                worst = Some((i, e));
            }
        }
    }
    match worst {
        None => Ok(()),
        Some((i, _)) => Err(format!(
            "{what}[{i}]: got {:e}, expected {:e} (rel {rel:e}, abs {abs:e})",
            got[i], want[i]
        )),
    }
}

/// Central finite differences of the scalar `f` at `x` (f64 values), step `eps`.
pub fn numeric_grad(f: &dyn Fn(Vec<f64>) -> f64, x: &[f64], eps: f64) -> Vec<f64> {
    (0..x.len())
        .map(|i| {
            let (mut p, mut m) = (x.to_vec(), x.to_vec());
            p[i] += eps;
            m[i] -= eps;
            (f(p) - f(m)) / (2.0 * eps)
        })
        .collect()
}

/// A tanh MLP (no activation after the last layer), for meta-teacher tests.
#[derive(burn::module::Module, Debug)]
pub struct Net {
    pub layers: Vec<burn::nn::Linear>,
}

impl crate::input::Distillable for Net {
    type Input = Tensor<2>;
    fn run(&self, x: &Tensor<2>) -> crate::input::Outputs {
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 {
                h = burn::tensor::activation::tanh(h);
            }
            h = layer.forward(h);
        }
        crate::input::Outputs::logits(h)
    }
}

/// A linear layer from torch's layout (`w` is `[out, in]` row-major), in `dtype`.
pub fn torch_linear(w: &[f64], b: &[f64], dtype: DType) -> burn::nn::Linear {
    use burn::module::Param;
    let out = b.len();
    let inp = w.len() / out;
    let wt: Vec<f64> = (0..inp * out)
        .map(|k| w[(k % out) * inp + k / out])
        .collect();
    burn::nn::Linear {
        weight: Param::from_tensor(tensor(wt, [inp, out], dtype)),
        bias: Some(Param::from_tensor(tensor(b.to_vec(), [out], dtype))),
    }
}

/// A linear layer's gradients in torch's layout: `[out, in]` weight, then bias.
pub fn torch_grads(
    layer: &burn::nn::Linear,
    g: &burn::optim::GradientsParams,
) -> (Vec<f64>, Vec<f64>) {
    let w = g.get::<2>(layer.weight.id).expect("weight gradient");
    let b = g
        .get::<1>(layer.bias.as_ref().expect("bias").id)
        .expect("bias gradient");
    (values(w.transpose()), values(b))
}

/// What a directory of cases came to.
#[derive(Debug, Default)]
pub struct Report {
    /// Cases that agreed.
    pub passed: usize,
    /// `case (method): what differed`, one per failed case.
    pub failed: Vec<String>,
    /// Cases whose variant their runner does not have (it answered [`NOT_YET`]), by method.
    pub missing: BTreeMap<String, usize>,
}

/// Every case (`*.json` but `INDEX.json`) in `dir`, sorted.
pub fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|err| panic!("golden directory {}: {err}", dir.display()))
        .filter_map(|f| f.ok().map(|f| f.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter(|p| p.file_name().is_some_and(|n| n != "INDEX.json"))
        .collect();
    files.sort();
    files
}

/// Where a method's runner is: the module of the objective whose descriptor answers it, and
/// the runner (`burn_distill::objectives()` read by the caller).
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<(&'static str, Runner)>;

/// Runs the cases of `files` whose method an objective of the module `family` answers.
pub fn run(files: &[PathBuf], runners: Lookup, family: &str) -> Report {
    let mut report = Report::default();
    for path in files {
        match run_case(path, runners, family) {
            (_, Some(Outcome::Passed)) => report.passed += 1,
            (label, Some(Outcome::Failed(msg))) => report.failed.push(format!("{label}: {msg}")),
            (method, Some(Outcome::NotImplemented)) => {
                *report.missing.entry(method).or_default() += 1
            }
            (_, None) => {}
        }
    }
    report
}

/// `loss` on the embedding tap of `feat_student` / `feat_teacher` (teacher attached), checked
/// with both gradients.
pub fn on_embedding(case: &Case, loss: &dyn Loss) -> Result<(), String> {
    let (s, t) = (tap(case, "feat_student")?, tap(case, "feat_teacher")?);
    let input = DistillInput::features_only()
        .feature("embedding", s.clone(), t.clone())
        .attach_teacher();
    let out = loss.forward(&input).map_err(e)?;
    case.check(out, &[("feat_student", s), ("feat_teacher", t)])
        .map(drop)
}

/// `loss` on the tracked logits `logits_student` / `logits_teacher` (teacher attached), checked
/// with both gradients.
pub fn on_logits(case: &Case, loss: &dyn Loss) -> Result<(), String> {
    let (s, t) = logits(case)?;
    let input = DistillInput::new(s.clone(), t.clone()).attach_teacher();
    case.check(loss.forward(&input).map_err(e)?, &as_taps(&s, &t))
        .map(drop)
}
