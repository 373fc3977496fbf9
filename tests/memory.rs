//! Extra memory of a fused forward + backward (issue 8: within 3× the logits' size).
//!
//! How it is measured: this test binary's global allocator counts the bytes live on the heap
//! and their peak. Student and teacher logits (`[256, 1000]` f32, 1 MB each) are made first;
//! the peak is then reset, one forward + backward runs on flex, and the peak above the bytes
//! live before it is the extra memory, everything included (the autodiff graph, the kept
//! planes, and the gradients returned). One test function, so nothing else allocates
//! meanwhile.

use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use burn_distill::logit::{DckdConfig, DkdConfig, KdConfig};
use burn_distill::{DistillInput, Loss};

#[path = "common/counting.rs"]
mod counting;

use counting::{Counting, extra};

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn fused_forward_and_backward_stay_within_three_logits() {
    let (n, c) = (256, 1000);
    let logits_bytes = n * c * 4;
    let dev = Device::flex().autodiff();
    let s = Tensor::<2>::random([n, c], Distribution::Normal(0.0, 2.0), &dev);
    let t = Tensor::<2>::random([n, c], Distribution::Normal(0.0, 2.0), &dev);
    let y = Tensor::<1, Int>::from_data(
        TensorData::new((0..n as i64).map(|i| i % c as i64).collect(), [n]),
        &dev,
    );
    let kd = KdConfig::new();
    let dkd = DkdConfig::new().with_warmup_epochs(0);
    let dckd = DckdConfig::new().with_warmup_epochs(0);
    // name, [fused, composed]
    type Versions = [Box<dyn Loss>; 2];
    let losses: Vec<(&str, Versions)> = vec![
        (
            "kd",
            [
                Box::new(kd.init().unwrap()),
                Box::new(kd.with_fused(false).init().unwrap()),
            ],
        ),
        (
            "dkd",
            [
                Box::new(dkd.init().unwrap()),
                Box::new(dkd.with_fused(false).init().unwrap()),
            ],
        ),
        (
            "dckd",
            [
                Box::new(dckd.init().unwrap()),
                Box::new(dckd.with_fused(false).init().unwrap()),
            ],
        ),
    ];
    let step = |loss: &dyn Loss, attach: bool| {
        let (s, t) = (s.clone().require_grad(), t.clone().require_grad());
        let mut input = DistillInput::new(s.clone(), t.clone()).targets(y.clone());
        if attach {
            input = input.attach_teacher();
        }
        let grads = loss.forward(&input).unwrap().total.backward();
        (s.grad(&grads), t.grad(&grads), grads)
    };
    let x = |bytes: usize| bytes as f64 / logits_bytes as f64;
    for (name, [fused, composed]) in &losses {
        // warm up the allocator's and flex's one-time state
        step(fused.as_ref(), true);
        let frozen = extra(|| step(fused.as_ref(), false));
        let attached = extra(|| step(fused.as_ref(), true));
        let reference = extra(|| step(composed.as_ref(), false));
        println!(
            "{name}: fused {:.2}× (frozen teacher), {:.2}× (teacher attached); composed {:.2}× (frozen)",
            x(frozen),
            x(attached),
            x(reference)
        );
        assert!(
            x(frozen) <= 3.0,
            "{name}: {:.2}× the logits with a frozen teacher",
            x(frozen)
        );
        assert!(
            frozen < reference,
            "{name}: fused {frozen} B vs composed {reference} B"
        );
        // the teacher's plane doubles it
        assert!(
            x(attached) <= 3.0,
            "{name}: {:.2}× with the teacher attached",
            x(attached)
        );
    }
}
