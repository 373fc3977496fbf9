//! Optimisation tailored to distillation: [`Dot`] gives the task and the distillation
//! gradients separate momenta.

crate::family! {
    files: dot;
    "Dot" => "Zhao et al., ICCV 2023, *DOT: A Distillation-Oriented Trainer*", "dot.md";
}
