//! The UNet's down, mid and up blocks (diffusers' `CrossAttnDownBlock2D`/`DownBlock2D`,
//! `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D`/`UpBlock2D`): resnets, each optionally
//! followed by a transformer, then a resampler.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::transformer::{Quant, Transformer2D, TransformerSpec};
use crate::models::repeat_batch;
use crate::models::resnet::{ResnetBlock2D, ResnetSpec};
use crate::models::sampling::{Downsample2D, Upsample2D};

/// What every block of one UNet shares.
#[derive(Debug, Clone, Copy)]
pub struct BlockCommon<'q> {
    /// Time-embedding width.
    pub temb_channels: usize,
    /// GroupNorm groups.
    pub groups: usize,
    /// GroupNorm epsilon of the resnets.
    pub eps: f64,
    /// Linear rather than conv projections in the transformers.
    pub linear_projection: bool,
    /// Quantized linear weights (a GGUF UNet).
    pub quantized: Quant<'q>,
}

/// Attention settings of one block, `None` for blocks without attention.
#[derive(Debug, Clone, Copy)]
pub struct BlockAttention<'a> {
    /// Heads.
    pub heads: usize,
    /// Transformer blocks in each attention layer (one entry per layer of the block).
    pub depths: &'a [usize],
    /// Text-state width.
    pub cross_attention_dim: usize,
}

fn transformer(
    vb: VarBuilder,
    channels: usize,
    common: BlockCommon<'_>,
    attn: BlockAttention,
    layer: usize,
) -> Result<Transformer2D> {
    let layers = attn.depths.get(layer).copied().ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "no transformer depth for attention layer {layer} (the block lists {})",
            attn.depths.len()
        ))
    })?;
    Transformer2D::new(
        vb,
        TransformerSpec {
            channels,
            heads: attn.heads,
            layers,
            cross_attention_dim: attn.cross_attention_dim,
            groups: common.groups,
            linear_projection: common.linear_projection,
            quantized: common.quantized,
        },
    )
}

fn resnet(
    vb: VarBuilder,
    in_c: usize,
    out_c: usize,
    common: BlockCommon<'_>,
    scale: f64,
) -> Result<ResnetBlock2D> {
    ResnetBlock2D::new_quantized(
        vb,
        ResnetSpec {
            in_channels: in_c,
            out_channels: out_c,
            temb_channels: Some(common.temb_channels),
            groups: common.groups,
            eps: common.eps,
            output_scale_factor: scale,
        },
        common.quantized,
    )
}

fn load_attentions(
    vb: &VarBuilder,
    count: usize,
    channels: usize,
    common: BlockCommon<'_>,
    attn: Option<BlockAttention>,
) -> Result<Vec<Transformer2D>> {
    match attn {
        Some(a) => (0..count)
            .map(|j| transformer(vb.pp(format!("attentions.{j}")), channels, common, a, j))
            .collect(),
        None => Ok(Vec::new()),
    }
}

/// A down block: `layers` resnets (+ transformers), then a stride-2 conv unless it is last.
#[derive(Debug)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    downsampler: Option<Downsample2D>,
}

/// Shape of one down or up block.
#[derive(Debug, Clone, Copy)]
pub struct BlockShape {
    /// Channels in.
    pub in_channels: usize,
    /// Channels out.
    pub out_channels: usize,
    /// Resnets in the block.
    pub layers: usize,
    /// Whether the block ends with a resampler.
    pub resample: bool,
}

impl DownBlock {
    /// Loads `down_blocks.i`.
    pub fn new(
        vb: VarBuilder,
        shape: BlockShape,
        common: BlockCommon<'_>,
        attn: Option<BlockAttention>,
        downsample_padding: usize,
    ) -> Result<Self> {
        let resnets = (0..shape.layers)
            .map(|j| {
                let in_c = if j == 0 {
                    shape.in_channels
                } else {
                    shape.out_channels
                };
                resnet(
                    vb.pp(format!("resnets.{j}")),
                    in_c,
                    shape.out_channels,
                    common,
                    1.0,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let downsampler = if shape.resample {
            Some(Downsample2D::new(
                vb.pp("downsamplers.0"),
                shape.out_channels,
                downsample_padding,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions: load_attentions(&vb, shape.layers, shape.out_channels, common, attn)?,
            downsampler,
        })
    }

    /// Runs the block, pushing every intermediate state onto `skips` for the up path.
    pub fn forward(
        &self,
        mut xs: Tensor,
        temb: &Tensor,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        for j in 0..self.resnets.len() {
            xs = self.layer(j, xs, temb, context)?;
            skips.push(xs.clone());
        }
        self.downsample(xs, skips)
    }

    /// [`Self::forward`] for `copies` copies of `xs` [B, C, H, W] (`temb` [copies · B, T] and
    /// `context` [copies · B, S, D] for all of them): the first resnet and the first transformer's steps before
    /// its cross-attention run once, on `xs` ([`Transformer2D::forward_copies`]); the rest on
    /// every copy.
    pub fn forward_copies(
        &self,
        xs: Tensor,
        temb: &Tensor,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
        copies: usize,
    ) -> Result<Tensor> {
        let Some(first) = self.resnets.first() else {
            return self.downsample(repeat_batch(&xs, copies)?, skips);
        };
        let temb_one = temb.narrow(0, 0, xs.dim(0)?)?;
        let xs = first.forward(xs, Some(&temb_one))?;
        let mut xs = match self.attentions.first() {
            Some(attn) => attn.forward_copies(&xs, context, copies)?,
            None => repeat_batch(&xs, copies)?,
        };
        skips.push(xs.clone());
        for j in 1..self.resnets.len() {
            xs = self.layer(j, xs, temb, context)?;
            skips.push(xs.clone());
        }
        self.downsample(xs, skips)
    }

    /// Resnet `j`, then its transformer if the block has one.
    fn layer(&self, j: usize, xs: Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let xs = self.resnets[j].forward(xs, Some(temb))?;
        match self.attentions.get(j) {
            Some(attn) => attn.forward(&xs, context),
            None => Ok(xs),
        }
    }

    /// The downsampler's output (pushed onto `skips`), or `xs` for the last block.
    fn downsample(&self, mut xs: Tensor, skips: &mut Vec<Tensor>) -> Result<Tensor> {
        if let Some(down) = &self.downsampler {
            xs = down.forward(&xs)?;
            skips.push(xs.clone());
        }
        Ok(xs)
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet).
#[derive(Debug)]
pub struct MidBlock {
    first: ResnetBlock2D,
    attention: Transformer2D,
    second: ResnetBlock2D,
}

impl MidBlock {
    /// Loads `mid_block`.
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        common: BlockCommon<'_>,
        attn: BlockAttention,
        scale: f64,
    ) -> Result<Self> {
        Ok(Self {
            first: resnet(vb.pp("resnets.0"), channels, channels, common, scale)?,
            attention: transformer(vb.pp("attentions.0"), channels, common, attn, 0)?,
            second: resnet(vb.pp("resnets.1"), channels, channels, common, scale)?,
        })
    }

    /// Runs the block.
    pub fn forward(&self, xs: Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let xs = self.first.forward(xs, Some(temb))?;
        let xs = self.attention.forward(&xs, context)?;
        self.second.forward(xs, Some(temb))
    }
}

/// An up block: resnets that each take a skip connection (+ transformers), then an upsampler
/// unless it is last.
#[derive(Debug)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// Loads `up_blocks.i`. `skip_channels[j]` is the width of the skip state resnet `j` takes;
    /// `prev_channels` the width coming from below.
    pub fn new(
        vb: VarBuilder,
        shape: BlockShape,
        prev_channels: usize,
        skip_channels: &[usize],
        common: BlockCommon<'_>,
        attn: Option<BlockAttention>,
    ) -> Result<Self> {
        let resnets = skip_channels
            .iter()
            .enumerate()
            .map(|(j, &skip)| {
                let in_c = if j == 0 {
                    prev_channels
                } else {
                    shape.out_channels
                };
                resnet(
                    vb.pp(format!("resnets.{j}")),
                    in_c + skip,
                    shape.out_channels,
                    common,
                    1.0,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let upsampler = if shape.resample {
            Some(Upsample2D::new(vb.pp("upsamplers.0"), shape.out_channels)?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions: load_attentions(&vb, shape.layers, shape.out_channels, common, attn)?,
            upsampler,
        })
    }

    /// Runs the block, popping one skip state per resnet; the upsampler targets the size of
    /// the next skip state so that odd latent sizes work as in diffusers.
    pub fn forward(
        &self,
        mut xs: Tensor,
        temb: &Tensor,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        for (j, resnet) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .ok_or_else(|| candle_core::Error::Msg("UNet skip connections exhausted".into()))?;
            xs = resnet.forward(Tensor::cat(&[&xs, &skip], 1)?, Some(temb))?;
            if let Some(attn) = self.attentions.get(j) {
                xs = attn.forward(&xs, context)?;
            }
        }
        if let Some(up) = &self.upsampler {
            let size = match skips.last() {
                Some(next) => {
                    let (_, _, h, w) = next.dims4()?;
                    Some((h, w))
                }
                None => None,
            };
            xs = up.forward(&xs, size)?;
        }
        Ok(xs)
    }
}
