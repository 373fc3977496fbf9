//! A small input every catalogued example objective reads, for smoke tests and the crate's
//! backend and property suites.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::input::{DistillInput, Feature, Progress};
use crate::token::{LmHead, LmHeads, TeacherHead};

/// [`example_input`]'s input and its tracked leaves (name and tensor), whose gradients a
/// suite compares.
#[derive(Debug, Clone)]
pub struct ExampleInput {
    /// The input (teacher attached).
    pub input: DistillInput,
    /// The tracked leaves: `logits_student` and `logits_teacher` `[6, 5]`, the taps
    /// `feature` (maps `[6, 3, 4, 4]` and `[6, 6, 4, 4]`), `embedding` (`[6, 4]` and `[6, 5]`)
    /// and `paired` (maps `[6, 3, 4, 4]` on both sides, for objectives that need equal shapes),
    /// and the student's lm-head weight `[4, 5]`.
    pub leaves: Vec<(&'static str, Feature)>,
}

/// The same deterministic numbers in `[-scale, scale]` on any device and dtype.
fn data<const D: usize>(shape: [usize; D], seed: u64, scale: f64) -> TensorData {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect();
    TensorData::new(v, shape)
}

/// A batch of 6 rows (5 classes) on `device` in `dtype` that every objective with an
/// [`Descriptor::example`](crate::Descriptor::example) reads: student and teacher logits, targets, a
/// guide, feature taps `feature` (maps), `embedding` and `paired` (equal maps), dataset indices, a sparse top-2
/// teacher, the student's lm-head ([`LmHeads`], over the `embedding` tap) and progress; the
/// teacher is attached, so every gradient is there to compare. The same numbers on every
/// backend.
pub fn example_input(device: &Device, dtype: DType) -> ExampleInput {
    example_input_shifted(device, dtype, None)
}

/// [`example_input`] with every logit, guide, map and embedding drawn in
/// `[-magnitude, magnitude]` (the lm-head weight and the sparse teacher stay as they are): what
/// a test of an objective's [`Descriptor::bound`](crate::Descriptor::bound) reads.
pub fn example_input_at(device: &Device, dtype: DType, magnitude: f64) -> ExampleInput {
    build(device, dtype, None, Some(magnitude))
}

/// [`example_input`] with one element of one leaf shifted: `(leaf name, flat index, delta)` —
/// what a finite-difference check needs.
pub fn example_input_shifted(
    device: &Device,
    dtype: DType,
    shift: Option<(&str, usize, f64)>,
) -> ExampleInput {
    build(device, dtype, shift, None)
}

/// The example input, with one element shifted and the leaves at a magnitude.
fn build(
    device: &Device,
    dtype: DType,
    shift: Option<(&str, usize, f64)>,
    magnitude: Option<f64>,
) -> ExampleInput {
    let leaf_names = [
        "logits_student",
        "logits_teacher",
        "feature_student",
        "feature_teacher",
        "embedding_student",
        "embedding_teacher",
        "lm_head_weight",
        "paired_student",
        "paired_teacher",
    ];
    let leaf = |shape: &[usize], seed: u64, scale: f64| -> TensorData {
        let scale = match (magnitude, seed) {
            (Some(m), 1..=6 | 8..=10) => m,
            _ => scale,
        };
        let mut d = match shape {
            [a, b] => data([*a, *b], seed, scale),
            [a, b, c, e] => data([*a, *b, *c, *e], seed, scale),
            _ => unreachable!("the example's leaves are of rank 2 or 4"),
        };
        if let Some((name, index, delta)) = shift
            && leaf_names.get(seed as usize - 1) == Some(&name)
        {
            let mut v: Vec<f64> = d.convert::<f64>().try_to_vec::<f64>().unwrap_or_default();
            v[index] += delta;
            d = TensorData::new(v, shape.to_vec());
        }
        d
    };
    let leaf2 = |shape: [usize; 2], seed: u64, scale: f64| -> Tensor<2> {
        Tensor::<2>::from_data(leaf(&shape, seed, scale), (device, dtype)).require_grad()
    };
    let leaf4 = |shape: [usize; 4], seed: u64, scale: f64| -> Tensor<4> {
        Tensor::<4>::from_data(leaf(&shape, seed, scale), (device, dtype)).require_grad()
    };
    let ints = |v: Vec<i64>| {
        let n = v.len();
        Tensor::<1, Int>::from_data(TensorData::new(v, [n]), device)
    };
    let s = leaf2([6, 5], 1, 3.0);
    let t = leaf2([6, 5], 2, 3.0);
    let ms = leaf4([6, 3, 4, 4], 3, 1.0);
    let mt = leaf4([6, 6, 4, 4], 4, 1.0);
    let es = leaf2([6, 4], 5, 1.0);
    let et = leaf2([6, 5], 6, 1.0);
    let head = leaf2([4, 5], 7, 1.0);
    let ps = leaf4([6, 3, 4, 4], 8, 1.0);
    let pt = leaf4([6, 3, 4, 4], 9, 1.0);
    let guide = Tensor::<2>::from_data(leaf(&[6, 5], 10, 3.0), (device, dtype));
    // the teacher's top-2 tokens of each row of a fixed distribution, as log-probabilities
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new(vec![0i64, 3, 1, 4, 2, 0, 3, 1, 4, 2, 0, 4], [6, 2]),
        device,
    );
    let top = Tensor::<2>::from_data(
        TensorData::new(
            vec![
                -0.4, -1.6, -0.7, -1.2, -0.2, -2.5, -0.9, -1.0, -0.5, -1.8, -0.3, -2.0,
            ],
            [6, 2],
        ),
        (device, dtype),
    );
    let input = DistillInput::new(s.clone(), t.clone())
        .targets(ints(vec![0, 1, 2, 3, 4, 0]))
        .guide(guide)
        .feature("feature", ms.clone(), mt.clone())
        .feature("embedding", es.clone(), et.clone())
        .feature("paired", ps.clone(), pt.clone())
        .indices(ints(vec![0, 3, 5, 7, 2, 9]))
        .sparse_teacher(ids, top)
        .with(LmHeads {
            student: LmHead::new(es.clone(), head.clone(), None),
            teacher: TeacherHead::Logits(t.clone()),
        })
        .progress(Progress::epoch(2, 10).at_step(3, 10))
        .attach_teacher();
    ExampleInput {
        input,
        leaves: vec![
            ("logits_student", Feature::Embedding(s)),
            ("logits_teacher", Feature::Embedding(t)),
            ("feature_student", Feature::Map(ms)),
            ("feature_teacher", Feature::Map(mt)),
            ("embedding_student", Feature::Embedding(es)),
            ("embedding_teacher", Feature::Embedding(et)),
            ("lm_head_weight", Feature::Embedding(head)),
            ("paired_student", Feature::Map(ps)),
            ("paired_teacher", Feature::Map(pt)),
        ],
    }
}
