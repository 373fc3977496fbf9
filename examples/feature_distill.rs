//! Every feature and relational method of the crate on one CNN teacher/student pair, on the
//! UCI 8×8 digits: for each method, its loss weight is chosen on a validation split carved
//! from the training data (mean over the seeds), and the chosen students are evaluated on the
//! test split once, at the end.
//!
//! ```text
//! cargo run --release --example feature_distill                       # ~35 minutes
//! cargo run --release --example feature_distill -- --epochs 2 --seeds 1 --grid 1
//! cargo run --release --example feature_distill -- --out target/feature_distill   # + SVG
//! cargo run --release --example feature_distill -- --pair matched   # equal-shape methods
//! ```
//!
//! Teacher and student expose five taps: `"conv1"` (the first convolution, after its ReLU),
//! `"preact"` (the second, before its ReLU), `"feature"` (after ReLU and pooling), `"pooled"`
//! (the penultimate layer as a `[N, E, 1, 1]` map) and `"embedding"` (the penultimate layer).
//! The teacher's taps are computed once (it is frozen and the data is not augmented).
//! Every method adds its loss, times the chosen weight, to the student's cross-entropy.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_distill::feature::{
    Ab, AbConfig, AtConfig, Augmented, DafaConfig, DamConfig, Ft, FtConfig, Hint, HintConfig, Ickd,
    IckdConfig, KdsvdConfig, Mgd, MgdConfig, NstConfig, Ofd, OfdConfig, Paraphraser, ReviewKd,
    ReviewKdConfig, Srd, SrdConfig, Vid, VidConfig, ofd_margins,
};
use burn_distill::feature::{AffinityConfig, FspConfig, KtaConfig, PadL2, PadL2Config};
use burn_distill::logit::DistPlusConfig;
use burn_distill::meta::{MetaTeacherConfig, PilotRate};
use burn_distill::prelude::*;
use burn_distill::relation::{
    CcConfig, Crd, CrdConfig, Dlkd, DlkdConfig, PktConfig, RkdConfig, SpConfig, SsHead, Sskd,
    SskdConfig, view_contrast_loss,
};
use common::*;

/// Student: conv 4 → conv 8 → pool → 16-d embedding; teacher: 32 → 64 → 128.
const STUDENT: [usize; 3] = [4, 8, 16];
const TEACHER: [usize; 3] = [32, 64, 128];

/// conv–ReLU–conv–ReLU–maxpool, then two linear layers.
#[derive(Module, Debug)]
struct Cnn {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    fc: Linear,
    out: Linear,
    relu: Relu,
}

impl Cnn {
    /// Channels `c1`, `c2` and an embedding of `e`.
    fn new([c1, c2, e]: [usize; 3], seed: u64, dev: &Device) -> Self {
        dev.seed(seed);
        let conv = |i, o| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(dev)
        };
        let cnn = Self {
            conv1: conv(1, c1),
            conv2: conv(c1, c2),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            fc: LinearConfig::new(c2 * 16, e).init(dev),
            out: LinearConfig::new(e, 10).init(dev),
            relu: Relu::new(),
        };
        cnn.fork(dev)
    }

    /// Images `[N, 64]` → logits and the taps.
    fn forward(&self, x: Tensor<2>) -> Outputs {
        let n = x.dims()[0];
        let conv1 = self
            .relu
            .forward(self.conv1.forward(x.reshape([n, 1, 8, 8])));
        let preact = self.conv2.forward(conv1.clone());
        let map = self.pool.forward(self.relu.forward(preact.clone()));
        let embedding = self
            .relu
            .forward(self.fc.forward(map.clone().flatten(1, 3)));
        let e = embedding.dims()[1];
        Outputs::logits(self.out.forward(embedding.clone()))
            .feature("conv1", conv1)
            .feature("preact", preact)
            .feature("feature", map)
            .feature("pooled", embedding.clone().reshape([n, e, 1, 1]))
            .feature("embedding", embedding)
    }
}

impl Distillable for Cnn {
    type Input = Tensor<2>;
    fn run(&self, x: &Tensor<2>) -> Outputs {
        self.forward(x.clone())
    }
}

/// The learnable parts a method trains beside the student.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
enum Parts {
    Hint(Hint),
    Mgd(Mgd),
    Dlkd(Dlkd),
    Crd(Crd),
    Ft(Ft),
    Ab(Ab),
    Vid(Vid),
    Ofd(Ofd),
    Review(ReviewKd),
    Ickd(Ickd),
    Srd(Srd),
    Sskd(Sskd),
    PadL2(PadL2),
}

impl Parts {
    /// The part as an objective (a copy with the current parameters).
    fn objective(&self) -> Box<dyn Loss> {
        match self {
            Parts::Hint(x) => x.clone().boxed(),
            Parts::Mgd(x) => x.clone().boxed(),
            Parts::Dlkd(x) => x.clone().boxed(),
            Parts::Crd(x) => x.clone().boxed(),
            Parts::Ft(x) => x.clone().boxed(),
            Parts::Ab(x) => x.clone().boxed(),
            Parts::Vid(x) => x.clone().boxed(),
            Parts::Ofd(x) => x.clone().boxed(),
            Parts::Review(x) => x.clone().boxed(),
            Parts::Ickd(x) => x.clone().boxed(),
            Parts::Srd(x) => x.clone().boxed(),
            Parts::Sskd(x) => x.clone().boxed(),
            Parts::PadL2(x) => x.clone().boxed(),
        }
    }
}

#[derive(Module, Debug)]
struct Trainee {
    student: Cnn,
    parts: Option<Parts>,
}

/// What the methods need besides their weight: the data, the frozen teacher and what was
/// computed from it once.
struct Data {
    train: Split,
    val: Split,
    test: Split,
    /// The teacher's outputs on the training rows, streamed from a cache on disk.
    teacher: TeacherCache,
    /// Where the cached outputs are read to (the teacher's device, without autodiff).
    teacher_device: Device,
    /// The trained teacher, for SoKD's augmented teacher.
    network: Cnn,
    /// FT's paraphraser, pre-trained on the teacher's `feature` maps (stage 1).
    paraphraser: Paraphraser,
    /// OFD's margins from the statistics of the teacher's `preact` channels.
    margins: Vec<f64>,
    /// SSKD's teacher head, trained on the rotated images (stage 1).
    ss_head: SsHead,
    /// The student's `[conv 1, conv 2, embedding]` widths.
    student: [usize; 3],
    epochs: usize,
}

/// How a method's loss is made.
enum Kind {
    /// No learnable part: the loss at weight `w`.
    Fixed(fn(f64) -> Result<Box<dyn Loss>, DistillError>),
    /// A learnable part, built fresh for each run (for weight `w`); its loss at weight `w` is
    /// made from the part's current parameters at every step.
    Learned(fn(&Data, f64, &Device) -> Result<Parts, DistillError>),
    /// MGD inside DAM, against a DAFA-augmented teacher that a meta-teacher trains.
    Sokd,
}

struct Method {
    name: &'static str,
    /// The registry's items it trains with (`burn_distill::objectives()`).
    objectives: &'static [&'static str],
    kind: Kind,
    /// The weights tried (for AB: the epochs of its initialisation stage).
    grid: &'static [f64],
}

fn ce() -> CrossEntropy {
    CrossEntropyConfig::new()
        .init()
        .expect("the default config is valid")
}

fn ce_plus(w: f64, loss: impl Loss + 'static) -> Box<dyn Loss> {
    (ce() + loss.weighted(w)).boxed()
}

/// The loss of one step: cross-entropy plus the method's part at weight `w` (AB: its
/// initialisation stage of `w` epochs, then cross-entropy alone, as RepDistiller).
fn learned_loss(part: &Parts, w: f64) -> Box<dyn Loss> {
    match part {
        Parts::Ab(ab) => ab.clone().then_after(w as usize, ce()).boxed(),
        // its own cross-entropy on the plain views; `w` is in its term weights
        Parts::Sskd(sskd) => sskd.clone().boxed(),
        Parts::Dlkd(d) => (ce() + d.clone().weighted(w)).boxed(),
        p => (ce() + p.objective().weighted(w)).boxed(),
    }
}

fn methods() -> Vec<Method> {
    vec![
        Method {
            name: "alone (CE)",
            objectives: &["CrossEntropy"],
            kind: Kind::Fixed(|_| Ok(ce().boxed())),
            grid: &[1.0],
        },
        Method {
            name: "KD (T = 2)",
            objectives: &["Kd"],
            kind: Kind::Fixed(|w| Ok(ce_plus(w, KdConfig::new().with_temperature(2.0).init()?))),
            grid: &[0.3, 1.0, 3.0],
        },
        Method {
            name: "FitNet hint",
            objectives: &["Hint"],
            kind: Kind::Learned(|_, _, dev| {
                Ok(Parts::Hint(
                    HintConfig::new([STUDENT[1], 4, 4], [TEACHER[1], 4, 4]).init(dev)?,
                ))
            }),
            grid: &[0.001, 0.01, 0.1, 1.0],
        },
        Method {
            name: "AT",
            objectives: &["At"],
            kind: Kind::Fixed(|w| Ok(ce_plus(w, AtConfig::new().init()?))),
            grid: &[0.001, 0.01, 0.1, 1.0],
        },
        Method {
            name: "NST",
            objectives: &["Nst"],
            kind: Kind::Fixed(|w| Ok(ce_plus(w, NstConfig::new().init()?))),
            grid: &[0.001, 0.01, 0.1, 1.0],
        },
        Method {
            name: "FT",
            objectives: &["Ft"],
            kind: Kind::Learned(|data, _, dev| {
                let mut ft = FtConfig::new(STUDENT[1], TEACHER[1]).init(dev)?;
                ft.paraphraser = data.paraphraser.clone();
                Ok(Parts::Ft(ft.freeze_paraphraser()))
            }),
            grid: &[0.001, 0.01, 0.1, 1.0],
        },
        Method {
            name: "KDSVD",
            objectives: &["Kdsvd"],
            kind: Kind::Fixed(|w| {
                Ok(ce_plus(
                    w,
                    KdsvdConfig::new(vec!["conv1".into(), "feature".into()]).init()?,
                ))
            }),
            grid: &[0.001, 0.01, 0.1, 1.0],
        },
        Method {
            name: "AB (init epochs)",
            objectives: &["Ab"],
            kind: Kind::Learned(|_, _, dev| {
                let shape = |c| [c, 8, 8];
                Ok(Parts::Ab(
                    AbConfig::new(
                        vec!["preact".into()],
                        vec![shape(STUDENT[1])],
                        vec![shape(TEACHER[1])],
                    )
                    .init(dev)?,
                ))
            }),
            grid: &[2.0, 5.0, 10.0],
        },
        Method {
            name: "VID",
            objectives: &["Vid"],
            kind: Kind::Learned(|_, _, dev| {
                Ok(Parts::Vid(
                    VidConfig::new(vec!["feature".into()], vec![[STUDENT[1], TEACHER[1]]])
                        .init(dev)?,
                ))
            }),
            grid: &[0.001, 0.01, 0.1, 1.0],
        },
        Method {
            name: "OFD",
            objectives: &["Ofd"],
            kind: Kind::Learned(|data, _, dev| {
                Ok(Parts::Ofd(
                    OfdConfig::new(
                        vec!["preact".into()],
                        vec![[STUDENT[1], TEACHER[1]]],
                        vec![data.margins.clone()],
                    )
                    .init(dev)?,
                ))
            }),
            grid: &[0.001, 0.01, 0.1, 1.0],
        },
        Method {
            name: "ReviewKD",
            objectives: &["ReviewKd"],
            kind: Kind::Learned(|data, _, dev| {
                Ok(Parts::Review(
                    ReviewKdConfig::new(
                        vec!["conv1".into(), "feature".into(), "pooled".into()],
                        STUDENT.to_vec(),
                        TEACHER.to_vec(),
                    )
                    .with_warmup_epochs(data.epochs / 2)
                    .init(dev)?,
                ))
            }),
            grid: &[0.001, 0.01, 0.1, 1.0],
        },
        Method {
            name: "ICKD (embedded)",
            objectives: &["Ickd"],
            kind: Kind::Learned(|_, _, dev| {
                Ok(Parts::Ickd(
                    IckdConfig::new()
                        .with_embeds(vec![[STUDENT[1], TEACHER[1]]])
                        .init(dev)?,
                ))
            }),
            grid: &[0.001, 0.01, 0.1, 1.0],
        },
        Method {
            name: "SRD (projector)",
            objectives: &["Srd"],
            kind: Kind::Learned(|_, _, dev| {
                Ok(Parts::Srd(
                    SrdConfig::new()
                        .with_projector(Some([STUDENT[2], TEACHER[2]]))
                        .init(dev)?,
                ))
            }),
            grid: &[0.001, 0.01, 0.1, 1.0],
        },
        Method {
            name: "MGD",
            objectives: &["Mgd"],
            kind: Kind::Learned(|_, _, dev| {
                Ok(Parts::Mgd(
                    MgdConfig::new(STUDENT[1], TEACHER[1])
                        .with_reduction(Reduction::ElementMean)
                        .init(dev)?,
                ))
            }),
            grid: &[0.001, 0.01, 0.1, 1.0],
        },
        Method {
            name: "MGD + SoKD (DAFA, DAM)",
            objectives: &["Mgd", "Dafa", "Dam"],
            kind: Kind::Sokd,
            grid: &[1.0],
        },
        Method {
            name: "RKD",
            objectives: &["Rkd"],
            kind: Kind::Fixed(|w| Ok(ce_plus(w, RkdConfig::new().init()?))),
            grid: &[0.001, 0.01, 0.1, 1.0],
        },
        Method {
            name: "PKT",
            objectives: &["Pkt"],
            kind: Kind::Fixed(|w| Ok(ce_plus(w, PktConfig::new().init()?))),
            grid: &[0.001, 0.01, 0.1, 1.0],
        },
        Method {
            name: "SP",
            objectives: &["Sp"],
            kind: Kind::Fixed(|w| Ok(ce_plus(w, SpConfig::new().init()?))),
            grid: &[0.001, 0.01, 0.1, 1.0],
        },
        Method {
            name: "CC (Gaussian)",
            objectives: &["Cc"],
            kind: Kind::Fixed(|w| Ok(ce_plus(w, CcConfig::new().init()?))),
            grid: &[1e-5, 1e-4, 1e-3, 1e-2],
        },
        Method {
            name: "CRD",
            objectives: &["Crd"],
            kind: Kind::Learned(|data, _, dev| {
                Ok(Parts::Crd(
                    CrdConfig::new(STUDENT[2], TEACHER[2], data.train.len())
                        .with_negatives(256)
                        .init(dev)?,
                ))
            }),
            grid: &[0.001, 0.01, 0.1, 1.0],
        },
        Method {
            name: "SSKD (rotations)",
            objectives: &["Sskd"],
            kind: Kind::Learned(|data, w, dev| {
                let mut sskd = SskdConfig::new(STUDENT[2], TEACHER[2])
                    .with_weights([1.0, w, w, w])
                    .init(dev)?;
                sskd.teacher_head = data.ss_head.clone();
                Ok(Parts::Sskd(sskd.freeze_teacher_head()))
            }),
            grid: &[0.001, 0.01, 0.1, 1.0],
        },
        Method {
            name: "DLKD",
            objectives: &["Dlkd"],
            kind: Kind::Learned(|_, _, dev| {
                Ok(Parts::Dlkd(
                    DlkdConfig::new(STUDENT[2], TEACHER[2])
                        .with_ce_weight(0.0)
                        .init(dev)?,
                ))
            }),
            grid: &[0.001, 0.01, 0.1, 1.0],
        },
    ]
}

/// The methods that need one shape on both sides, for a student of the teacher's
/// architecture (`--pair matched`): the student alone, KD, and FSP, PAD-L2, DIST+, KTA with its
/// affinity term.
fn matched_methods() -> Vec<Method> {
    let mut list: Vec<Method> = methods().into_iter().take(2).collect();
    list.extend([
        Method {
            name: "FSP",
            objectives: &["Fsp"],
            kind: Kind::Fixed(|w| {
                Ok(ce_plus(
                    w,
                    FspConfig::new(vec!["conv1".into(), "feature".into()]).init()?,
                ))
            }),
            grid: &[0.001, 0.01, 0.1, 1.0],
        },
        Method {
            name: "PAD-L2 (variance branch)",
            objectives: &["PadL2"],
            kind: Kind::Learned(|_, _, dev| {
                Ok(Parts::PadL2(PadL2Config::new(TEACHER[2]).init(dev)?))
            }),
            grid: &[0.001, 0.01, 0.1, 1.0],
        },
        Method {
            name: "DIST+",
            objectives: &["DistPlus"],
            kind: Kind::Fixed(|w| Ok(ce_plus(w, DistPlusConfig::new().init()?))),
            grid: &[0.1, 1.0, 3.0, 10.0],
        },
        Method {
            name: "KTA + affinity",
            objectives: &["Kta", "Affinity"],
            kind: Kind::Fixed(|w| {
                Ok(ce_plus(
                    w,
                    KtaConfig::new().init()? + AffinityConfig::new().init()?,
                ))
            }),
            grid: &[0.1, 1.0, 10.0, 100.0],
        },
    ]);
    list
}

/// Rows `idx` of a tensor.
fn rows<const D: usize>(t: &Tensor<D>, idx: &[i64]) -> Tensor<D> {
    let i = Tensor::<1, Int>::from_data(TensorData::new(idx.to_vec(), [idx.len()]), &t.device());
    t.clone().select(0, i)
}

/// The teacher's outputs on every training row, computed once and written to a cache on disk
/// that training streams from, batch by batch.
fn cache_teacher(frozen: &Outputs, key: &str) -> Result<TeacherCache, DistillError> {
    let path =
        std::env::temp_dir().join(format!("burn-distill-feature-{}.cache", std::process::id()));
    let n = frozen.logits.dims()[0];
    let mut writer = CacheWriter::create(&path, key, n)?;
    for chunk in (0..n).collect::<Vec<usize>>().chunks(256) {
        let ids: Vec<i64> = chunk.iter().map(|&i| i as i64).collect();
        let ids = Tensor::<1, Int>::from_data(
            TensorData::new(ids, [chunk.len()]),
            &frozen.logits.device(),
        );
        writer.write_outputs(chunk, &frozen.select(ids))?;
    }
    let info = writer.finish()?;
    println!("teacher outputs cached in {}: {info}", path.display());
    let cache = TeacherCache::open(&path, key, n);
    // the open file stays readable after its name is gone (and nothing is left behind)
    let _ = std::fs::remove_file(&path);
    cache
}

/// One student trained with `method` at weight `w`; returns it.
fn train_student(
    method: &Method,
    w: f64,
    data: &Data,
    seed: u64,
    dev: &Device,
) -> Result<Cnn, DistillError> {
    let parts = match &method.kind {
        Kind::Learned(build) => Some(build(data, w, dev)?),
        Kind::Sokd => Some(Parts::Mgd(
            MgdConfig::new(STUDENT[1], TEACHER[1])
                .with_reduction(Reduction::ElementMean)
                .init(dev)?,
        )),
        Kind::Fixed(_) => None,
    };
    let fixed = match &method.kind {
        Kind::Fixed(make) => Some(make(w)?),
        _ => None,
    };
    let mut model = Trainee {
        student: Cnn::new(data.student, 100 + seed, dev),
        parts,
    };
    // SoKD: the frozen teacher behind DAFA, whose parameters a meta-teacher trains
    let mut meta = match method.kind {
        Kind::Sokd => {
            let dafa = DafaConfig::new().with_seed(seed).init(dev)?;
            let teacher = Augmented::new(data.network.clone().no_grad(), dafa);
            Some(
                MetaTeacherConfig::new()
                    .with_pilot_rate(PilotRate::StudentLr)
                    .with_teacher_lr(1e-2)
                    .with_period(2)
                    .init(teacher, AdamConfig::new().init(), ce())?,
            )
        }
        _ => None,
    };
    let mut optim = AdamConfig::new().init();
    let (lr, epochs, n) = (2e-3, data.epochs, data.train.len());
    let steps = n.div_ceil(64);
    for epoch in 0..epochs {
        let perm = permutation(n, seed * 1000 + epoch as u64);
        let quiz_order = permutation(n, seed * 1000 + epoch as u64 + 500);
        for (step, idx) in perm.chunks(64).enumerate() {
            let batch = data.train.rows(idx);
            let progress = Progress::epoch(epoch, epochs).at_step(step, steps);
            let out = match (&fixed, &model.parts, meta.as_mut()) {
                (_, Some(Parts::Mgd(mgd)), Some(meta)) => {
                    meta.set_loss(ce_plus(w, DamConfig::new().init(mgd.clone())?));
                    let q = data
                        .train
                        .rows(&quiz_order[step * 64 % n..(step * 64 % n + 64).min(n)]);
                    let (batch, quiz) = (Batch::new(batch.x, batch.y), Batch::new(q.x, q.y));
                    meta.round(&model.student, &batch, &quiz, progress, lr)?;
                    meta.student_loss(model.student.run(&batch.input), &batch, progress)?
                }
                (_, Some(Parts::Sskd(sskd)), _) => {
                    // each image and its three rotations, image-major; the teacher runs on them
                    let x = with_rotations(batch.x);
                    let teacher = data.network.valid().forward(x.clone().inner());
                    let input = DistillInput::from_outputs(model.student.forward(x), teacher)
                        .targets(batch.y)
                        .progress(progress);
                    sskd.forward(&input)?
                }
                (fixed, parts, _) => {
                    let indices = Tensor::<1, Int>::from_data(
                        TensorData::new(idx.to_vec(), [idx.len()]),
                        dev,
                    );
                    let input = DistillInput::from_outputs(
                        model.student.forward(batch.x),
                        data.teacher.outputs(
                            &idx.iter().map(|&i| i as usize).collect::<Vec<_>>(),
                            &data.teacher_device,
                        )?,
                    )
                    .targets(batch.y)
                    .indices(indices)
                    .progress(progress);
                    match (fixed, parts) {
                        (Some(loss), _) => loss.forward(&input)?,
                        (None, Some(part)) => learned_loss(part, w).forward(&input)?,
                        (None, None) => unreachable!("every method has a loss"),
                    }
                }
            };
            let grads = GradientsParams::from_grads(out.total.backward(), &model);
            model = optim.step(lr, model, grads);
        }
    }
    Ok(model.student)
}

/// Images `[B, 64]` (8×8) with their rotations by 90°, 180° and 270°: `[4B, 64]`, image-major.
fn with_rotations(x: Tensor<2>) -> Tensor<2> {
    let b = x.dims()[0];
    let image = x.reshape([b, 8, 8]);
    let turn = |t: Tensor<3>| t.swap_dims(1, 2).flip([1]);
    let r1 = turn(image.clone());
    let r2 = turn(r1.clone());
    let r3 = turn(r2.clone());
    Tensor::stack::<4>(vec![image, r1, r2, r3], 1).reshape([4 * b, 64])
}

/// SSKD's first stage: the teacher's self-supervision head learns which image each rotation
/// comes from, on the frozen teacher's penultimate features.
fn pretrain_ss_head(data_train: &Split, network: &Cnn, epochs: usize, dev: &Device) -> SsHead {
    let mut head = SsHead::new(TEACHER[2], dev);
    let mut optim = AdamConfig::new().init();
    let frozen = network.valid();
    for epoch in 0..epochs {
        for idx in permutation(data_train.len(), 9000 + epoch as u64).chunks(64) {
            let x = with_rotations(data_train.rows(idx).x.inner());
            let Some(Feature::Embedding(f)) = frozen.forward(x).features.get("embedding").cloned()
            else {
                unreachable!("the CNN has an `embedding`")
            };
            let f = Tensor::<2>::from_data(f.into_data(), dev);
            let loss = view_contrast_loss(head.forward(f));
            let grads = GradientsParams::from_grads(loss.backward(), &head);
            head = optim.step(1e-3, head, grads);
        }
    }
    head
}

/// FT's first stage: the paraphraser learns to reconstruct the teacher's `feature` maps.
fn pretrain_paraphraser(teacher: &Outputs, epochs: usize, dev: &Device) -> Paraphraser {
    let Some(Feature::Map(maps)) = teacher.features.get("feature") else {
        unreachable!("the CNN has a `feature` map")
    };
    let mut p = FtConfig::new(STUDENT[1], TEACHER[1])
        .init(dev)
        .expect("valid channels")
        .paraphraser;
    let mut optim = AdamConfig::new().init();
    let n = maps.dims()[0];
    for epoch in 0..epochs {
        for idx in permutation(n, 7000 + epoch as u64).chunks(64) {
            let loss = p.reconstruction_loss(rows(maps, idx));
            let grads = GradientsParams::from_grads(loss.backward(), &p);
            p = optim.step(1e-3, p, grads);
        }
    }
    p
}

/// OFD's margins from the per-channel mean and standard deviation of the teacher's `preact`
/// map (this teacher has no batch norm: the statistics it would have learned).
fn preact_margins(teacher: &Outputs) -> Vec<f64> {
    let Some(Feature::Map(pre)) = teacher.features.get("preact") else {
        unreachable!("the CNN has a `preact` map")
    };
    let c = pre.dims()[1];
    let per_channel = pre.clone().swap_dims(0, 1).reshape([c as i32, -1]);
    let mean = per_channel.clone().mean_dim(1);
    let std = (per_channel - mean.clone()).square().mean_dim(1).sqrt();
    let f = |t: Tensor<2>| t.into_data().convert::<f64>().try_to_vec::<f64>().unwrap();
    ofd_margins(&f(std), &f(mean))
}

fn main() -> Result<(), DistillError> {
    let epochs: usize = flag("--epochs").unwrap_or(40);
    let seeds: Vec<u64> = (1..=flag::<u64>("--seeds").unwrap_or(3)).collect();
    // --grid 1: only the middle weight of each grid (a quick run); 0 or absent: the whole grid
    let quick = flag::<usize>("--grid") == Some(1);
    let out: Option<PathBuf> = flag("--out");
    // --pair matched: a student of the teacher's architecture, for the methods that need one
    // shape on both sides
    let matched = flag::<String>("--pair").as_deref() == Some("matched");
    let student = if matched { TEACHER } else { STUDENT };
    let dev = Device::flex().autodiff();
    let (train_all, test) = digits(&dev, 0.25);
    // the validation split: a fifth of the training rows, by a fixed shuffle
    let perm = permutation(train_all.len(), 77);
    let n_val = train_all.len() / 5;
    let (val, train) = (
        train_all.rows(&perm[..n_val]),
        train_all.rows(&perm[n_val..]),
    );
    println!(
        "digits: {} train / {} validation / {} test",
        train.len(),
        val.len(),
        test.len()
    );

    let start = Instant::now();
    let mut teacher = Cnn::new(TEACHER, 0, &dev);
    let mut optim = AdamConfig::new().init();
    for epoch in 0..epochs.max(1) {
        for idx in permutation(train.len(), epoch as u64).chunks(64) {
            let batch = train.rows(idx);
            let input = DistillInput::student(teacher.forward(batch.x).logits).targets(batch.y);
            let loss = ce().forward(&input)?;
            let grads = GradientsParams::from_grads(loss.total.backward(), &teacher);
            teacher = optim.step(1e-3, teacher, grads);
        }
    }
    let teacher_val = accuracy(&teacher, &val);
    println!(
        "teacher CNN {TEACHER:?}: validation accuracy {teacher_val:.2}% ({:.1}s)",
        start.elapsed().as_secs_f64()
    );
    let frozen = teacher.valid().forward(train.x.clone().inner());
    let data = Data {
        paraphraser: pretrain_paraphraser(&frozen, epochs.div_ceil(4), &dev),
        margins: preact_margins(&frozen),
        ss_head: pretrain_ss_head(&train, &teacher, epochs.div_ceil(4), &dev),
        student,
        teacher: cache_teacher(&frozen, &format!("digits CNN {TEACHER:?}, {epochs} epochs"))?,
        teacher_device: frozen.logits.device(),
        network: teacher.clone(),
        train,
        val,
        test,
        epochs,
    };

    // the methods' objectives, from the registry: each must be one of its items, and the
    // feature and relational objectives the recipes leave out are named
    let recipes: Vec<Method> = methods().into_iter().chain(matched_methods()).collect();
    let registry = burn_distill::objectives();
    let named: Vec<&str> = recipes
        .iter()
        .flat_map(|m| m.objectives.iter().copied())
        .collect();
    for item in &named {
        assert!(
            registry.iter().any(|d| d.items.contains(item)),
            "`{item}` is not in the registry"
        );
    }
    let left_out: Vec<&[&str]> = registry
        .iter()
        .filter(|d| d.module.ends_with("feature") || d.module.ends_with("relation"))
        .filter(|d| !d.items.iter().any(|item| named.contains(item)))
        .map(|d| d.items)
        .collect();
    println!("feature and relational objectives without a recipe here: {left_out:?}");

    // choose each method's weight on the validation split; keep the chosen students
    let mut table = Vec::new();
    for method in if matched {
        matched_methods()
    } else {
        methods()
    } {
        let start = Instant::now();
        let grid: Vec<f64> = match quick {
            true => vec![method.grid[method.grid.len() / 2]],
            false => method.grid.to_vec(),
        };
        let mut best: Option<(f64, f64, f64, Vec<Cnn>)> = None;
        for &w in &grid {
            let mut students = Vec::new();
            for &seed in &seeds {
                students.push(train_student(&method, w, &data, seed, &dev)?);
            }
            let accs: Vec<f64> = students.iter().map(|s| accuracy(s, &data.val)).collect();
            let (mean, std) = mean_std(&accs);
            println!(
                "  {:<24} w = {w:<6} validation {mean:.2} ± {std:.2}%",
                method.name
            );
            if best.as_ref().is_none_or(|b| mean > b.1) {
                best = Some((w, mean, std, students));
            }
        }
        let (w, val_mean, val_std, students) = best.expect("a non-empty grid");
        let accs: Vec<f64> = students.iter().map(|s| accuracy(s, &data.test)).collect();
        let (mean, std) = mean_std(&accs);
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{:<26} chose w = {w}: validation {val_mean:.2} ± {val_std:.2}%, test {mean:.2} ± {std:.2}% ({secs:.0}s)",
            method.name
        );
        table.push((method.name, w, val_mean, val_std, mean, std, secs));
    }
    println!(
        "\nteacher test accuracy {:.2}%; student CNN {student:?}, {epochs} epochs, Adam 2e-3, seeds {seeds:?}:",
        accuracy(&teacher, &data.test)
    );
    println!(
        "| method | weight | validation (%) | test (%) | vs alone | time (s) |\n|---|---|---|---|---|---|"
    );
    let alone = table[0].4;
    for (name, w, vm, vs, m, s, secs) in &table {
        println!(
            "| {name} | {w} | {vm:.2} ± {vs:.2} | {m:.2} ± {s:.2} | {:+.2} | {secs:.0} |",
            m - alone
        );
    }
    if let Some(dir) = out {
        std::fs::create_dir_all(&dir).expect("the output directory");
        let bars: Vec<(String, f64, f64)> =
            table.iter().map(|r| (r.0.to_string(), r.4, r.5)).collect();
        let path = dir.join("feature_distill.svg");
        std::fs::write(
            &path,
            bar_svg(&bars, "test accuracy (%), mean ± std over seeds"),
        )
        .expect("the plot");
        println!("plot: {}", path.display());
    }
    Ok(())
}
