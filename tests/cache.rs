//! The teacher-output cache (`burn_distill::cache`): what is written is read back exactly, in
//! any order; a top-k cache feeds the sparse teacher as the in-memory one does; a killed writer
//! (a real child process, aborted) leaves no cache and never damages an older one; truncated,
//! corrupt and mismatched files, and bad batches, are typed errors.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_distill::cache::{CacheWriter, TeacherCache, top_k_log_probs};
use burn_distill::token::{TopKConfig, flatten};
use burn_distill::{DistillError, DistillInput, Feature, Loss, Outputs};

const N: usize = 10;

fn dev() -> Device {
    Device::flex()
}

/// A fresh path for `name` in the temporary directory.
fn path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("burn-distill-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

fn floats<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(common::noise(seed, n, 3.0), shape), &dev())
}

/// A teacher's outputs on `N` samples: logits, a map and an embedding.
fn teacher() -> Outputs {
    Outputs::logits(floats([N, 7], 1))
        .feature("block", floats([N, 2, 3, 3], 2))
        .feature("embedding", floats([N, 5], 3))
}

fn ids(indices: &[usize]) -> Tensor<1, Int> {
    let v: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(v, [indices.len()]), &dev())
}

fn rows(outputs: &Outputs, indices: &[usize]) -> Outputs {
    outputs.select(ids(indices))
}

fn values(outputs: &Outputs) -> Vec<Vec<f64>> {
    let mut out = vec![common::values(outputs.logits.clone())];
    for feature in outputs.features.values() {
        out.push(common::values(feature.clone().flatten()));
    }
    out
}

/// A finished dense cache of [`teacher`] at `path`, written in shuffled batches.
fn write_dense(path: &Path, key: &str) -> Result<burn_distill::cache::CacheInfo, DistillError> {
    let full = teacher();
    let mut writer = CacheWriter::create(path, key, N)?;
    for batch in [&[7, 2, 9][..], &[0, 1], &[3, 4, 5, 6, 8]] {
        writer.write_outputs(batch, &rows(&full, batch))?;
    }
    writer.finish()
}

fn cache_error<T: std::fmt::Debug>(result: Result<T, DistillError>) -> String {
    match result {
        Err(DistillError::Cache { reason, .. }) => reason,
        other => panic!("expected a Cache error, got {other:?}"),
    }
}

#[test]
fn dense_outputs_come_back_exactly_in_any_order() -> Result<(), DistillError> {
    let path = path("dense.cache");
    let info = write_dense(&path, "teacher")?;
    assert_eq!(info.bytes_per_sample, (7 + 18 + 5) * 4 + 4);
    assert_eq!(info.file_bytes, std::fs::metadata(&path).unwrap().len());
    assert!(!Path::new(&format!("{}.partial", path.display())).exists());

    let cache = TeacherCache::open(&path, "teacher", N)?;
    assert_eq!(cache.info(), info);
    let read = cache.outputs(&[9, 0, 4, 4], &dev())?;
    assert_eq!(values(&read), values(&rows(&teacher(), &[9, 0, 4, 4])));
    assert!(matches!(read.features["block"], Feature::Map(_)));
    assert!(matches!(read.features["embedding"], Feature::Embedding(_)));
    assert!(matches!(
        cache.outputs(&[10], &dev()),
        Err(DistillError::IndexOutOfRange {
            index: 10,
            size: N,
            ..
        })
    ));
    assert!(cache_error(cache.top_k(&[0], &dev())).contains("dense"));
    Ok(())
}

#[test]
fn a_top_k_cache_feeds_the_sparse_teacher() -> Result<(), DistillError> {
    let (b, t, v, k) = (3, 4, 11, 3);
    let logits = floats([b, t, v], 4);
    let student = floats([b, t, v], 5);
    let (top_ids, top_lp) = top_k_log_probs(logits.clone(), k);
    let path = path("top_k.cache");
    let mut writer = CacheWriter::create(&path, "lm-teacher", b)?;
    for batch in [&[2][..], &[0, 1]] {
        writer.write_top_k(
            batch,
            top_ids.clone().select(0, ids(batch)),
            top_lp.clone().select(0, ids(batch)),
        )?;
    }
    let info = writer.finish()?;
    assert_eq!(info.tokens_per_sample, Some(t));
    assert_eq!(
        info.bytes_per_token(),
        Some((t * k * 8 + 4) as f64 / t as f64)
    );

    let cache = TeacherCache::open(&path, "lm-teacher", b)?;
    let (cached_ids, cached_lp) = cache.top_k(&[0, 1, 2], &dev())?;
    let want_ids: Vec<i64> = top_ids
        .clone()
        .flatten::<2>(0, 1)
        .into_data()
        .convert::<i64>()
        .try_to_vec()
        .unwrap();
    assert_eq!(
        cached_ids
            .clone()
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap(),
        want_ids
    );
    assert_eq!(
        common::values(cached_lp.clone()),
        common::values(top_lp.clone().flatten::<2>(0, 1))
    );

    let topk = TopKConfig::new().init()?;
    let input = |ids, lp| DistillInput::student(flatten(student.clone())).sparse_teacher(ids, lp);
    let from_cache = topk.forward(&input(cached_ids, cached_lp))?.value();
    let in_memory = topk
        .forward(&input(top_ids.flatten(0, 1), top_lp.flatten(0, 1)))?
        .value();
    assert_eq!(from_cache, in_memory);
    assert!(cache_error(cache.outputs(&[0], &dev())).contains("top-k"));
    Ok(())
}

/// Run by [`a_killed_writer_leaves_no_cache`] in a child process: writes half a cache at the
/// path it is given, then aborts (as a killed writer would: no destructor, no `finish`).
#[test]
fn killed_writer_child() {
    let Some(path) = std::env::var_os("BURN_DISTILL_CACHE_CHILD") else {
        return; // only meaningful as the child
    };
    let full = teacher();
    let mut writer = CacheWriter::create(&path, "teacher", N).unwrap();
    writer
        .write_outputs(&[0, 1, 2, 3, 4], &rows(&full, &[0, 1, 2, 3, 4]))
        .unwrap();
    std::process::abort();
}

#[test]
fn a_killed_writer_leaves_no_cache() -> Result<(), DistillError> {
    let path = path("killed.cache");
    // an older, finished cache at the same path
    write_dense(&path, "teacher")?;
    let before = std::fs::read(&path).unwrap();

    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "killed_writer_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("BURN_DISTILL_CACHE_CHILD", &path)
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child aborts");
    let partial = PathBuf::from(format!("{}.partial", path.display()));
    assert!(partial.exists(), "the child wrote its partial file");

    // the older cache is untouched and still opens
    assert_eq!(std::fs::read(&path).unwrap(), before);
    TeacherCache::open(&path, "teacher", N)?.outputs(&[3], &dev())?;

    // without it, the path holds no cache, and the error points at the unfinished file
    std::fs::remove_file(&path).unwrap();
    assert!(cache_error(TeacherCache::open(&path, "teacher", N)).contains("unfinished file"));
    assert!(
        cache_error(TeacherCache::open(&partial, "teacher", N)).contains("truncated or unfinished")
    );
    Ok(())
}

#[test]
fn damaged_and_mismatched_files_are_typed_errors() -> Result<(), DistillError> {
    let path = path("damaged.cache");
    write_dense(&path, "teacher")?;
    let good = std::fs::read(&path).unwrap();
    let open = |bytes: &[u8]| {
        let copy = self::path("damaged-copy.cache");
        std::fs::write(&copy, bytes).unwrap();
        TeacherCache::open(&copy, "teacher", N)
    };

    for cut in [1, 8, good.len() - 10] {
        let reason = cache_error(open(&good[..good.len() - cut]));
        assert!(
            reason.contains("truncated or unfinished"),
            "cut {cut}: {reason}"
        );
    }
    let mut longer = good.clone();
    longer.push(0);
    // a longer file is not called truncated: it says what is wrong
    assert!(cache_error(open(&longer)).contains("1 bytes longer than its header says"));

    // one flipped bit in sample 3's record: the file opens, sample 3 is refused, others read
    let record = (7 + 18 + 5) * 4 + 4;
    let data_start = good.len() - 8 - N * record;
    let mut corrupt = good.clone();
    corrupt[data_start + 3 * record + 5] ^= 0x10;
    let cache = open(&corrupt)?;
    assert!(cache_error(cache.outputs(&[2, 3], &dev())).contains("sample 3 fails its checksum"));
    cache.outputs(&[2, 4], &dev())?;

    let mut header = good.clone();
    header[20] ^= 0x01;
    assert!(cache_error(open(&header)).contains("header fails its checksum"));
    assert!(
        cache_error(open(b"not a cache at all, but long enough")).contains("not a burn-distill")
    );

    assert!(
        cache_error(TeacherCache::open(&path, "other-teacher", N)).contains("made for `teacher`")
    );
    assert!(cache_error(TeacherCache::open(&path, "teacher", N + 1)).contains("holds 10 samples"));
    assert!(!cache_error(TeacherCache::open(self::path("absent.cache"), "teacher", N)).is_empty());
    Ok(())
}

#[test]
fn the_writer_refuses_bad_batches() -> Result<(), DistillError> {
    let full = teacher();
    let path = path("refused.cache");
    let mut writer = CacheWriter::create(&path, "teacher", N)?;
    writer.write_outputs(&[0, 1], &rows(&full, &[0, 1]))?;

    let mut nan = rows(&full, &[2]);
    nan.logits = nan
        .logits
        .clone()
        .mask_fill(nan.logits.clone().greater_elem(0.0), f64::NAN);
    assert!(matches!(
        writer.write_outputs(&[2], &nan),
        Err(DistillError::NonFinite { .. })
    ));
    assert!(matches!(
        writer.write_outputs(&[10], &rows(&full, &[2])),
        Err(DistillError::IndexOutOfRange { index: 10, .. })
    ));
    assert!(matches!(
        writer.write_outputs(&[2, 3], &rows(&full, &[2])),
        Err(DistillError::ShapeMismatch { .. })
    ));
    let other = Outputs::logits(rows(&full, &[2]).logits);
    assert!(cache_error(writer.write_outputs(&[2], &other)).contains("layout"));

    // the refused sample 2 was never taken in: finishing fails and leaves no cache
    for i in 3..N {
        writer.write_outputs(&[i], &rows(&full, &[i]))?;
    }
    assert!(cache_error(writer.finish()).contains("1 of 10 samples never written (first [2])"));
    assert!(!path.exists());
    assert!(cache_error(CacheWriter::create(&path, "teacher", 0)).contains("at least one"));
    Ok(())
}
