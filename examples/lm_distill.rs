//! Token-level distillation of a small causal transformer on real English text: a teacher
//! trained with cross-entropy, then a smaller student trained with cross-entropy alone and
//! with cross-entropy plus forward KL, reverse KL, JSD(0.5) and skew KL from the teacher;
//! validation perplexity per epoch, test perplexity once at the end.
//!
//! ```text
//! cargo run --release --example lm_distill                      # about 14 minutes on 2 cores
//! cargo run --release --example lm_distill -- --epochs 1 --steps 20 --teacher-epochs 1
//! cargo run --release --example lm_distill -- --out target/lm_distill   # + an SVG plot
//! ```
//!
//! Data: the fortune cookies of Debian's `fortunes` package (BSD licence; fortune-mod, Ken
//! Arnold and contributors), read from /usr/share/games/fortunes (the `art` and `ascii-art`
//! files are left out). The fortunes are shuffled (seeded) and split 80/10/10 into train,
//! validation and test; characters are the tokens (printable ASCII and newline). Nothing
//! downloads. The distillation weight and temperature are fixed before looking at any result
//! (α = 0.5, T = 1); the test split is read once, after training.

mod common;

use std::time::Instant;

use burn::module::Module;
use burn::nn::attention::generate_autoregressive_mask;
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_distill::prelude::*;
use burn_distill::token::{self, ForwardKlConfig, JsdConfig, ReverseKlConfig, SkewKlConfig};
use common::{flag, line_svg};

const DIR: &str = "/usr/share/games/fortunes";
const SEQ: usize = 64;
const BATCH: usize = 32;
/// Printable ASCII (32..=126) and newline; anything else becomes `?`.
const VOCAB: usize = 96;

fn token(b: u8) -> i64 {
    match b {
        b'\n' => 95,
        32..=126 => (b - 32) as i64,
        _ => (b'?' - 32) as i64,
    }
}

/// The fortunes as train, validation and test token streams.
fn corpus() -> std::io::Result<[Vec<i64>; 3]> {
    let fortunes = common::fortunes()?;
    // a seeded shuffle, then 80/10/10
    let order = common::permutation(fortunes.len(), 7);
    let stream = |range: std::ops::Range<usize>| -> Vec<i64> {
        order[range]
            .iter()
            .flat_map(|&i| fortunes[i as usize].bytes().chain([b'\n']).map(token))
            .collect()
    };
    let n = fortunes.len();
    let (a, b) = (n * 8 / 10, n * 9 / 10);
    Ok([stream(0..a), stream(a..b), stream(b..n)])
}

/// A causal character-level transformer.
#[derive(Module, Debug)]
struct Lm {
    token: Embedding,
    position: Embedding,
    encoder: TransformerEncoder,
    norm: LayerNorm,
    head: Linear,
}

impl Lm {
    fn new(d: usize, layers: usize, device: &Device) -> Self {
        Self {
            token: EmbeddingConfig::new(VOCAB, d).init(device),
            position: EmbeddingConfig::new(SEQ, d).init(device),
            encoder: TransformerEncoderConfig::new(d, 4 * d, 4, layers)
                .with_dropout(0.0)
                .with_norm_first(true)
                .init(device),
            norm: LayerNormConfig::new(d).init(device),
            head: LinearConfig::new(d, VOCAB).init(device),
        }
    }

    /// Logits `[B, L, V]` of token ids `[B, L]`.
    fn forward(&self, x: Tensor<2, Int>) -> Tensor<3> {
        let [b, l] = x.dims();
        let device = x.device();
        let positions = Tensor::<1, Int>::arange(0..l as i64, &device)
            .unsqueeze_dim::<2>(0)
            .expand([b, l]);
        let h = self.token.forward(x) + self.position.forward(positions);
        let mask = generate_autoregressive_mask(b, l, &device);
        let h = self
            .encoder
            .forward(TransformerEncoderInput::new(h).mask_attn(mask));
        self.head.forward(self.norm.forward(h))
    }
}

/// Windows of `SEQ + 1` tokens starting at `starts`: inputs `[B, SEQ]` and next tokens `[B·SEQ]`.
fn windows(stream: &[i64], starts: &[usize], device: &Device) -> (Tensor<2, Int>, Tensor<1, Int>) {
    let b = starts.len();
    let x: Vec<i64> = starts
        .iter()
        .flat_map(|&s| stream[s..s + SEQ].to_vec())
        .collect();
    let y: Vec<i64> = starts
        .iter()
        .flat_map(|&s| stream[s + 1..s + SEQ + 1].to_vec())
        .collect();
    (
        Tensor::from_data(TensorData::new(x, [b, SEQ]), device),
        Tensor::from_data(TensorData::new(y, [b * SEQ]), device),
    )
}

/// A seeded stream of random window starts.
struct Starts(u64);

impl Starts {
    fn next(&mut self, len: usize) -> Vec<usize> {
        (0..BATCH)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 % (len - SEQ - 1) as u64) as usize
            })
            .collect()
    }
}

/// Perplexity, `exp(mean cross-entropy)`, over up to `windows_max` consecutive windows.
fn perplexity(model: &Lm, stream: &[i64], windows_max: usize, device: &Device) -> f64 {
    let model = model.clone().no_grad();
    let starts: Vec<usize> = (0..windows_max)
        .map(|i| i * SEQ)
        .filter(|&s| s + SEQ < stream.len())
        .collect();
    let ce = CrossEntropyConfig::new()
        .init()
        .expect("the default config is valid");
    let mut total = 0.0;
    for chunk in starts.chunks(BATCH) {
        let (x, y) = windows(stream, chunk, device);
        let z = token::flatten(model.forward(x));
        let out = ce
            .forward(&DistillInput::student(z).targets(y))
            .expect("valid tokens");
        total += out.value() * chunk.len() as f64;
    }
    (total / starts.len().max(1) as f64).exp()
}

struct Run {
    epochs: usize,
    steps: usize,
    lr: f64,
    eval_windows: usize,
}

/// Trains `model` on `loss` (reading the teacher's logits when there is a teacher) for
/// `run.epochs` epochs of `run.steps` steps; the validation perplexity after each.
fn train(
    mut model: Lm,
    teacher: Option<&Lm>,
    loss: &dyn Loss,
    data: &[Vec<i64>; 3],
    run: &Run,
    label: &str,
    device: &Device,
) -> (Lm, Vec<f64>) {
    let mut optim = AdamConfig::new().init();
    let mut starts = Starts(0x5eed);
    let teacher = teacher.map(|t| t.clone().no_grad());
    let mut curve = Vec::new();
    let bar = indicatif::ProgressBar::new((run.epochs * run.steps) as u64)
        .with_message(label.to_string());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>24} [{bar:30}] {pos}/{len} {elapsed} {per_sec}",
        )
        .expect("a valid template"),
    );
    for _ in 0..run.epochs {
        for _ in 0..run.steps {
            let (x, y) = windows(&data[0], &starts.next(data[0].len()), device);
            let zs = token::flatten(model.forward(x.clone()));
            let input = match &teacher {
                Some(t) => DistillInput::new(zs, token::flatten(t.forward(x))),
                None => DistillInput::student(zs),
            }
            .targets(y);
            let out = loss.forward(&input).expect("well-formed batches");
            let grads = GradientsParams::from_grads(out.total.backward(), &model);
            model = optim.step(run.lr, model, grads);
            bar.inc(1);
        }
        curve.push(perplexity(&model, &data[1], run.eval_windows, device));
    }
    bar.finish_and_clear();
    (model, curve)
}

fn main() -> Result<(), DistillError> {
    let data = match corpus() {
        Ok(d) if d[0].len() > 10 * SEQ => d,
        _ => {
            eprintln!(
                "{DIR} is missing or empty: install the Debian package `fortunes` \
                 (apt-get install fortunes) to run this example"
            );
            return Ok(());
        }
    };
    let device = Device::flex().autodiff();
    device.seed(42);
    let run = Run {
        epochs: flag("--epochs").unwrap_or(4),
        steps: flag("--steps").unwrap_or(200),
        lr: 2e-3,
        eval_windows: flag("--eval").unwrap_or(128),
    };
    let teacher_run = Run {
        epochs: flag("--teacher-epochs").unwrap_or(6),
        ..run
    };
    println!(
        "fortunes: {} / {} / {} characters (train / validation / test), vocabulary {VOCAB}, \
         windows of {SEQ}, batches of {BATCH}",
        data[0].len(),
        data[1].len(),
        data[2].len()
    );
    let ce = || CrossEntropyConfig::new().init();

    let start = Instant::now();
    let (teacher, curve) = train(
        Lm::new(128, 2, &device),
        None,
        &ce()?,
        &data,
        &teacher_run,
        "teacher",
        &device,
    );
    println!(
        "teacher (d=128, 2 layers): validation perplexity by epoch {:?} ({:.0} s)",
        curve
            .iter()
            .map(|p| (p * 100.0).round() / 100.0)
            .collect::<Vec<_>>(),
        start.elapsed().as_secs_f64()
    );
    let teacher_test = perplexity(&teacher, &data[2], run.eval_windows, &device);

    let alpha = 0.5;
    let methods: Vec<(&str, Box<dyn Loss>)> = vec![
        ("CE alone", ce()?.boxed()),
        (
            "CE + forward KL",
            (ce()?.weighted(1.0 - alpha) + ForwardKlConfig::new().init()?.weighted(alpha)).boxed(),
        ),
        (
            "CE + reverse KL",
            (ce()?.weighted(1.0 - alpha) + ReverseKlConfig::new().init()?.weighted(alpha)).boxed(),
        ),
        (
            "CE + JSD(0.5)",
            (ce()?.weighted(1.0 - alpha) + JsdConfig::new().with_beta(0.5).init()?.weighted(alpha))
                .boxed(),
        ),
        (
            "CE + skew KL(0.1)",
            (ce()?.weighted(1.0 - alpha)
                + SkewKlConfig::new().with_alpha(0.1).init()?.weighted(alpha))
            .boxed(),
        ),
    ];
    let mut rows = Vec::new();
    for (name, loss) in &methods {
        let start = Instant::now();
        device.seed(7); // every student starts from the same weights
        let student = Lm::new(48, 1, &device);
        let distil = name.contains('+');
        let (student, curve) = train(
            student,
            distil.then_some(&teacher),
            loss.as_ref(),
            &data,
            &run,
            name,
            &device,
        );
        let test = perplexity(&student, &data[2], run.eval_windows, &device);
        println!(
            "{name:>20}: validation perplexity by epoch {:?}, test {test:.3} ({:.0} s)",
            curve
                .iter()
                .map(|p| (p * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>(),
            start.elapsed().as_secs_f64()
        );
        rows.push((name.to_string(), curve, test));
    }

    println!("\n| student (d=48, 1 layer) | validation perplexity, last epoch | test perplexity |");
    println!("|---|---|---|");
    for (name, curve, test) in &rows {
        println!(
            "| {name} | {:.3} | {test:.3} |",
            curve.last().copied().unwrap_or(f64::NAN)
        );
    }
    println!(
        "| teacher (d=128, 2 layers) | {:.3} | {teacher_test:.3} |",
        curve_last(&teacher, &data, &run, &device)
    );
    if let Some(dir) = flag::<std::path::PathBuf>("--out") {
        std::fs::create_dir_all(&dir).expect("the output directory");
        let curves: std::collections::BTreeMap<String, Vec<f64>> = rows
            .iter()
            .map(|(n, c, _)| (n.clone(), c.clone()))
            .collect();
        let order: Vec<String> = rows.iter().map(|(n, _, _)| n.clone()).collect();
        let title = "fortunes: student validation perplexity per epoch";
        let path = dir.join("lm_distill.svg");
        std::fs::write(&path, line_svg(&curves, &order, title, "")).expect("the plot");
        println!("plot: {}", path.display());
    }
    Ok(())
}

fn curve_last(model: &Lm, data: &[Vec<i64>; 3], run: &Run, device: &Device) -> f64 {
    perplexity(model, &data[1], run.eval_windows, device)
}
