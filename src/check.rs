//! Validation of configuration values, in one place: every objective's `init` checks its fields
//! with these, so a rule and its message are written once.

use crate::DistillError;

/// Checks that a temperature is positive and finite.
pub fn check_temperature(t: f64) -> Result<f64, DistillError> {
    if t.is_finite() && t > 0.0 {
        Ok(t)
    } else {
        Err(DistillError::InvalidTemperature(t))
    }
}

/// Checks that a rate or step is finite and positive.
pub fn check_positive(objective: &str, field: &str, v: f64) -> Result<f64, DistillError> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(DistillError::config(
            objective,
            field,
            v,
            "must be finite and > 0",
        ))
    }
}

/// Checks that a weight or coefficient is finite and not negative.
pub fn check_non_negative(objective: &str, field: &str, v: f64) -> Result<f64, DistillError> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(DistillError::config(
            objective,
            field,
            v,
            "must be finite and >= 0",
        ))
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
