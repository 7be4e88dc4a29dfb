//! Tests of [`super`]: products against f64 sums, and the same bits whatever the batch.

use half::{bf16, f16};

use super::*;
use crate::kernels::test_util::{nan_view, noise};

/// The f64 product and the sums of its terms' magnitudes.
fn reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut sum, mut size) = (vec![0f64; m * n], vec![0f64; m * n]);
    for r in 0..m {
        for kk in 0..k {
            for c in 0..n {
                let t = f64::from(x[r * k + kk]) * f64::from(w[kk * n + c]);
                sum[r * n + c] += t;
                size[r * n + c] += t.abs();
            }
        }
    }
    (sum, size)
}

/// The product into a NaN-filled view with rows `gap` values further apart than `n`.
fn run(x: &[f32], w: Stored, m: usize, n: usize, gap: usize, threads: usize) -> Vec<f32> {
    let k = x.len() / m.max(1);
    let stride = n + gap;
    let mut out = vec![f32::NAN; m * stride];
    let lhs = Mat {
        data: x,
        rows: m,
        cols: k,
        stride: k,
    };
    product(nan_view(&mut out, m, n, stride), lhs, w, n, threads);
    out
}

/// Asserts that `out` (`rows` x `cols` at `stride`) holds the f64 sums `want` to within 1e-6
/// of the sums of their terms' magnitudes `size`, and zeros between and after its rows.
fn assert_sums(
    out: &[f32],
    (want, size): (&[f64], &[f64]),
    (rows, cols): (usize, usize),
    stride: usize,
) {
    for r in 0..rows {
        let row = &out[r * stride..][..stride];
        for (c, &g) in row[..cols].iter().enumerate() {
            let (w, s) = (want[r * cols + c], size[r * cols + c]);
            assert!((f64::from(g) - w).abs() <= 1e-6 * s + 1e-30, "{g} vs {w}");
        }
        assert!(row[cols..].iter().all(|&v| v == 0.0), "gap of row {r}");
    }
}

#[test]
fn products_equal_the_f64_sums() {
    if !available() {
        return;
    }
    // Panels whole and partial (n of 1, 40, 64, 300 columns), groups of rows whole and
    // partial, sums of one block and several (k up to 700: blocks of 234), rows split
    // and columns split between the threads.
    for (m, k, n) in [
        (7, 600, 5),
        (13, 257, 300),
        (1, 700, 64),
        (2, 3, 40),
        (40, 300, 1),
    ] {
        let x = noise(m * k, 1);
        let w32 = noise(k * n, 2);
        let wh: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
        let wb: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
        let cases = [
            (Stored::F32(&w32), w32.clone()),
            (Stored::F16(&wh), wh.iter().map(|v| v.to_f32()).collect()),
            (Stored::Bf16(&wb), wb.iter().map(|v| v.to_f32()).collect()),
        ];
        for (stored, wide) in cases {
            let (want, size) = reference(&x, &wide, m, k, n);
            for threads in [1, 2, 3] {
                let out = run(&x, stored, m, n, 3, threads);
                assert_sums(&out, (&want, &size), (m, n), n + 3);
            }
        }
    }
}

#[test]
fn each_row_is_its_own_product() {
    if !available() {
        return;
    }
    // 50 rows together (rows split between the threads, or columns when the weight is
    // wide), against each row alone: the same bits.
    for n in [70, 2000] {
        let (m, k) = (50, 520);
        let x = noise(m * k, 3);
        let wh: Vec<f16> = noise(k * n, 4).iter().map(|&v| f16::from_f32(v)).collect();
        let all = run(&x, Stored::F16(&wh), m, n, 0, 2);
        for r in [0, 1, 6, 31, 49] {
            let alone = run(&x[r * k..][..k], Stored::F16(&wh), 1, n, 0, 1);
            assert!(alone == all[r * n..][..n], "row {r} of {m}, n {n}");
        }
    }
}

#[test]
fn left_products_equal_the_f64_sums_column_by_column() {
    if !available() {
        return;
    }
    // `w [m, k] · x [k, p]`: groups of rows whole and partial, sums of one block and
    // several, 1 to 300 columns (chunks of 256, ragged ends); the first 20 columns alone
    // (columns 16 to 19 then past the last whole vector) give the same bits.
    for (m, k, p) in [
        (7, 600, 16),
        (13, 1100, 37),
        (100, 37, 300),
        (1, 5, 48),
        (3, 70, 1),
    ] {
        let x = noise(k * p, 5);
        let w32 = noise(m * k, 6);
        let wh: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
        let wide: Vec<f32> = wh.iter().map(|v| v.to_f32()).collect();
        let (want, size) = reference(&wide, &x, m, k, p);
        let left = |x: &[f32], p: usize, stride: usize, threads: usize| {
            let mut out = vec![f32::NAN; m * (p + 2)];
            let rhs = Mat {
                data: x,
                rows: k,
                cols: p,
                stride,
            };
            let dst = nan_view(&mut out, m, p, p + 2);
            product_left(dst, Stored::F16(&wh), m, rhs, threads);
            out
        };
        for threads in [1, 2, 3] {
            let out = left(&x, p, p, threads);
            assert_sums(&out, (&want, &size), (m, p), p + 2);
            let q = p.min(20);
            let first = left(&x, q, p, threads);
            for r in 0..m {
                let (a, b) = (&first[r * (q + 2)..][..q], &out[r * (p + 2)..][..q]);
                assert!(a == b, "{m}x{k}x{p}: row {r}");
            }
        }
    }
}

#[test]
fn empty_sums_are_zeros() {
    if !available() {
        return;
    }
    let out = run(&[], Stored::F32(&[]), 3, 0, 2, 2);
    assert!(out.iter().all(|&v| v == 0.0));
    let mut out = vec![f32::NAN; 6];
    let lhs = Mat {
        data: &[],
        rows: 2,
        cols: 0,
        stride: 0,
    };
    product(nan_view(&mut out, 2, 3, 3), lhs, Stored::F32(&[]), 3, 2);
    assert!(out.iter().all(|&v| v == 0.0));
}
