//! Where training stands.

/// Where training stands, so schedules (DKD's warm-up, curricula, CTKD's λ) are pure
/// functions of it.
///
/// `epoch` counts from 0. Epoch-based warm-ups follow mdistiller, whose epochs count from 1:
/// epoch 0 here is its epoch 1.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Progress {
    /// The current epoch, from 0.
    pub epoch: usize,
    /// Epochs in the whole run (0 when unknown).
    pub total_epochs: usize,
    /// The step within the current epoch, from 0.
    pub step: usize,
    /// Steps in one epoch (0 when unknown).
    pub steps_per_epoch: usize,
}

impl Progress {
    /// Progress at the start of `epoch` (from 0) of `total_epochs`.
    pub fn epoch(epoch: usize, total_epochs: usize) -> Self {
        Self {
            epoch,
            total_epochs,
            ..Self::default()
        }
    }

    /// The same progress at `step` of `steps_per_epoch` within the epoch.
    pub fn at_step(self, step: usize, steps_per_epoch: usize) -> Self {
        Self {
            step,
            steps_per_epoch,
            ..self
        }
    }

    /// Epochs done so far, with the fraction of the current epoch: `epoch + step / steps`.
    pub fn epochs_done(&self) -> f64 {
        let within = if self.steps_per_epoch > 0 {
            self.step as f64 / self.steps_per_epoch as f64
        } else {
            0.0
        };
        self.epoch as f64 + within
    }

    /// The fraction of the whole run done, in `[0, 1]` (0 when the total is unknown).
    pub fn fraction(&self) -> f64 {
        if self.total_epochs == 0 {
            return 0.0;
        }
        (self.epochs_done() / self.total_epochs as f64).clamp(0.0, 1.0)
    }
}
