//! The crate's registry of objectives: one [`Descriptor`] per objective, declared in the
//! objective's own file; each family lists its files' descriptors, and [`objectives`]
//! (crate::objectives) joins the families. Every list of objectives reads it: the method tables
//! of the README and the docs, and the test suites that run every objective.

use std::any::{Any, TypeId};

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Device, Tensor};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::DistillError;
use crate::loss::Loss;

/// What the crate knows of one objective: the items it documents (objective types, or a
/// constructor), the paper or reference it follows, its page under `docs/`, and an instance to
/// run.
#[derive(Debug, Clone, Copy)]
#[doc(alias = "Entry")]
pub struct Descriptor {
    /// The public module the items live in, e.g. `burn_distill::logit`.
    pub module: &'static str,
    /// The items, e.g. `["Kd"]` or `["Ft", "Paraphraser"]`.
    pub items: &'static [&'static str],
    /// The paper (or reference implementation) it follows.
    pub paper: &'static str,
    /// Its page in `docs/` (with an anchor where the page covers several methods).
    pub doc: &'static str,
    /// The largest input magnitude (logits, taps) for which the objective promises finite
    /// values and gradients, in every float type; a finite input beyond it is a
    /// [`DistillError::OutOfRange`] (`f64::MAX`: any finite input). Its page states it;
    /// `tests/range.rs` checks the example at it and beyond. `None` for what reads no input of
    /// its own (a schedule, a trainer, an optimiser, a wrapper: the wrapped objective's bound
    /// applies).
    pub bound: Option<f64>,
    /// An instance that reads [`example_input`](crate::example_input) (for objectives whose
    /// construction involves no random draw): the backend and property suites run every one.
    pub example: Option<Example>,
    /// An instance with learnable parameters, for objectives whose construction draws random
    /// weights (then `example` is `None`): the backend suite builds it once per backend from one
    /// set of weights.
    pub learnable: Option<Learnable>,
    /// Instances that run a fused kernel (`None`: it has none), built with it or with their
    /// composed tensor ops: the backend suite checks that the two agree on every backend that
    /// has kernels.
    pub twins: Option<Twins>,
    /// How a loss spec names and builds it (`None`: a spec cannot name it).
    pub method: Option<Method>,
    /// The methods of the reference cases (`tests/golden`) it answers, with their runners.
    pub golden: &'static [Golden],
}

/// A method of the reference cases an objective answers: its id (a case's `method`) and, with
/// feature `golden` (the crate's own tests), the runner that checks a case of it.
#[derive(Debug, Clone, Copy)]
pub struct Golden {
    /// The method's id.
    pub id: &'static str,
    /// Checks one case of it.
    #[cfg(feature = "golden")]
    pub run: crate::golden::Runner,
}

/// Builds a descriptor's example objective on a device.
pub type Example = fn(&Device) -> Result<Box<dyn Loss>, DistillError>;

/// Builds a descriptor's learnable example: its weights drawn on `reference` (seed it first for
/// the same draws every time), then moved to `device` in `dtype`.
pub type Learnable = fn(&Device, &Device, DType) -> Result<Box<dyn Loss>, DistillError>;

/// Builds a descriptor's fused-kernel instances, with the kernel (`true`) or with their
/// composed ops (`false`): each with a name and the scale of its values (the largest weight
/// times `T²` on a divergence).
pub type Twins = fn(bool) -> Result<Vec<(String, f64, Box<dyn Loss>)>, DistillError>;

/// `module` with every float parameter moved to `device` in `dtype` (a fresh leaf, tracked
/// where it was), boxed: what a [`Learnable`] returns.
pub fn moved<M: Module + Loss + 'static>(
    module: M,
    device: &Device,
    dtype: DType,
) -> Box<dyn Loss> {
    Box::new(module.map(&mut Move { device, dtype }))
}

/// Moves every float parameter of a module to a device in a float type.
struct Move<'a> {
    device: &'a Device,
    dtype: DType,
}

impl ModuleMapper for Move<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (device, dtype) = (self.device, self.dtype);
        param.map(|t| {
            let tracked = t.is_require_grad();
            let data = t.into_data().convert::<f64>();
            Tensor::<D>::from_data(data, (device, dtype)).set_require_grad(tracked)
        })
    }
}

/// What a method's build returns.
pub(crate) type Built = Result<Box<dyn Loss>, DistillError>;

/// An example value of a required field.
type FieldExample = fn() -> Value;

/// How a method's objective is built from its (merged) options.
#[derive(Clone, Copy)]
pub(crate) enum Build {
    Loss(fn(&Value, &str) -> Built),
    Wrapper(fn(&Value, &str, Box<dyn Loss>) -> Built),
    /// A wrapper of a token divergence (`FusedLinear`): its `of` must be one, given as
    /// [`Method::token`] builds it.
    TokenWrapper(fn(&Value, &str, Token) -> Built),
    Learnable,
}

/// A token divergence as its method builds it for a wrapper of one: a
/// `Box<dyn token::TokenDivergence>` (the core cannot name the token family's trait; the token
/// family boxes and unboxes it).
pub type Token = Box<dyn Any + Send + Sync>;

/// How a token divergence's method builds it as one (for a [`Build::TokenWrapper`]).
type BuildToken = fn(&Value, &str) -> Result<Token, DistillError>;

/// What kind of objective a [`Method`] builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// A stateless objective: [`LossSpec::init`](crate::spec::LossSpec::init) builds it.
    Loss,
    /// An objective that wraps another (`of`).
    Wrapper,
    /// An objective that wraps a token divergence (`of`, one of the methods
    /// [`Method::is_token_divergence`] says yes for, without a weight): `FusedLinear`.
    TokenWrapper,
    /// An objective with learnable parameters: read its config with [`TermSpec::config`](crate::spec::TermSpec::config).
    Learnable,
}

/// How a loss spec ([`spec`](crate::spec)) names and builds an objective: its config type,
/// its required fields and its defaults. Each objective's [`Descriptor`] holds its own.
#[derive(Clone, Copy)]
pub struct Method {
    pub(crate) name: &'static str,
    pub(crate) config: &'static str,
    pub(crate) required: &'static [(&'static str, FieldExample)],
    pub(crate) defaults: fn(&Map<String, Value>, &str) -> Result<Value, DistillError>,
    pub(crate) config_type: fn() -> TypeId,
    pub(crate) check: fn(&Value) -> Result<(), serde_json::Error>,
    pub(crate) build: Build,
    pub(crate) token: Option<BuildToken>,
}

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Method")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish()
    }
}

impl Method {
    /// The method's name, as `method = "…"` gives it: the objective's `NAME`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its config type, e.g. `logit::KdConfig`.
    pub fn config(&self) -> &'static str {
        self.config
    }

    /// What it builds.
    pub fn kind(&self) -> MethodKind {
        match self.build {
            Build::Loss(_) => MethodKind::Loss,
            Build::Wrapper(_) => MethodKind::Wrapper,
            Build::TokenWrapper(_) => MethodKind::TokenWrapper,
            Build::Learnable => MethodKind::Learnable,
        }
    }

    /// Whether it is a token divergence, which a [`MethodKind::TokenWrapper`] can wrap.
    pub fn is_token_divergence(&self) -> bool {
        self.token.is_some()
    }

    /// The fields without a default (the arguments of `XConfig::new`), each with an example value.
    pub fn required(&self) -> Vec<(&'static str, Value)> {
        self.required.iter().map(|(n, v)| (*n, v())).collect()
    }

    /// Every field with its default (the required ones at their example values), as JSON.
    pub fn defaults(&self) -> Value {
        let examples = self
            .required()
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect();
        (self.defaults)(&examples, self.name).expect("the example values build the config")
    }

    /// The options over the config's defaults, every key checked against its fields.
    pub(crate) fn merged(
        &self,
        options: &Map<String, Value>,
        at: &str,
    ) -> Result<Value, DistillError> {
        let defaults = (self.defaults)(options, at)?;
        let over = |fields: &mut Value, key: &String, value: &Value| {
            let fields = fields
                .as_object_mut()
                .expect("a config serialises to a table");
            match fields.get_mut(key) {
                Some(field) => {
                    *field = value.clone();
                    Ok(())
                }
                None => {
                    let known: Vec<&String> = fields.keys().collect();
                    let reason = format!("unknown field `{key}`; {} has {known:?}", self.config);
                    Err(spec_error(at, reason))
                }
            }
        };
        let mut merged = defaults.clone();
        for (key, value) in options {
            over(&mut merged, key, value)?;
        }
        if let Err(e) = (self.check)(&merged) {
            // serde's message does not name the field: try each option alone over the defaults
            for (key, value) in options {
                let mut alone = defaults.clone();
                over(&mut alone, key, value)?;
                if let Err(e) = (self.check)(&alone) {
                    return Err(spec_error(at, format!("`{key}`: {e}")));
                }
            }
            return Err(spec_error(at, e.to_string()));
        }
        Ok(merged)
    }
}

/// The config `C` from merged options (checked by [`Method::merged`]).
pub(crate) fn typed<C: serde::de::DeserializeOwned>(
    options: &Value,
    at: &str,
) -> Result<C, DistillError> {
    serde_json::from_value(options.clone()).map_err(|e| spec_error(at, e.to_string()))
}

/// A required field of `options`, or an error naming it.
pub(crate) fn required<T: serde::de::DeserializeOwned>(
    options: &Map<String, Value>,
    field: &str,
    at: &str,
) -> Result<T, DistillError> {
    let value = options
        .get(field)
        .ok_or_else(|| spec_error(at, format!("missing the required field `{field}`")))?;
    serde_json::from_value(value.clone()).map_err(|e| spec_error(at, format!("`{field}`: {e}")))
}

pub(crate) fn to_value(config: impl Serialize) -> Value {
    serde_json::to_value(config).expect("a config serialises to JSON")
}

/// A spec error at `at`.
pub(crate) fn spec_error(at: &str, reason: impl Into<String>) -> DistillError {
    DistillError::InvalidSpec {
        at: at.into(),
        reason: reason.into(),
    }
}

/// One [`Method`], in an objective's file:
/// `crate::registry::method!(kind Objective = family::Config(required fields = example values))`
/// with kind `loss`, `token` (a token divergence, which `super::box_divergence` boxes),
/// `wrapper`, `token_wrapper` (its inner unboxed by `super::unbox_divergence`) or `learnable`.
macro_rules! method {
    (@build loss $cfg:ty) => {
        $crate::registry::Build::Loss(|v, at| {
            Ok($crate::loss::LossExt::boxed($crate::registry::typed::<$cfg>(v, at)?.init()?))
        })
    };
    (@build wrapper $cfg:ty) => {
        $crate::registry::Build::Wrapper(|v, at, inner| {
            Ok($crate::loss::LossExt::boxed($crate::registry::typed::<$cfg>(v, at)?.init(inner)?))
        })
    };
    (@build token_wrapper $cfg:ty) => {
        $crate::registry::Build::TokenWrapper(|v, at, inner| {
            let inner = super::unbox_divergence(inner, at)?;
            Ok($crate::loss::LossExt::boxed($crate::registry::typed::<$cfg>(v, at)?.init(inner)?))
        })
    };
    (@build token $cfg:ty) => {
        $crate::registry::method!(@build loss $cfg)
    };
    (@build learnable $cfg:ty) => {
        $crate::registry::Build::Learnable
    };
    (@token token $cfg:ty) => {
        Some(|v, at| Ok(super::box_divergence($crate::registry::typed::<$cfg>(v, at)?.init()?)))
    };
    (@token $kind:ident $cfg:ty) => {
        None
    };
    ($kind:ident $obj:ty = $module:ident::$cfg:ident($($req:ident = $example:tt),*)) => {
        $crate::registry::Method {
            name: <$obj>::NAME,
            config: concat!(stringify!($module), "::", stringify!($cfg)),
            required: &[$((stringify!($req), || ::serde_json::json!($example))),*],
            defaults: |_options, _at| {
                Ok($crate::registry::to_value($cfg::new(
                    $($crate::registry::required(_options, stringify!($req), _at)?),*
                )))
            },
            config_type: ::std::any::TypeId::of::<$cfg>,
            check: |v| ::serde_json::from_value::<$cfg>(v.clone()).map(|_| ()),
            build: $crate::registry::method!(@build $kind $cfg),
            token: $crate::registry::method!(@token $kind $cfg),
        }
    };
}

pub(crate) use method;

/// A descriptor's reference methods: `golden!["kd" => golden::kd, …]`, each id with the runner
/// (in the objective file's `golden` module) that checks it; `golden![]` for none.
macro_rules! golden {
    [$($id:literal => $run:expr),* $(,)?] => {
        &[$($crate::registry::Golden {
            id: $id,
            #[cfg(feature = "golden")]
            run: $run,
        }),*]
    };
}

pub(crate) use golden;
