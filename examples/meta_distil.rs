//! MetaDistil on the quick-start data: a teacher that keeps learning from its student's quiz
//! results, against plain KD from the same (fixed) teacher; and Decoupled MetaDistil (the
//! meta-teacher driving DKD).
//!
//! ```text
//! cargo run --release --example meta_distil              # 100 epochs, ~25 s
//! cargo run --release --example meta_distil -- --epochs 3
//! ```
//!
//! 15% of the training split is held out as the quiz set; teacher and students train on the
//! rest. Each round the meta-teacher steps a copy of the student (SGD, η), scores it on a quiz
//! batch and moves the teacher to lower that score; then the student takes its real step.

mod common;

use std::time::Instant;

use burn::optim::{AdamConfig, GradientsParams, SgdConfig};
use burn::tensor::Device;
use burn_distill::meta::{MetaTeacher, MetaTeacherConfig, PilotRate};
use burn_distill::prelude::*;
use common::*;

const SEEDS: [u64; 3] = [1, 2, 3];
const BATCH: usize = 64;
const LR: f64 = 3e-3;
const HIDDEN: usize = 6;
const TEMPERATURE: f64 = 2.0;

fn kd() -> Result<LossSum, DistillError> {
    let kd = KdConfig::new().with_temperature(TEMPERATURE).init()?;
    Ok(CrossEntropyConfig::new().init()?.weighted(0.5) + kd.weighted(0.5))
}

fn dkd() -> Result<Dkd, DistillError> {
    DkdConfig::new()
        .with_beta(1.0)
        .with_temperature(TEMPERATURE)
        .with_warmup_epochs(5)
        .init()
}

/// Trains a student from `meta`'s teacher; the teacher learns each round unless `meta_rounds`
/// is false (plain KD from a fixed teacher). Returns the student's test accuracy.
fn run(
    name: &str,
    mut meta: MetaTeacher<Mlp>,
    meta_rounds: bool,
    data: (&Split, &Split, &Split),
    epochs: usize,
    seed: u64,
    dev: &Device,
) -> Result<f64, DistillError> {
    let (train_set, quiz_set, test_set) = data;
    let mut student = Mlp::new(&[64, HIDDEN, 10], 100 + seed, dev);
    let mut optim = AdamConfig::new().init();
    let steps = train_set.len().div_ceil(BATCH);
    let quiz_order = permutation(quiz_set.len(), seed);
    let mut quiz_at = 0;
    for epoch in 0..epochs {
        let (mut quiz_sum, mut rounds) = (0.0, 0);
        let perm = permutation(train_set.len(), seed * 1000 + epoch as u64);
        for (step, idx) in perm.chunks(BATCH).enumerate() {
            let rows = train_set.rows(idx);
            let batch = Batch::new(rows.x, rows.y);
            let progress = Progress::epoch(epoch, epochs).at_step(step, steps);
            if meta_rounds {
                let q: Vec<i64> = (0..BATCH)
                    .map(|k| quiz_order[(quiz_at + k) % quiz_order.len()])
                    .collect();
                quiz_at += BATCH;
                let q = quiz_set.rows(&q);
                let round = meta.round(&student, &batch, &Batch::new(q.x, q.y), progress, LR)?;
                if let Some(loss) = round.quiz_loss {
                    quiz_sum += loss;
                    rounds += 1;
                }
            }
            let out = meta.student_loss(student.run(&batch.input), &batch, progress)?;
            let grads = GradientsParams::from_grads(out.total.backward(), &student);
            student = optim.step(LR, student, grads);
        }
        if seed == SEEDS[0] && meta_rounds {
            println!(
                "{name:<22} seed {seed} epoch {:>3}: student test {:.2}%  teacher test {:.2}%  quiz loss {:.4}",
                epoch + 1,
                accuracy(&student, test_set),
                accuracy(meta.teacher(), test_set),
                quiz_sum / rounds.max(1) as f64
            );
        }
    }
    Ok(accuracy(&student, test_set))
}

fn main() -> Result<(), DistillError> {
    let epochs = flag("--epochs").unwrap_or(100);
    let dev = Device::flex().autodiff();
    let (all_train, test_set) = digits(&dev, 0.25);
    let perm = permutation(all_train.len(), 7);
    let n_quiz = all_train.len() * 15 / 100;
    let (quiz_set, train_set) = (
        all_train.rows(&perm[..n_quiz]),
        all_train.rows(&perm[n_quiz..]),
    );
    println!(
        "UCI digits: {} train, {} quiz, {} test samples",
        train_set.len(),
        quiz_set.len(),
        test_set.len()
    );

    let teacher = digits_teacher(&train_set, &test_set, &dev);

    let config = MetaTeacherConfig::new()
        .with_pilot_rate(PilotRate::Fixed(0.05))
        .with_teacher_lr(1e-3);
    let methods: [(&str, bool, bool); 4] = [
        ("KD (fixed teacher)", false, false),
        ("MetaDistil (KD)", true, false),
        ("DKD (fixed teacher)", false, true),
        ("Decoupled MetaDistil", true, true),
    ];
    let mut table = Vec::new();
    for (name, meta_rounds, decoupled) in methods {
        let start = Instant::now();
        let mut accs = Vec::new();
        for &seed in &SEEDS {
            let meta = if decoupled {
                MetaTeacher::decoupled(&config, teacher.clone(), SgdConfig::new().init(), dkd()?)?
            } else {
                config.init(teacher.clone(), SgdConfig::new().init(), kd()?)?
            };
            accs.push(run(
                name,
                meta,
                meta_rounds,
                (&train_set, &quiz_set, &test_set),
                epochs,
                seed,
                &dev,
            )?);
        }
        let (mean, std) = mean_std(&accs);
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{name:<22} test accuracy {mean:.2} ± {std:.2}% over {} seeds ({secs:.1}s)\n",
            SEEDS.len()
        );
        table.push((name, mean, std, secs));
    }
    println!(
        "student 64-{HIDDEN}-10, {epochs} epochs, Adam {LR}, T={TEMPERATURE}, η=0.05, teacher SGD {}:",
        config.teacher_lr
    );
    println!("| method | test accuracy (%) | vs fixed teacher | time (s) |\n|---|---|---|---|");
    for (i, (name, mean, std, secs)) in table.iter().enumerate() {
        let base = table[i - i % 2].1;
        println!(
            "| {name} | {mean:.2} ± {std:.2} | {:+.2} | {secs:.1} |",
            mean - base
        );
    }
    Ok(())
}
