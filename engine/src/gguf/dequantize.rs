//! Decoding ggml blocks to f32, value for value what the `gguf` Python package's
//! `gguf.quants.dequantize` computes (the same f32 operations in the same order, so the results
//! are bit-identical), which in turn matches ggml's `dequantize_row_*`.
//!
//! The block layouts are ggml's (`ggml-common.h`): little-endian f16 scales, 4/5/6-bit values
//! packed in nibbles with the high bits in separate planes. Blocks are independent; large
//! tensors are decoded in parallel.

use half::{bf16, f16};
use rayon::prelude::*;

use super::types::GgmlType;

/// Blocks decoded per parallel task.
const BLOCKS_PER_TASK: usize = 256;

/// `bytes` (whole blocks of type `ty`) decoded to f32, or `None` if beeswax cannot decode `ty`
/// or `bytes` is not a whole number of blocks.
pub fn to_f32(ty: GgmlType, bytes: &[u8]) -> Option<Vec<f32>> {
    use GgmlType::*;
    let decode: fn(&[u8], &mut [f32]) = match ty {
        F32 => |b, o| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        F16 => |b, o| o[0] = half(b, 0),
        BF16 => |b, o| o[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        Q4_0 => q4_0,
        Q4_1 => q4_1,
        Q5_0 => q5_0,
        Q5_1 => q5_1,
        Q8_0 => q8_0,
        Q2_K => q2_k,
        Q3_K => q3_k,
        Q4_K => q4_k,
        Q5_K => q5_k,
        Q6_K => q6_k,
        Q8_K => q8_k,
        _ => return None,
    };
    let (block, size) = (ty.block_size(), ty.type_size());
    if bytes.len() % size != 0 {
        return None;
    }
    let mut out = vec![0f32; bytes.len() / size * block];
    out.par_chunks_mut(block * BLOCKS_PER_TASK)
        .zip(bytes.par_chunks(size * BLOCKS_PER_TASK))
        .for_each(|(out, bytes)| {
            for (o, b) in out.chunks_exact_mut(block).zip(bytes.chunks_exact(size)) {
                decode(b, o);
            }
        });
    Some(out)
}

/// The little-endian f16 at `b[at..at + 2]`, widened.
#[inline]
fn half(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// The 5th bits of a Q5 block: bit `j` of the little-endian u32 at `b[at..at + 4]`.
#[inline]
fn high_bits(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Element `j` (0..32) of a 32-value nibble block: low nibbles first, then high nibbles.
#[inline]
fn nibble(qs: &[u8], j: usize) -> u8 {
    if j < 16 {
        qs[j] & 0x0F
    } else {
        qs[j - 16] >> 4
    }
}

fn q4_0(b: &[u8], o: &mut [f32]) {
    let d = half(b, 0);
    for (j, o) in o.iter_mut().enumerate() {
        *o = d * (nibble(&b[2..], j) as i8 - 8) as f32;
    }
}

fn q4_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    for (j, o) in o.iter_mut().enumerate() {
        *o = d * nibble(&b[4..], j) as f32 + m;
    }
}

fn q5_0(b: &[u8], o: &mut [f32]) {
    let (d, qh) = (half(b, 0), high_bits(b, 2));
    for (j, o) in o.iter_mut().enumerate() {
        let q = nibble(&b[6..], j) | ((((qh >> j) & 1) as u8) << 4);
        *o = d * (q as i8 - 16) as f32;
    }
}

fn q5_1(b: &[u8], o: &mut [f32]) {
    let (d, m, qh) = (half(b, 0), half(b, 2), high_bits(b, 4));
    for (j, o) in o.iter_mut().enumerate() {
        let q = nibble(&b[8..], j) | ((((qh >> j) & 1) as u8) << 4);
        *o = d * q as f32 + m;
    }
}

fn q8_0(b: &[u8], o: &mut [f32]) {
    let d = half(b, 0);
    for (o, &q) in o.iter_mut().zip(&b[2..34]) {
        *o = q as i8 as f32 * d;
    }
}

/// Q2_K: scales[16] (low nibble scale, high nibble min), qs[64], d, dmin.
fn q2_k(b: &[u8], o: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (half(b, 80), half(b, 82));
    for (p, o) in o.iter_mut().enumerate() {
        let (h, s, l) = (p / 128, (p / 32) % 4, p % 32);
        let q = (qs[h * 32 + l] >> (2 * s)) & 3;
        let sc = scales[p / 16];
        let dl = d * (sc & 0x0F) as f32;
        let ml = dmin * (sc >> 4) as f32;
        *o = dl * q as f32 - ml;
    }
}

/// Q3_K: hmask[32], qs[64], scales[12] (16 six-bit signed scales), d.
fn q3_k(b: &[u8], o: &mut [f32]) {
    let (hmask, qs, scales) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = half(b, 108);
    let mut dl = [0f32; 16];
    for (i, dl) in dl.iter_mut().enumerate() {
        let low = (scales[i % 8] >> (4 * (i / 8))) & 0x0F;
        let high = (scales[8 + i % 4] >> (2 * (i / 4))) & 0x03;
        *dl = d * ((low | (high << 4)) as i8 - 32) as f32;
    }
    for (p, o) in o.iter_mut().enumerate() {
        let (h, s, l) = (p / 128, (p / 32) % 4, p % 32);
        let low = ((qs[h * 32 + l] >> (2 * s)) & 3) as i8;
        let high = ((hmask[l] >> (p / 32)) & 1) ^ 1;
        *o = dl[p / 16] * (low - (high << 2) as i8) as f32;
    }
}

/// The eight 6-bit scales and mins of a Q4_K/Q5_K block (`get_scale_min_k4`).
fn scales_and_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 0x3F;
        mn[j] = s[4 + j] & 0x3F;
        sc[4 + j] = (s[8 + j] & 0x0F) | ((s[j] >> 2) & 0x30);
        mn[4 + j] = (s[8 + j] >> 4) | ((s[4 + j] >> 2) & 0x30);
    }
    (sc, mn)
}

/// Q4_K: d, dmin, scales[12], qs[128].
fn q4_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let (sc, mn) = scales_and_mins(&b[4..16]);
    let qs = &b[16..144];
    for (p, o) in o.iter_mut().enumerate() {
        let (g, l) = (p / 32, p % 32);
        let q = (qs[(g / 2) * 32 + l] >> (4 * (g % 2))) & 0x0F;
        *o = (d * sc[g] as f32) * q as f32 - dmin * mn[g] as f32;
    }
}

/// Q5_K: d, dmin, scales[12], qh[32], qs[128].
fn q5_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let (sc, mn) = scales_and_mins(&b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for (p, o) in o.iter_mut().enumerate() {
        let (g, l) = (p / 32, p % 32);
        let low = (qs[(g / 2) * 32 + l] >> (4 * (g % 2))) & 0x0F;
        let q = low | (((qh[l] >> g) & 1) << 4);
        *o = (d * sc[g] as f32) * q as f32 - dmin * mn[g] as f32;
    }
}

/// Q6_K: ql[128], qh[64], scales[16] (signed), d.
fn q6_k(b: &[u8], o: &mut [f32]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = half(b, 208);
    for (p, o) in o.iter_mut().enumerate() {
        let h = p / 128;
        let (s4, l4) = ((p % 128) / 64, p % 64);
        let (s2, l2) = ((p % 128) / 32, p % 32);
        let low = (ql[h * 64 + l4] >> (4 * s4)) & 0x0F;
        let high = (qh[h * 32 + l2] >> (2 * s2)) & 0x03;
        let q = (low | (high << 4)) as i8 - 32;
        *o = (d * scales[p / 16] as i8 as f32) * q as f32;
    }
}

/// Q8_K: d (f32), qs[256] (signed), bsums[16] (unused here).
fn q8_k(b: &[u8], o: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (o, &q) in o.iter_mut().zip(&b[4..260]) {
        *o = d * q as i8 as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_partial_blocks_and_unsupported_types() {
        assert!(to_f32(GgmlType::Q4_0, &[0u8; 17]).is_none());
        assert!(to_f32(GgmlType::IQ4_NL, &[0u8; 18]).is_none());
        assert_eq!(
            to_f32(GgmlType::Q4_0, &[0u8; 36]).map(|v| v.len()),
            Some(64)
        );
    }

    #[test]
    fn q8_0_block_by_hand() {
        // d = 0.5 (f16 0x3800), values -128, 1, 127, 0...
        let mut b = vec![0x00, 0x38];
        b.extend([0x80u8, 1, 127]);
        b.extend([0u8; 29]);
        let v = to_f32(GgmlType::Q8_0, &b).unwrap_or_default();
        assert_eq!(&v[..4], &[-64.0, 0.5, 63.5, 0.0]);
    }
}
