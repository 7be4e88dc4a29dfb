//! Tensor comparisons: largest differences, relative to the reference's spread.

use candle_core::{DType, Tensor};

/// `|got - want|` in f32, for two tensors of the same shape.
fn abs_diff(got: &Tensor, want: &Tensor) -> Tensor {
    assert_eq!(got.dims(), want.dims(), "shapes differ");
    let got = got.to_dtype(DType::F32).unwrap();
    let want = want.to_dtype(DType::F32).unwrap();
    (&got - &want).unwrap().abs().unwrap()
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(got: &Tensor, want: &Tensor) -> f32 {
    let d = abs_diff(got, want).max_all().unwrap();
    d.to_scalar::<f32>().unwrap()
}

/// Mean absolute difference between two tensors of the same shape.
pub fn mean_abs_diff(got: &Tensor, want: &Tensor) -> f32 {
    let d = abs_diff(got, want).mean_all().unwrap();
    d.to_scalar::<f32>().unwrap()
}

/// Largest absolute difference and the reference's standard deviation.
pub fn max_diff_and_std(got: &Tensor, want: &Tensor) -> (f32, f32) {
    let diff = max_abs_diff(got, want);
    let want = want.to_dtype(DType::F32).unwrap();
    let mean = want.mean_all().unwrap().to_scalar::<f32>().unwrap();
    let var = want
        .affine(1.0, -(mean as f64))
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (diff, var.sqrt())
}

/// Asserts `got` is within `tol` x std(want) of `want` everywhere.
pub fn assert_close_rel_std(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    let (diff, std) = max_diff_and_std(got, want);
    assert!(std > 0.0, "{what}: reference is constant");
    assert!(
        diff <= tol * std,
        "{what}: max |diff| {diff:.3e} exceeds {tol} x std {std:.3e}"
    );
    eprintln!("{what}: max |diff| {diff:.3e} ({:.2e} x std)", diff / std);
}
