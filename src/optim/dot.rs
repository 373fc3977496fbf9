//! DOT: separate momenta for the task and the distillation gradients.

use crate::registry::Descriptor;
use std::collections::HashMap;

use burn::config::Config;
use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::check::check_non_negative;
use crate::error::DistillError;
use crate::loss::LossOutput;

/// Configuration of [`Dot`]; the defaults are the paper's (β = 0.9, δ = 0.075, task term `ce`).
#[derive(Config, Debug)]
pub struct DotConfig {
    /// The base momentum β.
    #[config(default = 0.9)]
    pub momentum: f64,
    /// δ: the distillation momentum is β + δ, the task momentum β − δ.
    #[config(default = 0.075)]
    pub delta: f64,
    /// L2 weight decay, added to the task gradient.
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// The names of the [`LossOutput`] terms that make the task loss; every other part of the
    /// total is distillation.
    #[config(default = "vec![\"ce\".to_string()]")]
    pub task_terms: Vec<String>,
}

impl DotConfig {
    /// Validates the momenta (both in [0, 1)), the weight decay and the task terms.
    pub fn init(&self) -> Result<Dot, DistillError> {
        let (task, distill) = (self.momentum - self.delta, self.momentum + self.delta);
        for (field, v) in [("momentum - delta", task), ("momentum + delta", distill)] {
            crate::check::check_fraction("dot", field, v, false)?;
        }
        check_non_negative("dot", "weight_decay", self.weight_decay)?;
        if self.task_terms.is_empty() {
            return Err(DistillError::config(
                "dot",
                "task_terms",
                "[]",
                "names at least one task term",
            ));
        }
        Ok(Dot {
            task_momentum: task,
            distill_momentum: distill,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            task_terms: self.task_terms.clone(),
            buffers: HashMap::new(),
        })
    }
}

/// The two momentum buffers of one parameter, flattened.
#[derive(Debug, Clone, Default)]
struct Buffers {
    task: Option<Tensor<1>>,
    distill: Option<Tensor<1>>,
}

/// DOT, the Distillation-Oriented Trainer (Zhao, Song, Li, Zhang, Yang, Song, Zhou, ICCV
/// 2023): SGD whose task gradient and distillation gradient keep separate momentum buffers,
/// the distillation one with more momentum (β + δ) and the task one with less (β − δ), so the
/// distillation loss, which otherwise stalls, keeps descending.
///
/// Per parameter `p`, with task gradient `gᵗ` and distillation gradient `gᵈ`:
///
/// ```text
/// bᵗ ← (β − δ) bᵗ + gᵗ + λ p      bᵈ ← (β + δ) bᵈ + gᵈ      p ← p − lr (bᵗ + bᵈ)
/// ```
///
/// (each buffer starts as its first gradient; a parameter reached by one loss only uses β, and
/// takes the weight decay `λ` on that gradient — mdistiller's `engine/dot.py`).
///
/// The split follows [`LossOutput`]'s named terms: the terms listed in
/// [`DotConfig::task_terms`] are the task loss, the rest of the total is distillation. burn
/// cannot backpropagate twice through one graph, so [`step`](Self::step) evaluates the loss
/// twice (once per gradient): make it deterministic (no dropout draw between the two calls).
#[derive(Debug, Clone)]
pub struct Dot {
    task_momentum: f64,
    distill_momentum: f64,
    momentum: f64,
    weight_decay: f64,
    task_terms: Vec<String>,
    buffers: HashMap<ParamId, Buffers>,
}

impl Dot {
    fn task_part(&self, out: &LossOutput) -> Result<Tensor<1>, DistillError> {
        let mut parts = Vec::new();
        for (name, t) in out.terms() {
            if !self.task_terms.iter().any(|n| n == name) {
                continue;
            }
            if !t.is_tracked() {
                // e.g. a fused DKD term: a value for logging, outside the graph
                return Err(DistillError::MissingInput {
                    objective: "dot".into(),
                    what: format!("a differentiable task term ({name} is a logged value)"),
                });
            }
            parts.push(t.clone().sum());
        }
        parts
            .into_iter()
            .reduce(|a, b| a + b)
            .ok_or_else(|| DistillError::MissingInput {
                objective: "dot".into(),
                what: format!("a task term named one of {:?}", self.task_terms),
            })
    }

    /// One step of `module` at learning rate `lr`: `loss(module)` is evaluated twice, its task
    /// terms and the rest differentiated separately. Returns the updated module and the loss
    /// of the (second) evaluation, for logging.
    pub fn step<M: Module>(
        &mut self,
        lr: f64,
        module: M,
        loss: impl Fn(&M) -> Result<LossOutput, DistillError>,
    ) -> Result<(M, LossOutput), DistillError> {
        crate::check::check_non_negative("dot", "lr", lr)?;
        let task = self.task_part(&loss(&module)?)?;
        let task_grads = GradientsParams::from_grads(task.backward(), &module);
        let out = loss(&module)?;
        // the momenta are state: a non-finite loss must not reach them (one read-back a step)
        if !out.value().is_finite() {
            return Err(DistillError::NonFinite {
                what: "the loss DOT steps on".into(),
            });
        }
        let distill = out.total.clone().sum() - self.task_part(&out)?;
        let distill_grads = GradientsParams::from_grads(distill.backward(), &module);
        let module = module.map(&mut DotStep {
            dot: self,
            task: &task_grads,
            distill: &distill_grads,
            lr,
        });
        Ok((module, out))
    }
}

struct DotStep<'a> {
    dot: &'a mut Dot,
    task: &'a GradientsParams,
    distill: &'a GradientsParams,
    lr: f64,
}

impl ModuleMapper for DotStep<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (gt, gd) = (
            self.task.get::<D>(param.id),
            self.distill.get::<D>(param.id),
        );
        if gt.is_none() && gd.is_none() {
            return param;
        }
        let dot = &mut *self.dot;
        let both = gt.is_some() && gd.is_some();
        let (mt, md) = if both {
            (dot.task_momentum, dot.distill_momentum)
        } else {
            (dot.momentum, dot.momentum)
        };
        let (lr, wd) = (self.lr, dot.weight_decay);
        let buffers = dot.buffers.entry(param.id).or_default();
        param.map(|p| {
            let tracked = p.is_require_grad();
            let dims = p.dims();
            let value = p.clone().detach().flatten::<1>(0, D - 1);
            let flat = |g: Tensor<D>| g.to_device(&p.device()).flatten::<1>(0, D - 1);
            let (mut gt, mut gd) = (gt.map(flat), gd.map(flat));
            // the weight decay joins the task gradient, or the only gradient there is
            if wd != 0.0
                && let Some(g) = gt.as_mut().or(gd.as_mut())
            {
                *g = g.clone() + value.clone() * wd;
            }
            let push = |buf: &mut Option<Tensor<1>>, g: Tensor<1>, m: f64| {
                let b = match buf.take() {
                    None => g,
                    Some(b) => b * m + g,
                };
                *buf = Some(b.clone());
                b
            };
            let mut update = value.zeros_like();
            if let Some(g) = gt {
                update = update + push(&mut buffers.task, g, mt);
            }
            if let Some(g) = gd {
                update = update + push(&mut buffers.distill, g, md);
            }
            (value - update * lr)
                .reshape(dims)
                .detach()
                .set_require_grad(tracked)
        })
    }
}

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Dot"],
    paper: "Zhao et al., ICCV 2023, *DOT: A Distillation-Oriented Trainer*",
    doc: "dot.md",
    bound: None,
    example: None,
    learnable: None,
    twins: None,
    method: None,
    golden: crate::registry::golden![],
}];
