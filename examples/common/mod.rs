//! Shared by the examples: a small data set in memory, an MLP, and a training loop that takes
//! any burn-distill `Loss`.
#![allow(dead_code)] // each example uses a different subset

pub mod idx;

use std::collections::BTreeMap;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_distill::prelude::*;

/// Features `[N, D]` and labels `[N]`, on a device.
#[derive(Clone)]
pub struct Split {
    pub x: Tensor<2>,
    pub y: Tensor<1, Int>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.x.dims()[0]
    }

    /// Rows `idx` of this split.
    pub fn rows(&self, idx: &[i64]) -> Split {
        let dev = self.x.device();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx.to_vec(), [idx.len()]), &dev);
        Split {
            x: self.x.clone().select(0, idx.clone()),
            y: self.y.clone().select(0, idx),
        }
    }
}

/// A deterministic permutation of `0..n` (xorshift; the same on every platform).
pub fn permutation(n: usize, seed: u64) -> Vec<i64> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut p: Vec<i64> = (0..n as i64).collect();
    for i in (1..n).rev() {
        p.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    p
}

/// The UCI 8×8 digits shipped in `data/digits.csv` (see `data/README.md`), pixels scaled to
/// [0, 1], split into train and test by a fixed shuffle.
pub fn digits(dev: &Device, test_fraction: f64) -> (Split, Split) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/digits.csv");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.is_empty()) {
        let v: Vec<f64> = line.split(',').map(|f| f.trim().parse().unwrap()).collect();
        xs.extend(v[..64].iter().map(|p| p / 16.0));
        ys.push(v[64] as i64);
    }
    let n = ys.len();
    let all = Split {
        x: Tensor::from_data(TensorData::new(xs, [n, 64]), dev),
        y: Tensor::from_data(TensorData::new(ys, [n]), dev),
    };
    let perm = permutation(n, 2024);
    let n_test = (n as f64 * test_fraction) as usize;
    (all.rows(&perm[n_test..]), all.rows(&perm[..n_test]))
}

/// A multilayer perceptron with ReLUs between its layers.
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
    relu: Relu,
}

impl Mlp {
    /// An MLP with the given layer widths, e.g. `[64, 128, 10]`, initialised from `seed`.
    pub fn new(widths: &[usize], seed: u64, dev: &Device) -> Self {
        dev.seed(seed);
        let mlp = Self {
            layers: widths
                .windows(2)
                .map(|w| LinearConfig::new(w[0], w[1]).init(dev))
                .collect(),
            relu: Relu::new(),
        };
        // materialise the lazily initialised parameters now, while the seed holds
        mlp.fork(dev)
    }

    pub fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = self.relu.forward(x);
            }
        }
        x
    }
}

impl burn_distill::Distillable for Mlp {
    type Input = Tensor<2>;
    fn run(&self, x: &Tensor<2>) -> burn_distill::Outputs {
        burn_distill::Outputs::logits(self.forward(x.clone()))
    }
}

/// Test accuracy of any classifier of `[N, D]` inputs on `split`, in percent.
pub fn accuracy<M: burn_distill::Distillable<Input = Tensor<2>>>(model: &M, split: &Split) -> f64 {
    let logits = model.valid().run(&split.x.clone().inner()).logits;
    let pred = logits.argmax(1).squeeze_dim::<1>(1);
    let correct: i64 = pred
        .equal(split.y.clone().inner())
        .int()
        .sum()
        .into_scalar();
    100.0 * correct as f64 / split.len() as f64
}

/// Settings of one training run.
pub struct Train {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
}

/// Trains `model` on `train` with `loss`, reading the teacher's logits for each batch from
/// `teacher_logits` (rows aligned with `train`; `None` for a loss that needs no teacher), and
/// calls `report(epoch, mean loss terms, model)` after each epoch. Returns the trained model.
pub fn train(
    model: Mlp,
    train: &Split,
    teacher_logits: Option<&Tensor<2>>,
    loss: &dyn Loss,
    cfg: &Train,
    report: impl FnMut(usize, &[(String, f64)], &Mlp),
) -> Mlp {
    train_with(
        model,
        |m| m,
        train,
        teacher_logits,
        &|_, input| loss.forward(input),
        cfg,
        report,
    )
}

/// [`train`] for a module `M` that holds the student (reached by `student`) and learnable
/// parts of the loss beside it (a CTKD temperature, say): `loss(model, input)` evaluates the
/// loss with the model's current parts, and Adam updates them all.
pub fn train_with<M: Module>(
    mut model: M,
    student: fn(&M) -> &Mlp,
    train: &Split,
    teacher_logits: Option<&Tensor<2>>,
    loss: &dyn Fn(&M, &DistillInput) -> Result<LossOutput, DistillError>,
    cfg: &Train,
    mut report: impl FnMut(usize, &[(String, f64)], &Mlp),
) -> M {
    let mut optim = AdamConfig::new().init();
    let n = train.len();
    let steps = n.div_ceil(cfg.batch);
    for epoch in 0..cfg.epochs {
        let perm = permutation(n, cfg.seed * 1000 + epoch as u64);
        let mut sums: Vec<(String, f64)> = Vec::new();
        for (step, idx) in perm.chunks(cfg.batch).enumerate() {
            let batch = train.rows(idx);
            let logits = student(&model).forward(batch.x.clone());
            let teacher = match teacher_logits {
                Some(t) => {
                    let dev = t.device();
                    let i = Tensor::<1, Int>::from_data(
                        TensorData::new(idx.to_vec(), [idx.len()]),
                        &dev,
                    );
                    t.clone().select(0, i)
                }
                None => logits.clone().detach(),
            };
            let input = DistillInput::new(logits, teacher)
                .targets(batch.y)
                .progress(Progress::epoch(epoch, cfg.epochs).at_step(step, steps));
            let out = loss(&model, &input).expect("a valid batch");
            for (i, (name, v)) in out.values().into_iter().enumerate() {
                match sums.get_mut(i) {
                    Some(s) => s.1 += v / steps as f64,
                    None => sums.push((name, v / steps as f64)),
                }
            }
            let grads = GradientsParams::from_grads(out.total.backward(), &model);
            model = optim.step(cfg.lr, model, grads);
        }
        report(epoch, &sums, student(&model));
    }
    model
}

/// The digits teacher of the examples: an MLP 64-256-256-10 trained 60 epochs with Adam 1e-3
/// (batch 64) on `train`; prints its test accuracy and training time.
pub fn digits_teacher(train_set: &Split, test_set: &Split, dev: &Device) -> Mlp {
    let start = std::time::Instant::now();
    let cfg = Train {
        epochs: 60,
        batch: 64,
        lr: 1e-3,
        seed: 0,
    };
    let teacher = train(
        Mlp::new(&[64, 256, 256, 10], 0, dev),
        train_set,
        None,
        &CrossEntropyConfig::new()
            .init()
            .expect("the default config is valid"),
        &cfg,
        |epoch, terms, _| {
            if (epoch + 1) % 20 == 0 {
                println!("teacher epoch {:>2}: {}", epoch + 1, fmt_terms(terms));
            }
        },
    );
    println!(
        "teacher 64-256-256-10: test accuracy {:.2}% ({:.1}s)\n",
        accuracy(&teacher, test_set),
        start.elapsed().as_secs_f64()
    );
    teacher
}

/// The teacher's logits for every row of `split`, computed once (a frozen teacher and no
/// augmentation make them constant).
pub fn logits_of(teacher: &Mlp, split: &Split) -> Tensor<2> {
    teacher.valid().forward(split.x.clone().inner())
}

/// `name=value` pairs for a progress line.
pub fn fmt_terms(terms: &[(String, f64)]) -> String {
    terms
        .iter()
        .map(|(n, v)| format!("{n}={v:.4}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The value after the command-line flag `name` (`--epochs 5`), parsed; `None` when absent.
pub fn flag<T: std::str::FromStr>(name: &str) -> Option<T> {
    let args: Vec<String> = std::env::args().collect();
    let value = args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}: cannot parse {value:?}")),
    )
}

/// A progress bar of `len` steps (drawn on a terminal only; logs get the summary lines).
pub fn progress_bar(len: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("[{bar:30}] {pos}/{len} {elapsed} {msg}")
            .expect("a valid template"),
    );
    bar
}

/// Mean and sample standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64
    } else {
        0.0
    };
    (m, var.sqrt())
}

/// A horizontal bar chart of `(label, mean, std)` rows with error bars, as SVG (plotters), the
/// axis from the smallest `mean − std` to the largest `mean + std`.
pub fn bar_svg(rows: &[(String, f64, f64)], title: &str) -> String {
    use plotters::prelude::*;
    let lo = rows
        .iter()
        .map(|r| r.1 - r.2)
        .fold(f64::INFINITY, f64::min)
        .floor();
    let hi = rows
        .iter()
        .map(|r| r.1 + r.2)
        .fold(f64::NEG_INFINITY, f64::max)
        .ceil();
    let hi = hi.max(lo + 1.0);
    let n = rows.len();
    let mut svg = String::new();
    {
        let height = 60 + 24 * n as u32;
        let root = SVGBackend::with_string(&mut svg, (660, height)).into_drawing_area();
        root.fill(&WHITE).expect("an SVG string");
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(190)
            .build_cartesian_2d(lo..hi, (0..n).into_segmented())
            .expect("a chart");
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) if *i < n => rows[n - 1 - i].0.clone(),
                _ => String::new(),
            })
            .draw()
            .expect("the axes");
        let bar = RGBColor(0x4c, 0x78, 0xa8);
        chart
            .draw_series(rows.iter().enumerate().map(|(i, (_, mean, _))| {
                let y = n - 1 - i;
                let corners = [
                    (lo, SegmentValue::Exact(y)),
                    (*mean, SegmentValue::Exact(y + 1)),
                ];
                let mut rect = Rectangle::new(corners, bar.filled());
                rect.set_margin(4, 4, 0, 0);
                rect
            }))
            .expect("the bars");
        chart
            .draw_series(rows.iter().enumerate().map(|(i, (_, mean, std))| {
                let y = SegmentValue::CenterOf(n - 1 - i);
                PathElement::new(vec![(mean - std, y.clone()), (mean + std, y)], BLACK)
            }))
            .expect("the error bars");
        root.present().expect("an SVG string");
    }
    svg
}

/// A line plot (SVG, plotters) of one value per epoch, one line per name of `order` (the
/// curves of `curves`), titled `title`, the axis labelled in `unit`.
pub fn line_svg(
    curves: &BTreeMap<String, Vec<f64>>,
    order: &[String],
    title: &str,
    unit: &str,
) -> String {
    use plotters::prelude::*;
    let all = curves.values().flatten();
    let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
    let (lo, hi) = ((lo - 0.5).floor(), (hi + 0.5).ceil());
    let epochs = curves.values().map(Vec::len).max().unwrap_or(1).max(2);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 420)).into_drawing_area();
        root.fill(&WHITE).expect("an SVG string");
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 14))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(1..epochs, lo..hi)
            .expect("a chart");
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_label_formatter(&|a| format!("{a:.1}{unit}"))
            .draw()
            .expect("the axes");
        for (i, name) in order.iter().enumerate() {
            let Some(curve) = curves.get(name) else {
                continue;
            };
            let color = Palette99::pick(i).stroke_width(2);
            chart
                .draw_series(LineSeries::new(
                    curve.iter().enumerate().map(|(e, a)| (e + 1, *a)),
                    color,
                ))
                .expect("a curve")
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(
                        vec![(x, y), (x + 20, y)],
                        Palette99::pick(i).stroke_width(2),
                    )
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .expect("the legend");
        root.present().expect("an SVG string");
    }
    svg
}

/// The fortune cookies of Debian's `fortunes` package (BSD licence), one a document, in file
/// order (the files of /usr/share/games/fortunes sorted by name, `art` and `ascii-art` left
/// out), each trimmed.
pub fn fortunes() -> std::io::Result<Vec<String>> {
    const DIR: &str = "/usr/share/games/fortunes";
    let mut files: Vec<_> = std::fs::read_dir(DIR)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_none() && p.is_file())
        .filter(|p| {
            !matches!(
                p.file_name().and_then(|n| n.to_str()),
                Some("art" | "ascii-art")
            )
        })
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read(&f)?;
        let text = String::from_utf8_lossy(&text);
        docs.extend(
            text.split("\n%\n")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        );
    }
    Ok(docs)
}
