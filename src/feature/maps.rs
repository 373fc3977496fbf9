//! What the map objectives share: pooling the larger of two maps to the smaller's size, and
//! rows normalised over the spatial positions.

use burn::tensor::Tensor;
use burn::tensor::module::adaptive_avg_pool2d;

use crate::error::DistillError;
use crate::math::l2_normalize;

/// `(a, b)` with the map of more spatial positions average-pooled (adaptively) to the other's
/// `[H, W]` (mdistiller's and RepDistiller's `adaptive_avg_pool2d` before AT, NST, FT and FSP).
pub fn pool_to_smaller(a: Tensor<4>, b: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
    let ([.., ha, wa], [.., hb, wb]) = (a.dims(), b.dims());
    if ha * wa > hb * wb {
        (adaptive_avg_pool2d(a, [hb, wb]), b)
    } else if ha * wa < hb * wb {
        (a, adaptive_avg_pool2d(b, [ha, wa]))
    } else {
        (a, b)
    }
}

/// Each channel's map flattened and scaled to unit length: `[N, C, H, W]` → `[N, C, H·W]`
/// (`F.normalize(f.view(N, C, -1), dim=2)`, norms floored at 1e-12).
pub fn unit_channels(f: Tensor<4>) -> Tensor<3> {
    let [n, c, h, w] = f.dims();
    l2_normalize(f.reshape([n * c, h * w]), 1e-12).reshape([n, c, h * w])
}

/// The weight of stage `i` of `k` in AB's and OFD's sums: 1 for the deepest, halving towards
/// the input (`2^(i + 1 − k)`).
pub fn halving_weight(i: usize, k: usize) -> f64 {
    2f64.powi(i as i32 + 1 - k as i32)
}

/// The sum over the taps `names` of one stage's loss `stage(index, name)` (the taps' list is
/// non-empty: [`check_taps`](crate::check::check_taps) at `init`).
pub fn sum_stages(
    names: &[String],
    mut stage: impl FnMut(usize, &str) -> Result<Tensor<1>, DistillError>,
) -> Result<Tensor<1>, DistillError> {
    let mut total: Option<Tensor<1>> = None;
    for (i, name) in names.iter().enumerate() {
        let loss = stage(i, name)?;
        total = Some(match total {
            None => loss,
            Some(acc) => acc + loss,
        });
    }
    total.ok_or_else(|| DistillError::config("feature", "features", "[]", "names at least one tap"))
}

/// The maps of tap `name`, after checking that the student's and teacher's `[C, H, W]` are
/// the configured `student` and `teacher`.
pub fn configured_maps(
    checked: &crate::input::Checked,
    name: &str,
    student: [usize; 3],
    teacher: [usize; 3],
) -> Result<(Tensor<4>, Tensor<4>), DistillError> {
    let (s, t) = checked.maps(name)?;
    for (who, want, got) in [
        ("student", student, s.dims()),
        ("teacher", teacher, t.dims()),
    ] {
        if got[1..] != want {
            return Err(checked.shape(
                format!("{who} tap `{name}`"),
                [got[0]].into_iter().chain(want).collect(),
                got.to_vec(),
            ));
        }
    }
    Ok((s, t))
}

/// The maps of tap `name`, after checking that the student has `cs` channels and the teacher
/// `ct`.
pub fn channel_maps(
    checked: &crate::input::Checked,
    name: &str,
    [cs, ct]: [usize; 2],
) -> Result<(Tensor<4>, Tensor<4>), DistillError> {
    let (s, t) = checked.maps(name)?;
    if s.dims()[1] != cs || t.dims()[1] != ct {
        return Err(checked.shape(
            format!("channels of tap `{name}` (student, teacher)"),
            vec![cs, ct],
            vec![s.dims()[1], t.dims()[1]],
        ));
    }
    Ok((s, t))
}
