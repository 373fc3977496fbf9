//! A frozen teacher's outputs on disk: computed once, keyed by dataset index, read back batch
//! by batch while the student trains.
//!
//! A cache holds either dense [`Outputs`] (logits and feature taps) or, for language models, the
//! teacher's top-`k` tokens per position and their log-probabilities (what
//! [`DistillInput::sparse_teacher`](crate::DistillInput::sparse_teacher) and
//! [`token::TopK`](crate::token::TopK) read; `k·8` bytes a token instead of `V·4`).
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use burn_distill::Outputs;
//! use burn_distill::cache::{CacheWriter, TeacherCache};
//! # fn main() -> Result<(), burn_distill::DistillError> {
//! let dev = Device::flex();
//! let path = std::env::temp_dir().join(format!("doc-{}.cache", std::process::id()));
//! let mut writer = CacheWriter::create(&path, "teacher-v1", 4)?;
//! for batch in [[2, 0], [3, 1]] {
//!     let logits = Tensor::<2>::random([2, 10], Distribution::Default, &dev);
//!     writer.write_outputs(&batch, &Outputs::logits(logits))?;
//! }
//! let info = writer.finish()?; // atomically renamed into place
//! assert_eq!(info.bytes_per_sample, 10 * 4 + 4);
//! let cache = TeacherCache::open(&path, "teacher-v1", 4)?;
//! let teacher = cache.outputs(&[1, 2], &dev)?; // the rows of samples 1 and 2
//! assert_eq!(teacher.logits.dims(), [2, 10]);
//! # std::fs::remove_file(&path).unwrap();
//! # Ok(()) }
//! ```
//!
//! **Integrity.** A writer writes `<path>.partial` and renames it to `path` only in
//! [`CacheWriter::finish`], after every sample is written and the file is synced: a killed
//! writer leaves no file at `path` (an older cache there stays intact). Every sample carries a
//! CRC-32 checked on each read, the header its own; the header records a caller-chosen key
//! (name the teacher and the data), the sample count and the layout, and the file ends in a
//! footer. [`TeacherCache::open`] checks all of it: a missing, unfinished, truncated, corrupt or
//! mismatched file is a [`DistillError::Cache`], never silently used. Non-finite teacher
//! outputs are refused when written.
//!
//! Format (little-endian): `BDTCACH1`, the header's length (u64), the header (JSON), its CRC
//! (u32); `samples` records of `record` bytes (f32 values, u32 token ids) each followed by its
//! CRC; `BDTCEND1`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::DistillError;
use crate::file::{TRUNCATED, commit, open_error, partial_path, read_header};
use crate::input::{Feature, Outputs};

const MAGIC: &[u8; 8] = b"BDTCACH1";
const FOOTER: &[u8; 8] = b"BDTCEND1";
const VERSION: u32 = 1;

/// What one entry of a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Logits,
    Map,
    Embedding,
    TopKIds,
    TopKLogProbs,
}

/// One entry of every record: its name, kind and per-sample shape (4 bytes a value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    name: String,
    kind: Kind,
    shape: Vec<usize>,
}

impl Entry {
    fn values(&self) -> usize {
        self.shape.iter().product()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Header {
    version: u32,
    key: String,
    samples: usize,
    entries: Vec<Entry>,
}

impl Header {
    fn record_bytes(&self) -> usize {
        self.entries.iter().map(Entry::values).sum::<usize>() * 4
    }

    fn top_k(&self) -> bool {
        self.entries
            .first()
            .is_some_and(|e| e.kind == Kind::TopKIds)
    }

    fn info(&self, data_start: u64) -> CacheInfo {
        let record = self.record_bytes() + 4;
        CacheInfo {
            samples: self.samples,
            bytes_per_sample: record,
            tokens_per_sample: self.top_k().then(|| self.entries[0].shape[0]),
            file_bytes: data_start + (self.samples * record) as u64 + FOOTER.len() as u64,
        }
    }
}

/// The size of a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheInfo {
    /// Samples (dataset indices) held.
    pub samples: usize,
    /// Bytes a sample takes, its checksum included.
    pub bytes_per_sample: usize,
    /// Token positions per sample, for a top-k cache.
    pub tokens_per_sample: Option<usize>,
    /// The file's size.
    pub file_bytes: u64,
}

impl CacheInfo {
    /// Bytes a token takes, for a top-k cache.
    pub fn bytes_per_token(&self) -> Option<f64> {
        self.tokens_per_sample
            .map(|t| self.bytes_per_sample as f64 / t as f64)
    }
}

impl std::fmt::Display for CacheInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} samples, {} B a sample",
            self.samples, self.bytes_per_sample
        )?;
        if let Some(per_token) = self.bytes_per_token() {
            write!(f, " ({per_token:.1} B a token)")?;
        }
        write!(f, ", {:.2} MiB", self.file_bytes as f64 / (1 << 20) as f64)
    }
}

fn cache_error(path: &Path, reason: impl Into<String>) -> DistillError {
    DistillError::Cache {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> DistillError + '_ {
    move |e| cache_error(path, e.to_string())
}

/// The teacher's top-`k` tokens at every position of logits `[B, T, V]` and their
/// log-probabilities (of the full softmax), `[B, T, k]` each: what a top-k cache stores.
pub fn top_k_log_probs(logits: Tensor<3>, k: usize) -> (Tensor<3, Int>, Tensor<3>) {
    let (log_probs, ids) = log_softmax(logits, 2).topk_with_indices(k, 2);
    (ids, log_probs)
}

/// Writes a cache: [`create`](Self::create), any number of batches in any order, then
/// [`finish`](Self::finish). Dropped (or killed) before `finish`, it leaves no cache at `path`.
#[derive(Debug)]
pub struct CacheWriter {
    path: PathBuf,
    partial: PathBuf,
    file: File,
    key: String,
    samples: usize,
    layout: Option<(Header, u64)>,
    written: Vec<bool>,
}

/// The values of a tensor as f32 (or token ids as u32), flat, and its shape.
fn floats<const D: usize>(t: &Tensor<D>) -> Result<Vec<f32>, DistillError> {
    let values = t
        .to_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("converted to f32");
    if values.iter().any(|v| !v.is_finite()) {
        return Err(DistillError::NonFinite {
            what: "a teacher output written to the cache".into(),
        });
    }
    Ok(values)
}

impl CacheWriter {
    /// Starts a cache of `samples` dataset indices at `path` (written to `<path>.partial`
    /// until [`finish`](Self::finish)); `key` names the teacher and the data, and opening
    /// checks it.
    pub fn create(path: impl AsRef<Path>, key: &str, samples: usize) -> Result<Self, DistillError> {
        let path = path.as_ref().to_path_buf();
        if samples == 0 {
            return Err(cache_error(&path, "a cache needs at least one sample"));
        }
        let partial = partial_path(&path);
        let file = File::create(&partial).map_err(io_error(&partial))?;
        Ok(Self {
            path,
            partial,
            file,
            key: key.into(),
            samples,
            layout: None,
            written: vec![false; samples],
        })
    }

    /// Writes the teacher's outputs (logits and every tap) for the samples `indices` (one per
    /// row, in row order).
    pub fn write_outputs(
        &mut self,
        indices: &[usize],
        outputs: &Outputs,
    ) -> Result<(), DistillError> {
        let mut entries = vec![(
            Entry {
                name: "logits".into(),
                kind: Kind::Logits,
                shape: outputs.logits.dims()[1..].to_vec(),
            },
            floats(&outputs.logits)?,
            outputs.logits.dims()[0],
        )];
        for (name, feature) in &outputs.features {
            let (kind, dims, values) = match feature {
                Feature::Map(t) => (Kind::Map, t.dims().to_vec(), floats(t)?),
                Feature::Embedding(t) => (Kind::Embedding, t.dims().to_vec(), floats(t)?),
            };
            let entry = Entry {
                name: name.clone(),
                kind,
                shape: dims[1..].to_vec(),
            };
            entries.push((entry, values, dims[0]));
        }
        self.write(indices, entries)
    }

    /// Writes a sparse teacher for the sequences `indices`: its top-`k` token ids and
    /// log-probabilities `[B, T, k]` (see [`top_k_log_probs`]).
    pub fn write_top_k(
        &mut self,
        indices: &[usize],
        ids: Tensor<3, Int>,
        log_probs: Tensor<3>,
    ) -> Result<(), DistillError> {
        if ids.dims() != log_probs.dims() {
            return Err(DistillError::ShapeMismatch {
                objective: "cache".into(),
                what: "top-k log-probabilities (the ids' shape)".into(),
                expected: ids.dims().to_vec(),
                actual: log_probs.dims().to_vec(),
            });
        }
        let [b, t, k] = ids.dims();
        let ids = ids
            .to_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .expect("converted to i64");
        if let Some(&id) = ids.iter().find(|&&id| u32::try_from(id).is_err()) {
            return Err(cache_error(
                &self.path,
                format!("top-k token id {id} is not a token id (0 to 4294967295)"),
            ));
        }
        let ids: Vec<f32> = ids
            .into_iter()
            .map(|id| f32::from_bits(id as u32))
            .collect();
        let entry = |name: &str, kind| Entry {
            name: name.into(),
            kind,
            shape: vec![t, k],
        };
        let entries = vec![
            (entry("ids", Kind::TopKIds), ids, b),
            (
                entry("log_probs", Kind::TopKLogProbs),
                floats(&log_probs)?,
                b,
            ),
        ];
        self.write(indices, entries)
    }

    /// Writes one batch: every entry's rows, sample by sample, at the samples' offsets.
    fn write(
        &mut self,
        indices: &[usize],
        entries: Vec<(Entry, Vec<f32>, usize)>,
    ) -> Result<(), DistillError> {
        for (entry, _, rows) in &entries {
            if *rows != indices.len() {
                return Err(DistillError::ShapeMismatch {
                    objective: "cache".into(),
                    what: format!("rows of `{}` (one per index)", entry.name),
                    expected: vec![indices.len()],
                    actual: vec![*rows],
                });
            }
        }
        if let Some(&index) = indices.iter().find(|&&i| i >= self.samples) {
            return Err(DistillError::IndexOutOfRange {
                objective: "cache".into(),
                index: index as i128,
                size: self.samples,
            });
        }
        let layout: Vec<Entry> = entries.iter().map(|(e, _, _)| e.clone()).collect();
        let (header, data_start) = match &self.layout {
            Some(done) => done.clone(),
            None => self.start(layout.clone())?,
        };
        if header.entries != layout {
            return Err(cache_error(
                &self.partial,
                format!(
                    "this batch's layout {layout:?} differs from the first batch's {:?}",
                    header.entries
                ),
            ));
        }
        let record = header.record_bytes();
        let mut bytes = Vec::with_capacity(record + 4);
        for (row, &index) in indices.iter().enumerate() {
            bytes.clear();
            for (entry, values, _) in &entries {
                let n = entry.values();
                for v in &values[row * n..(row + 1) * n] {
                    bytes.extend_from_slice(&v.to_bits().to_le_bytes());
                }
            }
            bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
            let offset = data_start + (index * (record + 4)) as u64;
            self.file
                .seek(SeekFrom::Start(offset))
                .and_then(|_| self.file.write_all(&bytes))
                .map_err(io_error(&self.partial))?;
            self.written[index] = true;
        }
        Ok(())
    }

    /// Writes the header for the first batch's layout; returns it and where the records start.
    fn start(&mut self, entries: Vec<Entry>) -> Result<(Header, u64), DistillError> {
        let header = Header {
            version: VERSION,
            key: self.key.clone(),
            samples: self.samples,
            entries,
        };
        let json = serde_json::to_vec(&header).expect("a header serialises");
        let bytes = crate::file::header(MAGIC, &json);
        self.file
            .write_all(&bytes)
            .map_err(io_error(&self.partial))?;
        let done = (header, bytes.len() as u64);
        self.layout = Some(done.clone());
        Ok(done)
    }

    /// Checks that every sample was written, writes the footer, syncs the file and renames it
    /// to `path` (replacing any older cache there in one step).
    pub fn finish(mut self) -> Result<CacheInfo, DistillError> {
        let missing: Vec<usize> = (0..self.samples).filter(|&i| !self.written[i]).collect();
        let Some((header, data_start)) = self.layout.clone().filter(|_| missing.is_empty()) else {
            let first: Vec<&usize> = missing.iter().take(5).collect();
            return Err(cache_error(
                &self.partial,
                format!(
                    "{} of {} samples never written (first {first:?})",
                    missing.len(),
                    self.samples
                ),
            ));
        };
        let info = header.info(data_start);
        let end = info.file_bytes - FOOTER.len() as u64;
        self.file
            .seek(SeekFrom::Start(end))
            .and_then(|_| self.file.write_all(FOOTER))
            .and_then(|_| self.file.sync_all())
            .map_err(io_error(&self.partial))?;
        commit(&self.partial, &self.path).map_err(io_error(&self.path))?;
        Ok(info)
    }
}

/// A finished cache, opened for reading (any number of threads).
#[derive(Debug)]
pub struct TeacherCache {
    path: PathBuf,
    file: Mutex<File>,
    header: Header,
    data_start: u64,
}

impl TeacherCache {
    /// Opens the cache at `path` after checking it is finished, whole and the one expected:
    /// its key and sample count must be `key` and `samples`.
    pub fn open(path: impl AsRef<Path>, key: &str, samples: usize) -> Result<Self, DistillError> {
        let path = path.as_ref().to_path_buf();
        let mut file = File::open(&path).map_err(|e| cache_error(&path, open_error(&path, e)))?;
        let len = file.metadata().map_err(io_error(&path))?.len();
        let unfinished = || cache_error(&path, TRUNCATED);
        let (json, data_start) = read_header(&mut file, MAGIC, len, "teacher cache")
            .map_err(|e| cache_error(&path, e))?;
        let header: Header = serde_json::from_slice(&json)
            .map_err(|e| cache_error(&path, format!("unreadable header: {e}")))?;
        if header.version != VERSION {
            return Err(cache_error(
                &path,
                format!("format version {}, expected {VERSION}", header.version),
            ));
        }
        if header.key != key {
            return Err(cache_error(
                &path,
                format!("made for `{}`, not `{key}`", header.key),
            ));
        }
        if header.samples != samples {
            return Err(cache_error(
                &path,
                format!("holds {} samples, not {samples}", header.samples),
            ));
        }
        let expected = header.info(data_start).file_bytes;
        if len > expected {
            return Err(cache_error(
                &path,
                format!(
                    "{} bytes longer than its header says ({len} bytes, not {expected}): \
                     something was appended or the file was overwritten in place",
                    len - expected
                ),
            ));
        }
        if len < expected {
            return Err(unfinished());
        }
        let mut footer = [0u8; 8];
        file.seek(SeekFrom::Start(len - 8))
            .and_then(|_| file.read_exact(&mut footer))
            .map_err(io_error(&path))?;
        if &footer != FOOTER {
            return Err(unfinished());
        }
        Ok(Self {
            path,
            file: Mutex::new(file),
            header,
            data_start,
        })
    }

    /// Its size.
    pub fn info(&self) -> CacheInfo {
        self.header.info(self.data_start)
    }

    /// The records of `indices`, each checked against its checksum: per entry, the values of
    /// every sample in order.
    fn read(&self, indices: &[usize]) -> Result<Vec<Vec<f32>>, DistillError> {
        let record = self.header.record_bytes();
        let mut out: Vec<Vec<f32>> = self
            .header
            .entries
            .iter()
            .map(|e| Vec::with_capacity(e.values() * indices.len()))
            .collect();
        let mut bytes = vec![0u8; record + 4];
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for &index in indices {
            if index >= self.header.samples {
                return Err(DistillError::IndexOutOfRange {
                    objective: "cache".into(),
                    index: index as i128,
                    size: self.header.samples,
                });
            }
            let offset = self.data_start + (index * (record + 4)) as u64;
            file.seek(SeekFrom::Start(offset))
                .and_then(|_| file.read_exact(&mut bytes))
                .map_err(io_error(&self.path))?;
            let crc = u32::from_le_bytes(bytes[record..].try_into().expect("4 bytes"));
            if crc32fast::hash(&bytes[..record]) != crc {
                return Err(cache_error(
                    &self.path,
                    format!("sample {index} fails its checksum (corrupt)"),
                ));
            }
            let mut values = bytes[..record]
                .chunks_exact(4)
                .map(|b| f32::from_bits(u32::from_le_bytes(b.try_into().expect("4 bytes"))));
            for (entry, out) in self.header.entries.iter().zip(&mut out) {
                out.extend(values.by_ref().take(entry.values()));
            }
        }
        Ok(out)
    }

    /// The teacher's outputs for the samples `indices`, one row each, on `device` (in its
    /// default float dtype).
    pub fn outputs(&self, indices: &[usize], device: &Device) -> Result<Outputs, DistillError> {
        if self.header.top_k() {
            return Err(cache_error(
                &self.path,
                "holds a top-k teacher: read it with top_k",
            ));
        }
        let n = indices.len();
        let mut logits = None;
        let mut features = BTreeMap::new();
        for (entry, values) in self.header.entries.iter().zip(self.read(indices)?) {
            let mut shape = vec![n];
            shape.extend(&entry.shape);
            let data = TensorData::new(values, shape);
            match entry.kind {
                Kind::Logits => logits = Some(Tensor::<2>::from_data(data, device)),
                Kind::Map => {
                    features.insert(
                        entry.name.clone(),
                        Feature::Map(Tensor::from_data(data, device)),
                    );
                }
                _ => {
                    let t = Tensor::<2>::from_data(data, device);
                    features.insert(entry.name.clone(), Feature::Embedding(t));
                }
            }
        }
        let logits = logits.expect("a dense cache's first entry is the logits");
        Ok(Outputs { logits, features })
    }

    /// The sparse teacher of the sequences `indices`: token ids and log-probabilities
    /// `[B·T, k]`, one row per token in [`token::flatten`](crate::token::flatten)'s order — what
    /// [`DistillInput::sparse_teacher`](crate::DistillInput::sparse_teacher) takes.
    pub fn top_k(
        &self,
        indices: &[usize],
        device: &Device,
    ) -> Result<(Tensor<2, Int>, Tensor<2>), DistillError> {
        if !self.header.top_k() {
            return Err(cache_error(
                &self.path,
                "holds dense outputs: read them with outputs",
            ));
        }
        let mut read = self.read(indices)?.into_iter();
        let (ids, log_probs) = (
            read.next().unwrap_or_default(),
            read.next().unwrap_or_default(),
        );
        let [t, k] = [
            self.header.entries[0].shape[0],
            self.header.entries[0].shape[1],
        ];
        let rows = indices.len() * t;
        let ids: Vec<i64> = ids.into_iter().map(|v| v.to_bits() as i64).collect();
        Ok((
            Tensor::from_data(TensorData::new(ids, [rows, k]), device),
            Tensor::from_data(TensorData::new(log_probs, [rows, k]), device),
        ))
    }
}
