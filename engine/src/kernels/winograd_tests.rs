//! Tests of [`super`]: Winograd against direct convolutions in f32 and f64.

use super::*;
use crate::kernels::stream;
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
fn conv_vec(x: &[f32], images: usize, w: &[f32], s: &Shape, t: Tiling, ep: &Epilogue) -> Vec<f32> {
    let mut out = vec![MaybeUninit::new(f32::NAN); images * s.co * s.h * s.w];
    conv(plain(x), images, Stored::F32(w), s, t, ep, &mut out);
    // SAFETY: every element was initialised (to NaN) when the vector was made.
    #[allow(unsafe_code)]
    out.into_iter()
        .map(|v| unsafe { v.assume_init() })
        .collect()
}

fn plain(x: &[f32]) -> Source<'_> {
    Source {
        x,
        up: false,
        pre: None,
    }
}

/// Both tilings.
const TILINGS: [Tiling; 2] = [Tiling::F2, Tiling::F4];

fn run(
    s: &Shape,
    t: Tiling,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    res: Option<&[f32]>,
) -> Vec<f32> {
    let ep = Epilogue {
        bias,
        residual: res,
        scale: 2.0,
        relu: false,
        stream: false,
    };
    conv_vec(x, 1, w, s, t, &ep)
}

#[test]
fn relu_is_applied_last() {
    // On both paths (a small filter bank, a large one), with a bias and a residual.
    for (t, (c, co, h, w)) in TILINGS
        .map(|t| [(t, (4, 6, 9, 7)), (t, (136, 130, 5, 6))])
        .concat()
    {
        let s = Shape { c, h, w, co };
        let (x, wt) = (noise(c * h * w, 31), noise(co * c * 9, 32));
        let (bias, res) = (noise(co, 33), noise(co * h * w, 34));
        let mut ep = Epilogue {
            bias: Some(&bias),
            residual: Some(&res),
            scale: 1.0,
            relu: false,
            stream: false,
        };
        let plain = conv_vec(&x, 1, &wt, &s, t, &ep);
        ep.relu = true;
        let relu = conv_vec(&x, 1, &wt, &s, t, &ep);
        assert!(plain.iter().any(|v| *v < 0.0) && plain.iter().any(|v| *v > 0.0));
        for (r, p) in relu.iter().zip(&plain) {
            assert_eq!(r.to_bits(), p.max(0.0).to_bits(), "{t:?} {c}->{co} {h}x{w}");
        }
    }
}

/// The largest absolute error a tiling may have on [`noise`] inputs against f64 (sums of up to
/// 9·136 products of values within ±1, halved): F(4x4, 3x3) loses about a decimal digit.
fn tolerance(t: Tiling) -> f64 {
    match t {
        Tiling::F2 => 1e-5,
        Tiling::F4 => 4e-4,
    }
}

#[test]
fn matches_a_direct_convolution_on_odd_and_even_sizes() {
    // Sizes that are no multiple of either tile, one-tile images, many one-row local bands on
    // odd sizes, a filter bank too large for them.
    for (c, co, h, w) in [
        (3, 5, 6, 8),
        (4, 3, 7, 5),
        (2, 2, 1, 1),
        (5, 4, 9, 2),
        (3, 2, 11, 10),
        (64, 64, 33, 131),
        (136, 130, 7, 5),
    ] {
        let s = Shape { c, h, w, co };
        let x = noise(c * h * w, 1);
        let wt = noise(co * c * 9, 2);
        let bias = noise(co, 3);
        let res = noise(co * h * w, 4);
        let want = exact(&x, &wt, &s);
        for t in TILINGS {
            let mut worst = 0f64;
            let got = run(&s, t, &x, &wt, Some(&bias), Some(&res));
            for (i, (g, d)) in got.iter().zip(&want).enumerate() {
                let o = i / (h * w);
                let d = (d + bias[o] as f64 + res[i] as f64) / 2.0;
                worst = worst.max((*g as f64 - d).abs());
                assert!(
                    (*g as f64 - d).abs() < tolerance(t),
                    "{t:?} {c} {co} {h}x{w} at {i}: {g} vs {d}"
                );
            }
            eprintln!("{t:?} {c} {co} {h}x{w}: worst {worst:.2e}");
        }
    }
}

#[test]
fn filters_transform_as_the_scalar_definition() {
    use half::{bf16, f16};
    // Whole vectors of 16 channels and channels after them, f32 and 16-bit filters (each
    // against the scalar transform of its exact f32 value).
    for c in [37, 16, 5] {
        let w = noise(c * 9, 21);
        let w16: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let h16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let weights = [
            (Stored::F32(&w), w.clone()),
            (Stored::Bf16(&w16), w16.iter().map(|v| v.to_f32()).collect()),
            (Stored::F16(&h16), h16.iter().map(|v| v.to_f32()).collect()),
        ];
        for (t, stream) in TILINGS.into_iter().flat_map(|t| [(t, false), (t, true)]) {
            for (stored, exact) in &weights {
                let mut u = vec![MaybeUninit::new(f32::NAN); t.positions() * c];
                transform_filters(t, *stored, c, &mut u, &mut Vec::new(), stream);
                stream::fence();
                // SAFETY: every element was initialised (to NaN) when the vector was made.
                #[allow(unsafe_code)]
                let u: Vec<f32> = u.into_iter().map(|v| unsafe { v.assume_init() }).collect();
                for ci in 0..c {
                    let want = filters::filter_tile(t, &exact[ci * 9..][..9]);
                    assert_eq!(want.len(), t.positions());
                    for (xi, v) in want.into_iter().enumerate() {
                        assert_eq!(
                            u[xi * c + ci].to_bits(),
                            v.to_bits(),
                            "{t:?} {stored:?} (stream {stream}) channel {ci} of {c}, position {xi}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn images_do_not_depend_on_their_batch() {
    // Every image's output equals the one it gets alone, bit for bit, also over bands.
    let shapes = [(320, 320, 32, 32), (96, 80, 130, 300), (8, 16, 34, 35)];
    for (t, (c, co, h, w)) in TILINGS.map(|t| shapes.map(|s| (t, s))).concat() {
        let s = Shape { c, h, w, co };
        assert!(usable(&s, t), "{t:?} {s:?}");
        let x = noise(3 * c * h * w, 9);
        let wt: Vec<f32> = noise(co * c * 9, 10).iter().map(|v| v * 0.05).collect();
        let bias = noise(co, 11);
        let res = noise(3 * co * h * w, 12);
        let ep = |residual| Epilogue {
            bias: Some(&bias),
            residual,
            scale: 1.0,
            relu: false,
            stream: false,
        };
        let all = conv_vec(&x, 3, &wt, &s, t, &ep(Some(&res)));
        let (image, plane) = (c * h * w, co * h * w);
        for i in 0..3 {
            let (xi, ri) = (&x[i * image..][..image], &res[i * plane..][..plane]);
            let one = conv_vec(xi, 1, &wt, &s, t, &ep(Some(ri)));
            assert!(
                one == all[i * plane..][..plane],
                "{t:?} image {i} of {c}->{co} {h}x{w}"
            );
        }
    }
}

#[test]
fn both_paths_give_the_same_bits() {
    // The local and layer-wide paths must agree exactly: which one runs depends on the batch
    // and the number of threads, an image's result must not.
    for (t, (c, co, h, w, images)) in TILINGS
        .map(|t| {
            [
                (t, (96, 80, 70, 90, 2)),
                (t, (8, 136, 41, 39, 1)),
                (t, (64, 64, 66, 70, 1)),
            ]
        })
        .concat()
    {
        let s = Shape { c, h, w, co };
        let x = noise(images * c * h * w, 41);
        let wt = noise(co * c * 9, 42);
        let (bias, res) = (noise(co, 43), noise(images * co * h * w, 44));
        let ep = Epilogue {
            bias: Some(&bias),
            residual: Some(&res),
            scale: 2.0,
            relu: true,
            stream: false,
        };
        let u = transformed_filters(Stored::F32(&wt), &s, t);
        let n = images * co * h * w;
        // SAFETY: both paths write every value of their output (as `conv` relies on).
        #[allow(unsafe_code)]
        let bits = |v: Vec<MaybeUninit<f32>>| -> Vec<u32> {
            v.into_iter()
                .map(|v| unsafe { v.assume_init() }.to_bits())
                .collect()
        };
        let by = |local: bool, ep: &Epilogue| {
            let mut out = vec![MaybeUninit::uninit(); n];
            match local {
                true => by_local_bands(plain(&x), &u, &s, t, ep, &mut out),
                false => by_layer_bands(plain(&x), images, &u, &s, t, ep, &mut out),
            }
            bits(out)
        };
        let local = by(true, &ep);
        assert!(local == by(false, &ep), "{t:?} {c}->{co} {h}x{w} x{images}");
        // Rows written by non-temporal stores hold the same values.
        let streamed = Epilogue { stream: true, ..ep };
        for path in [true, false] {
            assert!(
                local == by(path, &streamed),
                "{t:?} {c}->{co} {h}x{w} x{images}, streamed, local path {path}"
            );
        }
    }
}

/// [`conv`] by the local (`true`) or the layer-wide path, without epilogue.
fn by_path(x: &[f32], w: &[f32], s: &Shape, t: Tiling, local: bool) -> Vec<f32> {
    let ep = Epilogue {
        bias: None,
        residual: None,
        scale: 1.0,
        relu: false,
        stream: false,
    };
    let u = transformed_filters(Stored::F32(w), s, t);
    let mut out = vec![MaybeUninit::new(f32::NAN); s.co * s.h * s.w];
    if local {
        by_local_bands(plain(x), &u, s, t, &ep, &mut out);
    } else {
        by_layer_bands(plain(x), 1, &u, s, t, &ep, &mut out);
    }
    // SAFETY: every element was initialised (to NaN) when the vector was made.
    #[allow(unsafe_code)]
    out.into_iter()
        .map(|v| unsafe { v.assume_init() })
        .collect()
}

#[test]
fn bands_cover_large_maps() {
    // Many local bands (at least MIN_BAND_TILES tiles each), and a map with
    // positions·(c + co)·tiles > BUDGET: several layer-wide bands of tile rows. Both paths on
    // both maps.
    let small = Shape {
        c: 64,
        h: 130,
        w: 514,
        co: 64,
    };
    let wide = Shape {
        c: 136,
        h: 210,
        w: 130,
        co: 136,
    };
    for t in TILINGS {
        let (th, tw) = wide.tiles(t);
        assert!(t.positions() * (wide.c + wide.co) * th * tw > BUDGET);
        assert!(small.tiles(t).0.div_ceil(local_band_rows(&small, t)) > 4);
        for s in [small, wide] {
            let x = noise(s.c * s.h * s.w, 5);
            let wt = noise(s.co * s.c * 9, 6);
            let want = exact(&x, &wt, &s);
            for local in [true, false] {
                let got = by_path(&x, &wt, &s, t, local);
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(g, d)| (*g as f64 - d).abs())
                    .fold(0f64, f64::max);
                let path = if local { "local" } else { "layer-wide" };
                assert!(
                    worst < 6.0 * tolerance(t),
                    "{t:?} {path}: worst {worst} for {s:?}"
                );
            }
        }
    }
}

#[test]
fn error_is_that_of_a_direct_convolution() {
    // Against f64, Winograd's f32 error should be within a small factor of the error of an
    // f32 direct convolution (summed in the same order as an im2col GEMM would): about that
    // error for F(2x2, 3x3), a decimal digit more for F(4x4, 3x3).
    let s = Shape {
        c: 320,
        h: 16,
        w: 16,
        co: 8,
    };
    let x = noise(s.c * s.h * s.w, 7);
    let wt: Vec<f32> = noise(s.co * s.c * 9, 8).iter().map(|v| v * 0.05).collect();
    let exact = exact(&x, &wt, &s);
    let f32_direct = direct(&x, &wt, &s, 0f32, |acc, a, b| acc + a * b);
    let rms = |v: &[f32], scale: f64| {
        let sum: f64 = v
            .iter()
            .zip(&exact)
            .map(|(a, e)| (*a as f64 * scale - e).powi(2))
            .sum();
        (sum / v.len() as f64).sqrt()
    };
    let e_direct = rms(&f32_direct, 1.0);
    for (t, factor) in [(Tiling::F2, 3.0), (Tiling::F4, 6.0)] {
        let e_wino = rms(&run(&s, t, &x, &wt, None, None), 2.0);
        eprintln!("rms error against f64: {t:?} {e_wino:.3e}, direct f32 {e_direct:.3e}");
        assert!(
            e_wino < factor * e_direct,
            "{t:?} rms error {e_wino:e} vs direct f32 {e_direct:e}"
        );
    }
}

#[test]
fn an_upsampled_source_is_the_upsampled_input() {
    // Reading a half-size input as its nearest 2x upsampling gives, bit for bit, the
    // convolution of the upsampled input, on both paths and both tilings.
    for (t, (c, co, h, w, images)) in TILINGS
        .map(|t| [(t, (8, 70, 40, 36, 2)), (t, (64, 64, 66, 34, 1))])
        .concat()
    {
        let s = Shape { c, h, w, co };
        let small = noise(images * c * (h / 2) * (w / 2), 51);
        let mut big = vec![0f32; images * c * h * w];
        for (i, v) in big.iter_mut().enumerate() {
            let (plane, y, x) = (i / (h * w), i / w % h, i % w);
            *v = small[(plane * (h / 2) + y / 2) * (w / 2) + x / 2];
        }
        let wt = noise(co * c * 9, 52);
        let bias = noise(co, 53);
        let ep = Epilogue {
            bias: Some(&bias),
            residual: None,
            scale: 1.0,
            relu: false,
            stream: false,
        };
        let want = conv_vec(&big, images, &wt, &s, t, &ep);
        let u = transformed_filters(Stored::F32(&wt), &s, t);
        for local in [true, false] {
            let mut got = vec![MaybeUninit::new(f32::NAN); want.len()];
            let source = Source {
                x: &small,
                up: true,
                pre: None,
            };
            if local {
                by_local_bands(source, &u, &s, t, &ep, &mut got);
            } else {
                by_layer_bands(source, images, &u, &s, t, &ep, &mut got);
            }
            // SAFETY: every element was initialised (to NaN) when the vector was made.
            #[allow(unsafe_code)]
            let got: Vec<f32> = got
                .into_iter()
                .map(|v| unsafe { v.assume_init() })
                .collect();
            assert!(
                got == want,
                "{t:?} {c}->{co} {h}x{w} x{images} local {local}"
            );
        }
    }
}

#[test]
fn the_tiling_follows_the_tiles_per_image() {
    let shape = |c, hw, co| Shape {
        c,
        h: hw,
        w: hw,
        co,
    };
    // From 16 tiles of F(4x4, 3x3) on (13x13 maps) it is taken whatever the channels.
    assert_eq!(tiling(&shape(320, 64, 320)), Some(Tiling::F4));
    assert_eq!(tiling(&shape(1280, 64, 1280)), Some(Tiling::F4));
    assert_eq!(tiling(&shape(1920, 32, 640)), Some(Tiling::F4));
    assert_eq!(tiling(&shape(1280, 32, 1280)), Some(Tiling::F4));
    assert_eq!(tiling(&shape(2560, 24, 1280)), Some(Tiling::F4));
    assert_eq!(tiling(&shape(640, 16, 640)), Some(Tiling::F4));
    assert_eq!(tiling(&shape(320, 16, 320)), Some(Tiling::F4));
    assert_eq!(tiling(&shape(2560, 16, 1280)), Some(Tiling::F4));
    assert_eq!(tiling(&shape(1280, 13, 1280)), Some(Tiling::F4));
    // Under 16 tiles of F(4x4, 3x3): F(2x2, 3x3) from 16 tiles (7x7), none below.
    assert_eq!(tiling(&shape(1280, 12, 1280)), Some(Tiling::F2));
    assert_eq!(tiling(&shape(1280, 8, 1280)), Some(Tiling::F2));
    assert_eq!(tiling(&shape(1280, 7, 1280)), Some(Tiling::F2));
    assert_eq!(tiling(&shape(1280, 6, 1280)), None);
    assert_eq!(tiling(&shape(1280, 4, 1280)), None);
    // Few output channels over few tiles: none (the GEMM's small-matrix path).
    assert_eq!(tiling(&shape(320, 8, 64)), None);
}

/// [`direct::conv`] of `images` images into a new vector.
fn direct_vec(x: Source, images: usize, w: Stored, s: &Shape, ep: &Epilogue) -> Vec<f32> {
    let mut out = vec![MaybeUninit::new(f32::NAN); images * s.co * s.h * s.w];
    direct::conv(x, images, w, s, ep, &mut out);
    // SAFETY: every element was initialised (to NaN) when the vector was made.
    #[allow(unsafe_code)]
    out.into_iter()
        .map(|v| unsafe { v.assume_init() })
        .collect()
}

#[test]
fn few_outputs_are_summed_directly_to_f32_accuracy() {
    // Widths that are no multiple of a vector, heights no multiple of a band, one-pixel
    // images, one to four output channels; each output against f64 sums
    // within recursive summation's bound, with bias, residual, scale and ReLU.
    for (c, co, h, w) in [
        (64, 3, 37, 21),
        (5, 2, 9, 40),
        (3, 1, 1, 1),
        (7, 4, 17, 3),
        (128, 4, 8, 16),
    ] {
        let s = Shape { c, h, w, co };
        let x = noise(2 * c * h * w, 61);
        let wt = noise(co * c * 9, 62);
        let (bias, res) = (noise(co, 63), noise(2 * co * h * w, 64));
        let ep = Epilogue {
            bias: Some(&bias),
            residual: Some(&res),
            scale: 2.0,
            relu: true,
            stream: false,
        };
        let got = direct_vec(plain(&x), 2, Stored::F32(&wt), &s, &ep);
        let image = co * h * w;
        for i in 0..2 {
            let xi = &x[i * c * h * w..][..c * h * w];
            let want = exact(xi, &wt, &s);
            let sizes = direct(xi, &wt, &s, 0f64, |acc, a, b| {
                acc + (a as f64 * b as f64).abs()
            });
            for (j, (&g, d)) in got[i * image..][..image].iter().zip(&want).enumerate() {
                let (b, r) = (bias[j / (h * w)] as f64, res[i * image + j] as f64);
                let d = ((d + b + r) / 2.0).max(0.0);
                // Recursive summation of 9c products, then the bias and the residual.
                let bound =
                    (9 * c + 3) as f64 * f32::EPSILON as f64 * (sizes[j] + b.abs() + r.abs());
                assert!(
                    (g as f64 - d).abs() <= bound,
                    "{c}->{co} {h}x{w} image {i} at {j}: {g} vs {d}"
                );
            }
        }
        // Each image alone gives the same bits as in the batch.
        let one = direct_vec(
            plain(&x[c * h * w..]),
            1,
            Stored::F32(&wt),
            &s,
            &Epilogue {
                residual: Some(&res[image..]),
                ..ep
            },
        );
        assert!(one == got[image..], "{c}->{co} {h}x{w}: image 1 alone");
        // Rows written by non-temporal stores hold the same values.
        let ep = Epilogue { stream: true, ..ep };
        let streamed = direct_vec(plain(&x), 2, Stored::F32(&wt), &s, &ep);
        assert!(streamed == got, "{c}->{co} {h}x{w}: streamed");
    }
}

#[test]
fn few_outputs_read_upsampled_sources_and_16_bit_filters() {
    // An upsampled source gives the convolution of the upsampled input bit for bit; bf16
    // filters give that of their f32 copy.
    let (c, co, h, w) = (9, 3, 26, 34);
    let s = Shape { c, h, w, co };
    let small = noise(c * (h / 2) * (w / 2), 71);
    let mut big = vec![0f32; c * h * w];
    for (i, v) in big.iter_mut().enumerate() {
        let (plane, y, x) = (i / (h * w), i / w % h, i % w);
        *v = small[(plane * (h / 2) + y / 2) * (w / 2) + x / 2];
    }
    let wt: Vec<half::bf16> = noise(co * c * 9, 72)
        .iter()
        .map(|&v| half::bf16::from_f32(v))
        .collect();
    let wide: Vec<f32> = wt.iter().map(|v| v.to_f32()).collect();
    let ep = Epilogue {
        bias: None,
        residual: None,
        scale: 1.0,
        relu: false,
        stream: false,
    };
    let want = direct_vec(plain(&big), 1, Stored::F32(&wide), &s, &ep);
    let up = Source {
        x: &small,
        up: true,
        pre: None,
    };
    let got = direct_vec(up, 1, Stored::Bf16(&wt), &s, &ep);
    assert!(got == want);
    let exact = exact(&big, &wide, &s);
    assert!(got
        .iter()
        .zip(&exact)
        .all(|(&g, &e)| (g as f64 - e).abs() < 1e-4));
}
