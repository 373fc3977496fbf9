//! SSKD: knowledge distillation meets self-supervision (rotated views, contrastive heads).

use crate::registry::Descriptor;
use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::check::{check_count, check_fraction, check_non_negative, check_temperature};
use crate::cross_entropy::cross_entropy_per_sample;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};
use crate::math::{cosine_matrix, kl_rows};

/// SSKD's self-supervision head: `Linear(D, D) → ReLU → Linear(D, D)` on a network's
/// penultimate features (torchdistill's `SSWrapper4SSKD`).
#[derive(Module, Debug)]
pub struct SsHead {
    /// First layer.
    pub fc1: Linear,
    /// Activation.
    pub relu: Relu,
    /// Second layer.
    pub fc2: Linear,
}

impl SsHead {
    /// A head of width `dim` on `device`.
    pub fn new(dim: usize, device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(dim, dim).init(device),
            relu: Relu::new(),
            fc2: LinearConfig::new(dim, dim).init(device),
        }
    }

    /// `[N, D]` → `[N, D]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(self.relu.forward(self.fc1.forward(x)))
    }
}

/// The rows of a batch of `4·B` rows, image-major (row `4i` is image `i`, rows `4i+1..4i+3` its
/// rotations), split into the plain rows `[B]` and the rotated ones `[3B]`.
fn views(n: usize, device: &Device) -> (Tensor<1, Int>, Tensor<1, Int>) {
    let ints = |v: Vec<i64>| {
        let len = v.len();
        Tensor::<1, Int>::from_data(TensorData::new(v, [len]), device)
    };
    let plain = (0..n as i64).filter(|r| r % 4 == 0).collect();
    let rotated = (0..n as i64).filter(|r| r % 4 != 0).collect();
    (ints(plain), ints(rotated))
}

/// The cosine similarity of every rotated row's head output with every plain row's,
/// `[3B, B]`: SSKD's contrastive scores (rotated view `j` belongs to image `j / 3`).
pub fn view_similarities(head_outputs: Tensor<2>) -> Tensor<2> {
    let n = head_outputs.dims()[0];
    let (plain, rotated) = views(n, &head_outputs.device());
    cosine_matrix(
        head_outputs.clone().select(0, rotated),
        head_outputs.select(0, plain),
        1e-8,
    )
}

/// SSKD's first stage for the teacher (torchdistill's `AuxSSKDLoss`): the cross-entropy of
/// [`view_similarities`] against each rotated view's own image — its head learns to recognise
/// which image a rotation came from.
pub fn view_contrast_loss(head_outputs: Tensor<2>) -> Tensor<1> {
    let scores = view_similarities(head_outputs);
    let rows = scores.dims()[0];
    let own = (0..rows as i64).map(|j| j / 3).collect::<Vec<_>>();
    let own = Tensor::<1, Int>::from_data(TensorData::new(own, [rows]), &scores.device());
    cross_entropy_per_sample(scores, own, 0.0).mean()
}

/// The rows SSKD distils from (its "error level ranking"): every row where the teacher ranks
/// the right answer first, and of the others the `⌊wrong · ratio⌋` whose right answer it ranks
/// highest (a stable order: ties keep the row order). `rank[j]` is the number of answers the
/// teacher scores above the right one.
pub fn ranked_rows(rank: &[i64], ratio: f64) -> Vec<i64> {
    let wrong = rank.iter().filter(|&&r| r > 0).count();
    let keep = rank.len() - wrong + (wrong as f64 * ratio) as usize;
    let mut order: Vec<usize> = (0..rank.len()).collect();
    order.sort_by_key(|&j| rank[j]);
    let mut kept: Vec<i64> = order[..keep].iter().map(|&j| j as i64).collect();
    kept.sort_unstable();
    kept
}

/// How many of each row's scores are above the score of its right answer `answer[j]`.
fn ranks(scores: Tensor<2>, answer: Tensor<1, Int>) -> Vec<i64> {
    let dims = scores.dims();
    let right = scores.clone().gather(1, answer.unsqueeze_dim(1));
    scores
        .greater(right.expand(dims))
        .int()
        .sum_dim(1)
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap_or_default()
}

/// Configuration of [`Sskd`]; the defaults are the reference's (xuguodong03/SSKD, torchdistill).
#[derive(Config, Debug)]
pub struct SskdConfig {
    /// The student's penultimate width.
    pub student_dim: usize,
    /// The teacher's penultimate width.
    pub teacher_dim: usize,
    /// The feature tap holding the penultimate features.
    #[config(default = "\"embedding\".to_string()")]
    pub feature: String,
    /// Temperature of the KD term on the plain views.
    #[config(default = 4.0)]
    pub kl_temperature: f64,
    /// Temperature of the self-supervision term.
    #[config(default = 0.5)]
    pub ss_temperature: f64,
    /// Temperature of the KD term on the rotated views.
    #[config(default = 4.0)]
    pub tf_temperature: f64,
    /// Share of the wrongly ranked rotated views kept in the self-supervision term.
    #[config(default = 0.75)]
    pub ss_ratio: f64,
    /// Share of the wrongly classified rotated views kept in the rotated-view KD term.
    #[config(default = 1.0)]
    pub tf_ratio: f64,
    /// Weights of the four terms: cross-entropy, KD, self-supervision, rotated-view KD.
    #[config(default = "[1.0, 1.0, 1.0, 1.0]")]
    pub weights: [f64; 4],
}

impl SskdConfig {
    /// Validates the configuration and builds both heads on `device`.
    pub fn init(&self, device: &Device) -> Result<Sskd, DistillError> {
        check_count(Sskd::NAME, "student_dim", self.student_dim, 1)?;
        check_count(Sskd::NAME, "teacher_dim", self.teacher_dim, 1)?;
        for t in [
            self.kl_temperature,
            self.ss_temperature,
            self.tf_temperature,
        ] {
            check_temperature(t)?;
        }
        check_fraction(Sskd::NAME, "ss_ratio", self.ss_ratio, true)?;
        check_fraction(Sskd::NAME, "tf_ratio", self.tf_ratio, true)?;
        for w in self.weights {
            check_non_negative(Sskd::NAME, "weights", w)?;
        }
        Ok(Sskd {
            student_head: SsHead::new(self.student_dim, device),
            teacher_head: SsHead::new(self.teacher_dim, device),
            config: self.clone(),
        })
    }
}

/// SSKD (Xu, Liu, Li, Loy, ECCV 2020, *Knowledge Distillation Meets Self-Supervision*;
/// torchdistill's `SSKDLoss` and `AuxSSKDLoss`, refactored from xuguodong03/SSKD): every image
/// comes with three rotations, and the student learns, besides the labels and the teacher's
/// soft labels, how the teacher's self-supervision head relates each rotation to every image
/// of the batch:
///
/// ```text
/// ce = CE(zˢ_plain, y)                    kl = T₁² KL(pᵗ ‖ pˢ) over the plain rows
/// ss = T₂² KL(softmax(cosᵗ/T₂) ‖ softmax(cosˢ/T₂)) over the kept rotated rows
/// tf = T₃² KL(pᵗ ‖ pˢ) at T₃ over the kept rotated rows
/// L = w₁ ce + w₂ kl + w₃ ss + w₄ tf
/// ```
///
/// `cos` are [`view_similarities`] of the heads' outputs on the penultimate features; the kept
/// rows are [`ranked_rows`] (the teacher's right answers, and a share of its wrong ones).
///
/// **Two stages.** First the teacher's head alone learns the pretext task:
/// minimise [`view_contrast_loss`] of `teacher_head.forward(teacher_features)` over the
/// teacher head's parameters ([`Sskd::teacher_stage_loss`]). Then
/// [`freeze_teacher_head`](Sskd::freeze_teacher_head) and train the student (and its head)
/// with this objective. The teacher's similarities are detached, as in the reference.
///
/// The batch: `4·B` rows, image-major (row `4i` the plain image, `4i+1…4i+3` its rotations, as
/// torchdistill's `% 4` indexing), targets `[B]` for the plain images. Ties in the ranking keep
/// the row order (torch's `argsort` is unstable: the reference's choice among tied rows is
/// arbitrary; with the default `tf_ratio = 1` nothing is dropped). Terms `"sskd/ce"`,
/// `"sskd/kl"`, `"sskd/ss"`, `"sskd/tf"`.
///
/// # Shapes
/// - logits `[4B, C]`, targets `[B]`, the tap: student `[4B, Ds]`, teacher `[4B, Dt]`
#[derive(Module, Debug)]
pub struct Sskd {
    /// The student's self-supervision head (trained with the student).
    pub student_head: SsHead,
    /// The teacher's self-supervision head (trained in the first stage, then frozen).
    pub teacher_head: SsHead,
    #[module(skip)]
    config: SskdConfig,
}

crate::loss::objective!(Sskd, "sskd");

impl Sskd {
    /// The first stage's loss: the teacher head's [`view_contrast_loss`] on the teacher's
    /// penultimate features `[4B, Dt]`.
    pub fn teacher_stage_loss(&self, teacher_features: Tensor<2>) -> Tensor<1> {
        view_contrast_loss(self.teacher_head.forward(teacher_features))
    }

    /// The objective with the teacher's head frozen (burn's [`Module::freeze`]), for the
    /// second stage.
    pub fn freeze_teacher_head(mut self) -> Self {
        self.teacher_head = self.teacher_head.freeze();
        self
    }

    /// `T² · KL(softmax(t/T) ‖ softmax(s/T))` summed over `rows` and divided by their number
    /// (`KLDivLoss(reduction='batchmean')`); zero when no row is kept.
    fn kl(s: Tensor<2>, t: Tensor<2>, temperature: f64, rows: &[i64]) -> Tensor<1> {
        if rows.is_empty() {
            return s.sum() * 0.0;
        }
        let idx =
            Tensor::<1, Int>::from_data(TensorData::new(rows.to_vec(), [rows.len()]), &s.device());
        let scale = 1.0 / temperature;
        let ls = log_softmax(s.select(0, idx.clone()) * scale, 1);
        let lt = log_softmax(t.select(0, idx) * scale, 1);
        kl_rows(lt, ls).mean() * (temperature * temperature)
    }
}

impl Loss for Sskd {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let checked = input.of(Self::NAME).within(BOUND).for_module(self);
        let (zs, zt) = checked.logits()?;
        let [n, classes] = zs.dims();
        if n == 0 || !n.is_multiple_of(4) {
            return Err(checked.shape(
                "batch (4 rows per image: the plain view and three rotations)".into(),
                vec![4 * n.div_ceil(4).max(1)],
                vec![n],
            ));
        }
        let images = n / 4;
        let y = checked.targets(images, classes)?;
        let (fs, ft) = checked.rows(&c.feature, n)?;
        if fs.dims()[0] != n {
            return Err(checked.shape(
                format!("rows of tap `{}`", c.feature),
                vec![n],
                vec![fs.dims()[0]],
            ));
        }
        for (who, got, want) in [
            ("student", fs.dims()[1], c.student_dim),
            ("teacher", ft.dims()[1], c.teacher_dim),
        ] {
            if got != want {
                return Err(checked.shape(
                    format!("{who} width of tap `{}`", c.feature),
                    vec![want],
                    vec![got],
                ));
            }
        }
        let device = zs.device();
        let (plain, rotated) = views(n, &device);
        let all = |k: usize| (0..k as i64).collect::<Vec<_>>();
        // the plain views: the task loss and KD
        let (ps, pt) = (
            zs.clone().select(0, plain.clone()),
            zt.clone().select(0, plain),
        );
        let ce = cross_entropy_per_sample(ps.clone(), y.clone(), 0.0).mean();
        let kl = Self::kl(ps, pt, c.kl_temperature, &all(images));
        // the rotated views: KD on the rows the teacher classifies well enough
        let (rs, rt) = (zs.select(0, rotated.clone()), zt.select(0, rotated));
        let rotated_y = y
            .unsqueeze_dim::<2>(1)
            .repeat_dim(1, 3)
            .reshape([3 * images]);
        let tf_rows = ranked_rows(&ranks(rt.clone().detach(), rotated_y), c.tf_ratio);
        let tf = Self::kl(rs, rt, c.tf_temperature, &tf_rows);
        // the self-supervision relations, on the rows whose image the teacher recognises
        let ss_s = view_similarities(self.student_head.forward(fs));
        let ss_t = view_similarities(self.teacher_head.forward(ft)).detach();
        let own = Tensor::<1, Int>::from_data(
            TensorData::new(
                (0..3 * images as i64).map(|j| j / 3).collect::<Vec<_>>(),
                [3 * images],
            ),
            &device,
        );
        let ss_rows = ranked_rows(&ranks(ss_t.clone(), own), c.ss_ratio);
        let ss = Self::kl(ss_s, ss_t, c.ss_temperature, &ss_rows);
        let [w1, w2, w3, w4] = c.weights;
        let name = |part: &str| format!("{}/{part}", Self::NAME);
        Ok(LossOutput::from_terms(vec![
            (name("ce"), ce * w1),
            (name("kl"), kl * w2),
            (name("ss"), ss * w3),
            (name("tf"), tf * w4),
        ]))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e15;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Sskd", "SsHead"],
    paper: "Xu et al., ECCV 2020, *Knowledge Distillation Meets Self-Supervision*",
    doc: "sskd.md",
    bound: Some(BOUND),
    example: None,
    learnable: None,
    twins: None,
    method: Some(
        crate::registry::method!(learnable Sskd = relation::SskdConfig(student_dim = 16, teacher_dim = 32)),
    ),
    golden: crate::registry::golden![],
}];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_keeps_the_right_rows_and_a_share_of_the_wrong() {
        // ranks: rows 0, 2 right; rows 1 (rank 3), 3 (rank 1), 4 (rank 1) wrong
        let rank = [0, 3, 0, 1, 1];
        assert_eq!(ranked_rows(&rank, 1.0), [0, 1, 2, 3, 4]);
        // ⌊3 · 0.7⌋ = 2 wrong rows kept: the two of rank 1, in row order
        assert_eq!(ranked_rows(&rank, 0.7), [0, 2, 3, 4]);
        assert_eq!(ranked_rows(&rank, 0.0), [0, 2]);
    }
}
