//! FT: factor transfer through a paraphraser (teacher) and a translator (student).

use crate::registry::{Descriptor, moved};
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, LeakyRelu, LeakyReluConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use super::at::attention_map;
use super::maps::pool_to_smaller;
use crate::check::{check_non_negative, check_power};
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};

/// FT's factor loss between two factor maps `[N, C, H, W]` (RepDistiller's
/// `FactorTransfer.factor_loss`): each factor is `normalize(mean_c |F|^p₁)` flattened, the
/// larger map pooled to the smaller first, and `L = mean |φ(Fˢ) − φ(Fᵗ)|^p₂`.
pub fn factor_loss(s: Tensor<4>, t: Tensor<4>, p1: f64, p2: f64) -> Tensor<1> {
    let (s, t) = pool_to_smaller(s, t);
    let d = attention_map(s, p1) - attention_map(t, p1);
    let d = match p2 {
        1.0 => d.abs(),
        2.0 => d.square(),
        p => d.abs().powf_scalar(p),
    };
    d.mean()
}

/// Three 3×3 convolutions (stride 1, padding 1), each followed by an optional batch norm and
/// LeakyReLU(0.1): `[c_in → c_in → c_out → c_out]` (RepDistiller's encoders), or with
/// transposed convolutions `[c_in → c_in → c_out → c_out]` for a decoder.
#[derive(Module, Debug)]
pub struct ConvStack {
    convs: Vec<Conv2d>,
    ups: Vec<ConvTranspose2d>,
    norms: Vec<BatchNorm>,
    act: LeakyRelu,
}

impl ConvStack {
    fn new(c_in: usize, c_out: usize, transposed: bool, bn: bool, device: &Device) -> Self {
        let widths = [(c_in, c_in), (c_in, c_out), (c_out, c_out)];
        let (mut convs, mut ups) = (Vec::new(), Vec::new());
        for (a, b) in widths {
            match transposed {
                false => convs.push(
                    Conv2dConfig::new([a, b], [3, 3])
                        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                        .init(device),
                ),
                true => ups.push(
                    ConvTranspose2dConfig::new([a, b], [3, 3])
                        .with_padding([1, 1])
                        .init(device),
                ),
            }
        }
        let norms = match bn {
            true => widths
                .iter()
                .map(|&(_, b)| BatchNormConfig::new(b).init(device))
                .collect(),
            false => Vec::new(),
        };
        Self {
            convs,
            ups,
            norms,
            act: LeakyReluConfig::new().with_negative_slope(0.1).init(),
        }
    }

    /// `[N, c_in, H, W]` → `[N, c_out, H, W]`.
    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<4> {
        for i in 0..3 {
            x = match self.convs.get(i) {
                Some(c) => c.forward(x),
                None => self.ups[i].forward(x),
            };
            if let Some(bn) = self.norms.get(i) {
                x = bn.forward(x);
            }
            x = self.act.forward(x);
        }
        x
    }
}

/// FT's paraphraser: an autoencoder of the teacher's map, `C → ⌊k·C⌋ → C` channels, trained
/// alone first ([`Paraphraser::reconstruction_loss`]) and frozen while the student learns.
#[derive(Module, Debug)]
pub struct Paraphraser {
    /// Teacher map → factor.
    pub encoder: ConvStack,
    /// Factor → reconstructed teacher map.
    pub decoder: ConvStack,
}

impl Paraphraser {
    /// The factor of a teacher map `[N, C, H, W]` → `[N, ⌊k·C⌋, H, W]`.
    pub fn factor(&self, teacher: Tensor<4>) -> Tensor<4> {
        self.encoder.forward(teacher)
    }

    /// The pre-training stage's loss: `mean (decoder(encoder(Fᵗ)) − Fᵗ)²` (RepDistiller's
    /// `init` with `nn.MSELoss`). Minimise it over the paraphraser's parameters alone, on the
    /// frozen teacher's maps, before distilling.
    pub fn reconstruction_loss(&self, teacher: Tensor<4>) -> Tensor<1> {
        let rec = self.decoder.forward(self.factor(teacher.clone()));
        (rec - teacher).square().mean()
    }
}

/// Configuration of [`Ft`]: the channels at the tap and RepDistiller's defaults.
#[derive(Config, Debug)]
pub struct FtConfig {
    /// The student's channels at the tap.
    pub student_channels: usize,
    /// The teacher's channels at the tap.
    pub teacher_channels: usize,
    /// The feature tap.
    #[config(default = "\"feature\".to_string()")]
    pub feature: String,
    /// The factor's share of the teacher's channels, `k` ∈ (0, 1] (RepDistiller: 0.5).
    #[config(default = 0.5)]
    pub rate: f64,
    /// The factor map's power `p₁`.
    #[config(default = 2.0)]
    pub p1: f64,
    /// The distance's power `p₂` (1: L1, RepDistiller's default).
    #[config(default = 1.0)]
    pub p2: f64,
    /// Weight of the loss (RepDistiller's CIFAR-100 runs: 200).
    #[config(default = 200.0)]
    pub weight: f64,
}

impl FtConfig {
    /// Validates the configuration and builds the paraphraser (no batch norm, as the
    /// reference) and the translator (with batch norm) on `device`.
    pub fn init(&self, device: &Device) -> Result<Ft, DistillError> {
        check_power(Ft::NAME, "p1", self.p1)?;
        check_power(Ft::NAME, "p2", self.p2)?;
        check_non_negative(Ft::NAME, "weight", self.weight)?;
        if !(self.rate > 0.0 && self.rate <= 1.0) {
            return Err(DistillError::config(
                Ft::NAME,
                "rate",
                self.rate,
                "must be in (0, 1]: the factor's share of the teacher's channels",
            ));
        }
        let factor = (self.teacher_channels as f64 * self.rate) as usize;
        if self.student_channels == 0 || factor == 0 {
            return Err(DistillError::config(
                Ft::NAME,
                "student_channels/teacher_channels",
                format!("{} / {}", self.student_channels, self.teacher_channels),
                "the student and the factor (rate · teacher channels) need a channel",
            ));
        }
        Ok(Ft {
            paraphraser: Paraphraser {
                encoder: ConvStack::new(self.teacher_channels, factor, false, false, device),
                decoder: ConvStack::new(factor, self.teacher_channels, true, false, device),
            },
            translator: ConvStack::new(self.student_channels, factor, false, true, device),
            config: self.clone(),
        })
    }
}

/// Factor transfer (Kim, Park, Kwak, NeurIPS 2018, *Paraphrasing Complex Network: Network
/// Compression via Factor Transfer*, <https://arxiv.org/abs/1802.04977>; RepDistiller's
/// `FT.py` and `models/util.py`): a paraphraser `P` pre-trained to reconstruct the teacher's
/// map gives the teacher's *factor*; a translator `R` maps the student's map to a factor, and
///
/// ```text
/// L = w · mean |φ(R(Fˢ)) − φ(P(Fᵗ))|^p₂,   φ(F) = normalize(mean_c |F|^p₁)
/// ```
///
/// Stage 1: minimise [`Paraphraser::reconstruction_loss`] over `paraphraser` alone. Stage 2:
/// [`freeze_paraphraser`](Ft::freeze_paraphraser), then this objective: the translator trains
/// with the student, the paraphraser stays as stage 1 left it (every gradient is the true
/// derivative; freezing is what keeps the paraphraser out of the optimizer's update, as
/// RepDistiller keeps it out of its `trainable_list`). The paper's loss is `‖φ(Fˢ) − φ(Fᵗ)‖₁` over each
/// sample's unit factor; the crate follows the reference code (a mean over elements, so
/// `w = 200` is its scale). For `p₁` or `p₂` that is not an even integer the crate uses
/// `|F|^p`, where the reference's `pow` of a negative number would be NaN. One term `"ft"`.
///
/// # Shapes
/// - the tap: student `[N, Cs, H, W]`, teacher `[N, Ct, H', W']` (pooled to the smaller size)
#[derive(Module, Debug)]
pub struct Ft {
    /// The teacher-side autoencoder (trained in stage 1, frozen in stage 2).
    pub paraphraser: Paraphraser,
    /// The student-side encoder (trained in stage 2).
    pub translator: ConvStack,
    #[module(skip)]
    config: FtConfig,
}

crate::loss::objective!(Ft, "ft");

impl Ft {
    /// The objective with its paraphraser frozen (burn's [`Module::freeze`]: no gradients, no
    /// training behaviour), for the distillation stage.
    pub fn freeze_paraphraser(mut self) -> Self {
        self.paraphraser = self.paraphraser.freeze();
        self
    }
}

impl Loss for Ft {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let (s, t) = input
            .of(Self::NAME)
            .within(BOUND)
            .for_module(self)
            .maps(&c.feature)?;
        for (who, got, want) in [
            ("student", s.dims()[1], c.student_channels),
            ("teacher", t.dims()[1], c.teacher_channels),
        ] {
            if got != want {
                return Err(DistillError::ShapeMismatch {
                    objective: Self::NAME.into(),
                    what: format!("{who} channels of tap `{}`", c.feature),
                    expected: vec![want],
                    actual: vec![got],
                });
            }
        }
        let teacher = self.paraphraser.factor(t);
        let student = self.translator.forward(s);
        Ok(LossOutput::single(
            Self::NAME,
            factor_loss(student, teacher, c.p1, c.p2) * c.weight,
        ))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = 1e15;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Ft", "Paraphraser"],
    paper: "Kim et al., NeurIPS 2018, *Paraphrasing Complex Network: Factor Transfer*",
    doc: "ft.md",
    bound: Some(BOUND),
    example: None,
    learnable: Some(|r, dev, dtype| Ok(moved(FtConfig::new(3, 6).init(r)?, dev, dtype))),
    twins: None,
    method: Some(
        crate::registry::method!(learnable Ft = feature::FtConfig(student_channels = 8, teacher_channels = 16)),
    ),
    golden: crate::registry::golden!["ft" => golden::ft],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// RepDistiller's `FactorTransfer` loss on two factors (the paraphraser and translator are the
    /// reference's callers, not part of the case).
    pub(crate) fn ft(case: &Case) -> Result<(), String> {
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
}
