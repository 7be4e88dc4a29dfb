//! The weighting math, as pure tensor functions on text-encoder hidden states.
//!
//! * [`a1111_original`]: A1111's emphasis "Original": `z * w`, then the result is scaled so its
//!   mean equals the unweighted mean. A1111 takes both means over the whole batch it encodes,
//!   which is every scheduled variant of one prompt for one chunk index: the means here are
//!   taken over a list of `(z, weights, multiplicity)` variants.
//! * [`comfy_weighting`]: ComfyUI's `z = (z - z_empty) * w + z_empty` on the tokens whose weight
//!   is not 1, `z_empty` being the encoding of the empty prompt.
//! * [`pad_prompts`]: A1111's "pad prompt/negative prompt" option: the shorter of cond and
//!   uncond gets empty-prompt chunks appended.
//! * [`pad_with_last_token`]: how A1111 stacks `AND` sub-prompts of different lengths.
//! * [`combine_composable`]: A1111's composable-diffusion guidance over `AND` sub-prompts.

use candle_core::{DType, Result, Tensor};

/// One encoded variant for [`a1111_original`].
#[derive(Debug, Clone, Copy)]
pub struct Variant<'a> {
    /// Hidden states [1, S, D] of one chunk.
    pub z: &'a Tensor,
    /// One weight per token (S).
    pub weights: &'a [f32],
    /// How many schedule entries use this variant (its rows in A1111's batch).
    pub multiplicity: usize,
}

/// A1111's emphasis "Original" over one chunk index of a prompt's scheduled variants: each
/// `z * weights`, all rescaled by `mean(z) / mean(z * weights)` with the means over every
/// variant counted `multiplicity` times. Returns the weighted tensors in order.
pub fn a1111_original(variants: &[Variant]) -> Result<Vec<Tensor>> {
    let mut weighted = Vec::with_capacity(variants.len());
    let (mut original, mut new, mut count) = (0f64, 0f64, 0f64);
    for v in variants {
        let (_, s, _) = v.z.dims3()?;
        let w = Tensor::from_slice(v.weights, (1, s, 1), v.z.device())?.to_dtype(v.z.dtype())?;
        let zw = v.z.broadcast_mul(&w)?;
        let m = v.multiplicity as f64;
        original += m * mean(v.z)?;
        new += m * mean(&zw)?;
        count += m;
        weighted.push(zw);
    }
    if count == 0.0 {
        return Ok(weighted);
    }
    let ratio = (original / count) / (new / count);
    weighted
        .into_iter()
        .map(|zw| {
            // A1111 multiplies by a 0-d tensor in z's dtype.
            let r = Tensor::new(ratio as f32, zw.device())?.to_dtype(zw.dtype())?;
            zw.broadcast_mul(&r)
        })
        .collect()
}

/// The mean of every element, accumulated in f64.
fn mean(t: &Tensor) -> Result<f64> {
    let sum = t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    Ok(sum / t.elem_count() as f64)
}

/// ComfyUI's token weighting of one chunk: rows whose weight is not 1 become
/// `(z - z_empty) * w + z_empty`; the others stay exactly as encoded.
pub fn comfy_weighting(z: &Tensor, z_empty: &Tensor, weights: &[f32]) -> Result<Tensor> {
    if weights.iter().all(|&w| w == 1.0) {
        return Ok(z.clone());
    }
    let (_, s, _) = z.dims3()?;
    let device = z.device();
    let w = Tensor::from_slice(weights, (1, s, 1), device)?.to_dtype(z.dtype())?;
    let moved = (z - z_empty)?.broadcast_mul(&w)?.add(z_empty)?;
    let mask: Vec<u8> = weights.iter().map(|&w| u8::from(w != 1.0)).collect();
    let mask = Tensor::from_vec(mask, (1, s, 1), device)?.broadcast_as(z.shape())?;
    mask.where_cond(&moved, z)
}

/// A1111's `pad_cond_uncond`: appends copies of `empty` (the encoded empty prompt,
/// [1, 77, D]) to whichever of `cond`, `uncond` has fewer whole chunks.
pub fn pad_prompts(cond: &Tensor, uncond: &Tensor, empty: &Tensor) -> Result<(Tensor, Tensor)> {
    let chunk = empty.dim(1)? as i64;
    let repeats = (cond.dim(1)? as i64 - uncond.dim(1)? as i64).div_euclid(chunk);
    let pad = |t: &Tensor, n: i64| -> Result<Tensor> {
        let mut parts = vec![t.clone()];
        parts.extend(std::iter::repeat_n(empty.clone(), n as usize));
        Tensor::cat(&parts, 1)
    };
    match repeats.cmp(&0) {
        std::cmp::Ordering::Less => Ok((pad(cond, -repeats)?, uncond.clone())),
        std::cmp::Ordering::Greater => Ok((cond.clone(), pad(uncond, repeats)?)),
        std::cmp::Ordering::Equal => Ok((cond.clone(), uncond.clone())),
    }
}

/// A1111's `stack_conds` for one tensor [1, S, D]: the last token's row repeated up to `len`.
pub fn pad_with_last_token(t: &Tensor, len: usize) -> Result<Tensor> {
    let s = t.dim(1)?;
    if s >= len {
        return Ok(t.clone());
    }
    let last = t.narrow(1, s - 1, 1)?;
    let repeated = last.repeat((1, len - s, 1))?;
    Tensor::cat(&[t, &repeated], 1)
}

/// A1111's `combine_denoised` for one image: `uncond + Σ (cond_i - uncond) * (w_i * scale)`,
/// in the order given.
pub fn combine_composable(uncond: &Tensor, conds: &[(Tensor, f64)], scale: f64) -> Result<Tensor> {
    let mut out = uncond.clone();
    for (cond, weight) in conds {
        out = (out + ((cond - uncond)? * (weight * scale))?)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(values: &[f32], s: usize, d: usize) -> Tensor {
        Tensor::from_slice(values, (1, s, d), &Device::Cpu).unwrap()
    }

    fn v(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Python: z = [[1,2],[3,4]], w = [1, 2]; zw = [[1,2],[6,8]]; mean z 2.5, mean zw 4.25;
    /// out = zw * 2.5/4.25.
    #[test]
    fn original_emphasis_restores_the_mean() {
        let z = t(&[1.0, 2.0, 3.0, 4.0], 2, 2);
        let out = a1111_original(&[Variant {
            z: &z,
            weights: &[1.0, 2.0],
            multiplicity: 1,
        }])
        .unwrap();
        let r = 2.5f32 / 4.25;
        assert_eq!(v(&out[0]), [r, 2.0 * r, 6.0 * r, 8.0 * r]);
        // A second variant counted twice shares the mean: z2 = [[0,0],[2,2]] unweighted;
        // original = (2.5 + 2*1)/3 = 1.5; new = (4.25 + 2*1)/3.
        let z2 = t(&[0.0, 0.0, 2.0, 2.0], 2, 2);
        let out = a1111_original(&[
            Variant {
                z: &z,
                weights: &[1.0, 2.0],
                multiplicity: 1,
            },
            Variant {
                z: &z2,
                weights: &[1.0, 1.0],
                multiplicity: 2,
            },
        ])
        .unwrap();
        let r = (1.5f64 / (6.25 / 3.0)) as f32;
        assert_eq!(v(&out[1]), [0.0, 0.0, 2.0 * r, 2.0 * r]);
    }

    #[test]
    fn comfy_moves_weighted_tokens_from_the_empty_prompt() {
        let z = t(&[1.0, 2.0, 3.0, 4.0], 2, 2);
        let e = t(&[1.0, 1.0, 1.0, 1.0], 2, 2);
        let out = comfy_weighting(&z, &e, &[1.0, 0.5]).unwrap();
        assert_eq!(v(&out), [1.0, 2.0, 2.0, 2.5]);
        assert_eq!(v(&comfy_weighting(&z, &e, &[1.0, 1.0]).unwrap()), v(&z));
    }

    #[test]
    fn pads_and_combines() {
        let empty = t(&[9.0, 9.0], 1, 2);
        let cond = t(&[1.0, 1.0, 2.0, 2.0, 3.0, 3.0], 3, 2);
        let uncond = t(&[5.0, 5.0], 1, 2);
        let (c, u) = pad_prompts(&cond, &uncond, &empty).unwrap();
        assert_eq!(
            (c.dim(1).unwrap(), v(&u)),
            (3, vec![5.0, 5.0, 9.0, 9.0, 9.0, 9.0])
        );
        let (c, _) = pad_prompts(&uncond, &cond, &empty).unwrap();
        assert_eq!(c.dim(1).unwrap(), 3);
        let p = pad_with_last_token(&t(&[1.0, 2.0, 3.0, 4.0], 2, 2), 3).unwrap();
        assert_eq!(v(&p), [1.0, 2.0, 3.0, 4.0, 3.0, 4.0]);
        let u = t(&[1.0], 1, 1);
        let out =
            combine_composable(&u, &[(t(&[3.0], 1, 1), 1.0), (t(&[0.0], 1, 1), 0.5)], 2.0).unwrap();
        // 1 + (3-1)*2 + (0-1)*1 = 4
        assert_eq!(v(&out), [4.0]);
    }
}
