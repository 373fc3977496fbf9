//! ULD: distillation across tokenizers, by sorted probabilities over spans aligned on byte
//! offsets (TRL's GOLD `ULDLoss`).

use std::sync::Arc;

use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::activation::softmax;
use burn::tensor::{Int, Tensor, TensorData};

use super::jsd::jsd_elements;
use crate::check::{check_fraction, check_non_negative, check_temperature};
use crate::cross_entropy::cross_entropy_per_sample;
use crate::error::DistillError;
use crate::input::{DistillInput, Extra};
use crate::loss::{Loss, LossOutput};

/// How the positions of an aligned group become one distribution.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum MergeStrategy {
    /// The answer tokens' own positions (TRL's default, `observed`): the first position's
    /// distribution times the probabilities of the later tokens actually generated.
    Observed,
    /// The positions one earlier, which predict the answer tokens (`bayesian`): the last
    /// position's distribution times the probabilities of the earlier tokens.
    Bayesian,
}

/// How the two answers are aligned token to token.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum UldAlignment {
    /// By position: both truncated to the shorter answer (ULD's original form).
    Positional,
    /// By byte offsets: groups of tokens that end on the same byte on both sides, each merged to
    /// one distribution ([`align_by_byte_offsets`], [`merge_groups`]; TRL's extended ULD).
    ByteOffsets,
}

/// Which student and teacher vocabulary entries are the same token (same string): the hybrid
/// loss compares them directly. Build it with [`VocabularyMap::from_vocabularies`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VocabularyMap {
    /// Matched teacher ids, ascending.
    pub teacher: Vec<usize>,
    /// The student id of each matched teacher id.
    pub student: Vec<usize>,
}

impl VocabularyMap {
    /// The entries whose token strings appear in both vocabularies (`(string, id)` pairs, as a
    /// tokenizer's `get_vocab` gives them); no shared token is an error.
    pub fn from_vocabularies<'a>(
        student: impl IntoIterator<Item = (&'a str, usize)>,
        teacher: impl IntoIterator<Item = (&'a str, usize)>,
    ) -> Result<Self, DistillError> {
        let student: std::collections::HashMap<&str, usize> = student.into_iter().collect();
        let mut pairs: Vec<(usize, usize)> = teacher
            .into_iter()
            .filter_map(|(token, t)| student.get(token).map(|&s| (t, s)))
            .collect();
        pairs.sort_unstable();
        if pairs.is_empty() {
            return Err(DistillError::config(
                Uld::NAME,
                "vocabularies",
                "no shared token",
                "the hybrid loss needs at least one token in both vocabularies",
            ));
        }
        Ok(Self {
            teacher: pairs.iter().map(|p| p.0).collect(),
            student: pairs.iter().map(|p| p.1).collect(),
        })
    }
}

/// The hybrid form's options (GOLD's `uld_use_hybrid_loss`).
#[derive(Config, Debug, Copy, PartialEq)]
pub struct HybridConfig {
    /// β of the generalized JSD on the matched tokens.
    #[config(default = 0.5)]
    pub beta: f64,
    /// The weights `(matched, unmatched)`; `None`: `#matched / V_t` and the rest.
    #[config(default = "None")]
    pub weights: Option<[f64; 2]>,
}

/// Groups of answer tokens that cover the same bytes on both sides: walking both lists of
/// `(start, end)` byte offsets, the side whose current token ends earlier advances, and a
/// group closes when both end on the same byte; leftovers form one last pair of groups.
pub fn align_by_byte_offsets(
    student: &[(i64, i64)],
    teacher: &[(i64, i64)],
) -> (Vec<Vec<usize>>, Vec<Vec<usize>>) {
    let (mut sg, mut tg) = (Vec::new(), Vec::new());
    let (mut s0, mut t0, mut s, mut t) = (0, 0, 0, 0);
    while s < student.len() && t < teacher.len() {
        let (se, te) = (student[s].1, teacher[t].1);
        if se < te {
            s += 1;
        } else if se > te {
            t += 1;
        } else {
            s += 1;
            t += 1;
            sg.push((s0..s).collect());
            tg.push((t0..t).collect());
            (s0, t0) = (s, t);
        }
    }
    if s < student.len() || t < teacher.len() {
        sg.push((s0..student.len()).collect());
        tg.push((t0..teacher.len()).collect());
    }
    (sg, tg)
}

/// Each group of positions of `probs` `[T, V]` as one row `[groups, V]`: a single position its
/// row, an empty group zeros, a longer one the distribution at its first (`Observed`) or last
/// (`Bayesian`) position times the probabilities `max(p_j(id_j), 1e-8)` of the other tokens
/// actually generated (`ids` `[T]`). Not renormalised. No groups: `probs` itself.
pub fn merge_groups(
    probs: Tensor<2>,
    groups: &[Vec<usize>],
    ids: &[i64],
    strategy: MergeStrategy,
) -> Tensor<2> {
    if groups.is_empty() {
        return probs;
    }
    let v = probs.dims()[1];
    let row = |i: usize| probs.clone().slice([i..i + 1, 0..v]);
    let rows = groups
        .iter()
        .map(|g| match g.as_slice() {
            [] => row(0).zeros_like(),
            [i] => row(*i),
            [first, .., last] => {
                let (kept, others) = match strategy {
                    MergeStrategy::Observed => (*first, &g[1..]),
                    MergeStrategy::Bayesian => (*last, &g[..g.len() - 1]),
                };
                others.iter().fold(row(kept), |acc, &j| {
                    let id = ids[j] as usize;
                    acc * probs.clone().slice([j..j + 1, id..id + 1]).clamp_min(1e-8)
                })
            }
        })
        .collect();
    Tensor::cat(rows, 0)
}

/// `Σ |sort_desc(a) − sort_desc(b)|` over rows `[n, Va]`, `[n, Vb]` (the narrower zero-padded
/// after sorting), divided by `n`: ULD's distance, blind to which token is which.
pub fn sorted_l1(a: Tensor<2>, b: Tensor<2>) -> Tensor<1> {
    let n = a.dims()[0];
    let width = a.dims()[1].max(b.dims()[1]);
    let sorted = |x: Tensor<2>| {
        let [rows, v] = x.dims();
        let order = x.clone().detach().sort_descending_with_indices(1).1;
        let x = x.gather(1, order);
        match v < width {
            true => Tensor::cat(
                vec![
                    x.clone(),
                    Tensor::zeros([rows, width - v], (&x.device(), x.dtype())),
                ],
                1,
            ),
            false => x,
        }
    };
    (sorted(a) - sorted(b)).abs().sum() * (1.0 / n as f64)
}

/// One side of a cross-tokenizer pair: a causal model's un-shifted outputs over its own
/// tokenization of the same texts.
#[derive(Debug, Clone)]
pub struct TokenizedSide {
    /// Logits `[B, T, V]`.
    pub logits: Tensor<3>,
    /// Labels `[B, T]`: the answer's tokens, the ignore index (−100) elsewhere.
    pub labels: Tensor<2, Int>,
    /// The token ids `[B, T]`.
    pub ids: Tensor<2, Int>,
    /// Each token's answer-relative UTF-8 byte range `[B, T, 2]` (`(0, 0)` outside the answer),
    /// for [`UldAlignment::ByteOffsets`].
    pub offsets: Option<Tensor<3, Int>>,
}

/// The student's and the teacher's tokenizations of the same batch, for [`Uld`]; set with
/// `DistillInput::with`.
#[derive(Debug, Clone)]
pub struct CrossTokenizer {
    /// The student's side.
    pub student: TokenizedSide,
    /// The teacher's side.
    pub teacher: TokenizedSide,
}

impl Extra for CrossTokenizer {
    fn select_rows(&self, _rows: &Tensor<1, Int>) -> Option<Arc<dyn Extra>> {
        None
    }
}

/// Configuration of [`Uld`].
#[derive(Config, Debug)]
pub struct UldConfig {
    /// How the answers are aligned.
    #[config(default = "UldAlignment::ByteOffsets")]
    pub alignment: UldAlignment,
    /// How an aligned group's positions are merged.
    #[config(default = "MergeStrategy::Observed")]
    pub merge: MergeStrategy,
    /// The student's softmax temperature.
    #[config(default = 1.0)]
    pub student_temperature: f64,
    /// The teacher's.
    #[config(default = 1.0)]
    pub teacher_temperature: f64,
    /// Leave out each answer's last token (the end-of-sequence), student side.
    #[config(default = false)]
    pub skip_student_eos: bool,
    /// Teacher side.
    #[config(default = false)]
    pub skip_teacher_eos: bool,
    /// The hybrid form (needs [`Uld::with_vocabularies`]); `None`: sorted probabilities only.
    #[config(default = "None")]
    pub hybrid: Option<HybridConfig>,
    /// Weight of the distillation term.
    #[config(default = 1.0)]
    pub distillation_weight: f64,
    /// Weight of the student's next-token cross-entropy on its labels (0: none).
    #[config(default = 0.0)]
    pub cross_entropy_weight: f64,
}

impl UldConfig {
    /// Validates the configuration and builds the objective.
    pub fn init(&self) -> Result<Uld, DistillError> {
        check_temperature(self.student_temperature)?;
        check_temperature(self.teacher_temperature)?;
        check_non_negative(Uld::NAME, "distillation_weight", self.distillation_weight)?;
        check_non_negative(Uld::NAME, "cross_entropy_weight", self.cross_entropy_weight)?;
        if let Some(h) = &self.hybrid {
            check_fraction(Uld::NAME, "hybrid.beta", h.beta, true)?;
            if let Some([m, u]) = h.weights {
                check_non_negative(Uld::NAME, "hybrid.weights", m)?;
                check_non_negative(Uld::NAME, "hybrid.weights", u)?;
            }
        }
        Ok(Uld {
            config: self.clone(),
            vocabularies: None,
        })
    }
}

/// Universal Logit Distillation (Boizard et al., 2024, *Towards Cross-Tokenizer Distillation:
/// the Universal Logit Distillation Loss for LLMs*, [arXiv:2402.12030](https://arxiv.org/abs/2402.12030);
/// TRL's GOLD `ULDLoss`): teacher and student tokenize the same texts differently, so their
/// distributions are compared without token identities. Per sequence, the answers' tokens are
/// aligned (by position, or by byte offsets with split tokens merged, [`merge_groups`]), and
///
/// ```text
/// row = Σ_aligned |sort_desc(p_s) − sort_desc(p_t)| / #aligned        (p = softmax(z / T_side))
/// L   = w_d · mean_rows row  +  w_ce · CE(student)
/// ```
///
/// The hybrid form compares the tokens both vocabularies share directly (JSD(β) of the raw
/// sub-vectors, GOLD's) and sorts only the rest. A sequence with an empty answer adds 0 and
/// counts in the mean (as in TRL). Terms `"uld/distillation"` and, with a cross-entropy weight,
/// `"uld/cross_entropy"`.
///
/// # Shapes
/// - [`CrossTokenizer`]: each side's logits `[B, T_side, V_side]`, labels, ids `[B, T_side]`,
///   byte offsets `[B, T_side, 2]`
#[derive(Debug, Clone)]
pub struct Uld {
    config: UldConfig,
    vocabularies: Option<VocabularyMap>,
}

crate::loss::objective!(Uld, "uld");

/// The host copy of an integer tensor.
fn host<const D: usize>(x: &Tensor<D, Int>) -> Vec<i64> {
    x.clone()
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap_or_default()
}

impl Uld {
    /// With the shared tokens of the two vocabularies (required by the hybrid form).
    pub fn with_vocabularies(mut self, map: VocabularyMap) -> Self {
        self.vocabularies = Some(map);
        self
    }

    /// The loss of one aligned pair of distributions `[n, Vs]`, `[n, Vt]`.
    fn aligned(&self, ps: Tensor<2>, pt: Tensor<2>) -> Result<Tensor<1>, DistillError> {
        let Some(h) = &self.config.hybrid else {
            return Ok(sorted_l1(ps, pt));
        };
        let map = self.vocabularies.as_ref().ok_or_else(|| {
            DistillError::config(
                Self::NAME,
                "hybrid",
                "no vocabularies",
                "the hybrid form needs Uld::with_vocabularies",
            )
        })?;
        let (n, vs, vt) = (ps.dims()[0], ps.dims()[1], pt.dims()[1]);
        if map.student.iter().any(|&s| s >= vs) || map.teacher.iter().any(|&t| t >= vt) {
            return Err(DistillError::config(
                Self::NAME,
                "vocabularies",
                format!("{vs} / {vt}"),
                "a matched id is outside the logits' vocabulary",
            ));
        }
        let device = ps.device();
        let ids = |v: &[usize]| {
            Tensor::<1, Int>::from_data(
                TensorData::new(v.iter().map(|&i| i as i64).collect::<Vec<_>>(), [v.len()]),
                &device,
            )
        };
        let rest = |matched: &[usize], v: usize| -> Vec<usize> {
            let set: std::collections::HashSet<usize> = matched.iter().copied().collect();
            (0..v).filter(|i| !set.contains(i)).collect()
        };
        let (ms, mt) = (ids(&map.student), ids(&map.teacher));
        let log = |p: Tensor<2>| p.clamp_min(1e-8).log();
        let matched = jsd_elements(
            log(ps.clone().select(1, ms)),
            log(pt.clone().select(1, mt)),
            h.beta,
        )
        .sum()
            * (1.0 / n as f64);
        let (us, ut) = (rest(&map.student, vs), rest(&map.teacher, vt));
        let unmatched = match us.is_empty() || ut.is_empty() {
            true => matched.zeros_like(),
            false => sorted_l1(ps.select(1, ids(&us)), pt.select(1, ids(&ut))),
        };
        let [wm, wu] = h.weights.unwrap_or_else(|| {
            let w = map.teacher.len() as f64 / vt.max(1) as f64;
            [w, 1.0 - w]
        });
        Ok(matched * wm + unmatched * wu)
    }
}

/// Each sequence's answer span: the first index whose label is not −100 and the number of such
/// labels (TRL assumes one contiguous run).
fn spans(labels: &[i64], t: usize) -> Vec<(usize, usize)> {
    labels
        .chunks(t)
        .map(|row| {
            let start = row.iter().position(|&y| y != -100).unwrap_or(0);
            (start, row.iter().filter(|&&y| y != -100).count())
        })
        .collect()
}

impl Loss for Uld {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let checked = input.of(Self::NAME).within(BOUND);
        let pair = checked.extra::<CrossTokenizer>("the two tokenizations (CrossTokenizer)")?;
        let (s, t) = (&pair.student, &pair.teacher);
        let ([b, ts, vs], [bt, tt, vt]) = (s.logits.dims(), t.logits.dims());
        for (side, x, tlen) in [("student", s, ts), ("teacher", t, tt)] {
            let rows = x.logits.dims()[0];
            for (what, dims) in [("labels", x.labels.dims()), ("ids", x.ids.dims())] {
                if dims != [rows, tlen] {
                    return Err(DistillError::ShapeMismatch {
                        objective: Self::NAME.into(),
                        what: format!("{side} {what}"),
                        expected: vec![rows, tlen],
                        actual: dims.to_vec(),
                    });
                }
            }
            if c.alignment == UldAlignment::ByteOffsets {
                let offsets = x
                    .offsets
                    .as_ref()
                    .ok_or_else(|| DistillError::MissingInput {
                        objective: Self::NAME.into(),
                        what: format!("{side} byte offsets (ByteOffsets alignment)"),
                    })?;
                if offsets.dims() != [rows, tlen, 2] {
                    return Err(DistillError::ShapeMismatch {
                        objective: Self::NAME.into(),
                        what: format!("{side} byte offsets"),
                        expected: vec![rows, tlen, 2],
                        actual: offsets.dims().to_vec(),
                    });
                }
            }
        }
        if b != bt || b == 0 || vs == 0 || vt == 0 {
            return Err(DistillError::ShapeMismatch {
                objective: Self::NAME.into(),
                what: "teacher batch".into(),
                expected: vec![b, tt, vt],
                actual: vec![bt, tt, vt],
            });
        }
        let (ys, yt) = (host(&s.labels), host(&t.labels));
        let (is, it) = (host(&s.ids), host(&t.ids));
        let offsets = |x: &TokenizedSide| x.offsets.as_ref().map(host).unwrap_or_default();
        let (os, ot) = (offsets(s), offsets(t));
        let shrink = |spans: Vec<(usize, usize)>, skip: bool| -> Vec<(usize, usize)> {
            spans
                .into_iter()
                .map(|(a, n)| (a, if skip { n.saturating_sub(1) } else { n }))
                .collect()
        };
        let (ss, st) = (
            shrink(spans(&ys, ts), c.skip_student_eos),
            shrink(spans(&yt, tt), c.skip_teacher_eos),
        );
        let teacher = match input.is_teacher_attached() {
            true => t.logits.clone(),
            false => t.logits.clone().detach(),
        };
        let mut rows = Vec::with_capacity(b);
        for i in 0..b {
            let ((sa, sn), (ta, tn)) = (ss[i], st[i]);
            if sn == 0 || tn == 0 {
                rows.push(s.logits.clone().slice([i..i + 1, 0..1, 0..1]).reshape([1]) * 0.0);
                continue;
            }
            // the positions whose distributions are compared, and whether the first is missing
            let window = |start: usize, len: usize| match c.merge {
                MergeStrategy::Observed => (start, false),
                MergeStrategy::Bayesian if start == 0 => (0, len > 0),
                MergeStrategy::Bayesian => (start - 1, false),
            };
            let (s_from, s_cut) = window(sa, sn);
            let (t_from, t_cut) = window(ta, tn);
            let probs =
                |z: &Tensor<3>, from: usize, n: usize, cut: bool, temperature: f64, v: usize| {
                    // at a bayesian span starting at 0 the first token has no predicting position
                    let n = if cut { n - 1 } else { n };
                    let z = z
                        .clone()
                        .slice([i..i + 1, from..from + n, 0..v])
                        .reshape([n, v]);
                    softmax(z * (1.0 / temperature), 1)
                };
            let (ids_s, ids_t) = (
                &is[i * ts + sa..i * ts + sa + sn],
                &it[i * tt + ta..i * tt + ta + tn],
            );
            let cut = s_cut || t_cut;
            let (ps, pt) = match c.alignment {
                UldAlignment::Positional => {
                    // answer tokens k = cut..cut + n on both sides; a side's rows start at its
                    // first predicted token
                    let n = sn.min(tn) - usize::from(cut);
                    if n == 0 {
                        rows.push(
                            s.logits.clone().slice([i..i + 1, 0..1, 0..1]).reshape([1]) * 0.0,
                        );
                        continue;
                    }
                    let from = |side_cut: bool| usize::from(cut) - usize::from(side_cut);
                    let ps = probs(&s.logits, s_from, sn, s_cut, c.student_temperature, vs);
                    let pt = probs(&teacher, t_from, tn, t_cut, c.teacher_temperature, vt);
                    let (a, b) = (from(s_cut), from(t_cut));
                    (ps.slice([a..a + n, 0..vs]), pt.slice([b..b + n, 0..vt]))
                }
                UldAlignment::ByteOffsets => {
                    let pairs =
                        |o: &[i64], start: usize, n: usize, len: usize| -> Vec<(i64, i64)> {
                            (start..start + n)
                                .map(|j| (o[(i * len + j) * 2], o[(i * len + j) * 2 + 1]))
                                .collect()
                        };
                    let (gs, gt) =
                        align_by_byte_offsets(&pairs(&os, sa, sn, ts), &pairs(&ot, ta, tn, tt));
                    let mut kept: Vec<(Vec<usize>, Vec<usize>)> = gs
                        .into_iter()
                        .zip(gt)
                        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
                        .collect();
                    if cut && !kept.is_empty() {
                        kept.remove(0);
                    }
                    if kept.is_empty() {
                        rows.push(
                            s.logits.clone().slice([i..i + 1, 0..1, 0..1]).reshape([1]) * 0.0,
                        );
                        continue;
                    }
                    // positions are answer-relative; with a missing first position, shift by one
                    let shift = |g: &[usize], on: bool| -> Vec<usize> {
                        g.iter().map(|&j| if on { j - 1 } else { j }).collect()
                    };
                    let sg: Vec<Vec<usize>> = kept.iter().map(|(a, _)| shift(a, s_cut)).collect();
                    let tg: Vec<Vec<usize>> = kept.iter().map(|(_, b)| shift(b, t_cut)).collect();
                    let ids = |x: &[i64], on: bool| -> Vec<i64> { x[usize::from(on)..].to_vec() };
                    let ps = probs(&s.logits, s_from, sn, s_cut, c.student_temperature, vs);
                    let pt = probs(&teacher, t_from, tn, t_cut, c.teacher_temperature, vt);
                    (
                        merge_groups(ps, &sg, &ids(ids_s, s_cut), c.merge),
                        merge_groups(pt, &tg, &ids(ids_t, t_cut), c.merge),
                    )
                }
            };
            rows.push(self.aligned(ps, pt)?);
        }
        let distillation = Tensor::cat(rows, 0).mean() * c.distillation_weight;
        let mut terms = vec![(format!("{}/distillation", Self::NAME), distillation)];
        if c.cross_entropy_weight > 0.0 && ts > 1 {
            let z = s
                .logits
                .clone()
                .slice([0..b, 0..ts - 1, 0..vs])
                .reshape([b * (ts - 1), vs]);
            let y = s
                .labels
                .clone()
                .slice([0..b, 1..ts])
                .reshape([b * (ts - 1)]);
            let counted = y.clone().not_equal_elem(-100);
            let ce = cross_entropy_per_sample(z, y.mask_fill(counted.clone().bool_not(), 0), 0.0)
                .mask_fill(counted.clone().bool_not(), 0.0);
            let n = counted.int().sum().float().cast(ce.dtype()).clamp_min(1.0);
            terms.push((
                format!("{}/cross_entropy", Self::NAME),
                ce.sum() / n * c.cross_entropy_weight,
            ));
        }
        Ok(LossOutput::from_terms(terms))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = f64::MAX;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Uld"],
    paper: "Boizard et al., 2024 (ULD); TRL's GOLD",
    doc: "token.md",
    bound: Some(BOUND),
    // its input is two tokenizations (CrossTokenizer), which the shared example does not
    // have; tests/token.rs checks its gradients
    example: None,
    learnable: None,
    twins: None,
    method: Some(crate::registry::method!(loss Uld = token::UldConfig())),
    golden: crate::registry::golden![
        "trl_uld" => golden::uld,
        "trl_uld_hybrid" => golden::uld,
        "trl_uld_merge" => golden::merge,
    ],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// The case's GOLD config (a Python dict's text).
    fn gold_config(case: &Case) -> Result<serde_json::Value, String> {
        let config = &case.params["config"];
        if config.is_object() {
            return Ok(config.clone());
        }
        let text = config.as_str().ok_or("no config")?;
        let json = text
            .replace('\'', "\"")
            .replace("None", "null")
            .replace("True", "true")
            .replace("False", "false");
        serde_json::from_str(&json).map_err(|e| format!("config: {e}"))
    }

    /// `ULDLoss._merge_probabilities_with_alignment_groups` on given probabilities.
    pub(crate) fn merge(case: &Case) -> Result<(), String> {
        let probs = case.leaf::<2>("probs")?;
        let (_, ids) = case.input("token_ids")?;
        let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let groups: Vec<Vec<usize>> =
            serde_json::from_value(case.params["alignment_groups"].clone())
                .map_err(|e| format!("alignment_groups: {e}"))?;
        let strategy = match case.params["token_merge_strategy"].as_str() {
            Some("bayesian") => MergeStrategy::Bayesian,
            _ => MergeStrategy::Observed,
        };
        let merged = merge_groups(probs.clone(), &groups, &ids, strategy);
        case.check_elements(
            merged,
            &[("probs", crate::input::Feature::Embedding(probs))],
        )
    }

    /// `ULDLoss.__call__`: positional or byte-offset alignment, observed or bayesian merging,
    /// the hybrid form with the case's two vocabularies, the cross-entropy part.
    pub(crate) fn uld(case: &Case) -> Result<(), String> {
        let g = gold_config(case)?;
        let flag = |k: &str| g[k].as_bool().unwrap_or(false);
        let num = |k: &str| g[k].as_f64();
        let hybrid = flag("uld_use_hybrid_loss").then(|| {
            HybridConfig::new()
                .with_beta(num("beta").unwrap_or(1.0))
                .with_weights(
                    num("uld_hybrid_matched_weight")
                        .zip(num("uld_hybrid_unmatched_weight"))
                        .map(|(a, b)| [a, b]),
                )
        });
        let config = UldConfig::new()
            .with_alignment(match flag("use_extended_uld") {
                true => UldAlignment::ByteOffsets,
                false => UldAlignment::Positional,
            })
            .with_merge(match g["uld_token_merge_strategy"].as_str() {
                Some("bayesian") => MergeStrategy::Bayesian,
                _ => MergeStrategy::Observed,
            })
            .with_student_temperature(num("uld_student_temperature").unwrap_or(1.0))
            .with_teacher_temperature(num("uld_teacher_temperature").unwrap_or(1.0))
            .with_skip_student_eos(flag("uld_skip_student_eos"))
            .with_skip_teacher_eos(flag("uld_skip_teacher_eos"))
            .with_hybrid(hybrid)
            .with_distillation_weight(num("uld_distillation_weight").unwrap_or(1.0))
            .with_cross_entropy_weight(num("uld_crossentropy_weight").unwrap_or(0.0));
        if config.cross_entropy_weight > 0.0 && case.dtype == DType::F32 {
            case.tolerance.set(Some((2e-5, 2e-5)));
        }
        let mut loss = config.init().map_err(e)?;
        if hybrid.is_some() {
            let vocab = |side: &str| -> Result<Vec<(String, usize)>, String> {
                let v = &case.params["fake_tokenizers"];
                let map = v[format!("{side}_vocab")].as_object().ok_or("no vocab")?;
                Ok(map
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0) as usize))
                    .collect())
            };
            let (sv, tv) = (vocab("student")?, vocab("teacher")?);
            let map = VocabularyMap::from_vocabularies(
                sv.iter().map(|(k, v)| (k.as_str(), *v)),
                tv.iter().map(|(k, v)| (k.as_str(), *v)),
            )
            .map_err(e)?;
            loss = loss.with_vocabularies(map);
        }
        let ints2 = |name: &str| -> Result<Tensor<2, Int>, String> {
            let (shape, _) = case.input(name)?;
            Ok(case.targets(name)?.reshape([shape[0], shape[1]]))
        };
        let offsets = |name: &str| -> Result<Option<Tensor<3, Int>>, String> {
            match case.has(name) {
                false => Ok(None),
                true => {
                    let (shape, _) = case.input(name)?;
                    Ok(Some(
                        case.targets(name)?.reshape([shape[0], shape[1], shape[2]]),
                    ))
                }
            }
        };
        let (zs, zt) = (
            case.leaf::<3>("student_logits")?,
            case.leaf::<3>("teacher_logits")?,
        );
        let pair = CrossTokenizer {
            student: TokenizedSide {
                logits: zs.clone(),
                labels: ints2("student_labels")?,
                ids: ints2("student_input_ids")?,
                offsets: offsets("student_byte_offsets")?,
            },
            teacher: TokenizedSide {
                logits: zt.clone(),
                labels: ints2("teacher_labels")?,
                ids: ints2("teacher_input_ids")?,
                offsets: offsets("teacher_byte_offsets")?,
            },
        };
        let out = loss
            .forward(&DistillInput::features_only().with(pair).attach_teacher())
            .map_err(e)?;
        case.expect_loss(out.value(), None)?;
        let grads = out.total.backward();
        case.expect_grad("student_logits", zs.grad(&grads).map(values), None)?;
        case.expect_grad("teacher_logits", zt.grad(&grads).map(values), None)
    }
}
