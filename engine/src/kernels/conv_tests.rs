//! Tests of [`super`] (the convolution entry points), kept beside it.

use super::*;
use crate::kernels::test_util::{max_abs, max_diff};
use candle_core::Device;
use candle_nn::Conv2dConfig;

/// Random `[co, c, k, k]` filters, a random bias and the config of a `stride`, `pad` convolution.
fn random_conv(
    c: usize,
    co: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> (Tensor, Tensor, Conv2dConfig) {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 0.2, (co, c, k, k), &dev).unwrap();
    let bias = Tensor::randn(0f32, 1.0, co, &dev).unwrap();
    let cfg = Conv2dConfig {
        padding: pad,
        stride,
        ..Default::default()
    };
    (w, bias, cfg)
}

fn check(b: usize, c: usize, co: usize, hw: (usize, usize), k: usize, stride: usize, pad: usize) {
    let dev = Device::Cpu;
    let (w, bias, cfg) = random_conv(c, co, k, stride, pad);
    let conv = Conv2d::new(w, Some(bias), cfg);
    let xs = Tensor::randn(0f32, 1.0, (b, c, hw.0, hw.1), &dev).unwrap();
    let want = conv.forward(&xs).unwrap();
    let res = Tensor::randn(0f32, 1.0, want.dims(), &dev).unwrap();
    let got = conv2d(&conv, &xs, None, 1.0).unwrap();
    assert_eq!(got.dims(), want.dims());
    // Relative to the largest output: F(4x4, 3x3) rounds to about 1e-5 of it.
    let tol = 4e-5 * max_abs(&want).max(1.0);
    let diff = max_diff(&got, &want);
    assert!(
        diff < tol,
        "{b} {c} {co} {hw:?} k{k} s{stride} p{pad}: {diff} >= {tol}"
    );
    let want = ((want + &res).unwrap() / 2.0).unwrap();
    let got = conv2d(&conv, &xs, Some(&res), 2.0).unwrap();
    assert!(max_diff(&got, &want) < tol);
}

#[test]
fn matches_candle_conv() {
    check(2, 5, 7, (6, 9), 3, 1, 1);
    check(1, 5, 7, (6, 9), 3, 1, 1);
    check(2, 3, 4, (40, 36), 3, 1, 1); // per image
    check(2, 6, 8, (9, 8), 3, 2, 1); // stride 2
    check(1, 6, 8, (9, 8), 3, 2, 0);
    check(2, 6, 8, (9, 8), 1, 1, 0); // 1x1
    check(2, 6, 8, (40, 33), 1, 1, 0); // 1x1 on the input as is
}

#[test]
fn images_do_not_depend_on_their_batch() {
    // One GEMM per image (64 output channels), and one for all images (more, on small maps:
    // im2col at 4x4, F(2x2, 3x3) at 8x8, also by blocks of output channels, and F(4x4, 3x3)
    // by blocks at 16x16), with f32 and 16-bit filters.
    let dev = Device::Cpu;
    for (co, c, hw) in [
        (64, 320, 8),
        (96, 320, 8),
        (1280, 640, 4),
        (256, 1280, 8),
        (640, 640, 16),
    ] {
        let (w, _, cfg) = random_conv(c, co, 3, 1, 1);
        for dtype in [candle_core::DType::F32, candle_core::DType::BF16] {
            let conv = Conv2d::new(w.to_dtype(dtype).unwrap(), None, cfg);
            let xs = Tensor::randn(0f32, 1.0, (3, c, hw, hw), &dev).unwrap();
            let all = conv2d(&conv, &xs, None, 1.0).unwrap();
            let one = conv2d(&conv, &xs.narrow(0, 1, 1).unwrap(), None, 1.0).unwrap();
            let diff = max_diff(&all.narrow(0, 1, 1).unwrap(), &one);
            assert_eq!(diff, 0.0, "{c}->{co} at {hw}x{hw}, {dtype:?} filters");
        }
    }
}

#[test]
fn sixteen_bit_filters_equal_their_widened_copy() {
    // im2col (small map, stride 2, 1x1) and Winograd (a 16x16 map of 96 channels).
    let dev = Device::Cpu;
    for (c, co, hw, k, stride, pad) in [
        (5, 7, 6, 3, 1, 1),
        (6, 8, 9, 3, 2, 1),
        (6, 8, 9, 1, 1, 0),
        (32, 96, 16, 3, 1, 1),
    ] {
        let (w, bias, cfg) = random_conv(c, co, k, stride, pad);
        let xs = Tensor::randn(0f32, 1.0, (2, c, hw, hw), &dev).unwrap();
        for dtype in [candle_core::DType::F16, candle_core::DType::BF16] {
            let narrow = w.to_dtype(dtype).unwrap();
            let wide = narrow.to_dtype(candle_core::DType::F32).unwrap();
            let kept = Conv2d::new(narrow, Some(bias.clone()), cfg);
            let widened = Conv2d::new(wide, Some(bias.clone()), cfg);
            let want = conv2d(&widened, &xs, None, 1.0).unwrap();
            let res = Tensor::randn(0f32, 1.0, want.dims(), &dev).unwrap();
            let got = conv2d(&kept, &xs, None, 1.0).unwrap();
            assert!(max_diff(&got, &want) < 1e-5, "{c}->{co} k{k} {dtype:?}");
            let want = conv2d(&widened, &xs, Some(&res), 2.0).unwrap();
            let got = conv2d(&kept, &xs, Some(&res), 2.0).unwrap();
            assert!(max_diff(&got, &want) < 1e-5, "{c}->{co} k{k} {dtype:?}");
            // Activations that are not f32 take candle's path with the weight widened.
            let xs16 = xs.to_dtype(candle_core::DType::F64).unwrap();
            let got = conv2d(&kept, &xs16, None, 1.0).unwrap();
            assert_eq!(got.dtype(), candle_core::DType::F64);
        }
    }
}

#[test]
fn bands_cover_large_maps() {
    // More than COLS_BUDGET values of im2col: the map is cut into bands of rows.
    check(1, 64, 4, (300, 100), 3, 1, 1);
}

/// A group norm over `c` channels in `groups` groups with perturbed weights.
fn group_norm(c: usize, groups: usize) -> GroupNorm {
    let dev = Device::Cpu;
    let weight = (Tensor::randn(0f32, 0.3, c, &dev).unwrap() + 1.0).unwrap();
    let bias = Tensor::randn(0f32, 0.5, c, &dev).unwrap();
    let tensors = [("weight", &weight), ("bias", &bias)]
        .map(|(k, v)| (k.to_string(), v.clone()))
        .into();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &dev);
    GroupNorm::new(vb, groups, c, 1e-6).unwrap()
}

#[test]
fn a_normed_input_is_the_norm_applied_first() {
    // Winograd F(2x2) on the local and the layer-wide path, F(4x4), the fallback (8x8 maps,
    // a 1x1 convolution), the direct path (3 output channels), with and without a time shift
    // and a residual: bit for bit.
    let dev = Device::Cpu;
    for (b, c, co, hw, k) in [
        (2, 32, 96, 16, 3),
        (1, 512, 512, 16, 3),
        (2, 8, 16, 64, 3),
        (2, 32, 40, 8, 3),
        (2, 32, 40, 12, 1),
        (2, 32, 3, 20, 3),
    ] {
        let (w, bias, cfg) = random_conv(c, co, k, 1, k / 2);
        let conv = Conv2d::new(w, Some(bias), cfg);
        let norm = group_norm(c, 8);
        let xs = (Tensor::randn(0f32, 2.0, (b, c, hw, hw), &dev).unwrap() + 0.3).unwrap();
        let shift = Tensor::randn(0f32, 1.0, (b, c), &dev).unwrap();
        let res = Tensor::randn(0f32, 1.0, (b, co, hw, hw), &dev).unwrap();
        for (shift, res, scale) in [(None, None, 1.0), (Some(&shift), Some(&res), 2.0)] {
            let normed = norm.forward(&xs, shift, true).unwrap();
            let want = conv2d(&conv, &normed, res, scale).unwrap();
            let got = conv2d_normed(&conv, &norm, &xs, shift, res, scale).unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff = max_diff(&got, &want);
            assert_eq!(diff, 0.0, "{b}x{c}->{co} {hw}x{hw} k{k}");
        }
    }
}

/// Times the UNet's 3x3 convolutions on small maps by im2col, F(2x2, 3x3) and F(4x4, 3x3),
/// for one and two images, and names the one [`winograd::tiling`] picks (run by hand with
/// `--ignored --nocapture`, never in CI; `SHAPES=c,co,hw;...` for other layers).
#[test]
#[ignore]
fn small_map_speed() {
    use winograd::Tiling;
    crate::kernels::malloc::tune();
    let dev = Device::Cpu;
    let mut shapes = vec![
        (1280, 1280, 4),
        (1280, 1280, 8),
        (2560, 1280, 8),
        (640, 640, 16),
        (1280, 640, 16),
        (1280, 1280, 16),
        (1920, 1280, 16),
        (1920, 640, 32),
        (1280, 1280, 32),
    ];
    if let Ok(list) = std::env::var("SHAPES") {
        let parse = |t: &str| -> (usize, usize, usize) {
            let v: Vec<usize> = t.split(',').filter_map(|v| v.trim().parse().ok()).collect();
            match v[..] {
                [c, co, hw] => (c, co, hw),
                _ => panic!("SHAPES entry `{t}`: want three numbers `c,co,hw` (`;` between)"),
            }
        };
        shapes = list
            .split(';')
            .filter(|t| !t.trim().is_empty())
            .map(parse)
            .collect();
    }
    let picks: [(&str, Pick); 3] = [
        ("im2col", |_, _| None),
        ("F2", |_, _| Some(Tiling::F2)),
        ("F4", |_, _| Some(Tiling::F4)),
    ];
    for (c, co, hw) in shapes {
        let (w, bias, cfg) = random_conv(c, co, 3, 1, 1);
        let conv = Conv2d::new(w, Some(bias), cfg);
        let picked = winograd_tiling(
            &conv,
            &winograd::Shape {
                c,
                h: hw,
                w: hw,
                co,
            },
        );
        for images in [1, 2] {
            let x = Tensor::randn(0f32, 1.0, (images, c, hw, hw), &dev).unwrap();
            let mut best = [f64::MAX; 3];
            for _ in 0..6 {
                for (best, (_, pick)) in best.iter_mut().zip(&picks) {
                    let start = std::time::Instant::now();
                    conv2d_with(&conv, &x, None, 1.0, false, *pick).unwrap();
                    *best = best.min(start.elapsed().as_secs_f64());
                }
            }
            let times: Vec<String> = picks
                .iter()
                .zip(best)
                .map(|((name, _), t)| format!("{name} {:.2} ms", t * 1e3))
                .collect();
            println!(
                "{c} -> {co} at {hw}x{hw}, {images} image(s): {} (picked: {picked:?})",
                times.join(", ")
            );
        }
    }
}
