use super::*;
use crate::kernels::test_util::noise;
use half::{bf16, f16};

/// Skips a test (with a note) on machines without AMX.
fn amx() -> bool {
    let ok = tiles::available();
    if !ok {
        eprintln!("no AMX on this machine: test skipped");
    }
    ok
}

fn mat_mut(data: &mut [f32], rows: usize, cols: usize) -> MatMut<'_> {
    MatMut {
        data,
        rows,
        cols,
        stride: cols,
    }
}

/// Asserts that `dst` (`m × n`) is `a · b` (plus `c0`), `a` `m × k` and `b` `k × n`
/// row-major, within `bound` times the sum of the terms' magnitudes (plus one) times `√k` of
/// the f64 result; `what` names the case in the message.
fn assert_product(
    dst: &[f32],
    (a, b, c0): (&[f32], &[f32], Option<&[f32]>),
    (m, k, n): (usize, usize, usize),
    bound: f64,
    what: &str,
) {
    for r in 0..m {
        for c in 0..n {
            let exact: f64 = (0..k)
                .map(|i| a[r * k + i] as f64 * b[i * n + c] as f64)
                .sum();
            let scale: f64 = (0..k)
                .map(|i| (a[r * k + i] * b[i * n + c]).abs() as f64)
                .sum();
            let want = exact + c0.map_or(0.0, |c0| c0[r * n + c] as f64);
            let err = (dst[r * n + c] as f64 - want).abs();
            assert!(
                err <= bound * (scale + 1.0) * (k as f64).sqrt().max(1.0),
                "{what} {m}x{k}x{n} at ({r}, {c}): {} vs {want}",
                dst[r * n + c]
            );
        }
    }
}

/// `dst (+)= a · b` with `b` given as `k × n` rows or as its `n × k` transpose.
#[allow(clippy::too_many_arguments)]
fn run(
    a: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    transposed: bool,
    dst: &mut [f32],
    add: bool,
    p: Precision,
    threads: usize,
) {
    let rhs = if transposed {
        Rhs::Cols(Mat::dense(b, n, k))
    } else {
        Rhs::Rows(Mat::dense(b, k, n))
    };
    product(
        mat_mut(dst, m, n),
        Mat::dense(a, m, k),
        rhs,
        threads,
        add,
        p,
    );
}

#[test]
fn products_match_f64_at_the_precision_claimed() {
    if !amx() {
        return;
    }
    for (m, k, n) in [
        (1, 1, 1),
        (4, 0, 3),
        (5, 37, 3),
        (33, 70, 47),
        (130, 300, 129),
        (16, 600, 290),
        // Depth of three spans (summed into the output between them), and a task per thread.
        (70, 1400, 36),
    ] {
        let a = noise(m * k, 1);
        let b = noise(k * n, 2);
        let c0 = noise(m * n, 3);
        for (p, bound) in [
            (Precision::Bf16x6, 4.0 / 16_777_216.0),
            (Precision::Bf16x3, 1.0 / 32768.0),
        ] {
            for (transposed, add) in [(false, false), (true, true)] {
                let bt: Vec<f32> = if transposed {
                    (0..n * k).map(|i| b[(i % k) * n + i / k]).collect()
                } else {
                    b.clone()
                };
                let mut dst = if add {
                    c0.clone()
                } else {
                    vec![f32::NAN; m * n]
                };
                run(&a, &bt, (m, k, n), transposed, &mut dst, add, p, 2);
                let what = format!("{p:?} t={transposed}");
                let c0 = add.then_some(&c0[..]);
                assert_product(&dst, (&a, &b, c0), (m, k, n), bound, &what);
            }
        }
    }
}

#[test]
fn bf16_weights_multiply_to_f32_accuracy_on_either_side() {
    if !amx() {
        return;
    }
    weights_multiply_to_f32_accuracy(
        |v| bf16::from_f32(v).to_f32(),
        |w| Weight::Bf16(w.iter().map(|&v| bf16::from_f32(v)).collect()),
    );
}

#[test]
fn f16_weights_multiply_to_f32_accuracy_on_either_side() {
    if !amx() {
        return;
    }
    // Values of every f16 range: normal, subnormal (below 2^-14) and near the largest.
    let spread = |v: f32| v * [1.0, 3.0e-6, 2.0e4, 0.01][(v.to_bits() % 4) as usize];
    weights_multiply_to_f32_accuracy(
        |v| f16::from_f32(spread(v)).to_f32(),
        |w| Weight::F16(w.iter().map(|&v| f16::from_f32(spread(v))).collect()),
    );
    // Every f16 pattern but infinities and NaNs splits into two exact pieces.
    for bits in 0..=u16::MAX {
        let v = f16::from_bits(bits);
        if v.is_finite() {
            let packed = pack::pack_rhs_f16(&[v], 1, 1, false);
            let piece =
                |p: usize| f32::from_bits((packed.data()[packed.tile(0, 0, p)] & 0xffff) << 16);
            assert_eq!(
                piece(0) as f64 + piece(1) as f64,
                v.to_f32() as f64,
                "{bits:#06x}"
            );
        }
    }
}

/// A 16-bit weight's values, owned.
enum Weight {
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
}

impl Weight {
    fn stored(&self) -> Stored<'_> {
        match self {
            Weight::Bf16(w) => Stored::Bf16(w),
            Weight::F16(w) => Stored::F16(w),
        }
    }
}

/// Products with the weight `narrow(values)` on either side equal the f64 products with its
/// values (`wide` of each) to f32's accuracy.
fn weights_multiply_to_f32_accuracy(wide: impl Fn(f32) -> f32, narrow: impl Fn(&[f32]) -> Weight) {
    // (5, 96, 64): the left weight ([64, 96]) is read in place, unpacked. (3, 0, 5): an empty
    // sum, written as zeros.
    for (m, k, n) in [
        (1, 1, 1),
        (3, 0, 5),
        (5, 37, 3),
        (33, 70, 47),
        (130, 301, 129),
        (5, 96, 64),
    ] {
        let x = noise(m * k, 6);
        let values = noise(k * n, 7);
        let weight = narrow(&values);
        let w = weight.stored();
        let wf: Vec<f32> = values.iter().map(|&v| wide(v)).collect();
        let check = |dst: &[f32], a: &[f32], b: &[f32], shape, side| {
            assert_product(dst, (a, b, None), shape, 4.0 / 16_777_216.0, side)
        };
        for threads in [1, 2] {
            // Right: x (m × k) · w (k × n).
            let mut dst = vec![f32::NAN; m * n];
            product_weight_rhs(mat_mut(&mut dst, m, n), Mat::dense(&x, m, k), w, n, threads);
            check(&dst, &x, &wf, (m, k, n), "right");
            // Left: w (n × k, the same values read as [n, k]) · xᵀ-shaped (k × m) operand.
            let xt: Vec<f32> = noise(k * m, 8);
            let mut dst = vec![f32::NAN; n * m];
            product_weight_lhs(
                mat_mut(&mut dst, n, m),
                w,
                n,
                Mat::dense(&xt, k, m),
                threads,
            );
            check(&dst, &wf, &xt, (n, k, m), "left");
        }
    }
}

#[test]
fn elements_do_not_depend_on_the_shape_or_threads() {
    if !amx() {
        return;
    }
    let (m, k, n) = (150, 200, 260);
    let a = noise(m * k, 4);
    let b = noise(k * n, 5);
    let mut all = vec![0f32; m * n];
    run(
        &a,
        &b,
        (m, k, n),
        false,
        &mut all,
        false,
        Precision::Bf16x6,
        2,
    );
    // The first 40 columns alone, and the last 70 rows alone, on one thread.
    let b40: Vec<f32> = (0..k).flat_map(|i| b[i * n..][..40].to_vec()).collect();
    let mut cols = vec![0f32; m * 40];
    run(
        &a,
        &b40,
        (m, k, 40),
        false,
        &mut cols,
        false,
        Precision::Bf16x6,
        1,
    );
    for r in 0..m {
        assert!(cols[r * 40..][..40] == all[r * n..][..40], "row {r}");
    }
    let mut rows = vec![0f32; 70 * n];
    run(
        &a[80 * k..],
        &b,
        (70, k, n),
        false,
        &mut rows,
        false,
        Precision::Bf16x6,
        1,
    );
    assert!(rows == all[80 * n..]);
}

#[test]
fn modes_are_parsed_and_bad_ones_named() {
    assert_eq!(parse(None), Ok(None));
    assert_eq!(parse(Some("bf16x6")), Ok(Some(Precision::Bf16x6)));
    assert_eq!(parse(Some("bf16x3")), Ok(Some(Precision::Bf16x3)));
    assert_eq!(parse(Some("f32")), Ok(None));
    let msg = parse(Some("fast")).expect_err("an unknown mode is an error");
    assert!(
        msg.contains("BEESWAX_MATMUL=\"fast\"") && msg.contains("bf16x3"),
        "{msg}"
    );
}

/// Not a test: prints the speed of the AMX products and the AVX-512 ones at the SD 1.5 UNet's
/// shapes (`cargo test --release --lib amx::tests::speed -- --ignored --nocapture`).
#[test]
#[ignore]
fn speed() {
    if !amx() {
        return;
    }
    for (m, k, n) in [
        (2048, 320, 320),
        (2048, 320, 2560),
        (512, 640, 640),
        (128, 1280, 1280),
        (1280, 11520, 128),
        (4096, 320, 1280),
    ] {
        let a = noise(m * k, 1);
        let b = noise(k * n, 2);
        let mut dst = vec![0f32; m * n];
        let flops = 2.0 * (m * k * n) as f64;
        let time = |f: &mut dyn FnMut()| {
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                f();
                best = best.min(t.elapsed().as_secs_f64());
            }
            best
        };
        let mut line = format!("{m}x{k}x{n}:");
        for p in [Precision::Bf16x6, Precision::Bf16x3] {
            let s = time(&mut || run(&a, &b, (m, k, n), false, &mut dst, false, p, 2));
            line += &format!(" {p:?} {:.1} GFLOP/s {:.2} ms", flops / s / 1e9, s * 1e3);
        }
        let narrow = |v: &[f32], half: bool| match half {
            false => Weight::Bf16(v.iter().map(|&v| bf16::from_f32(v)).collect()),
            true => Weight::F16(v.iter().map(|&v| f16::from_f32(v)).collect()),
        };
        for (name, half) in [("bf16", false), ("f16", true)] {
            let (right, left) = (narrow(&b, half), narrow(&a, half));
            let (x, y) = (Mat::dense(&a, m, k), Mat::dense(&b, k, n));
            let s =
                time(&mut || product_weight_rhs(mat_mut(&mut dst, m, n), x, right.stored(), n, 2));
            line += &format!(" {name}-rhs {:.2} ms", s * 1e3);
            let s =
                time(&mut || product_weight_lhs(mat_mut(&mut dst, m, n), left.stored(), m, y, 2));
            line += &format!(" {name}-lhs {:.2} ms", s * 1e3);
        }
        let wb: Vec<bf16> = b.iter().map(|&v| bf16::from_f32(v)).collect();
        let wa: Vec<bf16> = a.iter().map(|&v| bf16::from_f32(v)).collect();
        let s = time(&mut || drop(pack_lhs_bf16(&wa, m, k, true)));
        line += &format!(" pack_lhs_bf16 {:.2} ms", s * 1e3);
        let s = time(&mut || drop(pack_rhs_bf16(&wb, k, n, true)));
        line += &format!(" pack_rhs_bf16 {:.2} ms", s * 1e3);
        let s = time(&mut || drop(pack_lhs(&Mat::dense(&a, m, k), 3, true)));
        line += &format!(" pack_lhs {:.2} ms", s * 1e3);
        let s = time(&mut || drop(pack_rhs(&Rhs::Rows(Mat::dense(&b, k, n)), 3, true)));
        line += &format!(" pack_rhs {:.2} ms", s * 1e3);
        let s = time(&mut || unsafe_free_avx(&a, &b, (m, k, n), &mut dst));
        line += &format!(" avx {:.1} GFLOP/s {:.2} ms", flops / s / 1e9, s * 1e3);
        eprintln!("{line}");
    }
}

fn unsafe_free_avx(a: &[f32], b: &[f32], (m, k, n): (usize, usize, usize), dst: &mut [f32]) {
    crate::kernels::gemm::matmul_simd(
        mat_mut(dst, m, n),
        Mat::dense(a, m, k),
        Mat::dense(b, k, n),
        2,
    );
}
