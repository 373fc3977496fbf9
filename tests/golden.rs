//! Every reference case in the golden directory, computed with the original authors' PyTorch
//! code: loss and gradients must agree within the tolerance of the case's dtype.
//!
//! The directory is `../shared/golden` beside the crate, or `BURN_DISTILL_GOLDEN_DIR`. Each
//! `*.json` case is dispatched on its `method`; a method this crate does not know fails the
//! test (after every other case has run and been reported).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::optim::SgdConfig;
use burn::tensor::{DType, Gradients, Int, Tensor};
use burn_distill::curriculum::CtkdConfig;
use burn_distill::feature::{AtConfig, HintConfig, MgdConfig, MgdMask};
use burn_distill::logit::{DistConfig, ProbMseConfig, Standardized};
use burn_distill::meta::{Batch, MetaTeacherConfig, PilotRate};
use burn_distill::prelude::*;
use burn_distill::relation::{DlkdConfig, PktConfig, RkdConfig, SpConfig};
use burn_distill::{Feature, Views};
use common::*;
use serde_json::Value;

/// One parsed case.
struct Case {
    name: String,
    dtype: DType,
    params: Value,
    inputs: BTreeMap<String, (Vec<usize>, Vec<f64>)>,
    loss: Option<f64>,
    grads: BTreeMap<String, Vec<f64>>,
    outputs: BTreeMap<String, Vec<f64>>,
}

fn number(v: &Value) -> f64 {
    match v {
        Value::String(s) => s.parse().expect("'nan', 'inf' or '-inf'"),
        v => v.as_f64().expect("a number"),
    }
}

fn array(v: &Value) -> (Vec<usize>, Vec<f64>) {
    let shape = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let data = v["data"].as_array().unwrap().iter().map(number).collect();
    (shape, data)
}

impl Case {
    fn parse(name: String, v: &Value) -> Self {
        let map = |key: &str| -> BTreeMap<String, (Vec<usize>, Vec<f64>)> {
            v[key]
                .as_object()
                .map(|o| o.iter().map(|(k, a)| (k.clone(), array(a))).collect())
                .unwrap_or_default()
        };
        Self {
            name,
            dtype: match v["dtype"].as_str() {
                Some("float32") => DType::F32,
                _ => DType::F64,
            },
            params: v["params"].clone(),
            inputs: map("inputs"),
            loss: (!v["loss"].is_null()).then(|| number(&v["loss"])),
            grads: map("grads").into_iter().map(|(k, (_, d))| (k, d)).collect(),
            outputs: map("outputs")
                .into_iter()
                .map(|(k, (_, d))| (k, d))
                .collect(),
        }
    }

    fn param(&self, key: &str) -> f64 {
        self.params[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: param {key}", self.name))
    }

    /// The float input `name` as a tracked leaf of the case's dtype.
    fn leaf<const D: usize>(&self, name: &str) -> Tensor<D> {
        let (shape, data) = &self.inputs[name];
        let shape: [usize; D] = shape.as_slice().try_into().expect("rank");
        tensor(data.clone(), shape, self.dtype).require_grad()
    }

    fn targets(&self, name: &str) -> Tensor<1, Int> {
        ints(self.inputs[name].1.iter().map(|&v| v as i64).collect())
    }

    /// (relative, absolute) tolerance of the dtype, as the golden README gives it.
    fn tolerance(&self) -> (f64, f64) {
        match self.dtype {
            DType::F32 => (1e-5, 1e-6),
            _ => (1e-10, 1e-12),
        }
    }

    /// Compares the loss, and the gradient of every recorded input found in `leaves`.
    fn check(&self, out: LossOutput, leaves: &[(&str, &Tensor<2>)]) -> Result<Gradients, String> {
        let (rel, abs) = self.tolerance();
        let got = out.value();
        match self.loss {
            Some(want) if want.is_finite() => close("loss", &[got], &[want], rel, abs)?,
            _ if !got.is_finite() => return Err(format!("loss {got} is not finite")),
            _ => {}
        }
        let grads = out.total.backward();
        for (name, want) in &self.grads {
            let Some((_, leaf)) = leaves.iter().find(|(n, _)| n == name) else {
                // a gradient of a non-logit leaf (e.g. θ) is checked by the caller
                if name.starts_with("logits") {
                    return Err(format!("no leaf for recorded gradient {name}"));
                }
                continue;
            };
            let g = leaf
                .grad(&grads)
                .ok_or_else(|| format!("no gradient for {name}"))?;
            close(&format!("d/d{name}"), &values(g), want, rel, abs)?;
        }
        Ok(grads)
    }
}

/// One MetaDistil round on the case's tiny linear student and tanh teacher: the pilot's quiz
/// loss, d quiz / d teacher and d quiz / d student, to 1e-6 relative (the finite-difference
/// meta-gradient against the authors' second-order autograd).
fn meta_round(method: &str, case: &Case) -> Result<(), String> {
    let e = |err: DistillError| err.to_string();
    let layer = |w: &str, b: &str| torch_linear(&case.inputs[w].1, &case.inputs[b].1, case.dtype);
    let student = Net {
        layers: vec![layer("s_W", "s_b")],
    };
    let teacher = Net {
        layers: vec![layer("t_W1", "t_b1"), layer("t_W2", "t_b2")],
    };
    let temperature = case.param("temperature");
    let loss = if method == "metadistil_meta_grad_dkd" {
        let dkd = DkdConfig::new()
            .with_alpha(case.param("dkd_alpha"))
            .with_beta(case.param("dkd_beta"))
            .with_temperature(temperature)
            .with_warmup_epochs(0)
            .init()
            .map_err(e)?;
        CrossEntropy::new().weighted(case.param("ce_weight")) + dkd.weighted(1.0)
    } else {
        let alpha = case.param("alpha");
        let kd = KdConfig::new()
            .with_temperature(temperature)
            .init()
            .map_err(e)?;
        CrossEntropy::new().weighted(1.0 - alpha) + kd.weighted(alpha)
    };
    let meta = MetaTeacherConfig::new()
        .with_pilot_rate(PilotRate::Fixed(case.param("eta")))
        .with_pilot_steps(case.param("pilot_steps") as usize)
        .init(teacher, SgdConfig::new().init(), loss)
        .map_err(e)?;
    let batch = |x: &str, y: &str| Batch::new(case.leaf::<2>(x).detach(), case.targets(y));
    let g = meta
        .meta_gradient(
            &student,
            &batch("x", "y"),
            &batch("xq", "yq"),
            Progress::epoch(0, 1),
            0.0,
        )
        .map_err(e)?;
    let (rel, abs) = (1e-6, 1e-10);
    close(
        "quiz loss",
        &[g.quiz_loss],
        &[case.loss.ok_or("no loss")?],
        rel,
        abs,
    )?;
    let layers = [
        (&meta.teacher().layers[0], &g.teacher, "t_W1", "t_b1"),
        (&meta.teacher().layers[1], &g.teacher, "t_W2", "t_b2"),
        (&student.layers[0], &g.student, "s_W", "s_b"),
    ];
    for (layer, grads, w, b) in layers {
        let (gw, gb) = torch_grads(layer, grads);
        close(&format!("d quiz/d{w}"), &gw, &case.grads[w], rel, abs)?;
        close(&format!("d quiz/d{b}"), &gb, &case.grads[b], rel, abs)?;
    }
    Ok(())
}

/// A feature tap of any rank from the case's input `name` (tracked).
fn tap(case: &Case, name: &str) -> Feature {
    match case.inputs[name].0.len() {
        4 => Feature::Map(case.leaf::<4>(name)),
        _ => Feature::Embedding(case.leaf::<2>(name)),
    }
}

/// A relational objective on the taps `feat_student` and `feat_teacher` (teacher attached):
/// the loss and the gradient of each recorded tap.
fn relational(case: &Case, loss: &dyn Loss) -> Result<(), String> {
    let (s, t) = (tap(case, "feat_student"), tap(case, "feat_teacher"));
    let input = DistillInput::features_only()
        .feature("embedding", s.clone(), t.clone())
        .attach_teacher();
    let out = loss.forward(&input).map_err(|e| e.to_string())?;
    check_taps(case, out, &[("feat_student", &s), ("feat_teacher", &t)]).map(|_| ())
}

/// Compares the loss and the gradients of the recorded taps; returns the gradients.
fn check_taps(
    case: &Case,
    out: LossOutput,
    taps: &[(&str, &Feature)],
) -> Result<Gradients, String> {
    let (rel, abs) = case.tolerance();
    close(
        "loss",
        &[out.value()],
        &[case.loss.ok_or("no loss")?],
        rel,
        abs,
    )?;
    let grads = out.total.backward();
    for (name, f) in taps {
        let Some(want) = case.grads.get(*name) else {
            continue;
        };
        let g = match f {
            Feature::Map(t) => t.grad(&grads).map(values),
            Feature::Embedding(t) => t.grad(&grads).map(values),
        }
        .ok_or_else(|| format!("no gradient for {name}"))?;
        close(&format!("d/d{name}"), &g, want, rel, abs)?;
    }
    Ok(grads)
}

/// DLKD's three parts, each with the case's head weights (torch layout) and the other weights
/// zero; the gradients of the taps and of every head parameter.
fn dlkd(method: &str, case: &Case) -> Result<(), String> {
    let e = |err: DistillError| err.to_string();
    let (s, t) = (tap(case, "feat_student"), tap(case, "feat_teacher"));
    let (ds, dt) = (
        case.inputs["feat_student"].0[1],
        case.inputs["feat_teacher"].0[1],
    );
    let rows = case.inputs["feat_student"].0[0];
    let only = |w: &str| if method.ends_with(w) { 1.0 } else { 0.0 };
    let mut config = DlkdConfig::new(ds, dt)
        .with_ce_weight(0.0)
        .with_align_weight(only("align"))
        .with_corr_weight(only("corr"))
        .with_supcon_weight(only("supcon"));
    if let Some(tau) = case.params["temperature"].as_f64() {
        config = if method == "dlkd_corr" {
            config.with_corr_temperature(tau)
        } else {
            config.with_supcon_temperature(tau)
        };
    }
    if let Some(dim) = case.params["feat_dim"].as_u64() {
        config = config.with_embed_dim(dim as usize);
    }
    let mut dlkd = config.init(&device()).map_err(e)?;
    let linear = |w: &str, b: &str| torch_linear(&case.inputs[w].1, &case.inputs[b].1, case.dtype);
    let vector = |name: &str| burn::module::Param::from_tensor(case.leaf::<1>(name).detach());
    if method != "dlkd_supcon" {
        let head = if method == "dlkd_align" {
            &mut dlkd.align_head
        } else {
            &mut dlkd.corr_head
        };
        head.fc1 = linear("mlp_fc1_weight", "mlp_fc1_bias");
        head.fc2 = linear("mlp_fc2_weight", "mlp_fc2_bias");
        head.bn.gamma = vector("mlp_bn_weight");
        head.bn.beta = vector("mlp_bn_bias");
    } else {
        dlkd.embed_student.linear = linear("embed_s_weight", "embed_s_bias");
        dlkd.embed_teacher.linear = linear("embed_t_weight", "embed_t_bias");
    }
    let mut input = DistillInput::features_only()
        .feature("embedding", s.clone(), t.clone())
        .views(Views::image_major(rows / 4, 4))
        .attach_teacher();
    if method == "dlkd_supcon" {
        input = input.targets(case.targets("labels"));
    }
    let out = dlkd.forward(&input).map_err(e)?;
    let grads = check_taps(case, out, &[("feat_student", &s), ("feat_teacher", &t)])?;
    let gp = burn::optim::GradientsParams::from_grads(grads, &dlkd);
    let (rel, abs) = case.tolerance();
    let check_linear = |layer: &burn::nn::Linear, w: &str, b: &str| -> Result<(), String> {
        let (gw, gb) = torch_grads(layer, &gp);
        close(&format!("d/d{w}"), &gw, &case.grads[w], rel, abs)?;
        close(&format!("d/d{b}"), &gb, &case.grads[b], rel, abs)
    };
    if method == "dlkd_supcon" {
        check_linear(&dlkd.embed_student.linear, "embed_s_weight", "embed_s_bias")?;
        check_linear(&dlkd.embed_teacher.linear, "embed_t_weight", "embed_t_bias")?;
    } else {
        let head = if method == "dlkd_align" {
            &dlkd.align_head
        } else {
            &dlkd.corr_head
        };
        check_linear(&head.fc1, "mlp_fc1_weight", "mlp_fc1_bias")?;
        check_linear(&head.fc2, "mlp_fc2_weight", "mlp_fc2_bias")?;
        for (param, name) in [
            (&head.bn.gamma, "mlp_bn_weight"),
            (&head.bn.beta, "mlp_bn_bias"),
        ] {
            let g = gp
                .get::<1>(param.id)
                .ok_or(format!("no gradient for {name}"))?;
            close(
                &format!("d/d{name}"),
                &values(g),
                &case.grads[name],
                rel,
                abs,
            )?;
        }
    }
    Ok(())
}

/// A conv layer from the case's `[out, in, kh, kw]` weight and bias (burn's layout is torch's).
fn conv(case: &Case, w: &str, b: &str, into: &mut burn::nn::conv::Conv2d) {
    into.weight = burn::module::Param::from_tensor(case.leaf::<4>(w).detach());
    into.bias = Some(burn::module::Param::from_tensor(case.leaf::<1>(b).detach()));
}

/// Checks the gradients of a conv layer's weight and bias.
fn check_conv(
    case: &Case,
    gp: &burn::optim::GradientsParams,
    layer: &burn::nn::conv::Conv2d,
    w: &str,
    b: &str,
) -> Result<(), String> {
    let (rel, abs) = case.tolerance();
    let gw = gp
        .get::<4>(layer.weight.id)
        .ok_or(format!("no gradient for {w}"))?;
    let gb = gp
        .get::<1>(layer.bias.as_ref().unwrap().id)
        .ok_or(format!("no gradient for {b}"))?;
    close(&format!("d/d{w}"), &values(gw), &case.grads[w], rel, abs)?;
    close(&format!("d/d{b}"), &values(gb), &case.grads[b], rel, abs)
}

/// FitNet: the plain hint (no connector) and mdistiller's ConvReg connector with the case's
/// weights, batch norm in training mode.
fn fitnet(method: &str, case: &Case) -> Result<(), String> {
    let e = |err: DistillError| err.to_string();
    let (s, t) = (tap(case, "feat_student"), tap(case, "feat_teacher"));
    let shape = |name: &str| -> [usize; 3] { case.inputs[name].0[1..].try_into().unwrap() };
    let mut hint = HintConfig::new(shape("feat_student"), shape("feat_teacher"))
        .with_connector(method == "fitnet_convreg_mse")
        .init(&device())
        .map_err(e)?;
    if let Some(reg) = hint.connector.as_mut() {
        let burn_distill::feature::Connector::Conv(c) = &mut reg.conv else {
            return Err("a 1x1 connector expected".into());
        };
        conv(case, "conv_weight", "conv_bias", c);
        reg.bn.gamma = burn::module::Param::from_tensor(case.leaf::<1>("bn_weight").detach());
        reg.bn.beta = burn::module::Param::from_tensor(case.leaf::<1>("bn_bias").detach());
    }
    let input = DistillInput::features_only()
        .feature("feature", s.clone(), t.clone())
        .attach_teacher();
    let grads = check_taps(
        case,
        hint.forward(&input).map_err(e)?,
        &[("feat_student", &s), ("feat_teacher", &t)],
    )?;
    if let Some(reg) = &hint.connector {
        let gp = burn::optim::GradientsParams::from_grads(grads, &hint);
        let burn_distill::feature::Connector::Conv(c) = &reg.conv else {
            unreachable!()
        };
        check_conv(case, &gp, c, "conv_weight", "conv_bias")?;
        let (rel, abs) = case.tolerance();
        for (param, name) in [(&reg.bn.gamma, "bn_weight"), (&reg.bn.beta, "bn_bias")] {
            let g = gp
                .get::<1>(param.id)
                .ok_or(format!("no gradient for {name}"))?;
            close(
                &format!("d/d{name}"),
                &values(g),
                &case.grads[name],
                rel,
                abs,
            )?;
        }
    }
    Ok(())
}

/// MGD with the case's recorded mask and conv weights: loss and the gradients of both maps
/// and every conv parameter.
fn mgd(case: &Case) -> Result<(), String> {
    let e = |err: DistillError| err.to_string();
    let mask = if case.name.starts_with("mgd_det") {
        MgdMask::Spatial
    } else {
        MgdMask::Channel
    };
    let mut mgd = MgdConfig::new(
        case.param("student_channels") as usize,
        case.param("teacher_channels") as usize,
    )
    .with_mask(mask)
    .with_lambda(Some(case.param("lambda_mgd")))
    .with_alpha(Some(case.param("alpha_mgd")))
    .init(&device())
    .map_err(e)?;
    conv(
        case,
        "align_weight",
        "align_bias",
        mgd.align.as_mut().ok_or("an align conv expected")?,
    );
    conv(case, "gen0_weight", "gen0_bias", &mut mgd.generator.conv1);
    conv(case, "gen2_weight", "gen2_bias", &mut mgd.generator.conv2);
    let (s, t) = (case.leaf::<4>("preds_S"), case.leaf::<4>("preds_T"));
    let (shape, data) = &case.inputs["mask"];
    let m = tensor(
        data.clone(),
        shape.as_slice().try_into().unwrap(),
        case.dtype,
    );
    let loss = mgd.forward_with_mask(s.clone(), t.clone(), m);
    let out = LossOutput::single("mgd", loss);
    let grads = check_taps(
        case,
        out,
        &[("preds_S", &Feature::Map(s)), ("preds_T", &Feature::Map(t))],
    )?;
    let gp = burn::optim::GradientsParams::from_grads(grads, &mgd);
    check_conv(
        case,
        &gp,
        mgd.align.as_ref().unwrap(),
        "align_weight",
        "align_bias",
    )?;
    check_conv(case, &gp, &mgd.generator.conv1, "gen0_weight", "gen0_bias")?;
    check_conv(case, &gp, &mgd.generator.conv2, "gen2_weight", "gen2_bias")
}

/// Runs one case; `Ok(false)` when the crate has no objective for its method yet.
fn run(method: &str, case: &Case) -> Result<bool, String> {
    let e = |err: DistillError| err.to_string();
    match method {
        // mdistiller's kd_loss and MetaDistil's CustomDistillKL are the same formula
        "kd" | "kd_custom_kl" => {
            let (s, t) = (case.leaf("logits_student"), case.leaf("logits_teacher"));
            let kd = KdConfig::new()
                .with_temperature(case.param("temperature"))
                .init()
                .map_err(e)?;
            let input = DistillInput::new(s.clone(), t.clone()).attach_teacher();
            case.check(
                kd.forward(&input).map_err(e)?,
                &[("logits_student", &s), ("logits_teacher", &t)],
            )?;
        }
        "dkd" => {
            let (s, t) = (case.leaf("logits_student"), case.leaf("logits_teacher"));
            let dkd = DkdConfig::new()
                .with_alpha(case.param("alpha"))
                .with_beta(case.param("beta"))
                .with_temperature(case.param("temperature"))
                .with_warmup_epochs(0)
                .init()
                .map_err(e)?;
            let input = DistillInput::new(s.clone(), t.clone())
                .targets(case.targets("target"))
                .attach_teacher();
            let grads = case.check(dkd.forward(&input).map_err(e)?, &[("logits_student", &s)])?;
            // the reference's teacher gradient is NaN (not recorded): ours must be finite
            let gt = values(t.grad(&grads).ok_or("no teacher gradient")?);
            if gt.iter().any(|v| !v.is_finite()) {
                return Err("teacher gradient is not finite".into());
            }
        }
        "dist" => {
            let (s, t) = (case.leaf("logits_student"), case.leaf("logits_teacher"));
            let dist = DistConfig::new()
                .with_beta(case.param("beta"))
                .with_gamma(case.param("gamma"))
                .with_temperature(case.param("tau"))
                .with_eps(case.param("eps"))
                .init()
                .map_err(e)?;
            let input = DistillInput::new(s.clone(), t.clone()).attach_teacher();
            case.check(
                dist.forward(&input).map_err(e)?,
                &[("logits_student", &s), ("logits_teacher", &t)],
            )?;
        }
        // alpha · CE(s) + (1 − alpha) · KD on standardised logits
        "logit_std_kd" => {
            let (s, t) = (case.leaf("logits_student"), case.leaf("logits_teacher"));
            let kd = KdConfig::new()
                .with_temperature(case.param("temperature"))
                .init()
                .map_err(e)?;
            let kd = Standardized::new(kd)
                .with_eps(case.param("eps"))
                .map_err(e)?;
            let loss =
                CrossEntropy::new().weighted(case.param("alpha")) + kd.weighted(case.param("beta"));
            let input = DistillInput::new(s.clone(), t.clone())
                .targets(case.targets("target"))
                .attach_teacher();
            case.check(
                loss.forward(&input).map_err(e)?,
                &[("logits_student", &s), ("logits_teacher", &t)],
            )?;
        }
        // CTKD's λ schedule: CosineDecay(0, -1, 10) at CTKD's (1-based) epochs
        "ctkd_lambda_schedule" => {
            let ctkd = CtkdConfig::new()
                .with_lambda_start(case.param("decay_max"))
                .with_lambda_end(case.param("decay_min"))
                .with_lambda_epochs(case.param("decay_loops") as usize)
                .init(KdConfig::new().init().map_err(e)?, &device())
                .map_err(e)?;
            let (rel, abs) = case.tolerance();
            let epochs = &case.inputs["epoch"].1;
            // the input epoch is CTKD's; ours counts from 0
            let got: Vec<f64> = epochs
                .iter()
                .map(|&ep| ctkd.lambda(Progress::epoch((ep as usize).saturating_sub(1), 240)))
                .collect::<Result<_, _>>()
                .map_err(e)?;
            let want = &case.outputs["cosine_decay"];
            // epoch 0 does not exist in CTKD (λ = cosine(0) = 0 there, also ours at epoch 0)
            close("lambda", &got[1..], &want[1..], rel, abs)?;
            close(
                "lambda at start",
                &[ctkd.lambda(Progress::epoch(0, 240)).map_err(e)?],
                &[want[1]],
                rel,
                abs,
            )?;
        }
        "ctkd_kd" => {
            let (s, t) = (case.leaf("logits_student"), case.leaf("logits_teacher"));
            let theta = case.leaf::<1>("theta");
            let lambda = case.param("lambda");
            let ctkd = CtkdConfig::new()
                .with_t_start(case.param("t_start"))
                .with_t_range(case.param("t_end"))
                .with_lambda_start(lambda)
                .with_lambda_end(lambda)
                .init(KdConfig::new().init().map_err(e)?, &device())
                .map_err(e)?
                .with_theta(theta.clone());
            let (rel, abs) = case.tolerance();
            close(
                "temperature",
                &[ctkd.temperature()],
                &case.outputs["temperature"],
                rel,
                abs,
            )?;
            let input = DistillInput::new(s.clone(), t.clone())
                .attach_teacher()
                .progress(Progress::epoch(0, 1));
            let grads = case.check(
                ctkd.forward(&input).map_err(e)?,
                &[("logits_student", &s), ("logits_teacher", &t)],
            )?;
            let g = values(ctkd.theta().grad(&grads).ok_or("no θ gradient")?);
            close("d/dtheta (reversed)", &g, &case.grads["theta"], rel, abs)?;
        }
        "metadistil_meta_grad" | "metadistil_meta_grad_dkd" => meta_round(method, case)?,
        "rkd" | "pkt" | "sp" => {
            let loss: Box<dyn Loss> = match method {
                "rkd" => RkdConfig::new()
                    .with_distance_weight(case.param("distance_weight"))
                    .with_angle_weight(case.param("angle_weight"))
                    .with_eps(case.param("eps"))
                    .init()
                    .map_err(e)?
                    .boxed(),
                "pkt" => PktConfig::new()
                    .with_eps(case.param("eps"))
                    .init()
                    .map_err(e)?
                    .boxed(),
                _ => SpConfig::new().init().map_err(e)?.boxed(),
            };
            relational(case, loss.as_ref())?;
        }
        "dlkd_align" | "dlkd_corr" | "dlkd_supcon" => dlkd(method, case)?,
        "prob_mse_T2" => {
            let (s, t) = (case.leaf("logits_student"), case.leaf("logits_teacher"));
            let loss = ProbMseConfig::new()
                .with_temperature(case.param("temperature"))
                .init()
                .map_err(e)?;
            let input = DistillInput::new(s.clone(), t.clone()).attach_teacher();
            case.check(
                loss.forward(&input).map_err(e)?,
                &[("logits_student", &s), ("logits_teacher", &t)],
            )?;
        }
        "at" => {
            let stages: Vec<String> = if case.inputs.contains_key("feat_student") {
                vec![String::new()]
            } else {
                (0..)
                    .map(|i| format!("_{i}"))
                    .take_while(|k| case.inputs.contains_key(&format!("feat_student{k}")))
                    .collect()
            };
            let mut input = DistillInput::features_only().attach_teacher();
            let mut taps = Vec::new();
            for k in &stages {
                let (fs, ft) = (format!("feat_student{k}"), format!("feat_teacher{k}"));
                let (s, t) = (tap(case, &fs), tap(case, &ft));
                input = input.feature(format!("stage{k}"), s.clone(), t.clone());
                taps.push((fs, s));
                taps.push((ft, t));
            }
            let at = AtConfig::new()
                .with_features(stages.iter().map(|k| format!("stage{k}")).collect())
                .with_p(case.param("p"))
                .with_weight(1.0)
                .init()
                .map_err(e)?;
            let refs: Vec<(&str, &Feature)> = taps.iter().map(|(n, f)| (n.as_str(), f)).collect();
            check_taps(case, at.forward(&input).map_err(e)?, &refs)?;
        }
        "fitnet_mse" | "fitnet_convreg_mse" => fitnet(method, case)?,
        "mgd" => mgd(case)?,
        _ => return Ok(false),
    }
    Ok(true)
}

#[test]
fn golden_cases() {
    // heads built by a config (DLKD's batch norm) take the device's default float dtype: the
    // cases are mostly f64, and f32 cases give their dtype explicitly
    burn::tensor::Device::default()
        .configure(burn::tensor::FloatDType::F64)
        .expect("no tensor exists yet");
    // KD, DKD and DCKD objectives built with their defaults take the fused kernels here
    assert!(burn_distill::fused::supported(&device()));
    let dir = std::env::var_os("BURN_DISTILL_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("golden directory {}: {err}", dir.display()))
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter(|p| p.file_name().is_some_and(|n| n != "INDEX.json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no cases in {}", dir.display());

    let (mut passed, mut failed, mut missing) = (0, Vec::new(), BTreeMap::<String, usize>::new());
    for path in &files {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        let method = v["method"].as_str().expect("method").to_string();
        let case = Case::parse(name.clone(), &v);
        match run(&method, &case) {
            Ok(true) => passed += 1,
            Ok(false) => *missing.entry(method).or_default() += 1,
            Err(msg) => failed.push(format!("{name} ({method}): {msg}")),
        }
    }
    let skipped: usize = missing.values().sum();
    println!(
        "golden: {passed} passed, {} failed, {skipped} not yet implemented, of {} cases in {}",
        failed.len(),
        files.len(),
        dir.display()
    );
    for (method, count) in &missing {
        println!("golden: method `{method}` not implemented yet ({count} cases)");
    }
    assert!(
        failed.is_empty(),
        "golden mismatches:\n{}",
        failed.join("\n")
    );
    assert!(passed > 0, "no golden case ran");
    assert!(
        missing.is_empty(),
        "golden cases of methods this crate does not implement: {missing:?}"
    );
}
