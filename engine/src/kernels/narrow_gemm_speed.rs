//! Timings of [`super`]'s 16-bit products against the f32 GEMM on the SD 1.5 UNet's shapes,
//! weights read from memory, run by hand (`cargo test --release -p beeswax --lib
//! narrow_gemm::speed -- --ignored --nocapture`), never in CI: tests never assert speed.

use half::{bf16, f16};

use super::*;
use crate::kernels::gemm::matmul_uninit;
use crate::kernels::test_util::noise;

/// Copies of each weight cycled through, so that every product reads its weight from memory
/// (at least 128 MiB of weights, four times the L3 of the machines measured).
fn copies(values: usize) -> usize {
    ((128usize << 20) / (2 * values)).max(2)
}

/// Minimum over `rounds` of the mean time of one product, in ms.
fn time(rounds: usize, per_round: usize, mut f: impl FnMut(usize)) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let start = std::time::Instant::now();
        for i in 0..per_round {
            f(i);
        }
        best = best.min(start.elapsed().as_secs_f64() / per_round as f64);
    }
    best * 1e3
}

/// Times `x · w` (linear layers, `w` `[k, n]`) and `w · x` (convolutions by im2col, `w`
/// `[m, k]`) with f32, bf16 and f16 weights (`--ignored --nocapture`; `SHAPES=right` or
/// `left` for one side only, `BLOCK=<values>` for another block size than [`BLOCK`]).
#[test]
#[ignore]
fn narrow_product_speed() {
    crate::kernels::malloc::tune();
    let threads = rayon::current_num_threads();
    let only = std::env::var("SHAPES").unwrap_or_default();
    let block: usize = std::env::var("BLOCK")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(BLOCK);
    // (side, rows of the activations or columns of cols, k, n or m)
    let shapes: &[(Side, usize, usize, usize)] = &[
        (Side::Right, 2048, 320, 2560),
        (Side::Right, 512, 640, 640),
        (Side::Right, 512, 640, 5120),
        (Side::Right, 512, 2560, 640),
        (Side::Right, 128, 1280, 1280),
        (Side::Right, 128, 1280, 10240),
        (Side::Right, 128, 5120, 1280),
        (Side::Left, 128, 11520, 1280),
        (Side::Left, 128, 23040, 1280),
        (Side::Left, 4096, 320, 320),
        (Side::Left, 4096, 960, 320),
        (Side::Left, 1024, 2880, 320),
    ];
    for &(side, a, k, n) in shapes {
        let name = if side == Side::Right { "right" } else { "left" };
        if !only.is_empty() && only != name {
            continue;
        }
        let values = k * n;
        let count = copies(values);
        let w32: Vec<Vec<f32>> = (0..count).map(|i| noise(values, i as u64 + 1)).collect();
        let wb: Vec<Vec<bf16>> = w32
            .iter()
            .map(|w| w.iter().map(|&v| bf16::from_f32(v)).collect())
            .collect();
        let wh: Vec<Vec<f16>> = w32
            .iter()
            .map(|w| w.iter().map(|&v| f16::from_f32(v)).collect())
            .collect();
        let x = noise(a * k, 99);
        let mut out = vec![std::mem::MaybeUninit::<f32>::uninit(); a * n];
        let (rounds, per) = (5, count.max(4));
        let mut run = |ws: Vec<Stored>| {
            time(rounds, per, |i| {
                let w = ws[i % count];
                match side {
                    Side::Right => {
                        let lhs = Mat::dense(&x, a, k);
                        let dst = MatUninit {
                            data: &mut out,
                            rows: a,
                            cols: n,
                            stride: n,
                        };
                        match w {
                            Stored::F32(w) => matmul_uninit(dst, lhs, Mat::dense(w, k, n), threads),
                            w => matmul_narrow_rhs(dst, lhs, w, n, block, threads),
                        }
                    }
                    Side::Left => {
                        let rhs = Mat::dense(&x, k, a);
                        let dst = MatUninit {
                            data: &mut out,
                            rows: n,
                            cols: a,
                            stride: a,
                        };
                        match w {
                            Stored::F32(w) => matmul_uninit(dst, Mat::dense(w, n, k), rhs, threads),
                            w => matmul_narrow_lhs(dst, w, n, rhs, block, threads),
                        }
                    }
                }
            })
        };
        let f = run(w32.iter().map(|w| Stored::F32(w)).collect());
        let b = run(wb.iter().map(|w| Stored::Bf16(w)).collect());
        let h = run(wh.iter().map(|w| Stored::F16(w)).collect());
        println!(
            "{name} {a} x [{k}, {n}]: f32 {f:.2} ms, bf16 {b:.2} ms ({:.2}x), f16 {h:.2} ms ({:.2}x)",
            b / f,
            h / f
        );
    }
}
