//! Tiled VAE decoding: the latents are decoded in overlapping tiles whose seams are blended
//! linearly, so that memory is bounded by one tile's decode whatever the image size. Tile
//! size, overlap and blending follow diffusers' `AutoencoderKL.tiled_decode` (tiles of 64
//! latents, 25% overlap, a 128-pixel blend), so images match diffusers' tiled output.

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{Result, Tensor};

/// When the decoder tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tiling {
    /// Tile latents larger than [`AUTO_ABOVE`] on a side (images above 768 pixels).
    Auto,
    /// Always tile (a no-op for latents that fit in one tile).
    On,
    /// Never tile.
    Off,
}

/// With [`Tiling::Auto`], latents with a side above this many values are decoded in tiles.
pub const AUTO_ABOVE: usize = 96;
/// Tile side in latents (diffusers' `tile_latent_min_size` for 512-pixel models).
pub const TILE: usize = 64;
/// Fraction of a tile shared with its neighbour (diffusers' `tile_overlap_factor`).
const OVERLAP: f64 = 0.25;

/// The tiling mode, settable through a shared reference (the decoder is shared by jobs).
#[derive(Debug)]
pub(super) struct TilingMode(AtomicU8);

impl TilingMode {
    pub(super) fn new(t: Tiling) -> Self {
        Self(AtomicU8::new(t as u8))
    }

    pub(super) fn set(&self, t: Tiling) {
        self.0.store(t as u8, Ordering::Relaxed)
    }

    pub(super) fn get(&self) -> Tiling {
        match self.0.load(Ordering::Relaxed) {
            x if x == Tiling::On as u8 => Tiling::On,
            x if x == Tiling::Off as u8 => Tiling::Off,
            _ => Tiling::Auto,
        }
    }

    /// Whether latents of `h`x`w` are decoded in tiles.
    pub(super) fn applies(&self, h: usize, w: usize) -> bool {
        match self.get() {
            Tiling::On => h > TILE || w > TILE,
            Tiling::Off => false,
            Tiling::Auto => h > AUTO_ABOVE || w > AUTO_ABOVE,
        }
    }
}

/// Linear blend of the last `extent` rows (dim 2) or columns (dim 3) of `a` into the first
/// ones of `b`, as diffusers' `blend_v` / `blend_h`.
fn blend(a: &Tensor, b: &Tensor, dim: usize, extent: usize) -> Result<Tensor> {
    let extent = extent.min(a.dim(dim)?).min(b.dim(dim)?);
    if extent == 0 {
        return Ok(b.clone());
    }
    let mut shape = vec![1; 4];
    shape[dim] = extent;
    let ramp: Vec<f32> = (0..extent).map(|y| y as f32 / extent as f32).collect();
    let w = Tensor::from_vec(ramp, shape, b.device())?.to_dtype(b.dtype())?;
    let tail = a.narrow(dim, a.dim(dim)? - extent, extent)?;
    let head = b.narrow(dim, 0, extent)?;
    let mixed = (tail.broadcast_mul(&w.affine(-1.0, 1.0)?)? + head.broadcast_mul(&w)?)?;
    let rest = b.narrow(dim, extent, b.dim(dim)? - extent)?;
    Tensor::cat(&[&mixed, &rest], dim)
}

/// Decodes `z` [B, C, h, w] tile by tile with `decode` (latents to pixels, `scale` pixels per
/// latent) and stitches the tiles with blended seams.
pub(super) fn decode_tiled(
    z: &Tensor,
    scale: usize,
    decode: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (_, _, h, w) = z.dims4()?;
    let step = ((TILE as f64) * (1.0 - OVERLAP)) as usize;
    let blend_extent = ((TILE * scale) as f64 * OVERLAP) as usize;
    let limit = TILE * scale - blend_extent;
    let mut rows: Vec<Vec<Tensor>> = Vec::new();
    for i in (0..h).step_by(step) {
        let mut row = Vec::new();
        for j in (0..w).step_by(step) {
            let tile = z
                .narrow(2, i, TILE.min(h - i))?
                .narrow(3, j, TILE.min(w - j))?;
            row.push(decode(&tile)?);
        }
        rows.push(row);
    }
    let mut out_rows = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let mut parts = Vec::with_capacity(row.len());
        for (j, tile) in row.iter().enumerate() {
            let mut tile = tile.clone();
            if i > 0 {
                tile = blend(&rows[i - 1][j], &tile, 2, blend_extent)?;
            }
            if j > 0 {
                tile = blend(&row[j - 1], &tile, 3, blend_extent)?;
            }
            let (th, tw) = (tile.dim(2)?, tile.dim(3)?);
            parts.push(
                tile.narrow(2, 0, limit.min(th))?
                    .narrow(3, 0, limit.min(tw))?,
            );
        }
        out_rows.push(Tensor::cat(&parts, 3)?);
    }
    Tensor::cat(&out_rows, 2)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use candle_core::Device;

    #[test]
    fn stitches_a_pointwise_decoder_exactly() {
        // A decoder that upsamples by 2 and doubles: tiles overlap in identical pixels, so the
        // blended result must equal the untiled decode.
        let decode = |t: &Tensor| {
            let (_, _, h, w) = t.dims4()?;
            t.upsample_nearest2d(2 * h, 2 * w)? * 2.0
        };
        let z = Tensor::randn(0f32, 1.0, (1, 2, 150, 97), &Device::Cpu).unwrap();
        let got = decode_tiled(&z, 2, decode).unwrap();
        let want = decode(&z).unwrap();
        assert_eq!(got.dims(), want.dims());
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }

    #[test]
    fn auto_mode_tiles_only_large_latents() {
        let m = TilingMode::new(Tiling::Auto);
        assert!(!m.applies(64, 64) && !m.applies(96, 96) && m.applies(128, 128));
        m.set(Tiling::Off);
        assert!(!m.applies(256, 256));
        m.set(Tiling::On);
        assert!(m.applies(80, 64) && !m.applies(64, 64));
    }
}
