//! A Llama-architecture causal language model on burn: token embeddings, pre-norm blocks of
//! grouped-query causal self-attention with rotary positions and a SwiGLU feed-forward layer,
//! RMSNorm, and a head tied to the embeddings or its own.
//!
//! ```text
//! h₀ = E[ids]
//! hₗ₊₁ = hₗ + attn(norm(hₗ)) ,  then  hₗ₊₁ += W_down (silu(W_gate x) ⊙ W_up x),  x = norm(hₗ₊₁)
//! norm(x) = x / sqrt(mean(x²) + ε) ⊙ w
//! logits = norm(h_L) · Eᵀ            (tied)
//! ```
//!
//! Rotary positions use Hugging Face's pairing (`rotate_half`: dimensions `i` and `i + d/2`,
//! angle `pos · θ^(−2i/d)`); a GGUF file's query and key rows, permuted by llama.cpp's converter
//! for adjacent pairs, are un-permuted on load (see `from_gguf`). Weights are stored in burn's
//! layout `[in, out]`; the query, key and value projections are one matrix, as are the gate and
//! up projections.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

use super::{Gguf, LlamaError};

/// The shape of a Llama-architecture model.
#[derive(Config, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Tokens in the vocabulary.
    pub vocab: usize,
    /// The width of the residual stream.
    pub hidden: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key and value heads (grouped-query attention: query head `j` reads key–value head
    /// `j / (heads / kv_heads)`).
    pub kv_heads: usize,
    /// The feed-forward layer's inner width.
    pub ffn: usize,
    /// RMSNorm's ε.
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    /// The rotary base θ.
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    /// Whether the head is the transposed embedding matrix.
    #[config(default = true)]
    pub tied: bool,
}

impl LlamaConfig {
    /// The width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads.max(1)
    }

    fn check(&self) -> Result<(), LlamaError> {
        let bad = |problem: String| {
            Err(LlamaError::Format {
                what: "the model's shape".into(),
                problem,
            })
        };
        let sizes = [
            self.vocab,
            self.hidden,
            self.layers,
            self.heads,
            self.kv_heads,
            self.ffn,
        ];
        if sizes.contains(&0) {
            return bad(format!("every size must be positive: {self:?}"));
        }
        if !self.hidden.is_multiple_of(self.heads) || !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "hidden {} must split into {} heads of an even width",
                self.hidden, self.heads
            ));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!(
                "{} query heads do not share {} key-value heads evenly",
                self.heads, self.kv_heads
            ));
        }
        let eps_ok = self.norm_eps > 0.0 && self.norm_eps < 1.0;
        if !eps_ok || self.rope_theta.is_nan() || self.rope_theta <= 1.0 {
            return bad(format!(
                "norm_eps {} must be in (0, 1) and rope_theta {} above 1",
                self.norm_eps, self.rope_theta
            ));
        }
        Ok(())
    }

    /// A model with random weights (normal, standard deviation 0.02; norms at 1), for a student.
    pub fn init(&self, device: &Device) -> Result<Llama, LlamaError> {
        self.check()?;
        let normal = |shape: [usize; 2]| {
            Param::from_tensor(Tensor::random(
                shape,
                Distribution::Normal(0.0, 0.02),
                device,
            ))
        };
        let ones = |n: usize| Param::from_tensor(Tensor::ones([n], device));
        let (h, d) = (self.hidden, self.head_dim());
        let blocks = (0..self.layers)
            .map(|_| Block {
                attn_norm: ones(h),
                qkv: normal([h, (self.heads + 2 * self.kv_heads) * d]),
                out: normal([self.heads * d, h]),
                ffn_norm: ones(h),
                gate_up: normal([h, 2 * self.ffn]),
                down: normal([self.ffn, h]),
            })
            .collect();
        Ok(Llama {
            embed: normal([self.vocab, h]),
            blocks,
            norm: ones(h),
            head: (!self.tied).then(|| normal([h, self.vocab])),
            shape: Shape::of(self),
        })
    }

    /// The shape a GGUF file's `llama.*` keys give (architecture `llama`, no rope scaling).
    pub fn from_gguf(file: &Gguf) -> Result<Self, LlamaError> {
        let arch = file.str("general.architecture")?;
        if arch != "llama" {
            return Err(LlamaError::Unsupported {
                what: "general.architecture".into(),
                found: arch.into(),
            });
        }
        for key in ["llama.rope.scaling.type", "llama.rope.scaling.factor"] {
            if let Ok(value) = file.get(key) {
                let none = matches!(value, super::Value::Str(s) if s == "none")
                    || matches!(value, super::Value::Float(f) if *f == 1.0);
                if !none {
                    return Err(LlamaError::Unsupported {
                        what: key.into(),
                        found: format!("{value:?}"),
                    });
                }
            }
        }
        let heads = file.usize("llama.attention.head_count")?;
        let config = Self {
            vocab: file.strings("tokenizer.ggml.tokens")?.len(),
            hidden: file.usize("llama.embedding_length")?,
            layers: file.usize("llama.block_count")?,
            heads,
            kv_heads: match file.usize("llama.attention.head_count_kv") {
                Err(LlamaError::Missing(_)) => heads,
                kv_heads => kv_heads?,
            },
            ffn: file.usize("llama.feed_forward_length")?,
            norm_eps: file.float("llama.attention.layer_norm_rms_epsilon")?,
            rope_theta: file.float("llama.rope.freq_base").unwrap_or(10000.0),
            tied: !file.tensors().contains_key("output.weight"),
        };
        if let Ok(rope) = file.usize("llama.rope.dimension_count")
            && rope != config.head_dim()
        {
            return Err(LlamaError::Unsupported {
                what: "llama.rope.dimension_count".into(),
                found: format!(
                    "{rope} (partial rotary; heads are {} wide)",
                    config.head_dim()
                ),
            });
        }
        config.check()?;
        Ok(config)
    }
}

/// The sizes the forward pass needs, kept with the weights.
#[derive(Module, Debug)]
struct Shape {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ffn: usize,
    norm_eps: f64,
    rope_theta: f64,
}

impl Shape {
    fn of(c: &LlamaConfig) -> Self {
        Self {
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim(),
            ffn: c.ffn,
            norm_eps: c.norm_eps,
            rope_theta: c.rope_theta,
        }
    }
}

/// One pre-norm transformer block.
#[derive(Module, Debug)]
struct Block {
    attn_norm: Param<Tensor<1>>,
    /// `[H, (heads + 2·kv_heads)·d]`: queries, then keys, then values.
    qkv: Param<Tensor<2>>,
    out: Param<Tensor<2>>,
    ffn_norm: Param<Tensor<1>>,
    /// `[H, 2·ffn]`: the gate, then the up projection.
    gate_up: Param<Tensor<2>>,
    down: Param<Tensor<2>>,
}

/// A Llama-architecture causal language model (see the [module docs](self)).
#[derive(Module, Debug)]
pub struct Llama {
    embed: Param<Tensor<2>>,
    blocks: Vec<Block>,
    norm: Param<Tensor<1>>,
    /// `[H, V]` when the head is not tied to the embeddings.
    head: Option<Param<Tensor<2>>>,
    shape: Shape,
}

fn rms_norm<const D: usize>(x: Tensor<D>, weight: &Param<Tensor<1>>, eps: f64) -> Tensor<D> {
    let scale = (x.clone().square().mean_dim(D - 1) + eps).sqrt().recip();
    x * scale * weight.val().unsqueeze()
}

/// `[T, d]` cosines and sines of the rotary angles, each half repeated (Hugging Face's layout),
/// the sines with the first half negated so that `rope(x) = x·cos + swap_halves(x)·sin`.
fn rotary(positions: usize, dim: usize, theta: f64, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let half = dim / 2;
    let mut cos = Vec::with_capacity(positions * dim);
    let mut sin = Vec::with_capacity(positions * dim);
    for p in 0..positions {
        let angles = (0..half).map(|i| p as f64 * theta.powf(-2.0 * i as f64 / dim as f64));
        let angles: Vec<f64> = angles.collect();
        cos.extend(angles.iter().chain(&angles).map(|a| a.cos() as f32));
        sin.extend(angles.iter().map(|a| -a.sin() as f32));
        sin.extend(angles.iter().map(|a| a.sin() as f32));
    }
    let shape = [positions, dim];
    (
        Tensor::from_data(TensorData::new(cos, shape), device),
        Tensor::from_data(TensorData::new(sin, shape), device),
    )
}

/// Rotary positions on `[B, heads, T, d]`.
fn rope(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<4> {
    let d = x.dims()[3];
    let swapped = Tensor::cat(
        vec![
            x.clone().narrow(3, d / 2, d / 2),
            x.clone().narrow(3, 0, d / 2),
        ],
        3,
    );
    x * cos.clone().unsqueeze::<4>() + swapped * sin.clone().unsqueeze::<4>()
}

impl Block {
    /// One block on the residual stream `[B·T, H]` of `b` sequences (2-D products: one gemm
    /// per weight, not one per sequence).
    fn forward(
        &self,
        x: Tensor<2>,
        b: usize,
        s: &Shape,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
    ) -> Tensor<2> {
        let t = x.dims()[0] / b;
        let d = s.head_dim;
        let qkv = rms_norm(x.clone(), &self.attn_norm, s.norm_eps).matmul(self.qkv.val());
        let heads = |start: usize, n: usize| {
            qkv.clone()
                .narrow(1, start * d, n * d)
                .reshape([b, t, n, d])
                .swap_dims(1, 2)
        };
        let q = rope(heads(0, s.heads), cos, sin);
        let k = rope(heads(s.heads, s.kv_heads), cos, sin);
        let v = heads(s.heads + s.kv_heads, s.kv_heads);
        let group = s.heads / s.kv_heads;
        let share = |kv: Tensor<4>| {
            if group == 1 {
                return kv;
            }
            kv.unsqueeze_dim::<5>(2)
                .expand([b, s.kv_heads, group, t, d])
                .reshape([b, s.heads, t, d])
        };
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: true,
        };
        let context = attention(q, share(k), share(v), None, None, options)
            .swap_dims(1, 2)
            .reshape([b * t, s.heads * d]);
        let x = x + context.matmul(self.out.val());
        let gate_up = rms_norm(x.clone(), &self.ffn_norm, s.norm_eps).matmul(self.gate_up.val());
        let inner = silu(gate_up.clone().narrow(1, 0, s.ffn)) * gate_up.narrow(1, s.ffn, s.ffn);
        x + inner.matmul(self.down.val())
    }
}

impl Llama {
    /// The final hidden states `[B, T, H]` (after the last norm) of token ids `[B, T]`: what
    /// the head reads, and what [`FusedLinear`](crate::token::FusedLinear) takes with
    /// [`head_weight`](Self::head_weight) so that the logits are never built.
    pub fn hidden(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = ids.dims();
        let s = &self.shape;
        let embed = self.embed.val();
        let h = embed.dims()[1];
        let mut x = embed.select(0, ids.reshape([b * t]));
        let (cos, sin) = rotary(t, s.head_dim, s.rope_theta, &x.device());
        for block in &self.blocks {
            x = block.forward(x, b, s, &cos, &sin);
        }
        rms_norm(x, &self.norm, s.norm_eps).reshape([b, t, h])
    }

    /// The head in burn's layout `[H, V]`: the transposed embeddings when tied.
    pub fn head_weight(&self) -> Tensor<2> {
        match &self.head {
            Some(head) => head.val(),
            None => self.embed.val().transpose(),
        }
    }

    /// Next-token logits `[B, T, V]` of token ids `[B, T]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = ids.dims();
        let hidden = self.hidden(ids);
        let h = hidden.dims()[2];
        let logits = hidden.reshape([b * t, h]).matmul(self.head_weight());
        logits.reshape([b, t, self.vocab_size()])
    }

    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.embed.dims()[0]
    }

    /// Loads a model from a GGUF file (architecture `llama`; F32, F16, Q8_0 or Q4_1 tensors,
    /// dequantised to f32).
    ///
    /// llama.cpp's converter permuted each head's query and key rows (`2i + c` holds Hugging
    /// Face's row `i + c·d/2`) so that its rotary code turns adjacent pairs; they are put back
    /// here, and the model turns halves, as Hugging Face does.
    pub fn from_gguf(file: &Gguf, device: &Device) -> Result<Self, LlamaError> {
        let c = LlamaConfig::from_gguf(file)?;
        let (h, d) = (c.hidden, c.head_dim());
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<Vec<f32>, LlamaError> {
            let info = file.info(name)?;
            if info.shape != [rows, cols] {
                return Err(LlamaError::Shape {
                    tensor: name.into(),
                    expected: vec![rows, cols],
                    found: info.shape.clone(),
                });
            }
            file.dequantize(name)
        };
        let vector = |name: &str| -> Result<Param<Tensor<1>>, LlamaError> {
            let info = file.info(name)?;
            if info.shape != [h] {
                return Err(LlamaError::Shape {
                    tensor: name.into(),
                    expected: vec![h],
                    found: info.shape.clone(),
                });
            }
            let values = file.dequantize(name)?;
            Ok(Param::from_tensor(Tensor::from_data(
                TensorData::new(values, [h]),
                device,
            )))
        };
        // stacks [out, in] matrices by rows and transposes them to burn's [in, out]
        let linear = |parts: Vec<Vec<f32>>, inputs: usize| -> Param<Tensor<2>> {
            let rows: usize = parts.iter().map(|p| p.len() / inputs).sum();
            let data = TensorData::new(parts.concat(), [rows, inputs]);
            Param::from_tensor(Tensor::from_data(data, device).transpose())
        };
        let blocks = (0..c.layers)
            .map(|l| {
                let name = |part: &str| format!("blk.{l}.{part}.weight");
                let q = unpermute(matrix(&name("attn_q"), c.heads * d, h)?, c.heads, d, h);
                let k = unpermute(
                    matrix(&name("attn_k"), c.kv_heads * d, h)?,
                    c.kv_heads,
                    d,
                    h,
                );
                let v = matrix(&name("attn_v"), c.kv_heads * d, h)?;
                let o = matrix(&name("attn_output"), h, c.heads * d)?;
                let gate = matrix(&name("ffn_gate"), c.ffn, h)?;
                let up = matrix(&name("ffn_up"), c.ffn, h)?;
                let down = matrix(&name("ffn_down"), h, c.ffn)?;
                Ok(Block {
                    attn_norm: vector(&name("attn_norm"))?,
                    qkv: linear(vec![q, k, v], h),
                    out: linear(vec![o], c.heads * d),
                    ffn_norm: vector(&name("ffn_norm"))?,
                    gate_up: linear(vec![gate, up], h),
                    down: linear(vec![down], c.ffn),
                })
            })
            .collect::<Result<Vec<_>, LlamaError>>()?;
        let embed = matrix("token_embd.weight", c.vocab, h)?;
        let embed = Tensor::from_data(TensorData::new(embed, [c.vocab, h]), device);
        let head = match c.tied {
            true => None,
            false => Some(linear(vec![matrix("output.weight", c.vocab, h)?], h)),
        };
        Ok(Self {
            embed: Param::from_tensor(embed),
            blocks,
            norm: vector("output_norm.weight")?,
            head,
            shape: Shape::of(&c),
        })
    }
}

/// Puts back the rows llama.cpp's converter permuted: within each head of `d` rows, stored row
/// `2i + c` is row `i + c·d/2`.
fn unpermute(rows: Vec<f32>, heads: usize, d: usize, width: usize) -> Vec<f32> {
    let mut out = vec![0.0; rows.len()];
    for head in 0..heads {
        for i in 0..d / 2 {
            for c in 0..2 {
                let from = (head * d + 2 * i + c) * width;
                let to = (head * d + i + c * d / 2) * width;
                out[to..to + width].copy_from_slice(&rows[from..from + width]);
            }
        }
    }
    out
}
