//! CRD: contrastive representation distillation with a memory bank.

use crate::registry::{Descriptor, moved};
use burn::config::Config;
use burn::module::{Module, RunningState};
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

use super::head::Embed;
use crate::check::check_temperature;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};
use crate::math::{SplitMix, l2_normalize};

/// Configuration of [`Crd`]; the defaults are RepDistiller's.
#[derive(Config, Debug)]
pub struct CrdConfig {
    /// Width of the student's embedding (the tap).
    pub student_dim: usize,
    /// Width of the teacher's embedding.
    pub teacher_dim: usize,
    /// Samples in the training set: the memory bank has one row per sample.
    pub dataset_size: usize,
    /// The feature tap (a map is flattened).
    #[config(default = "\"embedding\".to_string()")]
    pub feature: String,
    /// Width of the contrastive embeddings.
    #[config(default = 128)]
    pub embed_dim: usize,
    /// Negatives `K` drawn per positive.
    #[config(default = 16384)]
    pub negatives: usize,
    /// NCE temperature.
    #[config(default = 0.07)]
    pub temperature: f64,
    /// Momentum of the memory update.
    #[config(default = 0.5)]
    pub momentum: f64,
    /// Seed of the memory's initialisation and of the negatives.
    #[config(default = 0)]
    pub seed: u64,
}

impl CrdConfig {
    /// Validates the sizes, temperature and momentum and builds the embeddings and the two
    /// memories (uniform in ±1/√(e/3), from the seed) on `device`.
    pub fn init(&self, device: &Device) -> Result<Crd, DistillError> {
        check_temperature(self.temperature)?;
        crate::check::check_fraction(Crd::NAME, "momentum", self.momentum, false)?;
        for (field, v) in [
            ("student_dim", self.student_dim),
            ("teacher_dim", self.teacher_dim),
            ("dataset_size", self.dataset_size),
            ("embed_dim", self.embed_dim),
            ("negatives", self.negatives),
        ] {
            crate::check::check_count(Crd::NAME, field, v, 1)?;
        }
        // exp(cos / τ) must stay in f32: cos ≤ 1, ln(f32::MAX) ≈ 88.7
        if self.temperature < 0.02 {
            return Err(DistillError::config(
                Crd::NAME,
                "temperature",
                self.temperature,
                "must be at least 0.02 (exp(1/τ) overflows f32 below ~0.0113)",
            ));
        }
        let (n, e) = (self.dataset_size, self.embed_dim);
        // two memories of n × e values, and n × (negatives + 1) draws per step at most
        if n.checked_mul(e).is_none_or(|m| m > 1 << 31) || self.negatives > 1 << 24 {
            return Err(DistillError::config(
                Crd::NAME,
                "dataset_size/embed_dim/negatives",
                format!("{n} × {e}, {} negatives", self.negatives),
                "the memories are limited to 2³¹ values (8 GiB each in f32) and the negatives to 2²⁴",
            ));
        }
        let stdv = 1.0 / (e as f64 / 3.0).sqrt();
        let memory = |stream: u64| {
            let mut rng = SplitMix::keyed(self.seed, "crd/memory", stream);
            let data: Vec<f64> = (0..n * e)
                .map(|_| (rng.unit() * 2.0 - 1.0) * stdv)
                .collect();
            RunningState::new(Tensor::from_data(TensorData::new(data, [n, e]), device))
        };
        Ok(Crd {
            embed_student: Embed::new(self.student_dim, e, device),
            embed_teacher: Embed::new(self.teacher_dim, e, device),
            memory_student: memory(1),
            memory_teacher: memory(2),
            normalizers: RunningState::new(Tensor::from_data(
                TensorData::new(vec![-1.0f64, -1.0], [2]),
                device,
            )),
            config: self.clone(),
        })
    }
}

/// CRD (Tian, Krishnan, Isola, ICLR 2020, *Contrastive Representation Distillation*;
/// RepDistiller's `CRDLoss`): student and teacher embeddings `vˢ = e_s(fˢ)`, `vᵗ = e_t(fᵗ)`
/// (unit length) are contrasted against two memory banks holding a momentum average of every
/// training sample's embedding. For sample `i` with `K` negatives `j` drawn uniformly from the
/// data set,
///
/// ```text
/// P(i, j) = exp(⟨m_j, v_i⟩ / τ) / Z        (Z fixed at the first batch: mean · n_data)
/// L_NCE   = −Σᵢ [log P(i,i)/(P(i,i) + K/n) + Σⱼ log (K/n)/(P(i,j) + K/n)] / B
/// L       = L_NCE(vᵗ against the student bank) + L_NCE(vˢ against the teacher bank)
/// ```
///
/// After each forward the rows of the batch's samples are updated:
/// `m_i ← normalize(μ·m_i + (1 − μ)·v_i)`. The banks and `Z` are burn `RunningState`s, so
/// they save and load with the module's record and a restored run continues where it
/// stopped. Negatives are a pure function of the seed, the input's `Progress` (epoch and
/// step) and the row: no generator state to save. Needs `DistillInput::indices` (each row's
/// index in the data set) and progress. The bank is updated on the calling thread (one
/// device; see `docs/relational.md` for data-parallel training).
#[derive(Module, Debug)]
pub struct Crd {
    /// The student's embedding `s → e`.
    pub embed_student: Embed,
    /// The teacher's embedding `t → e`.
    pub embed_teacher: Embed,
    /// Memory of the student's embeddings, `[n_data, e]`.
    pub memory_student: RunningState<Tensor<2>>,
    /// Memory of the teacher's embeddings, `[n_data, e]`.
    pub memory_teacher: RunningState<Tensor<2>>,
    /// The normalisers `Z` (student side, teacher side); negative until set.
    pub normalizers: RunningState<Tensor<1>>,
    #[module(skip)]
    config: CrdConfig,
}

impl Crd {
    /// The `K` negatives of each row `[B, K]` at this `epoch` and `step`.
    fn negatives(&self, rows: usize, epoch: usize, step: usize, device: &Device) -> Tensor<2, Int> {
        let (k, n) = (self.config.negatives, self.config.dataset_size as u64);
        let key = SplitMix::progress_key(epoch, step);
        let mut rng = SplitMix::keyed(self.config.seed, "crd/negatives", key);
        let data: Vec<i64> = (0..rows * k).map(|_| (rng.next() % n) as i64).collect();
        Tensor::from_data(TensorData::new(data, [rows, k]), device)
    }

    /// `exp(⟨m_j, v⟩ / τ)` for the positive (column 0) and the negatives: `[B, K + 1]`.
    fn scores(&self, memory: &Tensor<2>, v: Tensor<2>, ids: Tensor<2, Int>) -> Tensor<2> {
        let [b, k1] = ids.dims();
        let e = v.dims()[1];
        let rows = memory
            .clone()
            .select(0, ids.reshape([b * k1]))
            .reshape([b, k1, e])
            .detach();
        (rows.matmul(v.unsqueeze_dim::<3>(2)).reshape([b, k1]) * (1.0 / self.config.temperature))
            .exp()
    }

    /// `m_i ← normalize(μ m_i + (1 − μ) v_i)` for the batch's samples.
    fn update(
        &self,
        memory: &RunningState<Tensor<2>>,
        current: Tensor<2>,
        v: Tensor<2>,
        idx: Tensor<1, Int>,
    ) {
        let mu = self.config.momentum;
        let rows = current.clone().select(0, idx.clone()) * mu + v.detach() * (1.0 - mu);
        memory.update(current.select_assign(
            0,
            idx,
            l2_normalize(rows, 1e-12),
            IndexingUpdateOp::Assign,
        ));
        // settle the update now, so that a record taken next holds it
        memory.value_sync();
    }
}

/// NCE against the uniform noise `1/n_data` with `K` noise samples: `[B, K + 1]` → loss.
fn nce(p: Tensor<2>, data: usize) -> Tensor<1> {
    let [b, k1] = p.dims();
    let noise = (k1 - 1) as f64 / data as f64;
    let eps = 1e-7;
    let positive = p.clone().slice([0..b, 0..1]);
    let negative = p.slice([0..b, 1..k1]);
    let log_d1 = (positive.clone() / (positive + noise + eps)).log();
    let log_d0 = ((negative + noise + eps).recip() * noise).log();
    -(log_d1.sum() + log_d0.sum()) * (1.0 / b as f64)
}

crate::loss::objective!(Crd, "crd");

impl Loss for Crd {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let c = &self.config;
        let (s, t) = input
            .of(Crd::NAME)
            .within(BOUND)
            .for_module(self)
            .rows(&c.feature, 1)?;
        let b = s.dims()[0];
        if s.dims()[1] != c.student_dim || t.dims()[1] != c.teacher_dim {
            return Err(DistillError::ShapeMismatch {
                objective: Crd::NAME.into(),
                what: format!("tap `{}` widths (student, teacher)", c.feature),
                expected: vec![c.student_dim, c.teacher_dim],
                actual: vec![s.dims()[1], t.dims()[1]],
            });
        }
        let idx = input
            .of(Crd::NAME)
            .within(BOUND)
            .indices(b, c.dataset_size)?;
        let p = input
            .of(Crd::NAME)
            .within(BOUND)
            .progress("to draw its negatives")?;
        let dev = s.device();
        let ids = Tensor::cat(
            vec![
                idx.clone().unsqueeze_dim::<2>(1),
                self.negatives(b, p.epoch, p.step, &dev),
            ],
            1,
        );
        let (vs, vt) = (self.embed_student.forward(s), self.embed_teacher.forward(t));
        // the memories must never take in a non-finite value: one read decides
        let finite = (vs.clone().detach().sum() + vt.clone().detach().sum())
            .into_scalar::<f64>()
            .is_finite();
        if !finite {
            return Err(DistillError::NonFinite {
                what: "crd: this batch's embeddings (the memories were left unchanged)".into(),
            });
        }
        let (ms, mt) = (
            self.memory_student.value_sync(),
            self.memory_teacher.value_sync(),
        );
        let mut out_s = self.scores(&mt, vs.clone(), ids.clone());
        let mut out_t = self.scores(&ms, vt.clone(), ids);

        let mut z: Vec<f64> = self
            .normalizers
            .value_sync()
            .into_data()
            .convert::<f64>()
            .try_to_vec::<f64>()
            .unwrap_or_default();
        let n = c.dataset_size as f64;
        if z.iter().any(|&zi| zi < 0.0) {
            // the first batch fixes Z (once per run: afterwards no write, no transfer)
            for (zi, out) in z.iter_mut().zip([&out_s, &out_t]) {
                if *zi < 0.0 {
                    *zi = out.clone().detach().mean().into_scalar::<f64>() * n;
                    if !(zi.is_finite() && *zi > 0.0) {
                        return Err(DistillError::NonFinite {
                            what: "crd: the normaliser from the first batch (not stored)".into(),
                        });
                    }
                }
            }
            self.normalizers.update(Tensor::<1>::from_data(
                TensorData::new(z.clone(), [2]),
                (&ms.device(), ms.dtype()),
            ));
            self.normalizers.value_sync();
        }
        out_s = out_s * (1.0 / z[0]);
        out_t = out_t * (1.0 / z[1]);

        self.update(&self.memory_student, ms, vs, idx.clone());
        self.update(&self.memory_teacher, mt, vt, idx);
        Ok(LossOutput::single(
            Crd::NAME,
            nce(out_s, c.dataset_size) + nce(out_t, c.dataset_size),
        ))
    }
}

/// The largest input magnitude this objective promises finite values and gradients for
/// (its page states it; `tests/range.rs` checks it at the bound and beyond).
const BOUND: f64 = f64::MAX;

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Crd"],
    paper: "Tian et al., ICLR 2020, *Contrastive Representation Distillation*",
    doc: "crd.md",
    bound: Some(BOUND),
    example: None,
    learnable: Some(|r, dev, dtype| {
        Ok(moved(
            CrdConfig::new(4, 5, 10)
                .with_embed_dim(3)
                .with_negatives(4)
                .init(r)?,
            dev,
            dtype,
        ))
    }),
    twins: None,
    method: Some(
        crate::registry::method!(learnable Crd = relation::CrdConfig(student_dim = 16, teacher_dim = 32, dataset_size = 1000)),
    ),
    golden: crate::registry::golden![],
}];
