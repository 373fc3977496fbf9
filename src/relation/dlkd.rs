//! DLKD: dual-level knowledge distillation (alignment + correlation + supervised contrast).

use crate::registry::{Descriptor, moved};
use burn::config::Config;
use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::head::{Embed, MlpHead};
use crate::check::{check_non_negative, check_temperature};
use crate::cross_entropy::cross_entropy_per_sample;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};
use crate::math::{cosine_matrix, eye, kl_rows, l2_normalize};

/// Configuration of [`Dlkd`]; the defaults are the paper's CIFAR settings.
#[derive(Config, Debug)]
pub struct DlkdConfig {
    /// Width of the student's embedding (the tap).
    pub student_dim: usize,
    /// Width of the teacher's embedding.
    pub teacher_dim: usize,
    /// The feature tap: penultimate embeddings `[N, D]` (a map is flattened).
    #[config(default = "\"embedding\".to_string()")]
    pub feature: String,
    /// Width of the contrastive embeddings.
    #[config(default = 128)]
    pub embed_dim: usize,
    /// Temperature of the correlation softmax.
    #[config(default = 0.5)]
    pub corr_temperature: f64,
    /// Temperature τ' of the supervised contrastive loss.
    #[config(default = 0.07)]
    pub supcon_temperature: f64,
    /// Base temperature of the contrastive loss, which is scaled by `τ' / base` (SupCon's
    /// convention; equal to τ' by default, so the factor is 1).
    #[config(default = 0.07)]
    pub supcon_base_temperature: f64,
    /// Positives of the contrastive loss: samples of the same label (`true`, SupCon; needs the
    /// targets), or only the other network's embedding of the same row (`false`, SimCLR, as
    /// the reference's `SupConLoss(labels=None)`; no targets needed).
    #[config(default = true)]
    pub supcon_labels: bool,
    /// γ: weight of the cross-entropy on the student's logits (0: no logits needed).
    #[config(default = 1.0)]
    pub ce_weight: f64,
    /// α: weight of the correlation term.
    #[config(default = 50.0)]
    pub corr_weight: f64,
    /// β: weight of the supervised contrastive term.
    #[config(default = 1.0)]
    pub supcon_weight: f64,
    /// δ: weight of the alignment term.
    #[config(default = 20.0)]
    pub align_weight: f64,
}

impl DlkdConfig {
    /// Validates the temperatures and weights and builds the heads on `device`: the alignment
    /// head `s → 16·t → t`, the correlation head `s → s → s`, the embeddings `s → e`, `t → e`.
    pub fn init(&self, device: &Device) -> Result<Dlkd, DistillError> {
        check_temperature(self.corr_temperature)?;
        check_temperature(self.supcon_temperature)?;
        check_temperature(self.supcon_base_temperature)?;
        for (field, v) in [
            ("ce_weight", self.ce_weight),
            ("corr_weight", self.corr_weight),
            ("supcon_weight", self.supcon_weight),
            ("align_weight", self.align_weight),
        ] {
            check_non_negative(Dlkd::NAME, field, v)?;
        }
        if self.ce_weight + self.corr_weight + self.supcon_weight + self.align_weight == 0.0 {
            return Err(DistillError::config(
                Dlkd::NAME,
                "weights",
                0,
                "at least one must be > 0",
            ));
        }
        for (field, v) in [
            ("student_dim", self.student_dim),
            ("teacher_dim", self.teacher_dim),
            ("embed_dim", self.embed_dim),
        ] {
            crate::check::check_count(Dlkd::NAME, field, v, 1)?;
        }
        let (s, t) = (self.student_dim, self.teacher_dim);
        Ok(Dlkd {
            align_head: MlpHead::new(s, 16 * t, t, device),
            corr_head: MlpHead::new(s, s, s, device),
            embed_student: Embed::new(s, self.embed_dim, device),
            embed_teacher: Embed::new(t, self.embed_dim, device),
            config: self.clone(),
        })
    }
}

/// DLKD (Ding, Yang, Luo, Krovi, Feng, TNNLS 2024, *Dual-level Knowledge Distillation via
/// Knowledge Alignment and Correlation*; official code ifding/DLKD), on penultimate
/// embeddings `fˢ`, `fᵗ`:
///
/// ```text
/// L = γ·CE + α·L_corr + β·L_supcon + δ·L_align
/// L_align  = 2 − 2·meanᵢ ⟨ĥ(fˢᵢ), f̂ᵗᵢ⟩                     ĥ: MLP head, ^: unit length
/// L_corr   = KL_batchmean(softmax(Cᵗ/τ) ‖ softmax(Cˢ/τ))    C = cos(augmented rows, plain rows)
/// L_supcon = (τ'/τ_b)·SupCon_τ'([e_s(fˢ); e_t(fᵗ)], labels) positives: same label, other row
/// ```
///
/// with τ = 0.5, τ' = 0.07 and (γ, α, β, δ) = (1, 50, 1, 20). The correlation compares each
/// augmented view with every plain view (the student through its own MLP head, the teacher raw
/// and detached); the layout comes from [`DistillInput::views`](crate::DistillInput::views),
/// and a batch with no layout (or no augmented row) correlates every row with every row.
/// SupCon reads the targets; with `supcon_labels = false` it is SimCLR's form (each row's
/// only positive is the other network's embedding of it) and needs none. Terms `"ce"`, `"dlkd/corr"`, `"dlkd/supcon"`, `"dlkd/align"`
/// (weighted; a zero weight skips its term). All heads are in this module: put it beside the
/// student in the module the optimizer updates.
#[derive(Module, Debug)]
pub struct Dlkd {
    /// The alignment head `s → 16·t → t`.
    pub align_head: MlpHead,
    /// The correlation head `s → s → s`.
    pub corr_head: MlpHead,
    /// The student's contrastive embedding `s → e`.
    pub embed_student: Embed,
    /// The teacher's contrastive embedding `t → e`.
    pub embed_teacher: Embed,
    #[module(skip)]
    config: DlkdConfig,
}

/// `[rows]` as an index tensor.
fn index(rows: &[usize], device: &Device) -> Tensor<1, Int> {
    let data: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    Tensor::from_data(TensorData::new(data, [rows.len()]), device)
}

impl Dlkd {
    /// `L_align` for student and teacher embeddings `[N, s]`, `[N, t]`.
    pub fn align_loss(&self, student: Tensor<2>, teacher: Tensor<2>) -> Tensor<1> {
        let s = l2_normalize(self.align_head.forward(student), 1e-12);
        let t = l2_normalize(teacher, 1e-12);
        -(s * t).sum_dim(1).mean() * 2.0 + 2.0
    }

    /// `L_corr` between the `anchors` rows and the `references` rows of each side.
    pub fn correlation_loss(
        &self,
        student: Tensor<2>,
        teacher: Tensor<2>,
        anchors: &[usize],
        references: &[usize],
    ) -> Tensor<1> {
        let dev = student.device();
        let (a, r) = (index(anchors, &dev), index(references, &dev));
        let s = self.corr_head.forward(student);
        let t = teacher;
        let sim = |x: Tensor<2>| {
            cosine_matrix(x.clone().select(0, a.clone()), x.select(0, r.clone()), 1e-8)
                * (1.0 / self.config.corr_temperature)
        };
        let kl = kl_rows(log_softmax(sim(t), 1), log_softmax(sim(s), 1));
        kl.sum() * (1.0 / anchors.len() as f64)
    }

    /// `L_supcon` for student and teacher embeddings and per-row labels `[N]` (distinct labels
    /// `0..N` give SimCLR's form: the positives of a row are its other embedding).
    pub fn supcon_loss(
        &self,
        student: Tensor<2>,
        teacher: Tensor<2>,
        labels: Tensor<1, Int>,
    ) -> Tensor<1> {
        let n = labels.dims()[0];
        let anchors = Tensor::cat(
            vec![
                self.embed_student.forward(student),
                self.embed_teacher.forward(teacher),
            ],
            0,
        );
        let sim =
            anchors.clone().matmul(anchors.transpose()) * (1.0 / self.config.supcon_temperature);
        let logits = sim.clone() - sim.detach().max_dim(1);
        let labels = Tensor::cat(vec![labels.clone(), labels], 0);
        let same: Tensor<2, Bool> = labels
            .clone()
            .unsqueeze_dim::<2>(1)
            .equal(labels.unsqueeze_dim::<2>(0));
        let self_pair = eye(2 * n, &logits.device());
        let positive = same
            .bool_and(self_pair.clone().bool_not())
            .float()
            .cast(logits.dtype());
        let others = logits.clone().exp().mask_fill(self_pair, 0.0).sum_dim(1);
        let log_prob = logits - (others + 1e-7).log();
        let mean_positive = (positive.clone() * log_prob).sum_dim(1) / positive.sum_dim(1);
        -mean_positive.mean()
            * (self.config.supcon_temperature / self.config.supcon_base_temperature)
    }
}

crate::loss::objective!(Dlkd, "dlkd");

impl Loss for Dlkd {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let checked = input.of(Dlkd::NAME).within(BOUND).for_module(self);
        let (s, t) = checked.rows(&c.feature, 2)?;
        let [n, ds] = s.dims();
        let dt = t.dims()[1];
        if ds != c.student_dim || dt != c.teacher_dim {
            return Err(DistillError::ShapeMismatch {
                objective: Dlkd::NAME.into(),
                what: format!("tap `{}` widths (student, teacher)", c.feature),
                expected: vec![c.student_dim, c.teacher_dim],
                actual: vec![ds, dt],
            });
        }
        let mut terms = Vec::new();
        if c.ce_weight > 0.0 {
            let z = checked.student_logits()?;
            if z.dims()[0] != n {
                return Err(DistillError::ShapeMismatch {
                    objective: Dlkd::NAME.into(),
                    what: "student logits (one row per tap row)".into(),
                    expected: vec![n, z.dims()[1]],
                    actual: z.dims().to_vec(),
                });
            }
            let y = checked.targets(n, z.dims()[1])?;
            terms.push((
                "ce".into(),
                cross_entropy_per_sample(z, y, 0.0).mean() * c.ce_weight,
            ));
        }
        if c.corr_weight > 0.0 {
            let all: Vec<usize> = (0..n).collect();
            let (anchors, references) = match checked.views()? {
                Some(v) if !v.augmented_rows().is_empty() => (v.augmented_rows(), v.plain_rows()),
                _ => (all.clone(), all),
            };
            let corr = self.correlation_loss(s.clone(), t.clone(), &anchors, &references);
            terms.push((format!("{}/corr", Dlkd::NAME), corr * c.corr_weight));
        }
        if c.supcon_weight > 0.0 {
            let y = match c.supcon_labels {
                true => checked.targets(n, i64::MAX as usize)?,
                false => Tensor::arange(0..n as i64, &s.device()),
            };
            let supcon = self.supcon_loss(s.clone(), t.clone(), y);
            terms.push((format!("{}/supcon", Dlkd::NAME), supcon * c.supcon_weight));
        }
        if c.align_weight > 0.0 {
            terms.push((
                format!("{}/align", Dlkd::NAME),
                self.align_loss(s, t) * c.align_weight,
            ));
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
    items: &["Dlkd"],
    paper: "Ding et al., TNNLS 2024, *Dual-level KD via Knowledge Alignment and Correlation*",
    doc: "dlkd.md",
    bound: Some(BOUND),
    example: None,
    learnable: Some(|r, dev, dtype| {
        Ok(moved(
            DlkdConfig::new(4, 5).with_embed_dim(3).init(r)?,
            dev,
            dtype,
        ))
    }),
    twins: None,
    method: Some(
        crate::registry::method!(learnable Dlkd = relation::DlkdConfig(student_dim = 16, teacher_dim = 32)),
    ),
    golden: crate::registry::golden!["dlkd_align" => golden::dlkd, "dlkd_corr" => golden::dlkd, "dlkd_supcon" => golden::dlkd],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// DLKD's three parts, each with the case's head weights (torch layout) and the other weights
    /// zero; the gradients of the taps and of every head parameter. SupCon without `labels` is
    /// SimCLR's form.
    pub(crate) fn dlkd(case: &Case) -> Result<(), String> {
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
}
