//! Training pipelines around the objectives: teaching-assistant chains (TAKD),
//! multi-guide distillation (DGKD) and, behind the `train` feature, burn-train integration
//! ([`Distiller`](crate::pipeline) with loss-term metrics).

#[cfg(feature = "train")]
mod distiller;

#[cfg(feature = "train")]
#[cfg_attr(docsrs, doc(cfg(feature = "train")))]
pub use distiller::*;

use crate::LossExt;

crate::family! {
    files: assistant;
    "Takd", "Dgkd" => "Mirzadeh et al., AAAI 2020; Son et al., ICCV 2021: teaching assistants", "assistants.md",
        example: |_| Ok(DgkdConfig::new().init(crate::logit::KdConfig::new().init()?)?.boxed());
    "Distiller" => "burn-train model with loss-term metrics (feature `train`)", "train.md";
}
