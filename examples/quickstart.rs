//! Quick start: train a teacher, then the same small student alone, with KD, DKD, DCKD and
//! KD under a learned (CTKD) temperature, on the UCI 8×8 digits shipped in `data/`, and compare
//! test accuracies.
//!
//! ```text
//! cargo run --example quickstart
//! cargo run --example quickstart -- --loss examples/losses/dkd.toml   # alone vs a loss from a file
//! ```

mod common;

use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use burn_distill::curriculum::{Ctkd, CtkdConfig};
use burn_distill::logit::DckdConfig;
use burn_distill::prelude::*;
use common::*;

const SEEDS: [u64; 3] = [1, 2, 3];
const STUDENT_EPOCHS: usize = 100;

/// The student and CTKD's learnable temperature, trained together by one optimizer.
#[derive(Module, Debug)]
struct WithCtkd {
    student: Mlp,
    ctkd: Ctkd<Kd>,
}

fn main() -> Result<(), DistillError> {
    let dev = Device::flex().autodiff();
    let (train_set, test_set) = digits(&dev, 0.25);
    println!(
        "UCI digits: {} train, {} test samples, 64 features, 10 classes",
        train_set.len(),
        test_set.len()
    );

    // 1. the teacher
    let teacher = digits_teacher(&train_set, &test_set, &dev);
    let teacher_logits = logits_of(&teacher, &train_set);

    // 2. the student, three ways
    let (epochs, lr, hidden, temp, alpha, beta) = (STUDENT_EPOCHS, 3e-3, 6, 2.0, 0.5, 1.0);
    // `--loss FILE`: the student alone and with the loss a TOML or JSON spec describes
    let from_file = match flag::<String>("--loss") {
        Some(path) => Some((LossSpec::read(&path)?, path)),
        None => None,
    };
    if let Some((spec, path)) = &from_file {
        println!("loss from {path}:\n{}", spec.to_toml()?);
    }
    let mut methods: Vec<(&str, Box<dyn Loss>)> = vec![
        ("alone (CE)", CrossEntropyConfig::new().init()?.boxed()),
        (
            "KD  T=2, 0.5 CE + 0.5 KD",
            (CrossEntropyConfig::new().init()?.weighted(1.0 - alpha)
                + KdConfig::new()
                    .with_temperature(temp)
                    .init()?
                    .weighted(alpha))
            .boxed(),
        ),
        (
            "DKD T=2, CE + DKD(α=1, β=1)",
            (CrossEntropyConfig::new().init()?
                + DkdConfig::new()
                    .with_beta(beta)
                    .with_temperature(temp)
                    .with_warmup_epochs(5)
                    .init()?)
            .boxed(),
        ),
        (
            "DCKD T=2, CE + DCKD(1, 1)",
            (CrossEntropyConfig::new().init()?
                + DckdConfig::new()
                    .with_beta(beta)
                    .with_temperature(temp)
                    .with_warmup_epochs(5)
                    .init()?)
            .boxed(),
        ),
    ];
    if let Some((spec, path)) = &from_file {
        methods.truncate(1);
        methods.push((path.as_str(), spec.init()?));
    }
    let cfg = |seed| Train {
        epochs,
        batch: 64,
        lr,
        seed,
    };
    // one bar over every epoch of every run; a line per method when it is done
    let runs = methods.len() + usize::from(from_file.is_none());
    let bar = progress_bar(runs * SEEDS.len() * epochs);
    let report = |name: &str, seed: u64| {
        let (name, bar) = (name.to_string(), &bar);
        move |epoch: usize, terms: &[(String, f64)], _: &Mlp| {
            bar.inc(1);
            bar.set_message(format!(
                "{name} seed {seed} epoch {}: {}",
                epoch + 1,
                fmt_terms(terms)
            ));
        }
    };
    let mut table = Vec::new();
    let mut compare = |name: &str, run: &mut dyn FnMut(u64) -> Mlp| {
        let start = Instant::now();
        let accs: Vec<f64> = SEEDS
            .iter()
            .map(|&seed| accuracy(&run(seed), &test_set))
            .collect();
        let (mean, std) = mean_std(&accs);
        bar.suspend(|| {
            println!(
                "{name:<26} test accuracy {mean:.2} ± {std:.2}% over {} seeds",
                SEEDS.len()
            )
        });
        table.push((name.to_string(), mean, std, start.elapsed().as_secs_f64()));
    };
    for (name, loss) in &methods {
        compare(name, &mut |seed| {
            train(
                Mlp::new(&[64, hidden, 10], 100 + seed, &dev),
                &train_set,
                Some(&teacher_logits),
                loss.as_ref(),
                &cfg(seed),
                report(name, seed),
            )
        });
    }

    if from_file.is_none() {
        // KD whose temperature is learned adversarially (CTKD): T = 1 + 20·sigmoid(θ), θ trained
        // with the student behind a gradient reversal ramping to −1 over 10 epochs
        let name = "CTKD+KD, 0.5 CE + 0.5 KD";
        compare(name, &mut |seed| {
            let model = WithCtkd {
                student: Mlp::new(&[64, hidden, 10], 100 + seed, &dev),
                ctkd: CtkdConfig::new()
                    .init(KdConfig::new().init().expect("valid KD"), &dev)
                    .expect("valid CTKD"),
            };
            let loss = |m: &WithCtkd, input: &DistillInput| {
                (CrossEntropyConfig::new().init()?.weighted(1.0 - alpha)
                    + m.ctkd.clone().weighted(alpha))
                .forward(input)
            };
            let trained = train_with(
                model,
                |m| &m.student,
                &train_set,
                Some(&teacher_logits),
                &loss,
                &cfg(seed),
                report(name, seed),
            );
            bar.suspend(|| {
                println!(
                    "  seed {seed}: learned temperature {:.3}",
                    trained.ctkd.temperature()
                )
            });
            trained.student
        });
    }

    bar.finish_and_clear();
    println!(
        "\nstudent 64-{hidden}-10, {epochs} epochs, Adam {lr}, mean ± std over seeds {SEEDS:?}:"
    );
    println!("| method | test accuracy (%) | vs alone | time (s) |\n|---|---|---|---|");
    let alone = table[0].1;
    for (name, mean, std, secs) in &table {
        println!(
            "| {name} | {mean:.2} ± {std:.2} | {:+.2} | {secs:.1} |",
            mean - alone
        );
    }
    Ok(())
}
