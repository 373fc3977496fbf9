//! Fashion-MNIST: a teacher MLP trained once (and saved), then the same small student alone
//! and with each distillation method, over seeds. Each method's settings (KD: T and α; DKD /
//! DCKD: T and β) are chosen on a validation split of 5,000 training images (the mean over the
//! seeds); MetaDistil, TAKD and DGKD use KD's choice. The chosen students are evaluated on the
//! test split once, at the end: a table of test accuracy (mean ± std) and wall time, and an
//! SVG plot of validation accuracy per epoch.
//!
//! ```text
//! cargo run --release --example fashion_mnist
//! cargo run --release --example fashion_mnist -- --epochs 10 --seeds 3 \
//!     --methods alone,kd,dkd,dckd,metadistil,takd,dgkd --out target/fashion_mnist
//! ```
//!
//! Data: the Debian package `dataset-fashion-mnist` (IDX files under
//! /usr/share/datasets/fashion-mnist), or `--data DIR` / `FASHION_MNIST_DIR`. Nothing is
//! downloaded. Flags: `--epochs`, `--seeds`, `--methods`, `--out`, `--data`,
//! `--teacher-epochs`, `--limit N` (use the first N training images, for smoke runs),
//! `--grid 0` (no search: the first setting of each grid, T = 1, α = β = 0.5).

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, SgdConfig};
use burn::tensor::{Device, Tensor, TensorData};
use burn_distill::Distillable;
use burn_distill::logit::DckdConfig;
use burn_distill::meta::{MetaTeacherConfig, PilotRate};
use burn_distill::pipeline::{DgkdConfig, Takd};
use burn_distill::prelude::*;
use common::idx::{find, read_idx};
use common::*;

const TEACHER: [usize; 4] = [784, 1024, 1024, 10];
const ASSISTANT: [usize; 3] = [784, 256, 10];
const STUDENT: [usize; 3] = [784, 64, 10];
const LR: f64 = 1e-3;
const BATCH: usize = 128;

struct Args {
    epochs: usize,
    teacher_epochs: usize,
    seeds: usize,
    methods: Vec<String>,
    out: PathBuf,
    data: PathBuf,
    limit: Option<usize>,
    /// Search the settings' grid (`--grid 0`: its first point only).
    grid: bool,
}

fn args() -> Args {
    Args {
        epochs: flag("--epochs").unwrap_or(10),
        teacher_epochs: flag("--teacher-epochs").unwrap_or(10),
        seeds: flag("--seeds").unwrap_or(3),
        methods: flag::<String>("--methods")
            .unwrap_or_else(|| "alone,kd,dkd,dckd,metadistil,takd,dgkd".into())
            .split(',')
            .map(str::to_string)
            .collect(),
        out: flag("--out").unwrap_or_else(|| PathBuf::from("target/fashion_mnist")),
        data: flag("--data")
            .or_else(|| std::env::var("FASHION_MNIST_DIR").ok().map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/usr/share/datasets/fashion-mnist")),
        limit: flag("--limit"),
        grid: flag::<usize>("--grid") != Some(0),
    }
}

/// Images scaled to [0, 1] `[N, 784]` and labels, from `{prefix}-images-idx3-ubyte(.gz)` and
/// `{prefix}-labels-idx1-ubyte(.gz)`.
fn load(dir: &Path, prefix: &str, limit: Option<usize>, dev: &Device) -> Result<Split, String> {
    let missing = |name: &str| {
        format!(
            "{name} not found in {}: install the Debian package `dataset-fashion-mnist` \
             (apt-get install dataset-fashion-mnist) or pass --data DIR / FASHION_MNIST_DIR",
            dir.display()
        )
    };
    let images = format!("{prefix}-images-idx3-ubyte");
    let labels = format!("{prefix}-labels-idx1-ubyte");
    let x = read_idx(&find(dir, &images).ok_or_else(|| missing(&images))?)
        .map_err(|e| e.to_string())?;
    let y = read_idx(&find(dir, &labels).ok_or_else(|| missing(&labels))?)
        .map_err(|e| e.to_string())?;
    let n = x.dims[0].min(limit.unwrap_or(usize::MAX));
    if y.dims[0] < n || x.dims[1..] != [28, 28] {
        return Err(format!(
            "{prefix}: images {:?} and labels {:?} do not fit",
            x.dims, y.dims
        ));
    }
    let pixels: Vec<f32> = x.data[..n * 784]
        .iter()
        .map(|&p| p as f32 / 255.0)
        .collect();
    let targets: Vec<i64> = y.data[..n].iter().map(|&l| l as i64).collect();
    Ok(Split {
        x: Tensor::from_data(TensorData::new(pixels, [n, 784]), dev),
        y: Tensor::from_data(TensorData::new(targets, [n]), dev),
    })
}

/// One student run: the trained student, its final validation accuracy and its validation
/// accuracy after each epoch.
struct Run {
    student: Mlp,
    accuracy: f64,
    curve: Vec<f64>,
}

fn cfg(epochs: usize, seed: u64) -> Train {
    Train {
        epochs,
        batch: BATCH,
        lr: LR,
        seed,
    }
}

/// Trains a fresh student with `loss` against cached teacher logits, recording its
/// validation curve.
fn distil(
    widths: &[usize],
    loss: &dyn Loss,
    teacher: Option<&Tensor<2>>,
    data: (&Split, &Split),
    epochs: usize,
    seed: u64,
    dev: &Device,
) -> Run {
    let (train_set, val_set) = data;
    let mut curve = Vec::new();
    let student = train(
        Mlp::new(widths, 100 + seed, dev),
        train_set,
        teacher,
        loss,
        &cfg(epochs, seed),
        |_, _, m| curve.push(accuracy(m, val_set)),
    );
    Run {
        accuracy: accuracy(&student, val_set),
        student,
        curve,
    }
}

/// One setting of a method: the temperature, KD's weight α (CE gets 1 − α) and DKD/DCKD's β.
#[derive(Clone, Copy, Debug)]
struct Kd {
    temperature: f64,
    alpha: f64,
    beta: f64,
}

impl Kd {
    /// The settings tried for `method` (first: T = 1, α = β = 0.5); MetaDistil, TAKD and DGKD
    /// take KD's choice.
    fn grid(method: &str, kd_choice: Kd) -> Vec<Kd> {
        let at = |temperature, alpha, beta| Kd {
            temperature,
            alpha,
            beta,
        };
        match method {
            "kd" => [1.0, 2.0, 4.0]
                .iter()
                .flat_map(|&t| [0.5, 0.9].map(|a| at(t, a, 0.5)))
                .collect(),
            "dkd" | "dckd" => [1.0, 2.0, 4.0]
                .iter()
                .flat_map(|&t| [0.5, 2.0].map(|b| at(t, 0.5, b)))
                .collect(),
            "alone" => vec![at(1.0, 0.5, 0.5)],
            _ => vec![kd_choice],
        }
    }
}

impl Kd {
    /// `(1 − α)·CE + α·KD(T)`.
    fn loss(&self) -> Result<Box<dyn Loss>, DistillError> {
        let kd = KdConfig::new().with_temperature(self.temperature).init()?;
        Ok(
            (CrossEntropyConfig::new().init()?.weighted(1.0 - self.alpha)
                + kd.weighted(self.alpha))
            .boxed(),
        )
    }
}

/// MetaDistil: the teacher keeps learning from the student's quiz (a held-out 5,000 images of
/// the training split), its meta round every 10 steps and from epoch 2 on.
fn metadistil(
    teacher: &Mlp,
    kd: Kd,
    data: (&Split, &Split, &Split),
    epochs: usize,
    seed: u64,
    dev: &Device,
) -> Result<Run, DistillError> {
    let (train_set, quiz_set, val_set) = data;
    let mut meta = MetaTeacherConfig::new()
        .with_pilot_rate(PilotRate::Fixed(0.05))
        .with_teacher_lr(1e-3)
        .with_period(10)
        .with_freeze_epochs(1)
        .init(teacher.clone(), SgdConfig::new().init(), kd.loss()?)?;
    let mut student = Mlp::new(&STUDENT, 100 + seed, dev);
    let mut optim = AdamConfig::new().init();
    let (n, steps) = (train_set.len(), train_set.len().div_ceil(BATCH));
    let mut curve = Vec::new();
    for epoch in 0..epochs {
        let perm = permutation(n, seed * 1000 + epoch as u64);
        let quiz_perm = permutation(quiz_set.len(), seed * 1000 + epoch as u64 + 7);
        for (step, idx) in perm.chunks(BATCH).enumerate() {
            let rows = train_set.rows(idx);
            let batch = Batch::new(rows.x, rows.y);
            let progress = Progress::epoch(epoch, epochs).at_step(step, steps);
            let at = step * BATCH % quiz_set.len();
            let q = quiz_set.rows(&quiz_perm[at..(at + BATCH).min(quiz_set.len())]);
            meta.round(&student, &batch, &Batch::new(q.x, q.y), progress, LR)?;
            let out = meta.student_loss(student.run(&batch.input), &batch, progress)?;
            let grads = GradientsParams::from_grads(out.total.backward(), &student);
            student = optim.step(LR, student, grads);
        }
        curve.push(accuracy(&student, val_set));
    }
    Ok(Run {
        accuracy: accuracy(&student, val_set),
        student,
        curve,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args();
    let dev = Device::flex().autodiff();
    let all_train = load(&args.data, "train", args.limit, &dev)?;
    let test_set = load(&args.data, "t10k", None, &dev)?;
    std::fs::create_dir_all(&args.out)?;
    // 5,000 (or 1/12) training images held out for validation, as many as MetaDistil's quiz
    // set; every method trains on the rest
    let n_held = (all_train.len() / 12).min(5000);
    let perm = permutation(all_train.len(), 99);
    let (val_set, quiz_set, train_set) = (
        all_train.rows(&perm[..n_held]),
        all_train.rows(&perm[n_held..2 * n_held]),
        all_train.rows(&perm[2 * n_held..]),
    );
    println!(
        "Fashion-MNIST: {} train, {} validation, {} quiz (MetaDistil), {} test images",
        train_set.len(),
        val_set.len(),
        quiz_set.len(),
        test_set.len()
    );

    // 1. the teacher, trained once and saved
    let start = Instant::now();
    let path = args.out.join(format!(
        "teacher-{}-{}ep-{}",
        TEACHER.map(|w| w.to_string()).join("-"),
        args.teacher_epochs,
        train_set.len()
    ));
    let teacher = if path.with_extension("bpk").exists() {
        println!("teacher: loading {}", path.with_extension("bpk").display());
        Mlp::new(&TEACHER, 0, &dev).load_file(path.with_extension("bpk"))
    } else {
        let teacher = train(
            Mlp::new(&TEACHER, 0, &dev),
            &train_set,
            None,
            &CrossEntropyConfig::new().init()?,
            &cfg(args.teacher_epochs, 0),
            |e, terms, m| {
                println!(
                    "teacher epoch {:>2}: {}  validation {:.2}%",
                    e + 1,
                    fmt_terms(terms),
                    accuracy(m, &val_set)
                )
            },
        );
        teacher.clone().save_file(path.with_extension("bpk"))?;
        teacher
    };
    println!(
        "teacher {TEACHER:?}: validation accuracy {:.2}% ({:.1}s)\n",
        accuracy(&teacher, &val_set),
        start.elapsed().as_secs_f64()
    );
    let teacher_logits = logits_of(&teacher, &train_set);
    let data = (&train_set, &val_set);

    // 2. the students: each method's setting chosen on the validation split
    let seeds: Vec<u64> = (1..=args.seeds as u64).collect();
    let mut table: Vec<(String, Kd, f64, f64, f64, f64, f64)> = Vec::new();
    let mut curves: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    // KD's choice, which MetaDistil, TAKD and DGKD reuse
    let mut kd_choice = Kd {
        temperature: 1.0,
        alpha: 0.5,
        beta: 0.5,
    };
    // the assistant of TAKD and DGKD, trained once from the teacher (seed 0) with KD's choice
    let mut assistant: Option<(Mlp, Tensor<2>)> = None;
    for method in &args.methods {
        let start = Instant::now();
        let mut grid = Kd::grid(method, kd_choice);
        if !args.grid {
            grid.truncate(1);
        }
        let mut best: Option<(Kd, f64, f64, Vec<Run>)> = None;
        for kd in grid {
            let mut runs = Vec::new();
            for &seed in &seeds {
                let run = match method.as_str() {
                    "alone" => distil(
                        &STUDENT,
                        &CrossEntropyConfig::new().init()?,
                        None,
                        data,
                        args.epochs,
                        seed,
                        &dev,
                    ),
                    "kd" => distil(
                        &STUDENT,
                        kd.loss()?.as_ref(),
                        Some(&teacher_logits),
                        data,
                        args.epochs,
                        seed,
                        &dev,
                    ),
                    "dkd" | "dckd" => {
                        let loss = if method == "dkd" {
                            (CrossEntropyConfig::new().init()?
                                + DkdConfig::new()
                                    .with_beta(kd.beta)
                                    .with_temperature(kd.temperature)
                                    .with_warmup_epochs(2)
                                    .init()?)
                            .boxed()
                        } else {
                            (CrossEntropyConfig::new().init()?
                                + DckdConfig::new()
                                    .with_beta(kd.beta)
                                    .with_temperature(kd.temperature)
                                    .with_warmup_epochs(2)
                                    .init()?)
                            .boxed()
                        };
                        distil(
                            &STUDENT,
                            loss.as_ref(),
                            Some(&teacher_logits),
                            data,
                            args.epochs,
                            seed,
                            &dev,
                        )
                    }
                    "metadistil" => metadistil(
                        &teacher,
                        kd,
                        (&train_set, &quiz_set, &val_set),
                        args.epochs,
                        seed,
                        &dev,
                    )?,
                    "takd" | "dgkd" => {
                        if assistant.is_none() {
                            // TAKD's first stage: teacher → assistant, with the same KD
                            let chain = Takd::new().stage(
                                "assistant",
                                Mlp::new(&ASSISTANT, 50, &dev),
                                kd.loss()?,
                            );
                            let trained =
                                chain.run(teacher.clone(), |name, model, from, loss| {
                                    let logits = logits_of(from, &train_set);
                                    let out = train(
                                        model,
                                        &train_set,
                                        Some(&logits),
                                        loss,
                                        &cfg(args.epochs, 0),
                                        |_, _, _| {},
                                    );
                                    println!(
                                        "  {name} {ASSISTANT:?}: validation accuracy {:.2}%",
                                        accuracy(&out, &val_set)
                                    );
                                    Ok::<_, DistillError>(out)
                                })?;
                            let a = trained.into_iter().next().expect("one stage");
                            let logits = logits_of(&a, &train_set);
                            assistant = Some((a, logits));
                        }
                        let (_, a_logits) = assistant.as_ref().expect("trained above");
                        if method == "takd" {
                            // TAKD's second stage: assistant → student
                            distil(
                                &STUDENT,
                                kd.loss()?.as_ref(),
                                Some(a_logits),
                                data,
                                args.epochs,
                                seed,
                                &dev,
                            )
                        } else {
                            dgkd(&teacher_logits, a_logits, kd, data, args.epochs, seed, &dev)?
                        }
                    }
                    other => {
                        return Err(format!(
                            "unknown method {other}: use alone,kd,dkd,dckd,metadistil,takd,dgkd"
                        )
                        .into());
                    }
                };
                runs.push(run);
            }
            let accs: Vec<f64> = runs.iter().map(|r| r.accuracy).collect();
            let (mean, std) = mean_std(&accs);
            println!(
                "{method:<11} T = {}, α = {}, β = {}: validation {mean:.2} ± {std:.2}%",
                kd.temperature, kd.alpha, kd.beta
            );
            if best.as_ref().is_none_or(|b| mean > b.1) {
                best = Some((kd, mean, std, runs));
            }
        }
        let (kd, val_mean, val_std, runs) = best.expect("a non-empty grid");
        if method == "kd" {
            kd_choice = kd;
        }
        // the test split, read once per chosen student
        let accs: Vec<f64> = runs
            .iter()
            .map(|r| accuracy(&r.student, &test_set))
            .collect();
        let (mean, std) = mean_std(&accs);
        let secs = start.elapsed().as_secs_f64();
        let epochs = runs[0].curve.len();
        curves.insert(
            method.clone(),
            (0..epochs)
                .map(|e| runs.iter().map(|r| r.curve[e]).sum::<f64>() / runs.len() as f64)
                .collect(),
        );
        println!(
            "{method:<11} chose T = {}, α = {}, β = {}: test accuracy {mean:.2} ± {std:.2}% over {} seeds ({secs:.1}s)\n",
            kd.temperature,
            kd.alpha,
            kd.beta,
            seeds.len()
        );
        table.push((method.clone(), kd, val_mean, val_std, mean, std, secs));
    }

    let mut md = format!(
        "teacher {TEACHER:?} {:.2}% (test); student {STUDENT:?}, {} epochs, Adam {LR}, batch {BATCH}, seeds {seeds:?}\n\n| method | chosen setting | validation (%) | test accuracy (%) | vs alone | wall time (s) |\n|---|---|---|---|---|---|\n",
        accuracy(&teacher, &test_set),
        args.epochs,
    );
    let alone = table.iter().find(|r| r.0 == "alone").map(|r| r.4);
    for (name, kd, vm, vs, mean, std, secs) in &table {
        let delta = alone.map_or("".into(), |a| format!("{:+.2}", mean - a));
        let setting = match name.as_str() {
            "alone" => "".to_string(),
            "dkd" | "dckd" => format!("T = {}, β = {}", kd.temperature, kd.beta),
            _ => format!("T = {}, α = {}", kd.temperature, kd.alpha),
        };
        let _ = writeln!(
            md,
            "| {name} | {setting} | {vm:.2} ± {vs:.2} | {mean:.2} ± {std:.2} | {delta} | {secs:.0} |"
        );
    }
    println!("{md}");
    std::fs::write(args.out.join("results.md"), &md)?;
    let plot = line_svg(
        &curves,
        &args.methods,
        "Fashion-MNIST: student validation accuracy per epoch (mean over seeds)",
        "%",
    );
    std::fs::write(args.out.join("accuracy.svg"), plot)?;
    println!(
        "wrote {} and {}",
        args.out.join("results.md").display(),
        args.out.join("accuracy.svg").display()
    );
    Ok(())
}

/// DGKD: the student learns from the teacher and the assistant at once, each dropped at random
/// per step (at least one kept).
fn dgkd(
    teacher: &Tensor<2>,
    assistant: &Tensor<2>,
    kd: Kd,
    data: (&Split, &Split),
    epochs: usize,
    seed: u64,
    dev: &Device,
) -> Result<Run, DistillError> {
    let (train_set, val_set) = data;
    let dgkd = DgkdConfig::new()
        .with_seed(seed)
        .init(KdConfig::new().with_temperature(kd.temperature).init()?)?;
    let loss = CrossEntropyConfig::new().init()?.weighted(1.0 - kd.alpha) + dgkd.weighted(kd.alpha);
    let mut curve = Vec::new();
    let both = Tensor::cat(vec![teacher.clone(), assistant.clone()], 1);
    let mut model = Mlp::new(&STUDENT, 100 + seed, dev);
    let mut optim = AdamConfig::new().init();
    let (n, steps) = (train_set.len(), train_set.len().div_ceil(BATCH));
    for epoch in 0..epochs {
        let perm = permutation(n, seed * 1000 + epoch as u64);
        for (step, idx) in perm.chunks(BATCH).enumerate() {
            let batch = train_set.rows(idx);
            let guides = Split {
                x: both.clone(),
                y: train_set.y.clone(),
            }
            .rows(idx)
            .x;
            let input = DistillInput::new(
                model.forward(batch.x),
                guides.clone().slice([0..idx.len(), 0..10]),
            )
            .guide(guides.slice([0..idx.len(), 10..20]))
            .targets(batch.y)
            .progress(Progress::epoch(epoch, epochs).at_step(step, steps));
            let out = loss.forward(&input)?;
            let grads = GradientsParams::from_grads(out.total.backward(), &model);
            model = optim.step(LR, model, grads);
        }
        curve.push(accuracy(&model, val_set));
    }
    Ok(Run {
        accuracy: accuracy(&model, val_set),
        student: model,
        curve,
    })
}
