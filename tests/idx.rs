//! The examples' IDX reader on fixtures this test writes: plain and gzipped files, and clear
//! errors for truncated files and wrong magic numbers.

#[path = "../examples/common/idx.rs"]
#[allow(dead_code)]
mod idx;

use std::io::Write;

use idx::{IdxError, parse_idx, read_idx};

/// An IDX file of unsigned bytes with dimensions `dims`.
fn idx_bytes(dims: &[u32]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    let n: u32 = dims.iter().product();
    out.extend((0..n).map(|i| (i * 7 % 256) as u8));
    out
}

fn dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("burn-distill-idx-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn reads_plain_and_gzipped_files() {
    let bytes = idx_bytes(&[3, 2, 4]);
    let plain = dir().join("images-idx3-ubyte");
    std::fs::write(&plain, &bytes).unwrap();
    let gz = dir().join("images-idx3-ubyte.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&bytes).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    for path in [&plain, &gz] {
        let idx = read_idx(path).unwrap();
        assert_eq!(idx.dims, vec![3, 2, 4]);
        assert_eq!(idx.data.len(), 24);
        assert_eq!(idx.data[5], 35);
    }
    let labels = parse_idx("labels".as_ref(), &idx_bytes(&[5])).unwrap();
    assert_eq!(
        (labels.dims, labels.data),
        (vec![5], vec![0, 7, 14, 21, 28])
    );
}

#[test]
fn truncated_and_foreign_files_are_clear_errors() {
    let bytes = idx_bytes(&[3, 2, 4]);
    let p: &std::path::Path = "f".as_ref();
    // data cut short: the header promises 16 + 24 bytes
    match parse_idx(p, &bytes[..30]) {
        Err(IdxError::Truncated {
            expected: 40,
            found: 30,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // header cut short
    assert!(matches!(
        parse_idx(p, &bytes[..6]),
        Err(IdxError::Truncated { expected: 16, .. })
    ));
    assert!(matches!(
        parse_idx(p, &bytes[..2]),
        Err(IdxError::Truncated { expected: 4, .. })
    ));
    // wrong magic: a PNG, and an IDX of another element type (0x0D: f32)
    assert!(matches!(
        parse_idx(p, b"\x89PNG\r\n\x1a\n"),
        Err(IdxError::Magic { .. })
    ));
    let mut float = bytes.clone();
    float[2] = 0x0D;
    let err = parse_idx(p, &float).unwrap_err();
    assert!(
        err.to_string()
            .contains("not an IDX file of unsigned bytes"),
        "{err}"
    );
    // a missing file names itself
    let err = read_idx(&dir().join("missing")).unwrap_err();
    assert!(matches!(err, IdxError::Io { .. }) && err.to_string().contains("missing"));
}
