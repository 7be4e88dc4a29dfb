//! The weight change of one LoRA module, with the formulas of LyCORIS
//! (`lycoris/functional/{locon,loha,lokr,general}.py`), scaled by alpha / rank:
//!
//! * LoRA / LoCon: `dW = up @ down`, reshaped to the weight; with a Tucker core `lora_mid`,
//!   `dW[o, i, k, l] = sum_mn mid[m, n, k, l] up[o, m] down[n, i]`. rank = rows of `down`.
//! * LoHa: `dW = (w1_a @ w1_b) * (w2_a @ w2_b)` (element-wise product); with Tucker cores,
//!   each factor is `rebuild(t, w_a, w_b)[p, q, k, l] = sum_ij t[i, j, k, l] w_a[i, p] w_b[j, q]`.
//!   rank = rows of `w1_b`.
//! * LoKr: `dW = kron(w1, w2)`, `w1 = w1_a @ w1_b` unless given whole, `w2 = w2_a @ w2_b`
//!   (or the Tucker rebuild with `lokr_t2`) unless given whole. rank = rows of `w1_b` if w1 is
//!   decomposed, else of `w2_b`; if neither factor is decomposed the scale is 1.
//! * full: `dW = diff`, scale 1.
//!
//! A missing (or zero) alpha means alpha = rank (scale 1); diffusers/PEFT files take alpha from
//! their metadata; rsLoRA scales by alpha / sqrt(rank).

use candle_core::Tensor;

use super::file::{LoraFile, LoraModule, Param};
use super::{LoraError, ShapeMismatch};

/// `multiplier x alpha / rank x dW` for `module`, shaped `target_shape` (the weight `target`
/// names). The scalar factor is applied to the smallest factor of the decomposition, so the
/// full-size change is written once.
pub fn module_delta(
    file: &LoraFile,
    module: &LoraModule,
    target: &str,
    target_shape: &[usize],
    multiplier: f64,
) -> Result<Tensor, LoraError> {
    let bad = |message: String| LoraError::BadModule {
        path: file.path.clone(),
        module: module.name.clone(),
        message,
    };
    if module.get(Param::DoraScale).is_some() {
        return Err(bad(
            "DoRA (weight-decomposed) LoRAs are not supported; use a plain LoRA/LyCORIS file"
                .into(),
        ));
    }
    let alpha = match module.get(Param::Alpha) {
        Some(a) => Some(
            a.flatten_all()
                .and_then(|a| a.get(0))
                .and_then(|a| a.to_scalar::<f32>())
                .map_err(|e| bad(format!("`alpha` is not a number: {e}")))? as f64,
        ),
        None => file.peft_alpha(&module.name).map(|(a, _)| a),
    }
    .filter(|a| *a != 0.0);
    let rslora = file.peft_alpha(&module.name).is_some_and(|(_, rs)| rs);
    let factor = |rank: Option<usize>| {
        multiplier
            * match (alpha, rank) {
                (Some(alpha), Some(rank)) if rslora => alpha / (rank as f64).sqrt(),
                (Some(alpha), Some(rank)) => alpha / rank as f64,
                _ => 1.0,
            }
    };
    let delta = raw_delta(module, &factor).map_err(|e| match e {
        DeltaError::Missing(what) => bad(format!(
            "incomplete: {what}; the file may be truncated or of an unknown kind"
        )),
        DeltaError::Candle(e) => bad(format!("its tensors do not fit together: {e}")),
    })?;
    let target_elems: usize = target_shape.iter().product();
    if delta.elem_count() != target_elems || delta.dims().first() != target_shape.first() {
        let (tensor, t) = module
            .tensors
            .values()
            .find(|(_, t)| t.rank() >= 2)
            .or_else(|| module.tensors.values().next())
            .map(|(k, t)| (k.clone(), t.dims().to_vec()))
            .unwrap_or_default();
        return Err(LoraError::ShapeMismatch(Box::new(ShapeMismatch {
            path: file.path.clone(),
            tensor,
            lora_shape: t,
            delta_shape: delta.dims().to_vec(),
            target: target.to_string(),
            target_shape: target_shape.to_vec(),
            family: String::new(),
        })));
    }
    Ok(delta.reshape(target_shape)?)
}

enum DeltaError {
    Missing(String),
    Candle(candle_core::Error),
}

impl From<candle_core::Error> for DeltaError {
    fn from(e: candle_core::Error) -> Self {
        DeltaError::Candle(e)
    }
}

fn need<'a>(module: &'a LoraModule, param: Param, name: &str) -> Result<&'a Tensor, DeltaError> {
    module
        .get(param)
        .ok_or_else(|| DeltaError::Missing(format!("no `{name}` tensor")))
}

/// `factor(rank) x dW`, where rank is the one alpha divides (None: no rank, scale 1).
fn raw_delta(m: &LoraModule, factor: &dyn Fn(Option<usize>) -> f64) -> Result<Tensor, DeltaError> {
    let has = |p: Param| m.get(p).is_some();
    if has(Param::Down) || has(Param::Up) {
        let down = need(m, Param::Down, "lora_down / lora_A")?;
        let up = need(m, Param::Up, "lora_up / lora_B")?;
        let down2 = (matrix(down)? * factor(Some(down.dim(0)?)))?;
        let up2 = matrix(up)?;
        let delta = match m.get(Param::Mid) {
            Some(mid) => tucker(mid, &up2.t()?, &down2)?,
            None => {
                let d = up2.matmul(&down2)?;
                let mut shape = vec![up.dim(0)?];
                shape.extend_from_slice(&down.dims()[1..]);
                d.reshape(shape)?
            }
        };
        return Ok(delta);
    }
    if has(Param::HadaW1A) {
        let (w1a, w1b) = (
            need(m, Param::HadaW1A, "hada_w1_a")?,
            need(m, Param::HadaW1B, "hada_w1_b")?,
        );
        let (w2a, w2b) = (
            need(m, Param::HadaW2A, "hada_w2_a")?,
            need(m, Param::HadaW2B, "hada_w2_b")?,
        );
        let w1b = (w1b * factor(Some(w1b.dim(0)?)))?;
        let delta = match (m.get(Param::HadaT1), m.get(Param::HadaT2)) {
            (Some(t1), Some(t2)) => (tucker(t1, w1a, &w1b)? * tucker(t2, w2a, w2b)?)?,
            (None, None) => {
                (matrix(w1a)?.matmul(&matrix(&w1b)?)? * matrix(w2a)?.matmul(&matrix(w2b)?)?)?
            }
            _ => return Err(DeltaError::Missing("only one of hada_t1, hada_t2".into())),
        };
        return Ok(delta);
    }
    if has(Param::LokrW1) || has(Param::LokrW1A) || has(Param::LokrW2) || has(Param::LokrW2A) {
        let mut rank = None;
        let w1 = match m.get(Param::LokrW1) {
            Some(w1) => w1.clone(),
            None => {
                let w1b = need(m, Param::LokrW1B, "lokr_w1_b")?;
                rank = Some(w1b.dim(0)?);
                matrix(need(m, Param::LokrW1A, "lokr_w1 or lokr_w1_a")?)?.matmul(&matrix(w1b)?)?
            }
        };
        let w2 = match m.get(Param::LokrW2) {
            Some(w2) => w2.clone(),
            None => {
                let w2a = need(m, Param::LokrW2A, "lokr_w2 or lokr_w2_a")?;
                let w2b = need(m, Param::LokrW2B, "lokr_w2_b")?;
                rank = rank.or(Some(w2b.dim(0)?));
                match m.get(Param::LokrT2) {
                    Some(t2) => tucker(t2, w2a, w2b)?,
                    None => {
                        let flat = matrix(w2a)?.matmul(&matrix(w2b)?)?;
                        let mut shape = vec![w2a.dim(0)?];
                        shape.extend_from_slice(&w2b.dims()[1..]);
                        flat.reshape(shape)?
                    }
                }
            }
        };
        return Ok(kron(&(w1 * factor(rank))?, &w2)?);
    }
    if let Some(diff) = m.get(Param::Diff) {
        return Ok((diff * factor(None))?);
    }
    Err(DeltaError::Missing(
        "no lora_down/lora_up, hada_*, lokr_* or diff tensors".into(),
    ))
}

/// `t` as a matrix [d0, rest].
fn matrix(t: &Tensor) -> candle_core::Result<Tensor> {
    let d0 = t.dim(0)?;
    t.reshape((d0, t.elem_count() / d0.max(1)))
}

/// `out[p, q, k, l] = sum_ij t[i, j, k, l] a[i, p] b[j, q]` for `t` [i, j, (k, l)], `a` [i, P],
/// `b` [j, Q] (LyCORIS' Tucker rebuild); `a`, `b` may carry trailing 1-sized dims.
fn tucker(t: &Tensor, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let (a, b) = (matrix(a)?, matrix(b)?);
    let dims = t.dims().to_vec();
    if dims.len() < 2 {
        candle_core::bail!("a Tucker core needs at least 2 dimensions, got {dims:?}");
    }
    let (i, j) = (dims[0], dims[1]);
    let kernel = &dims[2..];
    let kk: usize = kernel.iter().product();
    // [i, j, kk] -> [kk, i, j]
    let tk = t.reshape((i, j, kk))?.permute((2, 0, 1))?.contiguous()?;
    let tb = tk.broadcast_matmul(&b)?; // [kk, i, Q]
    let out = a.t()?.contiguous()?.broadcast_matmul(&tb)?; // [kk, P, Q]
    let (p, q) = (out.dim(1)?, out.dim(2)?);
    let out = out.reshape((kk, p * q))?.t()?.contiguous()?; // [P*Q, kk]
    let mut shape = vec![p, q];
    shape.extend_from_slice(kernel);
    out.reshape(shape)
}

/// torch.kron for a 2-D `a` (or with trailing 1-sized dims) and `b` [B, D, ...]:
/// `[A*B, C*D, ...]` with `out[i*B + k, j*D + l, ...] = a[i, j] b[k, l, ...]`.
fn kron(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if a.rank() > 2 && a.dims()[2..].iter().any(|&d| d != 1) {
        candle_core::bail!("LoKr w1 must be a matrix, got shape {:?}", a.dims());
    }
    let a = matrix(a)?;
    let (ra, ca) = a.dims2()?;
    if b.rank() < 2 {
        candle_core::bail!("LoKr w2 needs at least 2 dimensions, got {:?}", b.dims());
    }
    let (rb, cb) = (b.dim(0)?, b.dim(1)?);
    let rest = &b.dims()[2..];
    let ones = vec![1usize; rest.len()];
    let a6 = a.reshape([vec![ra, 1, ca, 1], ones].concat())?;
    let b6 = b.reshape([vec![1, rb, 1, cb], rest.to_vec()].concat())?;
    let prod = a6.broadcast_mul(&b6)?;
    prod.reshape([vec![ra * rb, ca * cb], rest.to_vec()].concat())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(data: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(data.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn kron_matches_the_definition() {
        let a = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
        let b = t(&[1., -1., 0.5, 2.], &[2, 2]);
        let k = kron(&a, &b).unwrap();
        assert_eq!(k.dims(), &[4, 6]);
        let k = k.to_vec2::<f32>().unwrap();
        let (a, b) = (a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
        for i in 0..2 {
            for j in 0..3 {
                for p in 0..2 {
                    for q in 0..2 {
                        assert_eq!(k[i * 2 + p][j * 2 + q], a[i][j] * b[p][q]);
                    }
                }
            }
        }
    }

    #[test]
    fn tucker_matches_the_einsum() {
        // t [2, 3, 2, 1], a [2, 4], b [3, 5]
        let tv: Vec<f32> = (0..12).map(|x| x as f32 * 0.5 - 2.0).collect();
        let av: Vec<f32> = (0..8).map(|x| (x as f32).sin()).collect();
        let bv: Vec<f32> = (0..15).map(|x| (x as f32).cos()).collect();
        let out = tucker(&t(&tv, &[2, 3, 2, 1]), &t(&av, &[2, 4]), &t(&bv, &[3, 5])).unwrap();
        assert_eq!(out.dims(), &[4, 5, 2, 1]);
        let got = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for p in 0..4 {
            for q in 0..5 {
                for k in 0..2 {
                    let mut want = 0f32;
                    for i in 0..2 {
                        for j in 0..3 {
                            want += tv[(i * 3 + j) * 2 + k] * av[i * 4 + p] * bv[j * 5 + q];
                        }
                    }
                    let g = got[(p * 5 + q) * 2 + k];
                    assert!((g - want).abs() < 1e-4, "{p} {q} {k}: {g} vs {want}");
                }
            }
        }
    }
}
