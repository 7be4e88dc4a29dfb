//! The two tilings of Winograd's minimal filtering for 3x3 filters (Lavin & Gray, 2015) and
//! their transforms, vectorised along rows of tiles:
//!
//! - F(2x2, 3x3): 4x4 input patches, 16 positions, 2.25x fewer multiplications than a direct
//!   convolution. Its matrices hold only 0, ±1 and ±½, so it rounds like a few extra additions.
//! - F(4x4, 3x3): 6x6 input patches, 36 positions, 4x fewer multiplications, and 2.25 values
//!   of transformed input per output pixel instead of 4. Its matrices hold 4, 5, 8, ⅙ and
//!   1/24, so it loses about a decimal digit (`tests::error_is_that_of_a_direct_convolution`
//!   bounds it), and its transformed filters are 4x the filters (F(2x2, 3x3)'s 1.8x).
//!
//! Each transform is one 1-D transform applied along the rows of a tile, then along its
//! columns. The 1-D transforms here run on whole rows of tiles at a time (a loop over the
//! tiles of a row, written so that it vectorises: each output row its own slice).

use std::mem::MaybeUninit;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::__m512;

/// A Winograd tiling for 3x3 filters: F(m x m, 3x3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::kernels) enum Tiling {
    /// F(2x2, 3x3).
    F2,
    /// F(4x4, 3x3).
    F4,
}

/// `G` of F(2x2, 3x3): the filter transform, one row per patch position along an axis.
const G2: [[f32; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// `G` of F(4x4, 3x3) (interpolation points 0, ±1, ±2 and ∞).
const G4: [[f32; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

impl Tiling {
    /// The side of an output tile, `m`.
    pub fn m(self) -> usize {
        match self {
            Tiling::F2 => 2,
            Tiling::F4 => 4,
        }
    }

    /// The side of an input patch, `m + 2`.
    pub fn n(self) -> usize {
        self.m() + 2
    }

    /// The positions of a patch, `n²`: the number of GEMMs.
    pub fn positions(self) -> usize {
        self.n() * self.n()
    }

    /// `G`: the filter transform's matrix, one row per patch position along an axis.
    pub(super) fn g(self) -> &'static [[f32; 3]] {
        match self {
            Tiling::F2 => &G2,
            Tiling::F4 => &G4,
        }
    }
}

/// `Bᵀ` along the row index of a tile row: the `n` input rows `p` (each `w` long, zeros
/// outside the image) into columns `1..=w` of the `n` padded rows of `out` (`pw` long each).
#[inline(always)]
pub(super) fn input_rows(t: Tiling, p: &[&[f32]], out: &mut [f32], pw: usize) {
    let w = p[0].len();
    let mut rows = out.chunks_exact_mut(pw).map(|r| &mut r[1..=w]);
    let mut next = || rows.next().expect("n padded rows");
    match (t, p) {
        (Tiling::F2, &[p0, p1, p2, p3]) => {
            let (t0, t1, t2, t3) = (next(), next(), next(), next());
            let (p0, p1, p2, p3) = (&p0[..w], &p1[..w], &p2[..w], &p3[..w]);
            for j in 0..w {
                t0[j] = p0[j] - p2[j];
                t1[j] = p1[j] + p2[j];
                t2[j] = p2[j] - p1[j];
                t3[j] = p1[j] - p3[j];
            }
        }
        (Tiling::F4, &[p0, p1, p2, p3, p4, p5]) => {
            let (t0, t1, t2) = (next(), next(), next());
            let (t3, t4, t5) = (next(), next(), next());
            let (p0, p1, p2) = (&p0[..w], &p1[..w], &p2[..w]);
            let (p3, p4, p5) = (&p3[..w], &p4[..w], &p5[..w]);
            for j in 0..w {
                let d = bt4([p0[j], p1[j], p2[j], p3[j], p4[j], p5[j]]);
                (t0[j], t1[j], t2[j]) = (d[0], d[1], d[2]);
                (t3[j], t4[j], t5[j]) = (d[3], d[4], d[5]);
            }
        }
        _ => unreachable!("{} input rows for {t:?}", p.len()),
    }
}

/// `Bᵀ` of F(4x4, 3x3) on one axis of a 6-value patch: on single values, or on 16 tiles at a
/// time ([`Lanes`]) with the same operations in the same order.
#[inline(always)]
fn bt4<T: Lane>([d0, d1, d2, d3, d4, d5]: [T; 6]) -> [T; 6] {
    let (a, b) = (d4 - d2, (d3 - d1).times(2.0));
    [
        d0.times(4.0) - d2.times(5.0) + d4,
        (d3 + d4) - (d1 + d2).times(4.0),
        (d4 - d3) + (d1 - d2).times(4.0),
        a + b,
        a - b,
        d1.times(4.0) - d3.times(5.0) + d5,
    ]
}

/// What the 1-D transforms compute on: `+`, `-` and a product by a constant, for `f32` and for
/// [`Lanes`] (so that one definition of each transform serves both).
trait Lane: Copy + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self> {
    /// `k · self`.
    fn times(self, k: f32) -> Self;
}

impl Lane for f32 {
    #[inline(always)]
    fn times(self, k: f32) -> f32 {
        k * self
    }
}

/// 16 tiles' values in one AVX-512 vector. Its operations are methods, not closures, so that
/// they inline into the AVX-512 code that calls them (a closure is compiled outside it, and
/// each intrinsic becomes a call: measured about 10x slower).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Lanes(pulp::x86::V4, __m512);

#[cfg(target_arch = "x86_64")]
impl Lanes {
    /// The 16 values at the start of `c`.
    #[inline(always)]
    fn load(v4: pulp::x86::V4, c: &[f32]) -> Self {
        let c: &[f32; 16] = c[..16].try_into().expect("16 values");
        Lanes(v4, pulp::bytemuck::cast(*c))
    }
}

#[cfg(target_arch = "x86_64")]
impl std::ops::Add for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn add(self, b: Lanes) -> Lanes {
        Lanes(self.0, self.0.avx512f._mm512_add_ps(self.1, b.1))
    }
}

#[cfg(target_arch = "x86_64")]
impl std::ops::Sub for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn sub(self, b: Lanes) -> Lanes {
        Lanes(self.0, self.0.avx512f._mm512_sub_ps(self.1, b.1))
    }
}

#[cfg(target_arch = "x86_64")]
impl Lane for Lanes {
    #[inline(always)]
    fn times(self, k: f32) -> Lanes {
        let avx = self.0.avx512f;
        Lanes(self.0, avx._mm512_mul_ps(avx._mm512_set1_ps(k), self.1))
    }
}

/// `B` along the column index of one padded row of [`input_rows`] (`m·tw + 2` long; column 0
/// is the zero left of the image): tile `tx` reads columns `m·tx .. m·tx + n`, and its `n`
/// values go to `dst[k·stride + tx]`. The row is first split into its `m` phases (columns
/// `m·tx + q`, into `phases`, `m·(tw + 1)` long) so that the transform reads contiguous runs;
/// with AVX-512, F(4x4, 3x3)'s whole groups of 16 tiles are split and transformed in
/// registers instead ([`super::phases::group_cols4_v4`]).
#[inline(always)]
pub(super) fn input_cols(
    t: Tiling,
    row: &[f32],
    phases: &mut [f32],
    dst: &mut [MaybeUninit<f32>],
    stride: usize,
    tw: usize,
) {
    let n = t.n();
    let dst = &mut dst[..(n - 1) * stride + tw];
    let mut rows = dst.chunks_mut(stride).map(|r| &mut r[..tw]);
    let mut next = || rows.next().expect("n rows of tiles");
    let mut q = phases.chunks_exact_mut(tw + 1);
    let mut phase = || q.next().expect("m phases");
    match t {
        Tiling::F2 => {
            let (q0, q1) = (phase(), phase());
            for ((a, b), pair) in q0.iter_mut().zip(q1.iter_mut()).zip(row.chunks_exact(2)) {
                (*a, *b) = (pair[0], pair[1]);
            }
            let (d0, d1, d2, d3) = (next(), next(), next(), next());
            let (a, c) = (&q0[..tw], &q0[1..][..tw]);
            let (b, d) = (&q1[..tw], &q1[1..][..tw]);
            for tx in 0..tw {
                d0[tx].write(a[tx] - c[tx]);
                d1[tx].write(b[tx] + c[tx]);
                d2[tx].write(c[tx] - b[tx]);
                d3[tx].write(b[tx] - d[tx]);
            }
        }
        Tiling::F4 => {
            let row = &row[..4 * tw + 2];
            let mut dst = [next(), next(), next(), next(), next(), next()];
            #[allow(unused_mut)]
            let mut done = 0;
            #[cfg(target_arch = "x86_64")]
            if let Some(v4) = pulp::x86::V4::try_new() {
                // Whole groups of 16 tiles, their columns split in registers.
                for g in 0..tw / 16 {
                    let [a, b, c, d, e, f] = super::phases::group_cols4_v4(v4, row, g);
                    let lanes = |c| Lanes(v4, c);
                    let cols = [lanes(a), lanes(b), lanes(c), lanes(d), lanes(e), lanes(f)];
                    for (dst, v) in dst.iter_mut().zip(bt4(cols)) {
                        let v: [f32; 16] = pulp::bytemuck::cast(v.1);
                        for (d, v) in dst[16 * g..][..16].iter_mut().zip(v) {
                            d.write(v);
                        }
                    }
                }
                done = tw / 16 * 16;
            }
            // The tiles left: through their phases in `phases`.
            let (rest, row) = (tw - done, &row[4 * done..]);
            let (q0, q1, q2, q3) = (phase(), phase(), phase(), phase());
            super::phases::split4(row, [&mut *q0, &mut *q1, &mut *q2, &mut *q3], rest);
            (q0[rest], q1[rest]) = (row[4 * rest], row[4 * rest + 1]);
            let (a, b, c, d) = (&q0[..rest], &q1[..rest], &q2[..rest], &q3[..rest]);
            let (e, f) = (&q0[1..][..rest], &q1[1..][..rest]);
            let [d0, d1, d2, d3, d4, d5] = dst.map(|d| &mut d[done..][..rest]);
            for tx in 0..rest {
                let v = bt4([a[tx], b[tx], c[tx], d[tx], e[tx], f[tx]]);
                d0[tx].write(v[0]);
                d1[tx].write(v[1]);
                d2[tx].write(v[2]);
                d3[tx].write(v[3]);
                d4[tx].write(v[4]);
                d5[tx].write(v[5]);
            }
        }
    }
}

/// `Aᵀ` along the row index of a row of `tw` tiles' products: position `ξ` of tile `tx` is
/// `prod[ξ·stride + tx]`. Row `i` of the `m` results, column `j`, goes to
/// `out[(n·i + j)·tw ..]` (`m·n·tw` values).
#[inline(always)]
pub(super) fn output_rows(t: Tiling, prod: &[f32], stride: usize, tw: usize, out: &mut [f32]) {
    let n = t.n();
    let at = |xi: usize| &prod[xi * stride..][..tw];
    for j in 0..n {
        let col = |k: usize| at(n * k + j);
        let mut rows = out.chunks_exact_mut(n * tw).map(|r| &mut r[j * tw..][..tw]);
        let mut next = || rows.next().expect("m output rows");
        match t {
            Tiling::F2 => {
                let (s0, s1) = (next(), next());
                let (m0, m1, m2, m3) = (col(0), col(1), col(2), col(3));
                for tx in 0..tw {
                    s0[tx] = m0[tx] + m1[tx] + m2[tx];
                    s1[tx] = m1[tx] - m2[tx] - m3[tx];
                }
            }
            Tiling::F4 => {
                let (s0, s1, s2, s3) = (next(), next(), next(), next());
                let (m0, m1, m2) = (col(0), col(1), col(2));
                let (m3, m4, m5) = (col(3), col(4), col(5));
                for tx in 0..tw {
                    let y = at4([m0[tx], m1[tx], m2[tx], m3[tx], m4[tx], m5[tx]]);
                    (s0[tx], s1[tx], s2[tx], s3[tx]) = (y[0], y[1], y[2], y[3]);
                }
            }
        }
    }
}

/// `Aᵀ` of F(4x4, 3x3) on one axis of a 6-value tile of products (on single values or on
/// [`Lanes`], as [`bt4`]).
#[inline(always)]
fn at4<T: Lane>([m0, m1, m2, m3, m4, m5]: [T; 6]) -> [T; 4] {
    let (a, b) = (m1 + m2, m1 - m2);
    let (c, d) = (m3 + m4, m3 - m4);
    [
        m0 + a + c,
        b + d.times(2.0),
        a + c.times(4.0),
        b + d.times(8.0) + m5,
    ]
}

/// `A` along the column index of one row of [`output_rows`]' results (`s`: column `j` of
/// every tile at `s[j·tw ..]`): each tile's `m` output columns plus `bias` go to
/// `row[m·tx ..]`, the last tile cropped to the row's length.
#[inline(always)]
pub(super) fn output_cols(t: Tiling, s: &[f32], tw: usize, bias: f32, row: &mut [f32]) {
    let c = |j: usize| &s[j * tw..][..tw];
    let full = row.len() / t.m();
    match t {
        Tiling::F2 => {
            let (c0, c1, c2, c3) = (c(0), c(1), c(2), c(3));
            let mut tiles = row.chunks_exact_mut(2);
            for (tx, y) in (&mut tiles).enumerate() {
                y[0] = c0[tx] + c1[tx] + c2[tx] + bias;
                y[1] = c1[tx] - c2[tx] - c3[tx] + bias;
            }
            if let [y0] = tiles.into_remainder() {
                *y0 = c0[full] + c1[full] + c2[full] + bias;
            }
        }
        Tiling::F4 => {
            let (c0, c1, c2) = (&c(0)[..full], &c(1)[..full], &c(2)[..full]);
            let (c3, c4, c5) = (&c(3)[..full], &c(4)[..full], &c(5)[..full]);
            let tile = |tx: usize| {
                let v = at4([c0[tx], c1[tx], c2[tx], c3[tx], c4[tx], c5[tx]]);
                [v[0] + bias, v[1] + bias, v[2] + bias, v[3] + bias]
            };
            // Whole groups of 16 tiles interleaved in registers, then tile by tile.
            #[allow(unused_mut)]
            let mut done = 0;
            #[cfg(target_arch = "x86_64")]
            if let Some(v4) = pulp::x86::V4::try_new() {
                let b = Lanes(v4, v4.avx512f._mm512_set1_ps(bias));
                for (g, out) in row.chunks_exact_mut(64).enumerate().take(full / 16) {
                    let at = 16 * g;
                    let m = [
                        Lanes::load(v4, &c0[at..]),
                        Lanes::load(v4, &c1[at..]),
                        Lanes::load(v4, &c2[at..]),
                        Lanes::load(v4, &c3[at..]),
                        Lanes::load(v4, &c4[at..]),
                        Lanes::load(v4, &c5[at..]),
                    ];
                    let [v0, v1, v2, v3] = at4(m);
                    let v = [(v0 + b).1, (v1 + b).1, (v2 + b).1, (v3 + b).1];
                    let out: &mut [f32; 64] = out.try_into().expect("64 values");
                    super::phases::merge4_v4(v4, v, out);
                    done = 16 * (g + 1);
                }
            }
            let mut tiles = row.chunks_exact_mut(4);
            for (tx, y) in (&mut tiles).enumerate().skip(done) {
                y.copy_from_slice(&tile(tx));
            }
            let last = tiles.into_remainder();
            if !last.is_empty() {
                let v = at4(std::array::from_fn(|j| s[j * tw + full]));
                for (y, v) in last.iter_mut().zip(v) {
                    *y = v + bias;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::math::simd;
    use crate::kernels::test_util::noise;

    /// F(4x4, 3x3)'s column transforms, whole groups of 16 tiles in registers and the tiles
    /// after them one by one, give the bits of [`bt4`] and [`at4`] applied tile by tile.
    #[test]
    fn column_transforms_give_the_scalar_bits() {
        for tw in [1, 5, 15, 16, 17, 31, 32, 33, 48, 70] {
            let row = noise(4 * tw + 2, tw as u64);
            let stride = tw + 3;
            let mut dst = vec![MaybeUninit::new(f32::NAN); 6 * stride];
            let mut phases = vec![0f32; 4 * (tw + 1)];
            simd(
                #[inline(always)]
                || input_cols(Tiling::F4, &row, &mut phases, &mut dst, stride, tw),
            );
            for tx in 0..tw {
                let patch: [f32; 6] = row[4 * tx..][..6].try_into().expect("6 values");
                for (k, want) in bt4(patch).into_iter().enumerate() {
                    // SAFETY: initialised when the vector was made.
                    #[allow(unsafe_code)]
                    let got = unsafe { dst[k * stride + tx].assume_init() };
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "tw {tw}, tile {tx}, value {k}"
                    );
                }
            }
            // The output row: whole tiles, and a last tile cropped to 1-3 columns.
            let s = noise(6 * tw, 100 + tw as u64);
            for w in [4 * tw, 4 * tw - 1, 4 * tw - 3] {
                let mut out = vec![f32::NAN; w];
                simd(
                    #[inline(always)]
                    || output_cols(Tiling::F4, &s, tw, 0.375, &mut out),
                );
                for (x, got) in out.iter().enumerate() {
                    let (tx, j) = (x / 4, x % 4);
                    let want = at4(std::array::from_fn(|k| s[k * tw + tx]))[j] + 0.375;
                    assert_eq!(got.to_bits(), want.to_bits(), "tw {tw}, w {w}, column {x}");
                }
            }
        }
    }
}
