//! diffusers' `AutoencoderKL`: the encoder (image to latent distribution) and the decoder
//! (latents to image), built from `vae/config.json`.
//!
//! Older diffusers saved the mid-block attention as `query/key/value/proj_attn`; newer ones as
//! `to_q/to_k/to_v/to_out.0`. Both load.

pub mod config;
mod tiling;

use candle_core::{Result, Tensor};
use candle_nn::{conv2d, linear, Conv2d, Linear, VarBuilder};

use crate::kernels::{self, GroupNorm};

pub use config::VaeConfig;
pub use tiling::{Tiling, AUTO_ABOVE, TILE};

use super::attention::scaled_dot_product;
use super::resnet::{conv3x3, ResnetBlock2D, ResnetSpec};
use super::sampling::{Downsample2D, Upsample2D};

const EPS: f64 = 1e-6;

fn resnet(vb: VarBuilder, in_c: usize, out_c: usize, groups: usize) -> Result<ResnetBlock2D> {
    ResnetBlock2D::new(
        vb,
        ResnetSpec {
            in_channels: in_c,
            out_channels: out_c,
            temb_channels: None,
            groups,
            eps: EPS,
            output_scale_factor: 1.0,
        },
    )
}

/// Single-head self-attention over the feature map, with residual.
#[derive(Debug)]
struct MidAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl MidAttention {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        let names = if vb.contains_tensor("to_q.weight") {
            ["to_q", "to_k", "to_v", "to_out.0"]
        } else {
            ["query", "key", "value", "proj_attn"]
        };
        Ok(Self {
            group_norm: GroupNorm::new(vb.pp("group_norm"), groups, channels, EPS)?,
            to_q: linear(channels, channels, vb.pp(names[0]))?,
            to_k: linear(channels, channels, vb.pp(names[1]))?,
            to_v: linear(channels, channels, vb.pp(names[2]))?,
            to_out: linear(channels, channels, vb.pp(names[3]))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let tokens = self
            .group_norm
            .forward(xs, None, false)?
            .reshape((b, c, h * w))?;
        let tokens = kernels::transpose::swap_last_two(&tokens)?;
        let q = kernels::linear(&self.to_q, &tokens, None)?;
        let k = kernels::linear(&self.to_k, &tokens, None)?;
        let v = kernels::linear(&self.to_v, &tokens, None)?;
        let out = kernels::linear(&self.to_out, &scaled_dot_product(&q, &k, &v, 1)?, None)?;
        kernels::transpose::swap_last_two(&out)?.reshape((b, c, h, w))? + xs
    }
}

/// `UNetMidBlock2D` without time embedding: resnet, attention, resnet.
#[derive(Debug)]
struct MidBlock {
    first: ResnetBlock2D,
    attention: Option<MidAttention>,
    second: ResnetBlock2D,
}

impl MidBlock {
    fn new(vb: VarBuilder, channels: usize, groups: usize, attention: bool) -> Result<Self> {
        Ok(Self {
            first: resnet(vb.pp("resnets.0"), channels, channels, groups)?,
            attention: if attention {
                Some(MidAttention::new(vb.pp("attentions.0"), channels, groups)?)
            } else {
                None
            },
            second: resnet(vb.pp("resnets.1"), channels, channels, groups)?,
        })
    }

    fn forward(&self, xs: Tensor) -> Result<Tensor> {
        let mut xs = self.first.forward(xs, None)?;
        if let Some(attn) = &self.attention {
            xs = attn.forward(&xs)?;
        }
        self.second.forward(xs, None)
    }
}

fn resnets(
    vb: &VarBuilder,
    count: usize,
    in_c: usize,
    out_c: usize,
    groups: usize,
) -> Result<Vec<ResnetBlock2D>> {
    (0..count)
        .map(|j| {
            resnet(
                vb.pp(format!("resnets.{j}")),
                if j == 0 { in_c } else { out_c },
                out_c,
                groups,
            )
        })
        .collect()
}

fn norm_act_conv(norm: &GroupNorm, conv: &Conv2d, xs: &Tensor) -> Result<Tensor> {
    kernels::conv2d_normed(conv, norm, xs, None, None, 1.0)
}

/// The decoder: latents [B, latent_channels, h, w] to an image [B, 3, h·f, w·f] in about [-1, 1].
#[derive(Debug)]
pub struct Decoder {
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<(Vec<ResnetBlock2D>, Option<Upsample2D>)>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    scale: usize,
    tiling: tiling::TilingMode,
}

impl Decoder {
    /// Loads `decoder.*` and `post_quant_conv` from the VAE weights at `vb`.
    pub fn new(vb: VarBuilder, c: &VaeConfig) -> Result<Self> {
        c.validate().map_err(candle_core::Error::Msg)?;
        let ch = &c.block_out_channels;
        let n = ch.len();
        let g = c.norm_num_groups;
        let dec = vb.pp("decoder");
        let mut up_blocks = Vec::with_capacity(n);
        let mut prev = ch[n - 1];
        for i in 0..n {
            let out = ch[n - 1 - i];
            let bvb = dec.pp(format!("up_blocks.{i}"));
            let up = if i + 1 < n {
                Some(Upsample2D::new(bvb.pp("upsamplers.0"), out)?)
            } else {
                None
            };
            up_blocks.push((resnets(&bvb, c.layers_per_block + 1, prev, out, g)?, up));
            prev = out;
        }
        let post_quant_conv = if c.use_post_quant_conv {
            Some(conv2d(
                c.latent_channels,
                c.latent_channels,
                1,
                Default::default(),
                vb.pp("post_quant_conv"),
            )?)
        } else {
            None
        };
        Ok(Self {
            post_quant_conv,
            conv_in: conv3x3(c.latent_channels, ch[n - 1], dec.pp("conv_in"))?,
            mid_block: MidBlock::new(dec.pp("mid_block"), ch[n - 1], g, c.mid_block_add_attention)?,
            up_blocks,
            conv_norm_out: GroupNorm::new(dec.pp("conv_norm_out"), g, ch[0], EPS)?,
            conv_out: conv3x3(ch[0], c.out_channels, dec.pp("conv_out"))?,
            scale: 1 << (n - 1),
            tiling: tiling::TilingMode::new(Tiling::Auto),
        })
    }

    /// Chooses when [`Decoder::forward`] decodes in tiles ([`Tiling::Auto`] by default: latents
    /// above [`AUTO_ABOVE`] on a side). Tiling bounds memory; seams are blended as diffusers'
    /// `enable_tiling()` does, so tiled images differ slightly from untiled ones.
    pub fn set_tiling(&self, tiling: Tiling) {
        self.tiling.set(tiling)
    }

    /// Decodes latents that are already unscaled (divided by `scaling_factor`), in tiles when
    /// the tiling mode says so.
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = z.dims4()?;
        if self.tiling.applies(h, w) {
            tiling::decode_tiled(z, self.scale, |t| self.forward_whole(t))
        } else {
            self.forward_whole(z)
        }
    }

    /// Decodes all of `z` at once.
    fn forward_whole(&self, z: &Tensor) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(conv) => kernels::conv2d(conv, z, None, 1.0)?,
            None => z.clone(),
        };
        let mut xs = self
            .mid_block
            .forward(kernels::conv2d(&self.conv_in, &z, None, 1.0)?)?;
        for (resnets, up) in &self.up_blocks {
            for r in resnets {
                xs = r.forward(xs, None)?;
            }
            if let Some(up) = up {
                xs = up.forward(&xs, None)?;
            }
        }
        norm_act_conv(&self.conv_norm_out, &self.conv_out, &xs)
    }
}

/// The encoder: an image [B, 3, H, W] in [-1, 1] to the mean and log-variance of the latent
/// distribution, each [B, latent_channels, H/f, W/f] (unscaled).
#[derive(Debug)]
pub struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<(Vec<ResnetBlock2D>, Option<Downsample2D>)>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
    latent_channels: usize,
}

impl Encoder {
    /// Loads `encoder.*` and `quant_conv` from the VAE weights at `vb`.
    pub fn new(vb: VarBuilder, c: &VaeConfig) -> Result<Self> {
        c.validate().map_err(candle_core::Error::Msg)?;
        let ch = &c.block_out_channels;
        let n = ch.len();
        let g = c.norm_num_groups;
        let enc = vb.pp("encoder");
        let mut down_blocks = Vec::with_capacity(n);
        let mut prev = ch[0];
        for (i, &out) in ch.iter().enumerate() {
            let bvb = enc.pp(format!("down_blocks.{i}"));
            let down = if i + 1 < n {
                Some(Downsample2D::new(bvb.pp("downsamplers.0"), out, 0)?)
            } else {
                None
            };
            down_blocks.push((resnets(&bvb, c.layers_per_block, prev, out, g)?, down));
            prev = out;
        }
        let moments = 2 * c.latent_channels;
        let quant_conv = if c.use_quant_conv {
            Some(conv2d(
                moments,
                moments,
                1,
                Default::default(),
                vb.pp("quant_conv"),
            )?)
        } else {
            None
        };
        Ok(Self {
            conv_in: conv3x3(c.in_channels, ch[0], enc.pp("conv_in"))?,
            down_blocks,
            mid_block: MidBlock::new(enc.pp("mid_block"), ch[n - 1], g, c.mid_block_add_attention)?,
            conv_norm_out: GroupNorm::new(enc.pp("conv_norm_out"), g, ch[n - 1], EPS)?,
            conv_out: conv3x3(ch[n - 1], moments, enc.pp("conv_out"))?,
            quant_conv,
            latent_channels: c.latent_channels,
        })
    }

    /// Returns `(mean, logvar)` of the latent distribution.
    pub fn forward(&self, image: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut xs = kernels::conv2d(&self.conv_in, image, None, 1.0)?;
        for (resnets, down) in &self.down_blocks {
            for r in resnets {
                xs = r.forward(xs, None)?;
            }
            if let Some(down) = down {
                xs = down.forward(&xs)?;
            }
        }
        let xs = self.mid_block.forward(xs)?;
        let mut moments = norm_act_conv(&self.conv_norm_out, &self.conv_out, &xs)?;
        if let Some(q) = &self.quant_conv {
            moments = kernels::conv2d(q, &moments, None, 1.0)?;
        }
        let mean = moments.narrow(1, 0, self.latent_channels)?;
        let logvar = moments
            .narrow(1, self.latent_channels, self.latent_channels)?
            .clamp(-30f32, 20f32)?;
        Ok((mean, logvar))
    }
}
