//! Tests of [`super`]: Winograd against direct convolutions in f32 and f64.

use super::*;
use crate::kernels::test_util::noise;

/// Direct 3x3 correlation with padding 1, summing the products (in im2col's order) with
/// `add` from `zero`.
fn direct<T: Copy>(
    x: &[f32],
    w: &[f32],
    s: &Shape,
    zero: T,
    add: impl Fn(T, f32, f32) -> T,
) -> Vec<T> {
    let mut out = vec![zero; s.co * s.h * s.w];
    for o in 0..s.co {
        for y in 0..s.h {
            for xx in 0..s.w {
                let mut acc = zero;
                for ci in 0..s.c {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = (y + ky, xx + kx);
                            if iy < 1 || ix < 1 || iy > s.h || ix > s.w {
                                continue;
                            }
                            let v = x[(ci * s.h + iy - 1) * s.w + ix - 1];
                            acc = add(acc, v, w[((o * s.c + ci) * 3 + ky) * 3 + kx]);
                        }
                    }
                }
                out[(o * s.h + y) * s.w + xx] = acc;
            }
        }
    }
    out
}

fn exact(x: &[f32], w: &[f32], s: &Shape) -> Vec<f64> {
    direct(x, w, s, 0f64, |acc, a, b| acc + a as f64 * b as f64)
}

/// [`conv`] of `images` images into a new vector, through the epilogue `ep`.
fn conv_vec(x: &[f32], images: usize, w: &[f32], s: &Shape, ep: &Epilogue) -> Vec<f32> {
    let mut out = vec![MaybeUninit::new(f32::NAN); images * s.co * s.h * s.w];
    conv(x, images, Stored::F32(w), s, ep, &mut out);
    // SAFETY: every element was initialised (to NaN) when the vector was made.
    #[allow(unsafe_code)]
    out.into_iter()
        .map(|v| unsafe { v.assume_init() })
        .collect()
}

fn run(s: &Shape, x: &[f32], w: &[f32], bias: Option<&[f32]>, res: Option<&[f32]>) -> Vec<f32> {
    let ep = Epilogue {
        bias,
        residual: res,
        scale: 2.0,
        relu: false,
    };
    conv_vec(x, 1, w, s, &ep)
}

#[test]
fn relu_is_applied_last() {
    // On both paths (a small filter bank, a large one), with a bias and a residual.
    for (c, co, h, w) in [(4, 6, 9, 7), (136, 130, 5, 6)] {
        let s = Shape { c, h, w, co };
        let (x, wt) = (noise(c * h * w, 31), noise(co * c * 9, 32));
        let (bias, res) = (noise(co, 33), noise(co * h * w, 34));
        let mut ep = Epilogue {
            bias: Some(&bias),
            residual: Some(&res),
            scale: 1.0,
            relu: false,
        };
        let plain = conv_vec(&x, 1, &wt, &s, &ep);
        ep.relu = true;
        let relu = conv_vec(&x, 1, &wt, &s, &ep);
        assert!(plain.iter().any(|v| *v < 0.0) && plain.iter().any(|v| *v > 0.0));
        for (r, p) in relu.iter().zip(&plain) {
            assert_eq!(r.to_bits(), p.max(0.0).to_bits(), "{c}->{co} {h}x{w}");
        }
    }
}

#[test]
fn matches_a_direct_convolution_on_odd_and_even_sizes() {
    // The last two: many one-row local bands on odd sizes; a filter bank too large for them.
    for (c, co, h, w) in [
        (3, 5, 6, 8),
        (4, 3, 7, 5),
        (2, 2, 1, 1),
        (5, 4, 9, 2),
        (64, 64, 33, 131),
        (136, 130, 7, 5),
    ] {
        let s = Shape { c, h, w, co };
        let x = noise(c * h * w, 1);
        let wt = noise(co * c * 9, 2);
        let bias = noise(co, 3);
        let res = noise(co * h * w, 4);
        let got = run(&s, &x, &wt, Some(&bias), Some(&res));
        let want = exact(&x, &wt, &s);
        for (i, (g, d)) in got.iter().zip(&want).enumerate() {
            let o = i / (h * w);
            let d = (d + bias[o] as f64 + res[i] as f64) / 2.0;
            assert!(
                (*g as f64 - d).abs() < 1e-5,
                "{c} {co} {h}x{w} at {i}: {g} vs {d}"
            );
        }
    }
}

#[test]
fn filters_transform_as_the_scalar_definition() {
    let c = 37;
    let w = noise(c * 9, 21);
    let mut u = vec![MaybeUninit::new(f32::NAN); 16 * c];
    transform_filters(&w, c, &mut u, &mut Vec::new());
    // SAFETY: every element was initialised (to NaN) when the vector was made.
    #[allow(unsafe_code)]
    let u: Vec<f32> = u.into_iter().map(|v| unsafe { v.assume_init() }).collect();
    for ci in 0..c {
        let want = filter_tile(&w[ci * 9..][..9]);
        for (xi, v) in want.into_iter().enumerate() {
            assert_eq!(
                u[xi * c + ci].to_bits(),
                v.to_bits(),
                "channel {ci} position {xi}"
            );
        }
    }
}

#[test]
fn images_do_not_depend_on_their_batch() {
    // Every image's output equals the one it gets alone, bit for bit, also over bands.
    for (c, co, h, w) in [(320, 320, 16, 16), (96, 80, 130, 300), (8, 16, 18, 17)] {
        assert!(pays_off(&Shape { c, h, w, co }));
        let s = Shape { c, h, w, co };
        let x = noise(3 * c * h * w, 9);
        let wt: Vec<f32> = noise(co * c * 9, 10).iter().map(|v| v * 0.05).collect();
        let bias = noise(co, 11);
        let res = noise(3 * co * h * w, 12);
        let ep = |residual| Epilogue {
            bias: Some(&bias),
            residual,
            scale: 1.0,
            relu: false,
        };
        let all = conv_vec(&x, 3, &wt, &s, &ep(Some(&res)));
        let (image, plane) = (c * h * w, co * h * w);
        for i in 0..3 {
            let (xi, ri) = (&x[i * image..][..image], &res[i * plane..][..plane]);
            let one = conv_vec(xi, 1, &wt, &s, &ep(Some(ri)));
            assert!(
                one == all[i * plane..][..plane],
                "image {i} of {c}->{co} {h}x{w}"
            );
        }
    }
}

#[test]
fn bands_cover_large_maps() {
    // Local bands (one tile row each here), then 16·(c + co)·tw·th > BUDGET with a filter bank
    // too large for them: several layer-wide bands of tile rows.
    let local = Shape {
        c: 64,
        h: 130,
        w: 514,
        co: 64,
    };
    let wide = Shape {
        c: 136,
        h: 130,
        w: 130,
        co: 136,
    };
    assert!(16 * local.c * local.co <= LOCAL_FILTERS);
    assert!(16 * wide.c * wide.co > LOCAL_FILTERS);
    assert!(16 * (wide.c + wide.co) * 65 * 65 > BUDGET);
    for s in [local, wide] {
        bands_match_a_direct_convolution(&s);
    }
}

fn bands_match_a_direct_convolution(s: &Shape) {
    let x = noise(s.c * s.h * s.w, 5);
    let wt = noise(s.co * s.c * 9, 6);
    let got = run(s, &x, &wt, None, None);
    let want = exact(&x, &wt, s);
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, d)| (*g as f64 - d / 2.0).abs())
        .fold(0f64, f64::max);
    assert!(worst < 1e-4, "worst {worst} for {s:?}");
}

#[test]
fn error_is_that_of_a_direct_convolution() {
    // Against f64, Winograd's f32 error should be within a small factor of the error of
    // an f32 direct convolution (summed in the same order as an im2col GEMM would).
    let s = Shape {
        c: 320,
        h: 16,
        w: 16,
        co: 8,
    };
    let x = noise(s.c * s.h * s.w, 7);
    let wt: Vec<f32> = noise(s.co * s.c * 9, 8).iter().map(|v| v * 0.05).collect();
    let exact = exact(&x, &wt, &s);
    let wino = run(&s, &x, &wt, None, None);
    let f32_direct = direct(&x, &wt, &s, 0f32, |acc, a, b| acc + a * b);
    let rms = |v: &[f32], scale: f64| {
        let sum: f64 = v
            .iter()
            .zip(&exact)
            .map(|(a, e)| (*a as f64 * scale - e).powi(2))
            .sum();
        (sum / v.len() as f64).sqrt()
    };
    let (e_wino, e_direct) = (rms(&wino, 2.0), rms(&f32_direct, 1.0));
    eprintln!("rms error against f64: winograd {e_wino:.3e}, direct f32 {e_direct:.3e}");
    assert!(
        e_wino < 3.0 * e_direct,
        "winograd rms error {e_wino:e} vs direct f32 {e_direct:e}"
    );
}
