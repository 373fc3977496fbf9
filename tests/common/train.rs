//! Data for burn-train runs (`--features train`): 48 separable points and their batcher.

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_distill::meta::Batch;
use burn_distill::pipeline::DistillBatch;

/// 48 points of 3 separable classes in 4-d.
pub fn items() -> Vec<([f32; 4], i64)> {
    (0..48)
        .map(|i| {
            let c = i % 3;
            let mut x = [0.05 * (i as f32 % 7.0); 4];
            x[c] += 1.5;
            (x, c as i64)
        })
        .collect()
}

/// Batches [`items`] for a `Distiller`.
#[derive(Clone, Default)]
pub struct ItemBatcher;

impl Batcher<([f32; 4], i64), DistillBatch<Tensor<2>>> for ItemBatcher {
    fn batch(&self, items: Vec<([f32; 4], i64)>, device: &Device) -> DistillBatch<Tensor<2>> {
        let n = items.len();
        let x: Vec<f32> = items.iter().flat_map(|(x, _)| *x).collect();
        let y: Vec<i64> = items.iter().map(|(_, y)| *y).collect();
        DistillBatch::new(Batch::new(
            Tensor::from_data(TensorData::new(x, [n, 4]), device),
            Tensor::<1, Int>::from_data(TensorData::new(y, [n]), device),
        ))
    }
}
