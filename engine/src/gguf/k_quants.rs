//! Ports of ggml's reference K-quant encoders (`quantize_row_q4_K_ref`, `quantize_row_q5_K_ref`,
//! `quantize_row_q6_K_ref` and their helpers `make_qkx2_quants`, `make_qx_quants`,
//! `nearest_int` in `ggml-quants.c`), one 256-value super-block at a time, without an
//! importance matrix. Every f32 operation is written in ggml's order (Rust never fuses or
//! reorders float arithmetic), so the bytes equal those of ggml's C code compiled without
//! floating-point contraction.

use half::f16;

/// Values per super-block.
const QK_K: usize = 256;

/// ggml's `GROUP_MAX_EPS`.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest, ties to even, by ggml's float trick (valid for |x| < 2^22).
fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// An f32 rounded through f16, as ggml stores and re-reads block scales.
fn through_f16(v: f32) -> (u16, f32) {
    let h = f16::from_f32(v);
    (h.to_bits(), h.to_f32())
}

/// Settings of one `make_qkx2_quants` search.
struct Search {
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
}

/// ggml's `make_qkx2_quants` (squared error, not MAD): quantizes `x` to `0..=nmax` with a
/// scale and a minimum, searching `nstep + 1` candidate scales. Fills `l`; returns
/// `(scale, -min)`.
fn make_qkx2_quants(s: &Search, x: &[f32], weights: &[f32], l: &mut [u8]) -> (f32, f32) {
    let n = x.len();
    let mut laux = [0u8; 32];
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let nmax = s.nmax as f32;
    let mut iscale = nmax / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, s.nmax);
        l[i] = q as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    if s.nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=s.nstep {
        iscale = (s.rmin + s.rdelta * is as f32 + nmax) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, s.nmax);
            laux[i] = q as u8;
            let (w, q) = (weights[i], q as f32);
            sum_l += w * q;
            sum_l2 += w * q * q;
            sum_xl += w * q * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `make_qx_quants` with `rmse_type == 1` and no weights: signed values in
/// `-nmax..nmax`, stored in `l` offset by `nmax`. Returns the scale.
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let q = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let (w, lf) = (v * v, q(iscale, v) as f32);
            sumlx += w * v * lf;
            suml2 += w * lf * lf;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    for (l, &v) in l.iter_mut().zip(x) {
        *l = (q(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (l, &v) in l.iter_mut().zip(x) {
                *l = (q(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// The 6-bit scale and min `j` of a Q4_K/Q5_K scales array (`get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The shared first half of Q4_K and Q5_K: per 32-value group scales and mins searched,
/// packed as 6 bits into `scales` (12 bytes), the super-block scales returned as f16 bits, and
/// the final levels (`0..=nmax`) in `l`.
fn scaled_with_min(
    x: &[f32],
    search: &Search,
    scales: &mut [u8],
    l: &mut [u8; QK_K],
) -> (u16, u16) {
    let (mut sc, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    let mut weights = [0f32; 32];
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        (sc[j], mins[j]) = make_qkx2_quants(search, xs, &weights, &mut l[32 * j..32 * j + 32]);
        if sc[j] > max_scale {
            max_scale = sc[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    for j in 0..QK_K / 32 {
        let ls = (nearest_int(inv_scale * sc[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            scales[j] = ls;
            scales[j + 4] = lm;
        } else {
            scales[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            scales[j - 4] |= (ls >> 4) << 6;
            scales[j] |= (lm >> 4) << 6;
        }
    }
    let (d_bits, d) = through_f16(max_scale / 63.0);
    let (dmin_bits, dmin) = through_f16(max_min / 63.0);
    for j in 0..QK_K / 32 {
        let (s, m) = scale_min_k4(j, scales);
        let dj = d * s as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / dj);
            l[32 * j + ii] = q.clamp(0, search.nmax) as u8;
        }
    }
    (d_bits, dmin_bits)
}

/// One Q4_K super-block: d, dmin, scales[12], qs[128].
pub(crate) fn q4_k(x: &[f32], o: &mut [u8]) {
    let search = Search {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
    };
    let mut l = [0u8; QK_K];
    let (d, dmin) = scaled_with_min(x, &search, &mut o[4..16], &mut l);
    o[0..2].copy_from_slice(&d.to_le_bytes());
    o[2..4].copy_from_slice(&dmin.to_le_bytes());
    let qs = &mut o[16..144];
    for (chunk, j) in (0..QK_K).step_by(64).enumerate() {
        for i in 0..32 {
            qs[chunk * 32 + i] = l[j + i] | (l[j + i + 32] << 4);
        }
    }
}

/// One Q5_K super-block: d, dmin, scales[12], qh[32], qs[128].
pub(crate) fn q5_k(x: &[f32], o: &mut [u8]) {
    let search = Search {
        nmax: 31,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
    };
    let mut l = [0u8; QK_K];
    let (d, dmin) = scaled_with_min(x, &search, &mut o[4..16], &mut l);
    o[0..2].copy_from_slice(&d.to_le_bytes());
    o[2..4].copy_from_slice(&dmin.to_le_bytes());
    let (qh, qs) = o[16..176].split_at_mut(32);
    qh.fill(0);
    let (mut m1, mut m2) = (1u8, 2u8);
    for (chunk, n) in (0..QK_K).step_by(64).enumerate() {
        for j in 0..32 {
            let (mut l1, mut l2) = (l[n + j], l[n + j + 32]);
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            qs[chunk * 32 + j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

/// One Q6_K super-block: ql[128], qh[64], scales[16], d.
pub(crate) fn q6_k(x: &[f32], o: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for ib in 0..QK_K / 16 {
        let scale = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
        scales[ib] = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        o.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    let (d_bits, d) = through_f16(1.0 / iscale);
    o[208..210].copy_from_slice(&d_bits.to_le_bytes());
    for ib in 0..QK_K / 16 {
        o[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    for j in 0..QK_K / 16 {
        let dj = d * o[192 + j] as i8 as f32;
        if dj == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / dj).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as i8;
        }
    }
    let (ql, qh) = o[0..192].split_at_mut(128);
    for (chunk, j) in (0..QK_K).step_by(128).enumerate() {
        let (ql, qh) = (&mut ql[chunk * 64..], &mut qh[chunk * 32..]);
        for i in 0..32 {
            let q = |k: usize| l[j + i + 32 * k] as u8;
            ql[i] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
            ql[i + 32] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
            qh[i] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-2.6), -3);
        assert_eq!(nearest_int(31.2), 31);
    }
}
