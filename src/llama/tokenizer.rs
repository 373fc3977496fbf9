//! The byte-level BPE tokenizer of a GGUF vocabulary (`tokenizer.ggml.model = gpt2`).
//!
//! Built with Hugging Face's `tokenizers` from the file's tokens and merges, with the
//! pre-tokenizer its `tokenizer.ggml.pre` names: `smollm` isolates every numeric character
//! (`\p{N}`) before GPT-2's byte-level split, as llama.cpp does; `gpt2` and `default` are the
//! GPT-2 split alone. Control tokens (`<|im_start|>`, …) are special tokens matched in the text.
//! Nothing is added at either end (SmolLM2 has `add_bos_token = false`), and decoding restores
//! the text byte for byte (no clean-up of spaces).

use tokenizers::AddedToken;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;

use super::{Gguf, LlamaError, Value};

/// `tokenizer.ggml.token_type` of a control token.
const CONTROL: i128 = 3;

/// Token ids and where each token is in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// The token ids.
    pub ids: Vec<u32>,
    /// Each token's byte range `(start, end)` in the text (a token that holds part of a
    /// multi-byte character shares that character's range).
    pub offsets: Vec<(usize, usize)>,
}

/// A byte-level BPE tokenizer read from a GGUF file.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    vocab: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer {{ vocab: {} }}", self.vocab)
    }
}

fn tokenizer_error(what: &str, e: impl std::fmt::Display) -> LlamaError {
    LlamaError::Tokenizer(format!("{what}: {e}"))
}

impl Tokenizer {
    /// The tokenizer of a GGUF file's `tokenizer.ggml.*` keys.
    pub fn from_gguf(file: &Gguf) -> Result<Self, LlamaError> {
        let model = file.str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(LlamaError::Unsupported {
                what: "tokenizer.ggml.model".into(),
                found: model.into(),
            });
        }
        let pre = file.str("tokenizer.ggml.pre").unwrap_or("default");
        let split_numbers = match pre {
            "smollm" => true,
            "gpt2" | "default" => false,
            other => {
                return Err(LlamaError::Unsupported {
                    what: "tokenizer.ggml.pre".into(),
                    found: other.into(),
                });
            }
        };
        let tokens = file.strings("tokenizer.ggml.tokens")?;
        let merges = file
            .strings("tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| LlamaError::Format {
                        what: "tokenizer.ggml.merges".into(),
                        problem: format!("merge {i} ({m:?}) is not two tokens"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.to_string(), id as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| tokenizer_error("tokenizer.ggml.merges", e))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let byte_level: PreTokenizerWrapper = ByteLevel::new(false, false, true).into();
        let pre_tokenizer = if split_numbers {
            Sequence::new(vec![Digits::new(true).into(), byte_level]).into()
        } else {
            byte_level
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        if let Ok(Value::Array(types)) = file.get("tokenizer.ggml.token_type") {
            let special: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(t, _)| **t == Value::Int(CONTROL))
                .map(|(_, token)| AddedToken::from(token.to_string(), true))
                .collect();
            inner.add_special_tokens(&special);
        }
        Ok(Self {
            inner,
            vocab: tokens.len(),
        })
    }

    /// The number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// The ids of a text, with nothing added at either end.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LlamaError> {
        Ok(self.encode_with_offsets(text)?.ids)
    }

    /// The ids of a text and each token's byte range in it.
    pub fn encode_with_offsets(&self, text: &str) -> Result<Encoding, LlamaError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| tokenizer_error("encode", e))?;
        Ok(Encoding {
            ids: encoding.get_ids().to_vec(),
            offsets: encoding.get_offsets().to_vec(),
        })
    }

    /// The text of a sequence of ids (special tokens included).
    pub fn decode(&self, ids: &[u32]) -> Result<String, LlamaError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab) {
            return Err(LlamaError::Tokenizer(format!(
                "decode: id {id} is out of range for {} tokens",
                self.vocab
            )));
        }
        self.inner
            .decode(ids, false)
            .map_err(|e| tokenizer_error("decode", e))
    }
}
