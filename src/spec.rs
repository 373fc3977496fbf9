//! Losses from configuration files: a serde form (JSON or TOML) of any composite loss — its
//! terms, each an objective with its options, a weight or [`Schedule`], a name, wrappers, and an
//! initialisation stage.
//!
//! ```toml
//! [[loss]]
//! method = "ce"
//!
//! [[loss]]
//! method = "dkd"
//! beta = 8.0
//! warmup_epochs = 20
//! weighted = { kind = "linear", start = 0.5, end = 1.0, epochs = 10 }
//!
//! [[loss]]
//! method = "standardized"      # a wrapper: the objective it wraps is `of`
//! name = "kd_std"
//! of = { method = "kd", temperature = 2.0 }
//! ```
//!
//! Every key of a term other than `method`, `weighted`, `name` and `of` is a field of the
//! objective's config (`XConfig`): the ones left out keep the config's defaults, the required
//! ones (the constructor arguments of `XConfig::new`) must be given, an unknown one is an
//! error that lists the known ones. [`LossSpec::init`] builds a `Box<dyn Loss>` through each
//! config's own `init`, so it returns the same typed errors as building in code. `method` is the
//! objective's name ([`Kd::NAME`](crate::logit::Kd::NAME), …); every field of every method, with
//! its default, is listed in `docs/spec.md` (generated from [`methods`]).
//!
//! Objectives with learnable parameters (FitNet's regressor, CRD's embeddings, …) must train
//! with the student, so a `Box<dyn Loss>` cannot hold them: [`TermSpec::config`] reads their
//! typed config from the same file, and the caller builds them on its device inside its model.
//!
//! ```
//! use burn_distill::spec::LossSpec;
//! # fn main() -> Result<(), burn_distill::DistillError> {
//! let spec = LossSpec::from_toml(
//!     r#"
//!     [[loss]]
//!     method = "ce"
//!     weighted = 0.5
//!
//!     [[loss]]
//!     method = "kd"
//!     temperature = 2.0
//!     weighted = 0.5
//!     "#,
//! )?;
//! let loss = spec.init()?; // Box<dyn Loss>: ce + kd
//! assert_eq!(LossSpec::from_json(&spec.to_json())?, spec);
//! # Ok(()) }
//! ```

use std::any::TypeId;
use std::path::Path;

use burn::config::Config;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::DistillError;
use crate::loss::{Loss, LossExt, LossSum};
use crate::registry::{Build, Token, spec_error, typed};
use crate::schedule::Schedule;

pub use crate::registry::{Method, MethodKind};

/// A loss: the sum of its terms, optionally preceded by an initialisation stage (see
/// [`LossExt::then_after`]). The file form has a `[[loss]]` table per term and an optional
/// `[init]` table with `epochs` and its own `[[init.loss]]` terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossSpec {
    /// The terms, summed in order.
    pub loss: Vec<TermSpec>,
    /// A loss used alone during the first epochs instead of `loss` (AB's or FSP's
    /// initialisation stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitSpec>,
}

/// The initialisation stage of a [`LossSpec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitSpec {
    /// Epochs during which this loss replaces the main one.
    pub epochs: usize,
    /// Its terms, summed.
    pub loss: Vec<TermSpec>,
}

/// One term of a [`LossSpec`]: an objective, its options, weight, name and (for wrappers) the
/// objective it wraps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TermSpec {
    /// The objective's name, e.g. `"kd"` (see [`methods`]).
    pub method: String,
    /// Its weight, the file's `weighted` key (as [`LossExt::weighted`] / `weighted_by`; many
    /// configs have a `weight` field of their own): a number or a [`Schedule`] table
    /// (`kind = "warmup" | "linear" | …`).
    #[serde(
        rename = "weighted",
        default = "unit_weight",
        skip_serializing_if = "is_unit_weight"
    )]
    pub weight: Schedule,
    /// A new name for the objective and its terms (two KD terms need two names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The objective a wrapper (`standardized`, `paced`, `top_k_mask`, `dgkd`, `dam`,
    /// `fused_linear`) wraps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of: Option<Box<TermSpec>>,
    /// The fields of the objective's config; those left out keep their defaults.
    #[serde(flatten)]
    pub options: Map<String, Value>,
}

fn unit_weight() -> Schedule {
    Schedule::Constant(1.0)
}

fn is_unit_weight(w: &Schedule) -> bool {
    *w == Schedule::Constant(1.0)
}

impl LossSpec {
    /// A loss of these terms, without an initialisation stage.
    pub fn new(loss: Vec<TermSpec>) -> Self {
        Self { loss, init: None }
    }

    /// Reads a spec from TOML.
    pub fn from_toml(text: &str) -> Result<Self, DistillError> {
        // TOML has nan and inf, which the options' JSON values cannot hold (they would arrive
        // as `null`): such a number is refused here, by its path
        let table: toml::Table =
            toml::from_str(text).map_err(|e| spec_error("TOML", e.to_string()))?;
        if let Some((at, v)) = non_finite(&toml::Value::Table(table), String::new()) {
            return Err(spec_error(&at, format!("{v} is not a finite number")));
        }
        toml::from_str(text).map_err(|e| spec_error("TOML", e.to_string()))
    }

    /// Reads a spec from JSON.
    pub fn from_json(text: &str) -> Result<Self, DistillError> {
        serde_json::from_str(text).map_err(|e| spec_error("JSON", e.to_string()))
    }

    /// Reads a spec from a `.toml` or `.json` file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, DistillError> {
        let path = path.as_ref();
        let at = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| spec_error(&at, e.to_string()))?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Self::from_toml(&text),
            Some("json") => Self::from_json(&text),
            _ => Err(spec_error(&at, "the file must end in .toml or .json")),
        }
    }

    /// The spec as TOML (a spec read from JSON may hold what TOML cannot write, a `null`).
    pub fn to_toml(&self) -> Result<String, DistillError> {
        toml::to_string(self).map_err(|e| spec_error("TOML", e.to_string()))
    }

    /// The spec as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a spec always serialises to JSON")
    }

    /// Builds the loss: each term through its config's `init` (the same typed errors), weighted,
    /// named and summed; with an `init` stage, `stage.then_after(epochs, loss)`.
    pub fn init(&self) -> Result<Box<dyn Loss>, DistillError> {
        let main = sum(&self.loss, "loss")?;
        Ok(match &self.init {
            None => main,
            Some(stage) => sum(&stage.loss, "init.loss")?
                .then_after(stage.epochs, main)
                .boxed(),
        })
    }
}

fn sum(terms: &[TermSpec], at: &str) -> Result<Box<dyn Loss>, DistillError> {
    if terms.is_empty() {
        return Err(spec_error(at, "a loss needs at least one term"));
    }
    let mut out = LossSum::new();
    for (i, term) in terms.iter().enumerate() {
        out = out.with(term.build(&format!("{at}[{i}]"))?);
    }
    Ok(out.boxed())
}

impl TermSpec {
    /// A term of this method with its defaults, weight 1, its own name.
    pub fn new(method: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            weight: unit_weight(),
            name: None,
            of: None,
            options: Map::new(),
        }
    }

    /// The same with a config field set (`value` in its serde form).
    pub fn with_option(mut self, field: impl Into<String>, value: impl Serialize) -> Self {
        let value = serde_json::to_value(value).expect("an option serialises to JSON");
        self.options.insert(field.into(), value);
        self
    }

    /// The same with a weight.
    pub fn with_weight(self, weight: impl Into<Schedule>) -> Self {
        Self {
            weight: weight.into(),
            ..self
        }
    }

    /// The same under another name.
    pub fn with_name(self, name: impl Into<String>) -> Self {
        Self {
            name: Some(name.into()),
            ..self
        }
    }

    /// The same wrapping `inner` (for wrappers).
    pub fn with_of(self, inner: TermSpec) -> Self {
        Self {
            of: Some(Box::new(inner)),
            ..self
        }
    }

    /// Builds the term alone, as [`LossSpec::init`] builds each term.
    pub fn init(&self) -> Result<Box<dyn Loss>, DistillError> {
        self.build(&self.method)
    }

    /// The typed config of this term's method, its defaults overridden by the options: how an
    /// objective with learnable parameters is read from a file, e.g.
    /// `term.config::<feature::HintConfig>()?.init(&device)?`. `C` must be the method's config.
    pub fn config<C: Config + 'static>(&self) -> Result<C, DistillError> {
        let method = method(&self.method, &self.method)?;
        if (method.config_type)() != TypeId::of::<C>() {
            return Err(spec_error(
                &self.method,
                format!(
                    "its config is {}, not {}",
                    method.config,
                    std::any::type_name::<C>()
                ),
            ));
        }
        typed(&method.merged(&self.options, &self.method)?, &self.method)
    }

    /// This term as a token divergence, for a wrapper of one (`FusedLinear`): its method must
    /// be a token divergence, and it takes no weight (weight the wrapper instead).
    fn build_token(&self, at: &str) -> Result<Token, DistillError> {
        let at = format!("{at} ({})", self.method);
        let method = method(&self.method, &at)?;
        let build = method.token.ok_or_else(|| {
            let tokens: Vec<&str> = methods()
                .iter()
                .filter(|m| m.token.is_some())
                .map(|m| m.name)
                .collect();
            spec_error(
                &at,
                format!("this wrapper takes a token divergence: one of {tokens:?}"),
            )
        })?;
        if self.of.is_some() {
            return Err(spec_error(&at, "a token divergence wraps nothing: no `of`"));
        }
        if !is_unit_weight(&self.weight) {
            return Err(spec_error(
                &at,
                "a token divergence inside a wrapper takes no weight: weight the wrapper",
            ));
        }
        let objective = build(&method.merged(&self.options, &at)?, &at)?;
        Ok(match &self.name {
            Some(name) => {
                let inner = crate::token::unbox_divergence(objective, &at)?;
                crate::token::box_divergence(inner.named(name.clone()))
            }
            None => objective,
        })
    }

    fn build(&self, at: &str) -> Result<Box<dyn Loss>, DistillError> {
        let at = format!("{at} ({})", self.method);
        let method = method(&self.method, &at)?;
        let options = method.merged(&self.options, &at)?;
        let objective = match (&method.build, &self.of) {
            (Build::Loss(build), None) => build(&options, &at)?,
            (Build::Wrapper(build), Some(inner)) => {
                build(&options, &at, inner.build(&format!("{at}.of"))?)?
            }
            (Build::TokenWrapper(build), Some(inner)) => {
                build(&options, &at, inner.build_token(&format!("{at}.of"))?)?
            }
            (Build::Wrapper(_) | Build::TokenWrapper(_), None) => {
                return Err(spec_error(
                    &at,
                    "a wrapper needs the objective it wraps: `of`",
                ));
            }
            (Build::Loss(_), Some(_)) => {
                return Err(spec_error(
                    &at,
                    format!("`of` is only for the wrappers {:?}", wrappers()),
                ));
            }
            (Build::Learnable, _) => {
                return Err(spec_error(
                    &at,
                    format!(
                        "it has learnable parameters that must train with the student: read its \
                         config with TermSpec::config::<{}>() and build it inside your model",
                        method.config
                    ),
                ));
            }
        };
        self.weight.validate()?;
        let named = match &self.name {
            Some(name) => objective.named(name.clone()).boxed(),
            None => objective,
        };
        Ok(match is_unit_weight(&self.weight) {
            true => named,
            false => named.weighted_by(self.weight).boxed(),
        })
    }
}

/// The names of the wrapper methods.
fn wrappers() -> Vec<&'static str> {
    methods()
        .iter()
        .filter(|m| matches!(m.kind(), MethodKind::Wrapper | MethodKind::TokenWrapper))
        .map(|m| m.name)
        .collect()
}

/// The method called `name`, or an error listing them all.
fn method(name: &str, at: &str) -> Result<&'static Method, DistillError> {
    methods().iter().find(|m| m.name == name).ok_or_else(|| {
        let names: Vec<&str> = methods().iter().map(|m| m.name).collect();
        spec_error(
            at,
            format!("unknown method `{name}`; the methods are {names:?}"),
        )
    })
}

/// Every method a spec can name, in catalog order: the objectives' descriptors' methods.
pub fn methods() -> &'static [Method] {
    static METHODS: std::sync::OnceLock<Vec<Method>> = std::sync::OnceLock::new();
    METHODS.get_or_init(|| {
        crate::objectives()
            .into_iter()
            .filter_map(|d| d.method)
            .collect()
    })
}

/// The first non-finite float in a TOML value and its path (`loss[1].temperature`).
fn non_finite(value: &toml::Value, at: String) -> Option<(String, f64)> {
    match value {
        toml::Value::Float(f) if !f.is_finite() => Some((at, *f)),
        toml::Value::Table(t) => t.iter().find_map(|(k, v)| {
            let at = match at.is_empty() {
                true => k.clone(),
                false => format!("{at}.{k}"),
            };
            non_finite(v, at)
        }),
        toml::Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, v)| non_finite(v, format!("{at}[{i}]"))),
        _ => None,
    }
}
