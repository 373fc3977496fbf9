//! Files the crate writes: atomically (a `.partial` file renamed into place once complete and
//! synced) and checksummed, so that a killed writer or a damaged file is detected on read.
//!
//! A *bundle* is named byte parts with a JSON header: `BDBUNDL1`, the header's length (u64),
//! the header (JSON: kind, metadata, each part's name, length and CRC-32), its CRC, the parts.

use std::io::Write;
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
        file.write_all(MAGIC)?;
        file.write_all(&(json.len() as u64).to_le_bytes())?;
        file.write_all(&json)?;
        file.write_all(&crc32fast::hash(&json).to_le_bytes())?;
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
    let bytes = std::fs::read(path).map_err(|e| match partial_path(path).exists() {
        true => format!(
            "{e}; {} is a writer's unfinished file",
            partial_path(path).display()
        ),
        false => e.to_string(),
    })?;
    let truncated = || "truncated or unfinished".to_string();
    if !bytes.starts_with(MAGIC) {
        return Err(
            match bytes.len() < MAGIC.len() && MAGIC.starts_with(&bytes) {
                true => truncated(),
                false => "not a burn-distill state file".into(),
            },
        );
    }
    if bytes.len() < 16 {
        return Err(truncated());
    }
    let json_len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
    let json_end = 16usize
        .checked_add(json_len)
        .filter(|&e| e + 4 <= bytes.len())
        .ok_or_else(truncated)?;
    let json = &bytes[16..json_end];
    let crc = u32::from_le_bytes(bytes[json_end..json_end + 4].try_into().expect("4 bytes"));
    if crc32fast::hash(json) != crc {
        return Err("the header fails its checksum (corrupt)".into());
    }
    let header: Header =
        serde_json::from_slice(json).map_err(|e| format!("unreadable header: {e}"))?;
    if header.kind != kind {
        return Err(format!("holds a {}, not a {kind}", header.kind));
    }
    let mut at = json_end + 4;
    let total: u64 = header.parts.iter().map(|p| p.len).sum();
    if (bytes.len() - at) as u64 != total {
        return Err(truncated());
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
