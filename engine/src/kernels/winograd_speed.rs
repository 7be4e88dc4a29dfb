//! Timings of [`super`]'s steps on the layers they were tuned on, run by hand
//! (`cargo test --release -p beeswax --lib winograd::speed -- --ignored --nocapture`), never
//! in CI: tests never assert speed.

use super::*;
use crate::kernels::test_util::noise;

/// Times the per-call filter transform of the SD 1.5 UNet's largest layers (run with
/// `--ignored --nocapture`).
#[test]
#[ignore]
fn filter_transform_speed() {
    crate::kernels::malloc::tune();
    for (c, co, t) in [
        (1280, 1280, Tiling::F2),
        (640, 640, Tiling::F2),
        (320, 320, Tiling::F4),
        (640, 320, Tiling::F4),
        (960, 320, Tiling::F4),
    ] {
        let w = noise(co * c * 9, 3);
        let s = Shape {
            c,
            h: 16,
            w: 16,
            co,
        };
        let mut best = f64::MAX;
        for _ in 0..5 {
            let start = std::time::Instant::now();
            let u = transformed_filters(Stored::F32(&w), &s, t);
            best = best.min(start.elapsed().as_secs_f64());
            assert_eq!(u.len(), co * block(t, c));
        }
        println!("{c}x{co} {t:?}: {:.2} ms", best * 1e3);
    }
}

/// Times the three steps of a TAESD 64-channel 512x512 layer by F(4x4, 3x3), band by band on
/// one thread as the local path runs them (`--ignored --nocapture`). `SAME=1` transforms the
/// first band every time (its input and output in cache), `UP=1` reads the input as a 2x
/// upsampling, `STREAM=1` writes the output by non-temporal stores (as the decoder does at
/// this size), `W` sets the map's width (same pixels).
#[test]
#[ignore]
fn band_step_speed() {
    crate::kernels::malloc::tune();
    let flag = |name: &str| std::env::var(name).is_ok();
    let width = std::env::var("W").map_or(512, |w| w.parse().expect("W: a width"));
    let (t, s) = (
        Tiling::F4,
        Shape {
            c: 64,
            h: 512 * 512 / width,
            w: width,
            co: 64,
        },
    );
    let x = noise(s.c * s.h * s.w, 3);
    let u = transformed_filters(Stored::F32(&noise(s.co * s.c * 9, 4)), &s, t);
    let (th, tw) = s.tiles(t);
    let mut out = vec![MaybeUninit::new(0f32); s.co * s.h * s.w];
    let residual = noise(s.co * s.h * s.w, 5);
    let ep = Epilogue {
        bias: None,
        residual: flag("RES").then_some(&residual[..]),
        scale: 1.0,
        relu: false,
        stream: flag("STREAM"),
    };
    let up = flag("UP");
    let x = Source {
        x: &x[..if up { x.len() / 4 } else { x.len() }],
        up,
        pre: None,
    };
    let mut jobs = band_jobs(&mut out, s.co, s.h * s.w, t.m() * s.w);
    for _ in 0..3 {
        let mut times = [0f64; 3];
        let mut rows = OutputRows::new(&s, t);
        for ty0 in (0..th).map(|ty| if flag("SAME") { 0 } else { ty }) {
            let band = Band {
                t,
                ty0,
                rows: 1,
                nt: tw,
                stride: tw,
            };
            let start = std::time::Instant::now();
            let v = transform_input(x, &s, &band, false);
            let transformed = std::time::Instant::now();
            let m = products(&u, &v, s.co, s.c, &band, 1);
            let multiplied = std::time::Instant::now();
            let dsts = &mut jobs[ty0].2;
            band_outputs(&m, &s, &band, 0, &ep, dsts, &mut rows);
            ep.end_task();
            times[0] += (transformed - start).as_secs_f64();
            times[1] += (multiplied - transformed).as_secs_f64();
            times[2] += multiplied.elapsed().as_secs_f64();
        }
        let [i, g, o] = times.map(|t| t * 1e3);
        println!("input {i:.1} ms, products {g:.1} ms, output {o:.1} ms");
    }
}

/// Times the filter transform of a whole layer's weight read from memory, block by block into
/// a buffer that stays in cache, on one thread, as [`super::output_blocks`] runs it
/// (`--ignored --nocapture`; `C=<channels>`, `F4=1` for F(4x4, 3x3), `DTYPE=bf16` or `f16`
/// for a 16-bit weight).
#[test]
#[ignore]
fn block_filter_speed() {
    crate::kernels::malloc::tune();
    let var = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let c = var("C", 1280);
    let t = if var("F4", 0) == 1 {
        Tiling::F4
    } else {
        Tiling::F2
    };
    let co = c;
    // Two copies of the weight, so that each pass reads one the last pass did not.
    let weights: Vec<Vec<f32>> = (0..2).map(|i| noise(co * c * 9, 3 + i)).collect();
    let dtype = std::env::var("DTYPE").unwrap_or_default();
    let narrow = |w: &[f32], f: fn(f32) -> u16| w.iter().map(|&v| f(v)).collect::<Vec<u16>>();
    let halves: Vec<Vec<u16>> = match dtype.as_str() {
        "bf16" => weights
            .iter()
            .map(|w| narrow(w, |v| half::bf16::from_f32(v).to_bits()))
            .collect(),
        "f16" => weights
            .iter()
            .map(|w| narrow(w, |v| half::f16::from_f32(v).to_bits()))
            .collect(),
        _ => Vec::new(),
    };
    let bf: Vec<&[half::bf16]> = halves
        .iter()
        .map(|h| pulp::bytemuck::cast_slice(h))
        .collect();
    let hf: Vec<&[half::f16]> = halves
        .iter()
        .map(|h| pulp::bytemuck::cast_slice(h))
        .collect();
    let s = Shape {
        c,
        h: 16,
        w: 16,
        co,
    };
    let per = 80;
    let mut u = vec![MaybeUninit::<f32>::uninit(); per * block(t, c)];
    let mut scratch = Vec::new();
    let mut best = f64::MAX;
    for round in 0..8 {
        let w = match dtype.as_str() {
            "bf16" => Stored::Bf16(bf[round % 2]),
            "f16" => Stored::F16(hf[round % 2]),
            _ => Stored::F32(&weights[round % 2]),
        };
        let start = std::time::Instant::now();
        for o0 in (0..co).step_by(per) {
            for (j, u) in u.chunks_exact_mut(block(t, c)).enumerate() {
                filter_block(w, &s, t, o0 + j, u, &mut scratch, false);
            }
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "{c}x{co} {t:?} {dtype} by blocks of {per}: {:.2} ms",
        best * 1e3
    );
}
