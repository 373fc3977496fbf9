//! Validation of configuration values, in one place: every objective's `init` checks its fields
//! with these, so a rule and its message are written once.

use crate::error::DistillError;

/// The temperatures the arithmetic carries: `z/T` and `T²` stay far inside f32 for logits up
/// to 1e4 (the tested range) over `[1e-3, 1e3]`, which holds every temperature in use.
pub const TEMPERATURES: (f64, f64) = (1e-3, 1e3);

/// The largest weight, rate or constant accepted: beyond it a loss of ordinary size overflows
/// f32 (3.4e38) or every other term vanishes under it.
pub const MAGNITUDE: f64 = 1e15;

/// Checks that a temperature is in [`TEMPERATURES`].
pub fn check_temperature(t: f64) -> Result<f64, DistillError> {
    let (lo, hi) = TEMPERATURES;
    if t.is_finite() && (lo..=hi).contains(&t) {
        Ok(t)
    } else {
        Err(DistillError::InvalidTemperature(t))
    }
}

/// Checks that a rate or step is finite, positive and at most [`MAGNITUDE`].
pub fn check_positive(objective: &str, field: &str, v: f64) -> Result<f64, DistillError> {
    if v.is_finite() && v > 0.0 && v <= MAGNITUDE {
        Ok(v)
    } else {
        Err(DistillError::config(
            objective,
            field,
            v,
            "must be finite, > 0 and at most 1e15",
        ))
    }
}

/// Checks that a floor (a clamp under which values are lifted) survives float32: finite, at
/// least `f32::MIN_POSITIVE` (a smaller one rounds to 0 there, and the square root or
/// division it guards is not finite) and at most [`MAGNITUDE`].
pub fn check_floor(objective: &str, field: &str, v: f64) -> Result<f64, DistillError> {
    if v.is_finite() && v >= f64::from(f32::MIN_POSITIVE) && v <= MAGNITUDE {
        Ok(v)
    } else {
        Err(DistillError::config(
            objective,
            field,
            v,
            "must be finite, at least 1.2e-38 (a smaller floor is 0 in float32) and at most 1e15",
        ))
    }
}

/// Checks that a weight or coefficient is finite, not negative and at most [`MAGNITUDE`].
pub fn check_non_negative(objective: &str, field: &str, v: f64) -> Result<f64, DistillError> {
    if v.is_finite() && (0.0..=MAGNITUDE).contains(&v) {
        Ok(v)
    } else {
        Err(DistillError::config(
            objective,
            field,
            v,
            "must be finite, >= 0 and at most 1e15",
        ))
    }
}

/// Checks that the power of a map (`|F|^p`: AT, FT) is in `(0, 16]`: feature values of 100
/// raised to 16 are 1e32, at the edge of f32.
pub fn check_power(objective: &str, field: &str, p: f64) -> Result<f64, DistillError> {
    match p.is_finite() && p > 0.0 && p <= 16.0 {
        true => Ok(p),
        false => Err(DistillError::config(
            objective,
            field,
            p,
            "must be in (0, 16]",
        )),
    }
}

/// Checks that a fraction is finite and in `[0, 1)` (`closed: false`) or `[0, 1]` (`true`).
pub fn check_fraction(
    objective: &str,
    field: &str,
    v: f64,
    closed: bool,
) -> Result<f64, DistillError> {
    let ok = v.is_finite() && v >= 0.0 && if closed { v <= 1.0 } else { v < 1.0 };
    match ok {
        true => Ok(v),
        false => Err(DistillError::config(
            objective,
            field,
            v,
            if closed {
                "must be in [0, 1]"
            } else {
                "must be in [0, 1)"
            },
        )),
    }
}

/// Checks that a count is at least `min`.
pub fn check_count(
    objective: &str,
    field: &str,
    v: usize,
    min: usize,
) -> Result<usize, DistillError> {
    match v >= min {
        true => Ok(v),
        false => Err(DistillError::config(
            objective,
            field,
            v,
            &format!("must be at least {min}"),
        )),
    }
}

/// Checks that logits have at least `min` classes (DKD's non-target part is vacuous below 3).
pub fn check_classes(objective: &str, classes: usize, min: usize) -> Result<(), DistillError> {
    match classes >= min {
        true => Ok(()),
        false => Err(DistillError::TooFewClasses {
            objective: objective.into(),
            min,
            got: classes,
        }),
    }
}

/// Checks that a value is finite.
pub fn check_finite(objective: &str, field: &str, v: f64) -> Result<f64, DistillError> {
    match v.is_finite() {
        true => Ok(v),
        false => Err(DistillError::config(objective, field, v, "must be finite")),
    }
}

/// Checks that a share is in `(0, 1]` (a fraction of a batch or of the classes kept).
pub fn check_share(objective: &str, field: &str, v: f64) -> Result<f64, DistillError> {
    match v > 0.0 && v <= 1.0 {
        true => Ok(v),
        false => Err(DistillError::config(
            objective,
            field,
            v,
            "must be in (0, 1]",
        )),
    }
}

/// Checks that a list of feature taps is not empty, and that `weights`, when given, has one
/// non-negative weight per tap.
pub fn check_taps(objective: &str, taps: &[String], weights: &[f64]) -> Result<(), DistillError> {
    if taps.is_empty() {
        return Err(DistillError::config(
            objective,
            "features",
            "[]",
            "names at least one tap",
        ));
    }
    if !weights.is_empty() && weights.len() != taps.len() {
        return Err(DistillError::config(
            objective,
            "weights",
            format!("{weights:?}"),
            &format!("one weight per tap ({} taps), or none", taps.len()),
        ));
    }
    for &w in weights {
        check_non_negative(objective, "weights", w)?;
    }
    Ok(())
}
