//! The meta-gradient of MetaDistil with first-order passes only.
//!
//! The student takes `k` pilot SGD steps on the distillation loss `L(θ, φ)`, step `i` on batch
//! `Bᵢ` (one batch `k` times, or `k` consecutive batches): `θᵢ₊₁ = θᵢ − η ∇θ L(θᵢ, φ; Bᵢ)`,
//! and is scored by the quiz `Q(θₖ)`. Backpropagating through the
//! steps with the adjoint `aₖ = ∇Q(θₖ)`:
//!
//! ```text
//! d Q / d φ  = −η Σᵢ ∂φ [ aᵢ₊₁ · ∇θ L(θᵢ, φ) ]
//! aᵢ         = aᵢ₊₁ − η ∇²θθ L(θᵢ, φ) aᵢ₊₁
//! ```
//!
//! Both mixed products come from one central difference along `aᵢ₊₁`:
//! `D(t) = [L(θᵢ + ε aᵢ₊₁, t) − L(θᵢ − ε aᵢ₊₁, t)] / 2ε`, one backward pass of which gives the
//! Hessian-vector product (its student gradients) and `∂t[aᵢ₊₁ · ∇θ L]` for the teacher's
//! outputs `t` (logits and feature taps, fed as leaves). Those output gradients are summed over
//! the steps and sent through the teacher in a single vector-Jacobian product at the end, so
//! the teacher runs forward once per distinct batch and backward once per round, whatever `k`.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Gradients, Int, Tensor};

use crate::error::DistillError;
use crate::input::{DistillInput, Progress};
use crate::input::{Distillable, Feature, Outputs};
use crate::loss::Loss;

/// One labelled batch: the model input and its class-index targets.
#[derive(Debug, Clone)]
pub struct Batch<I> {
    /// What the networks take.
    pub input: I,
    /// Class indices `[N]`.
    pub targets: Tensor<1, Int>,
}

impl<I> Batch<I> {
    /// A batch of `input` labelled by `targets`.
    pub fn new(input: I, targets: Tensor<1, Int>) -> Self {
        Self { input, targets }
    }
}

/// Everything one meta-gradient needs besides the models.
pub(crate) struct Bilevel<'a, I> {
    pub loss: &'a dyn Loss,
    pub quiz_loss: &'a dyn Loss,
    /// The pilot's step `i` is taken on `batches[i]` (the same batch `k` times, or the next `k`
    /// batches of the stream).
    pub batches: Vec<&'a Batch<I>>,
    pub quiz: &'a Batch<I>,
    pub progress: Option<Progress>,
    pub eta: f64,
    /// The length of the finite-difference perturbation `ε ‖a‖`; `None`: the cube root of the
    /// dtype's machine epsilon.
    pub fd_step: Option<f64>,
}

/// One meta-gradient (see [`MetaTeacher::meta_gradient`](super::MetaTeacher::meta_gradient)).
#[derive(Debug)]
pub struct MetaGradient {
    /// d quiz / d the teacher's trainable parameters, through the pilot steps.
    pub teacher: GradientsParams,
    /// d quiz / d the student's parameters before the pilot steps.
    pub student: GradientsParams,
    /// The pilot student's quiz loss.
    pub quiz_loss: f64,
}

impl<I> Bilevel<'_, I> {
    fn input(&self, batch: &Batch<I>, student: Outputs, teacher: Outputs) -> DistillInput {
        let input = DistillInput::from_outputs(student, teacher).targets(batch.targets.clone());
        match self.progress {
            Some(p) => input.progress(p),
            None => input,
        }
    }

    /// The distinct batches of the pilot (by identity) and, for each step, which one it uses:
    /// the teacher runs once per distinct batch.
    fn distinct(&self) -> (Vec<&Batch<I>>, Vec<usize>) {
        let mut distinct: Vec<&Batch<I>> = Vec::new();
        let order = self
            .batches
            .iter()
            .map(
                |b| match distinct.iter().position(|d| std::ptr::eq(*d, *b)) {
                    Some(i) => i,
                    None => {
                        distinct.push(b);
                        distinct.len() - 1
                    }
                },
            )
            .collect();
        (distinct, order)
    }

    /// The meta-gradient through one pilot step per entry of `self.batches` from `student`,
    /// with `teacher`'s outputs on each batch.
    pub fn gradient<S, T>(&self, student: &S, teacher: &T) -> Result<MetaGradient, DistillError>
    where
        S: Distillable<Input = I>,
        T: Distillable<Input = I>,
    {
        let (batches, order) = self.distinct();
        let t_out: Vec<Outputs> = batches.iter().map(|b| teacher.run(&b.input)).collect();
        let t_const: Vec<Outputs> = t_out.iter().map(|o| o.clone().detach()).collect();

        // Pilot steps, teacher detached; keep θ₀..θₖ₋₁ for the way back.
        let mut path = vec![student.clone()];
        for &b in &order {
            let theta = path.last().expect("the path starts with the student");
            let input = self.input(batches[b], theta.run(&batches[b].input), t_const[b].clone());
            let mut grads = self.loss.forward(&input)?.total.backward();
            let g = GradientsParams::from_module(&mut grads, theta);
            path.push(theta.clone().map(&mut Step::new(&g, -self.eta)));
        }
        let pilot = path.pop().expect("at least the student");

        let quiz_input = DistillInput::student(pilot.run(&self.quiz.input).logits)
            .targets(self.quiz.targets.clone());
        let quiz_total = self.quiz_loss.forward(&quiz_input)?.total;
        let quiz_loss = quiz_total.clone().into_scalar::<f64>();
        let mut grads = quiz_total.backward();
        let mut adjoint = GradientsParams::from_module(&mut grads, &pilot);
        drop(pilot);

        let dtype = t_const[0].logits.dtype();
        let h = self
            .fd_step
            .unwrap_or_else(|| machine_epsilon(dtype).cbrt());
        let mut t_grad: Vec<Option<Vec<Tensor<1>>>> = vec![None; batches.len()];
        for &b in order.iter().rev() {
            let theta = path.pop().expect("one student per step");
            let norm = Norm::of(&theta, &adjoint);
            if !norm.is_finite() {
                return Err(DistillError::NonFinite {
                    what: "quiz gradient".into(),
                });
            }
            if norm == 0.0 {
                break; // a zero adjoint stays zero through the earlier steps
            }
            let eps = h / norm;
            let plus = theta.clone().map(&mut Step::new(&adjoint, eps));
            let minus = theta.clone().map(&mut Step::new(&adjoint, -eps));
            let leaves = Leaves::new(&t_const[b]);
            let loss_at = |s: &S| -> Result<Tensor<1>, DistillError> {
                let input = self.input(batches[b], s.run(&batches[b].input), leaves.outputs());
                Ok(self.loss.forward(&input.attach_teacher())?.total)
            };
            let (l_plus, l_minus) = (loss_at(&plus)?, loss_at(&minus)?);
            let mut grads = ((l_plus - l_minus) * (0.5 / eps)).backward();
            let step = leaves.grads(&grads, -self.eta);
            t_grad[b] = Some(match t_grad[b].take() {
                None => step,
                Some(acc) => acc.into_iter().zip(step).map(|(a, b)| a + b).collect(),
            });
            let hv_plus = GradientsParams::from_module(&mut grads, &plus);
            let hv_minus = GradientsParams::from_module(&mut grads, &minus);
            adjoint = Combine::of(
                &theta,
                &adjoint,
                &[(&hv_plus, -self.eta), (&hv_minus, -self.eta)],
            );
        }

        let products: Vec<Tensor<1>> = t_out
            .iter()
            .zip(t_grad)
            .filter_map(|(out, g)| g.map(|g| vjp(out, g)))
            .collect();
        let teacher_grads = match products.into_iter().reduce(|a, b| a + b) {
            None => GradientsParams::new(),
            Some(total) => {
                let mut grads = total.backward();
                GradientsParams::from_module(&mut grads, teacher)
            }
        };
        Ok(MetaGradient {
            teacher: teacher_grads,
            student: adjoint,
            quiz_loss,
        })
    }
}

fn machine_epsilon(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => f64::EPSILON,
        DType::F16 => 9.77e-4,
        DType::BF16 => 7.81e-3,
        _ => f32::EPSILON as f64,
    }
}

/// A teacher's outputs as fresh autodiff leaves, in a fixed order (logits, then taps by name).
struct Leaves(Outputs);

impl Leaves {
    fn new(outputs: &Outputs) -> Self {
        let leaf = |f: &Feature| match f {
            Feature::Map(t) => Feature::Map(t.clone().detach().require_grad()),
            Feature::Embedding(t) => Feature::Embedding(t.clone().detach().require_grad()),
        };
        Self(Outputs {
            logits: outputs.logits.clone().detach().require_grad(),
            features: outputs
                .features
                .iter()
                .map(|(k, f)| (k.clone(), leaf(f)))
                .collect(),
        })
    }

    fn outputs(&self) -> Outputs {
        self.0.clone()
    }

    /// Each leaf's gradient times `scale`, flattened (zeros where the loss did not read it).
    fn grads(&self, grads: &Gradients, scale: f64) -> Vec<Tensor<1>> {
        fn get<const D: usize>(t: &Tensor<D>, grads: &Gradients, scale: f64) -> Tensor<1> {
            match t.grad(grads) {
                Some(g) => (g * scale).flatten(0, D - 1),
                None => t.clone().detach().zeros_like().flatten(0, D - 1),
            }
        }
        std::iter::once(get(&self.0.logits, grads, scale))
            .chain(self.0.features.values().map(|f| match f {
                Feature::Map(t) => get(t, grads, scale),
                Feature::Embedding(t) => get(t, grads, scale),
            }))
            .collect()
    }
}

/// Every output flattened, in the order of [`Leaves`].
fn flat(outputs: &Outputs) -> Vec<Tensor<1>> {
    std::iter::once(outputs.logits.clone().flatten::<1>(0, 1))
        .chain(outputs.features.values().map(|f| match f {
            Feature::Map(t) => t.clone().flatten::<1>(0, 3),
            Feature::Embedding(t) => t.clone().flatten::<1>(0, 1),
        }))
        .collect()
}

/// `Σ ⟨outputs, g⟩`, whose gradient in the teacher's parameters is the vector-Jacobian product
/// of the teacher with `g`.
fn vjp(outputs: &Outputs, g: Vec<Tensor<1>>) -> Tensor<1> {
    flat(outputs)
        .into_iter()
        .zip(g)
        .map(|(o, g)| (o * g).sum())
        .reduce(|a, b| a + b)
        .expect("outputs always hold the logits")
}

/// `θ + scale · d` for every parameter `d` covers, as fresh autodiff leaves (trainable as
/// before).
struct Step<'a> {
    direction: &'a GradientsParams,
    scale: f64,
}

impl<'a> Step<'a> {
    fn new(direction: &'a GradientsParams, scale: f64) -> Self {
        Self { direction, scale }
    }
}

impl ModuleMapper for Step<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(d) = self.direction.get::<D>(param.id) else {
            return param;
        };
        let scale = self.scale;
        param.map(|t| {
            let tracked = t.is_require_grad();
            let d = d.to_device(&t.device());
            (t.detach() + d * scale).detach().set_require_grad(tracked)
        })
    }
}

/// `‖d‖₂` over the parameters of a module.
struct Norm<'a> {
    direction: &'a GradientsParams,
    squares: Vec<Tensor<1>>,
}

impl Norm<'_> {
    fn of<M: Module>(module: &M, direction: &GradientsParams) -> f64 {
        let mut v = Norm {
            direction,
            squares: Vec::new(),
        };
        module.visit(&mut v);
        match v.squares.into_iter().reduce(|a, b| a + b) {
            Some(s) => s.into_scalar::<f64>().sqrt(),
            None => 0.0,
        }
    }
}

impl ModuleVisitor for Norm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(d) = self.direction.get::<D>(param.id) {
            self.squares.push(d.square().sum());
        }
    }
}

/// `base + Σ wᵢ · dᵢ` per parameter of a module (missing entries count as zero).
struct Combine<'a> {
    base: &'a GradientsParams,
    terms: &'a [(&'a GradientsParams, f64)],
    out: GradientsParams,
}

impl<'a> Combine<'a> {
    fn of<M: Module>(
        module: &M,
        base: &'a GradientsParams,
        terms: &'a [(&'a GradientsParams, f64)],
    ) -> GradientsParams {
        let mut c = Combine {
            base,
            terms,
            out: GradientsParams::new(),
        };
        module.visit(&mut c);
        c.out
    }
}

impl ModuleVisitor for Combine<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(mut acc) = self.base.get::<D>(param.id) else {
            return;
        };
        for (d, w) in self.terms {
            if let Some(d) = d.get::<D>(param.id) {
                acc = acc + d * *w;
            }
        }
        self.out.register(param.id, acc);
    }
}
