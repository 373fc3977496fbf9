//! Training pipelines around the objectives: teaching-assistant chains (TAKD) and
//! multi-guide distillation (DGKD).

mod assistant;

pub use assistant::*;
