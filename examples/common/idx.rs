//! A reader for the IDX files of MNIST-style data sets (plain or gzipped), with errors that
//! say what is wrong with a file.

use std::io::Read;
use std::path::{Path, PathBuf};

/// An IDX array of unsigned bytes: its dimensions and its data, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Why an IDX file could not be read.
#[derive(Debug, PartialEq)]
pub enum IdxError {
    /// The file could not be opened or decompressed.
    Io { path: PathBuf, reason: String },
    /// The first bytes are not an IDX magic number for unsigned bytes.
    Magic { path: PathBuf, found: [u8; 4] },
    /// The file ends before its header or its data does.
    Truncated {
        path: PathBuf,
        expected: usize,
        found: usize,
    },
}

impl std::fmt::Display for IdxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdxError::Io { path, reason } => write!(f, "{}: {reason}", path.display()),
            IdxError::Magic { path, found } => write!(
                f,
                "{}: not an IDX file of unsigned bytes (magic {found:02x?}, expected [00, 00, 08, n])",
                path.display()
            ),
            IdxError::Truncated {
                path,
                expected,
                found,
            } => write!(
                f,
                "{}: truncated IDX file ({found} bytes, its header promises {expected})",
                path.display()
            ),
        }
    }
}

impl std::error::Error for IdxError {}

/// Reads an IDX file of unsigned bytes; a gzip stream (`1f 8b`) is decompressed first.
pub fn read_idx(path: &Path) -> Result<Idx, IdxError> {
    let io = |e: std::io::Error| IdxError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let raw = std::fs::read(path).map_err(io)?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(io)?;
        out
    } else {
        raw
    };
    parse_idx(path, &bytes)
}

/// Parses IDX bytes (`path` only names the file in errors).
pub fn parse_idx(path: &Path, bytes: &[u8]) -> Result<Idx, IdxError> {
    let truncated = |expected: usize| IdxError::Truncated {
        path: path.to_path_buf(),
        expected,
        found: bytes.len(),
    };
    let magic: [u8; 4] = bytes
        .get(..4)
        .ok_or_else(|| truncated(4))?
        .try_into()
        .unwrap();
    if magic[..3] != [0, 0, 0x08] || magic[3] == 0 {
        return Err(IdxError::Magic {
            path: path.to_path_buf(),
            found: magic,
        });
    }
    let rank = magic[3] as usize;
    let header = 4 + 4 * rank;
    let dims: Vec<usize> = bytes
        .get(4..header)
        .ok_or_else(|| truncated(header))?
        .chunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()) as usize)
        .collect();
    let expected = header + dims.iter().product::<usize>();
    let data = bytes
        .get(header..expected)
        .ok_or_else(|| truncated(expected))?;
    Ok(Idx {
        dims,
        data: data.to_vec(),
    })
}

/// Finds `name` or `name.gz` in `dir`.
pub fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))]
        .into_iter()
        .find(|p| p.exists())
}
