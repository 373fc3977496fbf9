//! Feature and relational distillation with small CNNs on the quick-start digits (8×8
//! images): the same student alone, with KD, and with a FitNet hint, attention transfer, MGD,
//! MGD + SoKD, RKD and DLKD on its taps (each plus cross-entropy), test accuracies over seeds.
//!
//! MGD + SoKD: the teacher's map passes through DAFA (a learnable augmentation mixture,
//! trained bi-level by a meta-teacher on quiz batches drawn from the training split), and
//! DAM restricts MGD to the areas both networks attend to.
//!
//! ```text
//! cargo run --release --example feature_distill              # ~2 minutes
//! cargo run --release --example feature_distill -- --epochs 2
//! ```
//!
//! Teacher and student expose two taps: `"feature"`, the last convolutional map, and
//! `"embedding"`, the penultimate layer. The teacher's taps are computed once (it is frozen
//! and the data is not augmented).

mod common;

use std::time::Instant;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_distill::feature::{
    AtConfig, Augmented, DafaConfig, DamConfig, Hint, HintConfig, Mgd, MgdConfig,
};
use burn_distill::meta::{Batch, MetaTeacherConfig, PilotRate};
use burn_distill::prelude::*;
use burn_distill::relation::{Dlkd, DlkdConfig, RkdConfig};
use burn_distill::{Distillable, Feature, Outputs};
use common::*;

const SEEDS: [u64; 3] = [1, 2, 3];

/// conv–ReLU–conv–ReLU–maxpool, then two linear layers; taps after the pool and before the
/// classifier.
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
    fn new(c1: usize, c2: usize, e: usize, seed: u64, dev: &Device) -> Self {
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
        let x = x.reshape([n, 1, 8, 8]);
        let map = self.pool.forward(
            self.relu
                .forward(self.conv2.forward(self.relu.forward(self.conv1.forward(x)))),
        );
        let embedding = self
            .relu
            .forward(self.fc.forward(map.clone().flatten(1, 3)));
        Outputs::logits(self.out.forward(embedding.clone()))
            .feature("feature", map)
            .feature("embedding", embedding)
    }
}

impl Distillable for Cnn {
    type Input = Tensor<2>;
    fn run(&self, x: &Tensor<2>) -> Outputs {
        self.forward(x.clone())
    }
}

/// The learnable parts a method trains beside the student (one value per run: the size of
/// the largest variant does not matter).
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
enum Parts {
    Hint(Hint),
    Mgd(Mgd),
    Dlkd(Dlkd),
}

#[derive(Module, Debug)]
struct Trainee {
    student: Cnn,
    parts: Option<Parts>,
}

/// How a method builds its loss from the current learnable parts.
enum Method {
    Fixed(Box<dyn Loss>),
    Hint,
    Mgd,
    /// MGD inside DAM, against a DAFA-augmented teacher that a meta-teacher trains.
    MgdSokd,
    Dlkd,
}

fn ce_plus(loss: impl Loss + 'static) -> Box<dyn Loss> {
    (CrossEntropyConfig::new()
        .init()
        .expect("the default config is valid")
        + loss)
        .boxed()
}

/// The loss of `trainee` (whose parts are cloned in, so the optimizer's update is used).
fn loss_of(method: &Method, trainee: &Trainee) -> Box<dyn Loss> {
    match (method, &trainee.parts) {
        (Method::Fixed(_), _) => unreachable!("fixed losses are used as they are"),
        (Method::Hint, Some(Parts::Hint(h))) => ce_plus(h.clone()),
        (Method::Mgd, Some(Parts::Mgd(m))) => ce_plus(m.clone()),
        (Method::MgdSokd, Some(Parts::Mgd(m))) => {
            ce_plus(DamConfig::new().init(m.clone()).expect("a valid DAM"))
        }
        (Method::Dlkd, Some(Parts::Dlkd(d))) => d.clone().boxed(),
        _ => unreachable!("parts match the method"),
    }
}

/// Rows `idx` of a tensor.
fn rows<const D: usize>(t: &Tensor<D>, idx: &[i64]) -> Tensor<D> {
    let i = Tensor::<1, Int>::from_data(TensorData::new(idx.to_vec(), [idx.len()]), &t.device());
    t.clone().select(0, i)
}

struct Data<'a> {
    train: &'a Split,
    test: &'a Split,
    teacher: &'a Outputs,
    /// The trained teacher, for methods that run it (SoKD's augmented teacher).
    network: &'a Cnn,
}

/// The teacher's precomputed outputs for rows `idx`.
fn teacher_rows(teacher: &Outputs, idx: &[i64]) -> Outputs {
    Outputs {
        logits: rows(&teacher.logits, idx),
        features: teacher
            .features
            .iter()
            .map(|(k, f)| {
                let f = match f {
                    Feature::Map(t) => Feature::Map(rows(t, idx)),
                    Feature::Embedding(t) => Feature::Embedding(rows(t, idx)),
                };
                (k.clone(), f)
            })
            .collect(),
    }
}

fn train_student(
    method: &Method,
    parts: Option<Parts>,
    data: &Data,
    epochs: usize,
    seed: u64,
    dev: &Device,
) -> Result<f64, DistillError> {
    let mut model = Trainee {
        student: Cnn::new(4, 8, 16, 100 + seed, dev),
        parts,
    };
    // SoKD: the frozen teacher behind DAFA, whose parameters a meta-teacher trains
    let mut meta = match method {
        Method::MgdSokd => {
            let dafa = DafaConfig::new().with_seed(seed).init(dev)?;
            let teacher = Augmented::new(data.network.clone().no_grad(), dafa);
            Some(
                MetaTeacherConfig::new()
                    .with_pilot_rate(PilotRate::StudentLr)
                    .with_teacher_lr(1e-2)
                    .with_period(2)
                    .init(
                        teacher,
                        AdamConfig::new().init(),
                        CrossEntropyConfig::new().init()?,
                    )?,
            )
        }
        _ => None,
    };
    let mut optim = AdamConfig::new().init();
    let lr = 2e-3;
    let n = data.train.len();
    let steps = n.div_ceil(64);
    for epoch in 0..epochs {
        let perm = permutation(n, seed * 1000 + epoch as u64);
        let quiz_order = permutation(n, seed * 1000 + epoch as u64 + 500);
        for (step, idx) in perm.chunks(64).enumerate() {
            let batch = data.train.rows(idx);
            let progress = Progress::epoch(epoch, epochs).at_step(step, steps);
            let out = if let Some(meta) = meta.as_mut() {
                meta.set_loss(loss_of(method, &model));
                let q = data
                    .train
                    .rows(&quiz_order[step * 64 % n..(step * 64 % n + 64).min(n)]);
                let (batch, quiz) = (Batch::new(batch.x, batch.y), Batch::new(q.x, q.y));
                meta.round(&model.student, &batch, &quiz, progress, lr)?;
                meta.student_loss(model.student.run(&batch.input), &batch, progress)?
            } else {
                let input = DistillInput::from_outputs(
                    model.student.forward(batch.x),
                    teacher_rows(data.teacher, idx),
                )
                .targets(batch.y)
                .progress(progress);
                match method {
                    Method::Fixed(loss) => loss.forward(&input)?,
                    _ => loss_of(method, &model).forward(&input)?,
                }
            };
            let grads = GradientsParams::from_grads(out.total.backward(), &model);
            model = optim.step(lr, model, grads);
        }
    }
    if let Some(meta) = &meta {
        let mix = meta.teacher().dafa.mixture();
        println!("  seed {seed}: DAFA mixture (identity, scale, noise, drop, smooth) = {mix:.3?}");
    }
    Ok(accuracy(&model.student, data.test))
}

fn main() -> Result<(), DistillError> {
    let epochs = flag("--epochs").unwrap_or(40);
    let dev = Device::flex().autodiff();
    let (train_set, test_set) = digits(&dev, 0.25);

    // the teacher: 32-64 channels, a 128-d embedding
    let start = Instant::now();
    let mut teacher = Cnn::new(32, 64, 128, 0, &dev);
    let mut optim = AdamConfig::new().init();
    let ce = CrossEntropyConfig::new().init()?;
    for epoch in 0..epochs.max(1) {
        for idx in permutation(train_set.len(), epoch as u64).chunks(64) {
            let batch = train_set.rows(idx);
            let input = DistillInput::student(teacher.forward(batch.x).logits).targets(batch.y);
            let loss = ce.forward(&input)?;
            let grads = GradientsParams::from_grads(loss.total.backward(), &teacher);
            teacher = optim.step(1e-3, teacher, grads);
        }
    }
    println!(
        "teacher CNN 32-64 conv, 128-d embedding: test accuracy {:.2}% ({:.1}s)",
        accuracy(&teacher, &test_set),
        start.elapsed().as_secs_f64()
    );
    let frozen = teacher.valid().forward(train_set.x.clone().inner());
    let data = Data {
        train: &train_set,
        test: &test_set,
        teacher: &frozen,
        network: &teacher,
    };

    let (s_map, t_map) = ([8, 4, 4], [64, 4, 4]);
    let kd = KdConfig::new().with_temperature(2.0).init()?;
    let methods: Vec<(&str, Method)> = vec![
        (
            "alone (CE)",
            Method::Fixed(CrossEntropyConfig::new().init()?.boxed()),
        ),
        (
            "KD T=2 (0.5/0.5)",
            Method::Fixed(
                (CrossEntropyConfig::new().init()?.weighted(0.5) + kd.weighted(0.5)).boxed(),
            ),
        ),
        ("CE + FitNet hint", Method::Hint),
        (
            "CE + AT (β=1000)",
            Method::Fixed(ce_plus(AtConfig::new().init()?)),
        ),
        ("CE + MGD (mean)", Method::Mgd),
        ("CE + MGD + SoKD (DAFA, DAM)", Method::MgdSokd),
        (
            "CE + RKD (25/50)",
            Method::Fixed(ce_plus(RkdConfig::new().init()?)),
        ),
        ("DLKD (CE+corr+supcon+align)", Method::Dlkd),
    ];
    let parts = |method: &Method| -> Result<Option<Parts>, DistillError> {
        Ok(match method {
            Method::Fixed(_) => None,
            Method::Hint => Some(Parts::Hint(HintConfig::new(s_map, t_map).init(&dev)?)),
            Method::Mgd | Method::MgdSokd => Some(Parts::Mgd(
                MgdConfig::new(8, 64)
                    .with_reduction(burn_distill::feature::MgdReduction::Mean)
                    .init(&dev)?,
            )),
            Method::Dlkd => Some(Parts::Dlkd(DlkdConfig::new(16, 128).init(&dev)?)),
        })
    };
    let mut table = Vec::new();
    for (name, method) in &methods {
        let start = Instant::now();
        let mut accs = Vec::new();
        for &seed in &SEEDS {
            accs.push(train_student(
                method,
                parts(method)?,
                &data,
                epochs,
                seed,
                &dev,
            )?);
        }
        let (mean, std) = mean_std(&accs);
        let secs = start.elapsed().as_secs_f64();
        println!("{name:<30} test accuracy {mean:.2} ± {std:.2}% ({secs:.1}s)");
        table.push((*name, mean, std, secs));
    }
    println!(
        "\nstudent CNN 4-8 conv, 16-d embedding, {epochs} epochs, Adam 2e-3, seeds {SEEDS:?}:"
    );
    println!("| method | test accuracy (%) | vs alone | time (s) |\n|---|---|---|---|");
    for (name, mean, std, secs) in &table {
        println!(
            "| {name} | {mean:.2} ± {std:.2} | {:+.2} | {secs:.1} |",
            mean - table[0].1
        );
    }
    Ok(())
}
