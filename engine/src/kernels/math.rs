//! Vectorisable scalar math (exp, erf, SiLU, GELU) and the SIMD dispatch the kernels run in.
//!
//! The functions are branch-free polynomials on plain `f32` so that loops over slices
//! auto-vectorise; [`simd`] compiles such a loop for the best instruction set the CPU has
//! (AVX-512, else AVX2+FMA, else the baseline) and picks it at run time.

/// Runs `f` compiled for the best SIMD level the CPU supports, chosen at run time.
///
/// Only code inlined into the dispatching function gets the wider instructions: anything
/// left out of line (a closure body, or `Iterator::for_each`/`fold` with a large closure) is
/// compiled for the baseline (SSE2) and runs at a quarter of the speed or less. So callers pass
/// an `#[inline(always)]` closure, loop with `for` rather than iterator adapters, and call only
/// `#[inline(always)]` helpers.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// The sum of `x`, in SIMD lanes (auto-vectorisation leaves float sums serial, a 4-cycle
/// dependency per element, because it may not reorder them).
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    struct Sum<'a>(&'a [f32]);
    impl pulp::WithSimd for Sum<'_> {
        type Output = f32;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, simd: S) -> f32 {
            let (head, tail) = S::as_simd_f32s(self.0);
            let (pairs, odd) = head.split_at(head.len() / 2 * 2);
            let (mut a, mut b) = (simd.splat_f32s(0.0), simd.splat_f32s(0.0));
            for pair in pairs.chunks_exact(2) {
                a = simd.add_f32s(a, pair[0]);
                b = simd.add_f32s(b, pair[1]);
            }
            if let Some(&last) = odd.first() {
                a = simd.add_f32s(a, last);
            }
            simd.reduce_sum_f32s(simd.add_f32s(a, b)) + tail.iter().sum::<f32>()
        }
    }
    pulp::Arch::new().dispatch(Sum(x))
}

/// The largest element of `x` (−∞ when empty), in SIMD lanes.
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    struct Max<'a>(&'a [f32]);
    impl pulp::WithSimd for Max<'_> {
        type Output = f32;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, simd: S) -> f32 {
            let (head, tail) = S::as_simd_f32s(self.0);
            let mut m = simd.splat_f32s(f32::NEG_INFINITY);
            for &v in head {
                m = simd.max_f32s(m, v);
            }
            let tail = tail.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            simd.reduce_max_f32s(m).max(tail)
        }
    }
    pulp::Arch::new().dispatch(Max(x))
}

/// `e^x` for f32 (Cephes `expf`: range reduction to `[-ln2/2, ln2/2]` and a degree-6
/// polynomial), relative error about 2 ulp; saturates instead of overflowing.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * LOG2E + MAGIC;
    let n_int = shifted.to_bits() as i32 - MAGIC.to_bits() as i32;
    let n = shifted - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n_int + 127) as u32) << 23)
}

/// `2^t` for `t <= 0` (the softmax's exponentials, in base 2 after folding `log2(e)` into the
/// scale): rounding to `n + f` with `f` in `[-1/2, 1/2]`, a degree-5 near-minimax polynomial
/// for `2^f` (relative error 2.4e-7) and `n` added to its exponent; NaN stays NaN; about 12
/// vector instructions against [`exp`]'s 20. Below `2^-126` it returns some value under
/// `2^-125` (not 0).
#[inline(always)]
pub(crate) fn pow2_nonpositive(t: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    const C: [f32; 6] = [
        1.000_000_1,
        0.693_146_94,
        0.240_221_2,
        0.055_507_135,
        0.009_675_541,
        0.001_327_645_7,
    ];
    // Not `f32::max`, which would turn NaN into -126: this select keeps it (one `maxps`).
    let t = if t < -126.0 { -126.0 } else { t };
    let shifted = t + MAGIC;
    let f = t - (shifted - MAGIC);
    let mut p = C[5];
    for &c in C[..5].iter().rev() {
        p = p.mul_add(f, c);
    }
    // The low bits of `shifted` hold n (two's complement): shifted into the exponent field.
    f32::from_bits(p.to_bits().wrapping_add(shifted.to_bits() << 23))
}

/// The error function (Numerical Recipes' Chebyshev fit of erfc, fractional error < 1.2e-7).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut p = 0.170_872_77;
    p = p * t - 0.822_152_23;
    p = p * t + 1.488_515_9;
    p = p * t - 1.135_204;
    p = p * t + 0.278_868_07;
    p = p * t - 0.186_288_06;
    p = p * t + 0.096_784_18;
    p = p * t + 0.374_091_96;
    p = p * t + 1.000_023_7;
    p = p * t - 1.265_512_2;
    let erfc = t * exp(p - z * z);
    (1.0 - erfc).copysign(x)
}

/// Exact (erf) GELU, as PyTorch's default `F.gelu`.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// SiLU, `x * sigmoid(x)`.
#[inline(always)]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Taylor series in f64 (accurate to ~1e-10 for |x| <= 3.5).
    fn erf_ref(x: f64) -> f64 {
        let mut sum = 0.0f64;
        let mut term = x;
        let mut n = 0.0f64;
        while term.abs() > 1e-17 * sum.abs().max(1e-300) && n < 200.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    /// Asserts that `f` is within `tolerance` of `reference` (relative) at every `step` from
    /// the start of `range` while in it.
    fn assert_relative(
        name: &str,
        f: impl Fn(f32) -> f32,
        reference: impl Fn(f64) -> f64,
        range: impl std::ops::RangeBounds<f32>,
        step: f32,
        tolerance: f64,
    ) {
        let std::ops::Bound::Included(&start) = range.start_bound() else {
            panic!("{name}: the range needs a start")
        };
        let mut x = start;
        while range.contains(&x) {
            let want = reference(x as f64);
            let got = f(x) as f64;
            assert!(
                ((got - want) / want).abs() < tolerance,
                "{name}({x}) = {got}, want {want}"
            );
            x += step;
        }
    }

    #[test]
    fn exp_is_accurate() {
        assert_relative("exp", exp, f64::exp, -80.0..80.0, 0.0137, 4e-7);
        assert!((0.0..1e-37).contains(&exp(-1000.0)));
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn erf_gelu_silu_are_accurate() {
        let mut x = -3.5f32;
        while x < 3.5 {
            let want = erf_ref(x as f64);
            assert!((erf(x) as f64 - want).abs() < 3e-7, "erf({x})");
            let g = 0.5 * x as f64 * (1.0 + erf_ref(x as f64 / 2f64.sqrt()));
            assert!((gelu(x) as f64 - g).abs() < 1e-6, "gelu({x})");
            let s = x as f64 / (1.0 + (-x as f64).exp());
            assert!((silu(x) as f64 - s).abs() < 1e-6, "silu({x})");
            x += 0.0031;
        }
        assert!(silu(-200.0).abs() < 1e-30 && (silu(200.0) - 200.0).abs() < 1e-4);
        assert!((erf(8.0) - 1.0).abs() < 1e-7 && (erf(-8.0) + 1.0).abs() < 1e-7);
    }

    #[test]
    fn pow2_is_accurate_below_zero() {
        let pow2 = pow2_nonpositive;
        assert_relative("2^", pow2, f64::exp2, -125.9..=0.0, 0.00731, 4e-7);
        assert!((pow2_nonpositive(0.0) - 1.0).abs() < 2e-7);
        assert!(pow2_nonpositive(f32::NAN).is_nan());
        assert!((0.0..3e-38).contains(&pow2_nonpositive(-1000.0)));
        assert!((0.0..3e-38).contains(&pow2_nonpositive(f32::NEG_INFINITY)));
    }

    #[test]
    fn sum_adds_every_element() {
        for n in [0, 1, 15, 16, 17, 33, 1000, 1027] {
            let v: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 2.5).collect();
            let want: f64 = v.iter().map(|&x| x as f64).sum();
            assert!((sum(&v) as f64 - want).abs() < 1e-3, "n = {n}");
        }
    }

    #[test]
    fn max_finds_the_largest() {
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        for n in [1, 15, 16, 17, 40, 1027] {
            let mut v: Vec<f32> = (0..n).map(|i| -((i * 37 % 101) as f32)).collect();
            v[n / 2] = 3.5;
            assert_eq!(max(&v), 3.5, "n = {n}");
        }
    }

    #[test]
    fn simd_dispatch_runs_the_closure() {
        let v: Vec<f32> = (0..100).map(|i| i as f32 * 0.1).collect();
        let out: Vec<f32> = simd(
            #[inline(always)]
            || v.iter().map(|&x| exp(x)).collect(),
        );
        assert_eq!(out.len(), 100);
        assert!((out[10] - 1f32.exp()).abs() < 1e-6);
    }
}
