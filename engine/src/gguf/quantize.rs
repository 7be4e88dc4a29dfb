//! Encoding f32 values as ggml blocks.
//!
//! F32, F16, BF16, Q8_0, Q5_0, Q5_1, Q4_0 and Q4_1 follow the `gguf` Python package's
//! `gguf.quants.quantize` operation for operation (f32 arithmetic in the same order, the same
//! rounding), so the bytes are identical to what it writes. The K-quants (Q4_K, Q5_K, Q6_K) are
//! ports of ggml's reference `quantize_row_q*_K_ref` (see [`super::k_quants`]), without an
//! importance matrix. Blocks are independent and encoded in parallel.

use half::f16;
use rayon::prelude::*;

use super::k_quants;
use super::types::GgmlType;

/// Blocks encoded per parallel task.
const BLOCKS_PER_TASK: usize = 64;

/// `values` encoded as `ty`, or `None` if beeswax cannot write `ty` or `values` is not a whole
/// number of blocks. Rows are not a concept here: the caller checks that each row is a whole
/// number of blocks.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Option<Vec<u8>> {
    use GgmlType::*;
    let encode: fn(&[f32], &mut [u8]) = match ty {
        F32 => |x, o| o.copy_from_slice(&x[0].to_le_bytes()),
        F16 => |x, o| o.copy_from_slice(&f16::from_f32(x[0]).to_bits().to_le_bytes()),
        BF16 => |x, o| o.copy_from_slice(&bf16_bits(x[0]).to_le_bytes()),
        Q4_0 => q4_0,
        Q4_1 => q4_1,
        Q5_0 => q5_0,
        Q5_1 => q5_1,
        Q8_0 => q8_0,
        Q4_K => k_quants::q4_k,
        Q5_K => k_quants::q5_k,
        Q6_K => k_quants::q6_k,
        _ => return None,
    };
    let (block, size) = (ty.block_size(), ty.type_size());
    if values.len() % block != 0 {
        return None;
    }
    let mut out = vec![0u8; values.len() / block * size];
    out.par_chunks_mut(size * BLOCKS_PER_TASK)
        .zip(values.par_chunks(block * BLOCKS_PER_TASK))
        .for_each(|(out, x)| {
            for (o, x) in out.chunks_exact_mut(size).zip(x.chunks_exact(block)) {
                encode(x, o);
            }
        });
    Some(out)
}

/// f32 to bf16 as ggml's `ggml_compute_fp32_to_bf16` (and the `gguf` package): NaN made
/// quiet, otherwise rounded to nearest even.
pub(crate) fn bf16_bits(v: f32) -> u16 {
    let mut n = v.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        n = (n & 0xffff_0000) | (64 << 16);
    }
    ((u64::from(n) + (0x7fff + u64::from((n >> 16) & 1))) >> 16) as u16
}

fn put_f16(o: &mut [u8], at: usize, v: f32) {
    o[at..at + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

/// The value of largest magnitude, the first one on ties (numpy's `argmax` of `abs`).
fn signed_absmax(x: &[f32]) -> f32 {
    let mut max = x[0];
    for &v in &x[1..] {
        if v.abs() > max.abs() {
            max = v;
        }
    }
    max
}

/// numpy's block `min` and `max`.
fn min_max(x: &[f32]) -> (f32, f32) {
    x[1..].iter().fold((x[0], x[0]), |(lo, hi), &v| {
        (if v < lo { v } else { lo }, if v > hi { v } else { hi })
    })
}

/// `1 / d`, or 0 when `d` is 0.
fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// Packs 32 values below 16 as ggml does: low nibbles are elements 0..16, high 16..32.
fn pack_nibbles(q: &[u8; 32], out: &mut [u8]) {
    for j in 0..16 {
        out[j] = (q[j] & 0x0F) | (q[j + 16] << 4);
    }
}

/// The 5th bits of 32 values, as a little-endian u32.
fn fifth_bits(q: &[u8; 32]) -> [u8; 4] {
    let bits = q
        .iter()
        .enumerate()
        .fold(0u32, |acc, (j, &v)| acc | (u32::from((v >> 4) & 1) << j));
    bits.to_le_bytes()
}

/// Symmetric 32-value block: `d = max / -half`, `q = trunc(x / d + half + 0.5)` clipped.
fn symmetric(x: &[f32], half: f32, top: u8) -> (f32, [u8; 32]) {
    let d = signed_absmax(x) / -half;
    let id = inverse(d);
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = ((v * id + (half + 0.5)).trunc() as u8).min(top);
    }
    (d, q)
}

/// Block with minimum: `d = (max - min) / top`, `q = trunc((x - min) / d + 0.5)` clipped.
fn with_min(x: &[f32], top: u8) -> (f32, f32, [u8; 32]) {
    let (min, max) = min_max(x);
    let d = (max - min) / f32::from(top);
    let id = inverse(d);
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (((v - min) * id + 0.5).trunc() as u8).min(top);
    }
    (d, min, q)
}

fn q4_0(x: &[f32], o: &mut [u8]) {
    let (d, q) = symmetric(x, 8.0, 15);
    put_f16(o, 0, d);
    pack_nibbles(&q, &mut o[2..18]);
}

fn q4_1(x: &[f32], o: &mut [u8]) {
    let (d, min, q) = with_min(x, 15);
    put_f16(o, 0, d);
    put_f16(o, 2, min);
    pack_nibbles(&q, &mut o[4..20]);
}

fn q5_0(x: &[f32], o: &mut [u8]) {
    let (d, q) = symmetric(x, 16.0, 31);
    put_f16(o, 0, d);
    o[2..6].copy_from_slice(&fifth_bits(&q));
    pack_nibbles(&q, &mut o[6..22]);
}

fn q5_1(x: &[f32], o: &mut [u8]) {
    let (d, min, q) = with_min(x, 31);
    put_f16(o, 0, d);
    put_f16(o, 2, min);
    o[4..8].copy_from_slice(&fifth_bits(&q));
    pack_nibbles(&q, &mut o[8..24]);
}

fn q8_0(x: &[f32], o: &mut [u8]) {
    let amax = x
        .iter()
        .fold(0f32, |m, v| if v.abs() > m { v.abs() } else { m });
    let d = amax / 127.0;
    let id = inverse(d);
    put_f16(o, 0, d);
    for (o, &v) in o[2..34].iter_mut().zip(x) {
        *o = (v * id).round() as i8 as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::dequantize::to_f32;

    #[test]
    fn legacy_types_round_trip_within_their_step() {
        let x: Vec<f32> = (0..96)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for (ty, bits) in [
            (GgmlType::Q8_0, 8),
            (GgmlType::Q5_0, 5),
            (GgmlType::Q5_1, 5),
            (GgmlType::Q4_0, 4),
            (GgmlType::Q4_1, 4),
        ] {
            let bytes = quantize(ty, &x).unwrap_or_default();
            let y = to_f32(ty, &bytes).unwrap_or_default();
            let range = 100.0 / 7.0;
            let step = range / ((1 << bits) - 1) as f32;
            let err = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err <= step, "{ty}: error {err} above one step {step}");
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80); // tie, even stays
        assert_eq!(bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82); // tie, odd rounds up
        assert_eq!(bf16_bits(f32::NAN) & 0x7fc0, 0x7fc0);
    }
}
