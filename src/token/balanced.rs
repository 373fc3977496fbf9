//! Loss balancing for logit and intermediate distillation terms (Model-Optimizer's Megatron
//! plugin): the values matched to the logits term, the gradients rescaled.

use crate::registry::Descriptor;
use burn::config::Config;
use burn::tensor::Tensor;

use crate::check::check_positive;
use crate::error::DistillError;
use crate::input::DistillInput;
use crate::loss::{Loss, LossOutput};

/// `x · sg(to)/sg(x)` where `sg(x) > 0` and `sg(to) > 0` (the value of `to`, the gradient of
/// `x` times that ratio), `x` itself elsewhere. Nothing is read back from the device.
fn rescaled(x: Tensor<1>, to: Tensor<1>) -> Tensor<1> {
    let (xd, td) = (x.clone().detach(), to.detach());
    let both = xd
        .clone()
        .greater_elem(0.0)
        .bool_and(td.clone().greater_elem(0.0));
    let ratio =
        (td / xd.clone().mask_fill(both.clone().bool_not(), 1.0)).mask_fill(both.bool_not(), 1.0);
    x * ratio
}

/// Model-Optimizer's `LogitsAndIntermediatesLossBalancer` on loss values `[1]`: the mean `I`
/// of the intermediate terms is rescaled to the logits term's value `L` (its gradient scaled by
/// `L/I`); without a task loss the total is `L + I'`; with one, `kd = L + I'` is rescaled to the
/// task loss's value `S` and the total is `S + kd'·scale`. Returns the total and `I'`.
pub fn balance(
    logits: Tensor<1>,
    intermediates: Vec<Tensor<1>>,
    task: Option<Tensor<1>>,
    kd_loss_scale: f64,
) -> (Tensor<1>, Tensor<1>) {
    let count = intermediates.len();
    let intermediate = match intermediates.into_iter().reduce(|a, b| a + b) {
        // a product, not a division: burn 0.22.1 differentiates `x / c` with c rounded to f32
        Some(sum) => rescaled(sum * (1.0 / count as f64), logits.clone()),
        None => logits.zeros_like(),
    };
    let kd = logits + intermediate.clone();
    let total = match task {
        None => kd,
        Some(s) => s.clone() + rescaled(kd, s) * kd_loss_scale,
    };
    (total, intermediate)
}

/// Configuration of [`Balanced`].
#[derive(Config, Debug)]
pub struct BalancedConfig {
    /// The weight of the rescaled distillation loss beside the task loss (> 0).
    #[config(default = 1.0)]
    pub kd_loss_scale: f64,
}

impl BalancedConfig {
    /// Validates the configuration and builds the balancer around the logits objective.
    pub fn init(&self, logits: impl Loss + 'static) -> Result<Balanced, DistillError> {
        check_positive(Balanced::NAME, "kd_loss_scale", self.kd_loss_scale)?;
        Ok(Balanced {
            kd_loss_scale: self.kd_loss_scale,
            logits: Box::new(logits),
            intermediates: Vec::new(),
            task: None,
        })
    }
}

/// Model-Optimizer's balancing of a logits distillation term, intermediate (hidden-state)
/// terms and the task loss (`LogitsAndIntermediatesLossBalancer`, Megatron plugin): the terms'
/// values are matched so none dominates, their gradients rescaled by the same ratios,
///
/// ```text
/// I  = mean_k I_k,  I' = I · sg(L)/sg(I)                     (value L)
/// kd = L + I'                                                (no task loss: the total)
/// total = S + kd · sg(S)/sg(kd) · kd_loss_scale             (with the task loss S)
/// ```
///
/// each ratio applied only where both values are positive (nothing is read back). Terms: the
/// inner objectives' own terms, then `"balanced/intermediate"` (`I'`).
#[derive(Debug)]
pub struct Balanced {
    kd_loss_scale: f64,
    logits: Box<dyn Loss>,
    intermediates: Vec<Box<dyn Loss>>,
    task: Option<Box<dyn Loss>>,
}

impl Balanced {
    /// The name of the balancer's own term prefix.
    pub const NAME: &'static str = "balanced";

    /// With an intermediate objective (its total is one `I_k`).
    pub fn intermediate(mut self, loss: impl Loss + 'static) -> Self {
        self.intermediates.push(Box::new(loss));
        self
    }

    /// With the task loss `S` (the original loss the distillation loss is matched to).
    pub fn task(mut self, loss: impl Loss + 'static) -> Self {
        self.task = Some(Box::new(loss));
        self
    }
}

impl Loss for Balanced {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn forward(&self, input: &DistillInput) -> Result<LossOutput, DistillError> {
        let mut terms = Vec::new();
        let mut run = |loss: &dyn Loss| -> Result<Tensor<1>, DistillError> {
            let out = loss.forward(input)?;
            terms.extend(out.terms().map(|(n, t)| (n.to_string(), t.clone())));
            Ok(out.total)
        };
        let logits = run(self.logits.as_ref())?;
        let intermediates = self
            .intermediates
            .iter()
            .map(|l| run(l.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let task = self.task.as_ref().map(|l| run(l.as_ref())).transpose()?;
        let (total, intermediate) = balance(logits, intermediates, task, self.kd_loss_scale);
        terms.push((
            format!("{}/intermediate", Self::NAME),
            intermediate.detach(),
        ));
        Ok(LossOutput::new(total, terms))
    }
}

/// This file's rows of the crate's catalog ([`objectives`](crate::objectives)).
pub(crate) const DESCRIPTORS: &[Descriptor] = &[Descriptor {
    module: super::MODULE,
    items: &["Balanced"],
    paper: "Model-Optimizer's logits and intermediates loss balancer",
    doc: "token.md",
    bound: None,
    example: None,
    learnable: None,
    twins: None,
    method: None,
    golden: crate::registry::golden!["modelopt_mcore_balancer" => golden::modelopt],
}];

/// This file's reference-case runners (feature `golden`; see [`crate::golden`]).
#[cfg(feature = "golden")]
pub(crate) mod golden {
    use super::*;
    use crate::golden::*;

    /// `LogitsAndIntermediatesLossBalancer.forward` on recorded loss values: the total, the
    /// intermediate loss before rescaling (an output) and every input's gradient.
    pub(crate) fn modelopt(case: &Case) -> Result<(), String> {
        let scalar = |name: &str| -> Result<Tensor<1>, String> {
            let (_, d) = case.input(name)?;
            Ok(tensor(d.clone(), [1], case.dtype).require_grad())
        };
        let logits = scalar("logits_loss")?;
        let names: Vec<String> = case
            .inputs
            .keys()
            .filter(|k| k.starts_with("intermediate_loss"))
            .cloned()
            .collect();
        let intermediates = names
            .iter()
            .map(|n| scalar(n))
            .collect::<Result<Vec<_>, _>>()?;
        let task = match case.params["skip_original_loss"].as_bool() {
            Some(true) => None,
            _ => Some(scalar("student_loss")?),
        };
        let (total, _) = balance(
            logits.clone(),
            intermediates.clone(),
            task.clone(),
            case.param("kd_loss_scale")?,
        );
        if let Some(want) = case.outputs.get("intermediate_loss") {
            let mean = intermediates
                .iter()
                .map(|t| values(t.clone())[0])
                .sum::<f64>()
                / intermediates.len().max(1) as f64;
            close("intermediate loss", &[mean], want, 1e-12, 1e-12)?;
        }
        case.expect_loss(values(total.clone())[0], None)?;
        let grads = total.backward();
        case.expect_grad("logits_loss", logits.grad(&grads).map(values), None)?;
        for (name, leaf) in names.iter().zip(&intermediates) {
            case.expect_grad(name, leaf.grad(&grads).map(values), None)?;
        }
        if let Some(s) = &task {
            case.expect_grad("student_loss", s.grad(&grads).map(values), None)?;
        }
        Ok(())
    }
}
