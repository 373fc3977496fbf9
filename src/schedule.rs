use std::f64::consts::PI;

use crate::error::DistillError;
use crate::input::Progress;

/// A value as a pure function of training progress.
///
/// Ramps run over `epochs` epochs of [`Progress::epochs_done`], or over the whole run
/// ([`Progress::fraction`]) when `epochs` is 0; after the ramp the value stays at `end`.
///
/// | schedule | value at progress `f` of the ramp, `f ∈ [0, 1]` |
/// |---|---|
/// | `Constant(v)` | `v` |
/// | `Warmup { value, epochs }` | `value · min((epoch + 1) / epochs, 1)`: DKD's warm-up, counting epochs from 1 as mdistiller does |
/// | `Linear { start, end, epochs }` | `start + (end − start) · f` |
/// | `Cosine { start, end, epochs }` | `start + (end − start) · (1 − cos πf) / 2` |
/// | `Step { start, factor, every }` | `start · factor^⌊epoch / every⌋` |
///
/// ```
/// use burn_distill::{Progress, curriculum::Schedule};
/// let warm = Schedule::Warmup { value: 1.0, epochs: 20 };
/// assert_eq!(warm.value(Some(Progress::epoch(0, 240))).unwrap(), 0.05);
/// assert_eq!(warm.value(Some(Progress::epoch(30, 240))).unwrap(), 1.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// The same value throughout; needs no progress.
    Constant(f64),
    /// A linear warm-up from `value / epochs` at the first epoch to `value`.
    Warmup {
        /// The value after the warm-up.
        value: f64,
        /// Epochs of warm-up (0: none).
        epochs: usize,
    },
    /// A linear ramp from `start` to `end`.
    Linear {
        /// The value at the start.
        start: f64,
        /// The value at the end of the ramp and after it.
        end: f64,
        /// Epochs of the ramp (0: the whole run).
        epochs: usize,
    },
    /// A half-cosine ramp from `start` to `end`.
    Cosine {
        /// The value at the start.
        start: f64,
        /// The value at the end of the ramp and after it.
        end: f64,
        /// Epochs of the ramp (0: the whole run).
        epochs: usize,
    },
    /// Multiplied by `factor` every `every` epochs.
    Step {
        /// The value during the first `every` epochs.
        start: f64,
        /// The factor applied at each step.
        factor: f64,
        /// Epochs between steps (at least 1).
        every: usize,
    },
}

/// The serde form of a [`Schedule`] that is not a plain number: a table tagged by `kind`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum Tagged {
    Constant {
        value: f64,
    },
    Warmup {
        value: f64,
        epochs: usize,
    },
    Linear {
        start: f64,
        end: f64,
        epochs: usize,
    },
    Cosine {
        start: f64,
        end: f64,
        epochs: usize,
    },
    Step {
        start: f64,
        factor: f64,
        every: usize,
    },
}

/// A constant is written as a plain number (`weight = 0.5`), every other schedule as a table
/// tagged by `kind` (`weight = { kind = "warmup", value = 1.0, epochs = 20 }`).
impl serde::Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let tagged = match *self {
            Schedule::Constant(v) => return serializer.serialize_f64(v),
            Schedule::Warmup { value, epochs } => Tagged::Warmup { value, epochs },
            Schedule::Linear { start, end, epochs } => Tagged::Linear { start, end, epochs },
            Schedule::Cosine { start, end, epochs } => Tagged::Cosine { start, end, epochs },
            Schedule::Step {
                start,
                factor,
                every,
            } => Tagged::Step {
                start,
                factor,
                every,
            },
        };
        tagged.serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(deserializer)?;
        if let Some(v) = value.as_f64() {
            return Ok(Schedule::Constant(v));
        }
        let tagged = Tagged::deserialize(value).map_err(|e| {
            D::Error::custom(format!(
                "a schedule is a number or a table with kind = constant | warmup | linear | cosine | step: {e}"
            ))
        })?;
        Ok(match tagged {
            Tagged::Constant { value } => Schedule::Constant(value),
            Tagged::Warmup { value, epochs } => Schedule::Warmup { value, epochs },
            Tagged::Linear { start, end, epochs } => Schedule::Linear { start, end, epochs },
            Tagged::Cosine { start, end, epochs } => Schedule::Cosine { start, end, epochs },
            Tagged::Step {
                start,
                factor,
                every,
            } => Schedule::Step {
                start,
                factor,
                every,
            },
        })
    }
}

impl From<f64> for Schedule {
    fn from(v: f64) -> Self {
        Schedule::Constant(v)
    }
}

impl Schedule {
    /// Checks the schedule's parameters: finite values of magnitude at most 1e15 (beyond it an
    /// ordinary loss overflows f32, or every other term vanishes under it), and a step period
    /// of at least 1.
    pub fn validate(&self) -> Result<(), DistillError> {
        let finite = |field: &str, v: f64| {
            if v.is_finite() && v.abs() <= crate::check::MAGNITUDE {
                Ok(())
            } else {
                Err(DistillError::config(
                    "schedule",
                    field,
                    v,
                    "must be finite and at most 1e15 in magnitude",
                ))
            }
        };
        match *self {
            Schedule::Constant(v) => finite("value", v),
            Schedule::Warmup { value, .. } => finite("value", value),
            Schedule::Linear { start, end, .. } | Schedule::Cosine { start, end, .. } => {
                finite("start", start)?;
                finite("end", end)
            }
            Schedule::Step {
                start,
                factor,
                every,
            } => {
                finite("start", start)?;
                finite("factor", factor)?;
                if every == 0 {
                    return Err(DistillError::config("schedule", "every", 0, "must be >= 1"));
                }
                Ok(())
            }
        }
    }

    /// Whether the value depends on progress.
    pub fn needs_progress(&self) -> bool {
        !matches!(
            self,
            Schedule::Constant(_) | Schedule::Warmup { epochs: 0, .. }
        )
    }

    /// The value at `progress`; a schedule that [needs progress](Self::needs_progress) and gets
    /// none answers [`DistillError::MissingInput`].
    pub fn value(&self, progress: Option<Progress>) -> Result<f64, DistillError> {
        self.validate()?;
        let p = match (self.needs_progress(), progress) {
            (false, _) => Progress::default(),
            (true, Some(p)) => p,
            (true, None) => {
                return Err(DistillError::MissingInput {
                    objective: "schedule".into(),
                    what: "training progress (DistillInput::progress)".into(),
                });
            }
        };
        let ramp = |epochs: usize| {
            if epochs == 0 {
                p.fraction()
            } else {
                (p.epochs_done() / epochs as f64).clamp(0.0, 1.0)
            }
        };
        let value = match *self {
            Schedule::Constant(v) => v,
            Schedule::Warmup { value, epochs } => {
                if epochs == 0 {
                    value
                } else {
                    value * ((p.epoch + 1) as f64 / epochs as f64).min(1.0)
                }
            }
            Schedule::Linear { start, end, epochs } => start + (end - start) * ramp(epochs),
            Schedule::Cosine { start, end, epochs } => {
                start + (end - start) * (1.0 - (PI * ramp(epochs)).cos()) / 2.0
            }
            Schedule::Step {
                start,
                factor,
                every,
            } => start * factor.powf((p.epoch / every) as f64),
        };
        // a step schedule can leave f64 after enough epochs: an error, not an infinite weight
        match value.is_finite() {
            true => Ok(value),
            false => Err(DistillError::config(
                "schedule",
                "value",
                value,
                &format!("is not finite at epoch {}", p.epoch),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: usize) -> Option<Progress> {
        Some(Progress::epoch(epoch, 10))
    }

    #[test]
    fn warmup_matches_mdistiller() {
        // mdistiller: min(epoch / warmup, 1) with epochs counted from 1.
        let s = Schedule::Warmup {
            value: 2.0,
            epochs: 4,
        };
        let v: Vec<f64> = (0..6).map(|e| s.value(at(e)).unwrap()).collect();
        assert_eq!(v, vec![0.5, 1.0, 1.5, 2.0, 2.0, 2.0]);
    }

    #[test]
    fn ramps_start_middle_end_and_monotone() {
        for s in [
            Schedule::Linear {
                start: 1.0,
                end: 3.0,
                epochs: 0,
            },
            Schedule::Cosine {
                start: 1.0,
                end: 3.0,
                epochs: 0,
            },
        ] {
            assert_eq!(s.value(at(0)).unwrap(), 1.0);
            assert!((s.value(at(5)).unwrap() - 2.0).abs() < 1e-12);
            assert_eq!(s.value(at(10)).unwrap(), 3.0);
            let v: Vec<f64> = (0..=10).map(|e| s.value(at(e)).unwrap()).collect();
            assert!(v.windows(2).all(|w| w[1] > w[0]), "{s:?}: {v:?}");
        }
        // a ramp over 4 epochs holds its end value afterwards
        let c = Schedule::Cosine {
            start: 0.0,
            end: -1.0,
            epochs: 4,
        };
        assert!((c.value(at(2)).unwrap() + 0.5).abs() < 1e-12);
        assert_eq!(c.value(at(7)).unwrap(), -1.0);
    }

    #[test]
    fn step_and_fractional_epochs() {
        let s = Schedule::Step {
            start: 1.0,
            factor: 0.1,
            every: 3,
        };
        assert_eq!(s.value(at(2)).unwrap(), 1.0);
        assert!((s.value(at(3)).unwrap() - 0.1).abs() < 1e-15);
        let lin = Schedule::Linear {
            start: 0.0,
            end: 1.0,
            epochs: 2,
        };
        let p = Progress::epoch(0, 10).at_step(50, 100);
        assert_eq!(lin.value(Some(p)).unwrap(), 0.25);
    }

    #[test]
    fn errors() {
        let bad = Schedule::Step {
            start: 1.0,
            factor: 0.5,
            every: 0,
        };
        assert!(matches!(
            bad.value(at(1)),
            Err(DistillError::InvalidConfig { .. })
        ));
        assert!(matches!(
            Schedule::Constant(f64::NAN).validate(),
            Err(DistillError::InvalidConfig { .. })
        ));
        let lin = Schedule::Linear {
            start: 0.0,
            end: 1.0,
            epochs: 0,
        };
        assert!(matches!(
            lin.value(None),
            Err(DistillError::MissingInput { .. })
        ));
        assert_eq!(Schedule::Constant(0.3).value(None).unwrap(), 0.3);
    }
}
