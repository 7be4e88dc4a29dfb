//! Helpers shared by the kernels' unit tests.

use std::mem::MaybeUninit;

use candle_core::Tensor;

use super::gemm::MatUninit;

/// Largest absolute difference between two tensors of the same shape (f32).
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

/// Largest absolute value of an f32 tensor.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// `n` reproducible values in [-1, 1) from `seed` (a linear congruential generator).
pub fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `data` (NaN: any value not written shows) as a view for an output that need not be
/// initialised.
pub fn nan_view(data: &mut [f32], rows: usize, cols: usize, stride: usize) -> MatUninit<'_> {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and the kernels write only f32
    // values through the view, so `data` stays initialised.
    #[allow(unsafe_code)]
    let data = unsafe { &mut *(data as *mut [f32] as *mut [MaybeUninit<f32>]) };
    MatUninit {
        data,
        rows,
        cols,
        stride,
    }
}
