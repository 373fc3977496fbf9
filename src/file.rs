//! Files the crate writes: atomically (a `.partial` file renamed into place once complete and
//! synced) and checksummed, so that a killed writer or a damaged file is detected on read.
//!
//! Every such file begins with a *header*: an 8-byte magic, the length of a JSON header (u64,
//! little-endian), the JSON, its CRC-32. A *bundle* is named byte parts after a header
//! (`BDBUNDL1`; JSON: kind, metadata, each part's name, length and CRC-32).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

const MAGIC: &[u8; 8] = b"BDBUNDL1";

/// `<path>.partial`: where a file is written before it is complete.
pub(crate) fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".partial");
    PathBuf::from(name)
}

/// Moves the complete, synced file `partial` to `path` in one step (an older file at `path`
/// stays whole until then), and syncs the directory where the platform allows it.
pub(crate) fn commit(partial: &Path, path: &Path) -> std::io::Result<()> {
    std::fs::rename(partial, path)?;
    if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
        // best effort: not every platform syncs a directory
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Why reading a file the crate wrote failed: it ends before it should.
pub(crate) const TRUNCATED: &str = "truncated or unfinished (the writer did not finish)";

/// The message for a file that cannot be opened, pointing at a writer's unfinished
/// `.partial` file when there is one.
pub(crate) fn open_error(path: &Path, e: std::io::Error) -> String {
    let partial = partial_path(path);
    match partial.exists() {
        true => format!("{e}; {} is a writer's unfinished file", partial.display()),
        false => e.to_string(),
    }
}

/// The header of a file: `magic`, the length of `json`, `json`, its CRC-32.
pub(crate) fn header(magic: &[u8; 8], json: &[u8]) -> Vec<u8> {
    let mut bytes = magic.to_vec();
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(json);
    bytes.extend_from_slice(&crc32fast::hash(json).to_le_bytes());
    bytes
}

/// Reads the [`header`] at the start of `r` (a file of `len` bytes): its JSON, checksum
/// checked, and where the data after it starts. `kind` names the file in the error for one
/// that does not start with `magic`.
pub(crate) fn read_header(
    r: &mut impl Read,
    magic: &[u8; 8],
    len: u64,
    kind: &str,
) -> Result<(Vec<u8>, u64), String> {
    let mut fixed = Vec::with_capacity(16);
    r.by_ref()
        .take(16)
        .read_to_end(&mut fixed)
        .map_err(|e| e.to_string())?;
    let n = fixed.len().min(8);
    if !magic.starts_with(&fixed[..n]) {
        return Err(format!("not a burn-distill {kind}"));
    }
    if fixed.len() < 16 {
        return Err(TRUNCATED.into());
    }
    let json_len = u64::from_le_bytes(fixed[8..].try_into().expect("8 bytes"));
    if json_len > len {
        return Err(TRUNCATED.into());
    }
    let mut json = vec![0u8; json_len as usize + 4];
    r.read_exact(&mut json).map_err(|_| TRUNCATED.to_string())?;
    let crc = u32::from_le_bytes(json[json_len as usize..].try_into().expect("4 bytes"));
    json.truncate(json_len as usize);
    if crc32fast::hash(&json) != crc {
        return Err("the header fails its checksum (corrupt)".into());
    }
    Ok((json, 16 + json_len + 4))
}

#[derive(Serialize, Deserialize)]
struct Header {
    kind: String,
    meta: Value,
    parts: Vec<Part>,
}

#[derive(Serialize, Deserialize)]
struct Part {
    name: String,
    len: u64,
    crc: u32,
}

/// Writes a bundle of `kind` atomically.
pub(crate) fn write_bundle(
    path: &Path,
    kind: &str,
    meta: Value,
    parts: &[(&str, &[u8])],
) -> Result<(), String> {
    let header = Header {
        kind: kind.into(),
        meta,
        parts: parts
            .iter()
            .map(|(name, bytes)| Part {
                name: (*name).into(),
                len: bytes.len() as u64,
                crc: crc32fast::hash(bytes),
            })
            .collect(),
    };
    let json = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    let partial = partial_path(path);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(&self::header(MAGIC, &json))?;
        for (_, bytes) in parts {
            file.write_all(bytes)?;
        }
        file.sync_all()?;
        commit(&partial, path)
    };
    write().map_err(|e| e.to_string())
}

/// A bundle's metadata and its named parts.
pub(crate) type Bundle = (Value, Vec<(String, Vec<u8>)>);

/// Reads a bundle of `kind`: its metadata and parts, every checksum and length checked.
pub(crate) fn read_bundle(path: &Path, kind: &str) -> Result<Bundle, String> {
    let bytes = std::fs::read(path).map_err(|e| open_error(path, e))?;
    let (json, data_start) = read_header(
        &mut bytes.as_slice(),
        MAGIC,
        bytes.len() as u64,
        "state file",
    )?;
    let header: Header =
        serde_json::from_slice(&json).map_err(|e| format!("unreadable header: {e}"))?;
    if header.kind != kind {
        return Err(format!("holds a {}, not a {kind}", header.kind));
    }
    let mut at = data_start as usize;
    let total: u64 = header.parts.iter().map(|p| p.len).sum();
    if (bytes.len() - at) as u64 != total {
        return Err(TRUNCATED.into());
    }
    let mut parts = Vec::with_capacity(header.parts.len());
    for part in &header.parts {
        let data = &bytes[at..at + part.len as usize];
        if crc32fast::hash(data) != part.crc {
            return Err(format!("part `{}` fails its checksum (corrupt)", part.name));
        }
        parts.push((part.name.clone(), data.to_vec()));
        at += part.len as usize;
    }
    Ok((header.meta, parts))
}
