//! A GGUF file: its metadata, its tensor directory and bit-exact dequantisation of the tensor
//! types a Llama teacher needs (F32, F16, Q8_0, Q4_1).
//!
//! The format (GGUF v2 and v3, little-endian): the magic `GGUF`, a version, the tensor and
//! key counts, the key–value metadata, one directory entry per tensor (name, ggml dimensions
//! `ne` with `ne[0]` contiguous, type, offset), then the tensor data from the next multiple of
//! `general.alignment` (32 by default). A ggml tensor with `ne = [in, out]` is the row-major
//! matrix `[out, in]`.

use std::collections::BTreeMap;
use std::path::Path;

use super::LlamaError;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any of GGUF's integer types, widened.
    Int(i128),
    /// `f32` or `f64`, widened.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    Str(String),
    /// An array of values of one type.
    Array(Vec<Value>),
}

/// A tensor's type in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    /// 32-bit floats.
    F32,
    /// 16-bit floats.
    F16,
    /// Blocks of 32 values: an f16 scale `d` and 32 signed bytes, `v = d·q`.
    Q8_0,
    /// Blocks of 32 values: f16 `d` and `m` and 16 bytes of nibbles, `v = d·q + m`.
    Q4_1,
}

impl TensorType {
    fn from_id(id: u32) -> Option<Self> {
        match id {
            0 => Some(Self::F32),
            1 => Some(Self::F16),
            3 => Some(Self::Q4_1),
            8 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// `(values, bytes)` of one block.
    fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 => (1, 2),
            Self::Q8_0 => (32, 34),
            Self::Q4_1 => (32, 20),
        }
    }
}

/// The name ggml gives a type id, for errors about types this reader does not decode.
fn ggml_type_name(id: u32) -> String {
    const NAMES: [&str; 31] = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    NAMES
        .get(id as usize)
        .map_or_else(|| format!("type {id}"), |n| (*n).to_string())
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The shape, outermost first (the reverse of ggml's `ne`): `[out, in]` for a matrix.
    pub shape: Vec<usize>,
    /// The stored type.
    pub kind: TensorType,
    /// Where the data starts in the file.
    offset: usize,
    /// Its length in bytes.
    bytes: usize,
}

/// A GGUF file read into memory.
#[derive(Debug)]
pub struct Gguf {
    data: Vec<u8>,
    metadata: BTreeMap<String, Value>,
    tensors: BTreeMap<String, TensorInfo>,
}

/// A bounds-checked little-endian cursor; `what` names the key or tensor being read.
struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], LlamaError> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.data.len());
        let end = end.ok_or_else(|| LlamaError::Truncated {
            what: what.to_string(),
            offset: self.at,
        })?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], LlamaError> {
        Ok(self.take(N, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, LlamaError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, LlamaError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count or length: refused where it could not fit in what is left of the file.
    fn len(&mut self, what: &str) -> Result<usize, LlamaError> {
        let at = self.at;
        let n = self.u64(what)?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.data.len() - self.at)
            .ok_or_else(|| LlamaError::Truncated {
                what: what.to_string(),
                offset: at,
            })
    }

    fn string(&mut self, what: &str) -> Result<String, LlamaError> {
        let n = self.len(what)?;
        let at = self.at;
        String::from_utf8(self.take(n, what)?.to_vec()).map_err(|_| LlamaError::Format {
            what: what.to_string(),
            problem: format!("the string at byte {at} is not UTF-8"),
        })
    }

    fn value(&mut self, kind: u32, key: &str) -> Result<Value, LlamaError> {
        Ok(match kind {
            0 => Value::Int(self.array::<1>(key)?[0].into()),
            1 => Value::Int((self.array::<1>(key)?[0] as i8).into()),
            2 => Value::Int(u16::from_le_bytes(self.array(key)?).into()),
            3 => Value::Int(i16::from_le_bytes(self.array(key)?).into()),
            4 => Value::Int(self.u32(key)?.into()),
            5 => Value::Int(i32::from_le_bytes(self.array(key)?).into()),
            6 => Value::Float(f32::from_le_bytes(self.array(key)?).into()),
            7 => Value::Bool(self.array::<1>(key)?[0] != 0),
            8 => Value::Str(self.string(key)?),
            9 => {
                let item = self.u32(key)?;
                let n = self.len(key)?;
                let values = (0..n)
                    .map(|_| self.value(item, key))
                    .collect::<Result<_, _>>()?;
                Value::Array(values)
            }
            10 => Value::Int(self.u64(key)?.into()),
            11 => Value::Int(i64::from_le_bytes(self.array(key)?).into()),
            12 => Value::Float(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(LlamaError::Format {
                    what: key.to_string(),
                    problem: format!("unknown metadata type {other}"),
                });
            }
        })
    }
}

impl Gguf {
    /// Reads and indexes a GGUF file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LlamaError> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|e| LlamaError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(data)
    }

    /// Indexes the bytes of a GGUF file.
    pub fn parse(data: Vec<u8>) -> Result<Self, LlamaError> {
        let mut c = Cursor { data: &data, at: 0 };
        if c.array::<4>("the magic number")? != *b"GGUF" {
            return Err(LlamaError::Format {
                what: "the magic number".into(),
                problem: "this is not a GGUF file".into(),
            });
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(LlamaError::Format {
                what: "the version".into(),
                problem: format!("GGUF version {version} (this reader knows 2 and 3)"),
            });
        }
        let tensor_count = c.u64("the tensor count")?;
        let key_count = c.u64("the metadata count")?;
        let mut metadata = BTreeMap::new();
        for i in 0..key_count {
            let key = c.string(&format!("metadata key {i}"))?;
            let kind = c.u32(&key)?;
            let value = c.value(kind, &key)?;
            metadata.insert(key, value);
        }
        let mut directory = Vec::new();
        for i in 0..tensor_count {
            let name = c.string(&format!("tensor name {i}"))?;
            let dims = c.u32(&name)? as usize;
            if dims > 4 {
                return Err(LlamaError::Format {
                    what: name,
                    problem: format!("{dims} dimensions (ggml has at most 4)"),
                });
            }
            let mut shape = Vec::with_capacity(dims);
            for _ in 0..dims {
                let at = c.at;
                let n = usize::try_from(c.u64(&name)?).map_err(|_| LlamaError::Format {
                    what: name.clone(),
                    problem: format!("the dimension at byte {at} does not fit in memory"),
                })?;
                shape.push(n);
            }
            shape.reverse();
            let id = c.u32(&name)?;
            let offset = c.u64(&name)?;
            directory.push((name, shape, id, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(Value::Int(a)) if *a > 0 && (*a as u64).is_power_of_two() => *a as usize,
            Some(other) => {
                return Err(LlamaError::Format {
                    what: "general.alignment".into(),
                    problem: format!("{other:?} is not a power of two"),
                });
            }
        };
        let start = c.at.div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, shape, id, offset) in directory {
            let kind = TensorType::from_id(id).ok_or_else(|| LlamaError::Unsupported {
                what: name.clone(),
                found: ggml_type_name(id),
            })?;
            let (per_block, block_bytes) = kind.block();
            let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            let inner = shape.last().copied().unwrap_or(1);
            let bytes = count
                .filter(|_| inner % per_block == 0)
                .and_then(|n| (n / per_block).checked_mul(block_bytes));
            let bytes = bytes.ok_or_else(|| LlamaError::Format {
                what: name.clone(),
                problem: format!("shape {shape:?} does not fit {kind:?} blocks of {per_block}"),
            })?;
            let at = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(start));
            let end = at.and_then(|a| a.checked_add(bytes));
            match (at, end) {
                (Some(at), Some(end)) if end <= data.len() => {
                    let info = TensorInfo {
                        shape,
                        kind,
                        offset: at,
                        bytes,
                    };
                    tensors.insert(name, info);
                }
                _ => {
                    return Err(LlamaError::Truncated {
                        what: name,
                        offset: start.saturating_add(offset as usize),
                    });
                }
            }
        }
        Ok(Self {
            data,
            metadata,
            tensors,
        })
    }

    /// Every metadata key and value.
    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }

    /// Every tensor's directory entry, by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// A metadata value, or an error that names the missing key.
    pub fn get(&self, key: &str) -> Result<&Value, LlamaError> {
        self.metadata
            .get(key)
            .ok_or_else(|| LlamaError::Missing(key.to_string()))
    }

    fn wrong(key: &str, expected: &str, found: &Value) -> LlamaError {
        LlamaError::Format {
            what: key.to_string(),
            problem: format!("expected {expected}, found {found:?}"),
        }
    }

    /// A metadata integer that fits `usize`.
    pub fn usize(&self, key: &str) -> Result<usize, LlamaError> {
        match self.get(key)? {
            Value::Int(v) => {
                usize::try_from(*v).map_err(|_| Self::wrong(key, "a count", &Value::Int(*v)))
            }
            other => Err(Self::wrong(key, "an integer", other)),
        }
    }

    /// A metadata float (or integer).
    pub fn float(&self, key: &str) -> Result<f64, LlamaError> {
        match self.get(key)? {
            Value::Float(v) => Ok(*v),
            Value::Int(v) => Ok(*v as f64),
            other => Err(Self::wrong(key, "a number", other)),
        }
    }

    /// A metadata string.
    pub fn str(&self, key: &str) -> Result<&str, LlamaError> {
        match self.get(key)? {
            Value::Str(s) => Ok(s),
            other => Err(Self::wrong(key, "a string", other)),
        }
    }

    /// A metadata array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<&str>, LlamaError> {
        match self.get(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::Str(s) => Ok(s.as_str()),
                    other => Err(Self::wrong(key, "an array of strings", other)),
                })
                .collect(),
            other => Err(Self::wrong(key, "an array of strings", other)),
        }
    }

    /// A tensor's directory entry, or an error that names the missing tensor.
    pub fn info(&self, name: &str) -> Result<&TensorInfo, LlamaError> {
        self.tensors
            .get(name)
            .ok_or_else(|| LlamaError::Missing(name.to_string()))
    }

    /// A tensor's values as f32, row-major in [`TensorInfo::shape`], dequantised bit-exactly
    /// (each value is `d·q + m` in f32 from the block's f16 scales, as ggml computes it).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, LlamaError> {
        let info = self.info(name)?;
        let bytes = &self.data[info.offset..info.offset + info.bytes];
        Ok(dequantize(info.kind, bytes))
    }

    /// The raw bytes of a tensor, for a caller that moves whole quantised rows.
    pub fn bytes(&self, name: &str) -> Result<&[u8], LlamaError> {
        let info = self.info(name)?;
        Ok(&self.data[info.offset..info.offset + info.bytes])
    }
}

fn f16(bytes: [u8; 2]) -> f32 {
    half::f16::from_le_bytes(bytes).to_f32()
}

/// Dequantises whole blocks of one type (the length is a multiple of the block size).
pub fn dequantize(kind: TensorType, bytes: &[u8]) -> Vec<f32> {
    let (per_block, block_bytes) = kind.block();
    let mut out = Vec::with_capacity(bytes.len() / block_bytes * per_block);
    for block in bytes.chunks_exact(block_bytes) {
        match kind {
            TensorType::F32 => out.push(f32::from_le_bytes(block.try_into().expect("4 bytes"))),
            TensorType::F16 => out.push(f16([block[0], block[1]])),
            TensorType::Q8_0 => {
                let d = f16([block[0], block[1]]);
                out.extend(block[2..].iter().map(|&q| d * f32::from(q as i8)));
            }
            TensorType::Q4_1 => {
                let (d, m) = (f16([block[0], block[1]]), f16([block[2], block[3]]));
                let qs = &block[4..];
                out.extend(qs.iter().map(|&q| d * f32::from(q & 15) + m));
                out.extend(qs.iter().map(|&q| d * f32::from(q >> 4) + m));
            }
        }
    }
    out
}
