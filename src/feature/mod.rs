//! Feature distillation: the student's intermediate feature maps are pushed towards the
//! teacher's (FitNet hints, attention transfer, masked generative distillation), and SoKD's
//! plug-ins around any of them (learnable teacher-feature augmentation, distinctive-area mask).
//!
//! Every objective here reads named feature taps (`DistillInput::feature`) holding maps
//! `[N, C, H, W]`; a missing tap is `DistillError::MissingFeature` naming it.

mod attention;
mod hint;
mod mgd;
mod sokd;

pub use attention::*;
pub use hint::*;
pub use mgd::*;
pub use sokd::*;

use burn::tensor::Tensor;

use crate::{DistillError, DistillInput, Feature};

/// The student's and teacher's maps of tap `name`, after checking both are `[N, C, H, W]`
/// with the same `N > 0` and non-empty spatial sizes.
pub(crate) fn map_pair(
    input: &DistillInput,
    objective: &str,
    name: &str,
) -> Result<(Tensor<4>, Tensor<4>), DistillError> {
    let (s, t) = input.feature_pair(objective, name)?;
    let map = |f: Feature, who: &str| match f {
        Feature::Map(t) => Ok(t),
        Feature::Embedding(t) => Err(DistillError::ShapeMismatch {
            what: format!("{objective}: {who} tap `{name}` (a map [N, C, H, W] is needed)"),
            expected: vec![t.dims()[0], 0, 0, 0],
            actual: t.dims().to_vec(),
        }),
    };
    let (s, t) = (map(s, "student")?, map(t, "teacher")?);
    let (ds, dt) = (s.dims(), t.dims());
    if ds[0] != dt[0] {
        return Err(DistillError::ShapeMismatch {
            what: format!("{objective}: teacher tap `{name}` batch"),
            expected: vec![ds[0]],
            actual: vec![dt[0]],
        });
    }
    for (who, d) in [("student", ds), ("teacher", dt)] {
        if d[0] == 0 || d[2] == 0 || d[3] == 0 {
            return Err(DistillError::EmptyBatch {
                what: format!("{objective}: {who} tap `{name}` of shape {d:?}"),
            });
        }
    }
    Ok((s, t))
}
