//! Helpers shared by the kernels' unit tests.

use candle_core::Tensor;

/// Largest absolute difference between two tensors of the same shape (f32).
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
