//! Corrupted files, exhaustively: every truncation and every single flipped bit of a small
//! teacher cache (dense and top-k) and of a saved meta-teacher is a typed error, never a
//! panic and never data read as if nothing happened.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use burn::optim::SgdConfig;
use burn::tensor::{Device, Distribution, Tensor};
use burn_distill::cache::{self, CacheWriter, TeacherCache};
use burn_distill::meta::MetaTeacherConfig;
use burn_distill::prelude::*;

fn path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("burn-distill-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Each damaged version of `good` (every prefix, every byte with one bit flipped), written to
/// `at` and read by `read`: the damaged versions `read` accepted, or that made it panic.
fn damage(
    good: &[u8],
    at: &PathBuf,
    read: impl Fn(&PathBuf) -> Result<(), DistillError>,
) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut versions: Vec<(String, Vec<u8>)> = (0..good.len())
        .map(|n| (format!("the first {n} bytes"), good[..n].to_vec()))
        .collect();
    for i in 0..good.len() {
        let mut v = good.to_vec();
        v[i] ^= 1 << (i % 8);
        versions.push((format!("bit {} of byte {i} flipped", i % 8), v));
    }
    for (what, bytes) in versions {
        std::fs::write(at, &bytes).unwrap();
        match catch_unwind(AssertUnwindSafe(|| read(at))) {
            Ok(Err(_)) => {}
            Ok(Ok(())) => wrong.push(format!("{what}: read as if whole")),
            Err(_) => wrong.push(format!("{what}: a panic")),
        }
    }
    wrong
}

#[test]
fn every_damaged_cache_is_a_typed_error() -> Result<(), DistillError> {
    let device = Device::flex();
    let teacher = common::Tapped::new(3, 1, 4, 1, &device);
    let x = Tensor::<2>::random([3, 3], Distribution::Default, &device);
    let dense = path("dense.cache");
    let mut writer = CacheWriter::create(&dense, "t", 3)?;
    writer.write_outputs(&[0, 1, 2], &teacher.run(&x))?;
    writer.finish()?;
    let sparse = path("top-k.cache");
    let mut writer = CacheWriter::create(&sparse, "t", 2)?;
    let logits = Tensor::<3>::random([2, 3, 6], Distribution::Default, &device);
    let (ids, log_probs) = cache::top_k_log_probs(logits, 2);
    writer.write_top_k(&[0, 1], ids, log_probs)?;
    writer.finish()?;

    let at = path("damaged.cache");
    let mut wrong = damage(&std::fs::read(&dense).unwrap(), &at, |p| {
        TeacherCache::open(p, "t", 3)?
            .outputs(&[0, 1, 2], &device)
            .map(|_| ())
    });
    wrong.extend(damage(&std::fs::read(&sparse).unwrap(), &at, |p| {
        TeacherCache::open(p, "t", 2)?
            .top_k(&[0, 1], &device)
            .map(|_| ())
    }));
    assert!(
        wrong.is_empty(),
        "{} damaged caches:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    Ok(())
}

#[test]
fn every_damaged_meta_teacher_file_is_a_typed_error() -> Result<(), DistillError> {
    let device = Device::flex().autodiff();
    let teacher = common::mlp(&[2, 2], 3, &device);
    let meta = MetaTeacherConfig::new().init(
        teacher,
        SgdConfig::new().init(),
        CrossEntropyConfig::new().init()?,
    )?;
    let good = path("meta.state");
    meta.save(&good)?;
    let at = path("damaged.state");
    let fresh = || {
        let teacher = common::mlp(&[2, 2], 4, &device);
        MetaTeacherConfig::new()
            .init(
                teacher,
                SgdConfig::new().init(),
                CrossEntropyConfig::new().init().unwrap(),
            )
            .unwrap()
    };
    let wrong = damage(&std::fs::read(&good).unwrap(), &at, |p| {
        fresh().load(p).map(|_| ())
    });
    assert!(
        wrong.is_empty(),
        "{} damaged files:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    Ok(())
}
