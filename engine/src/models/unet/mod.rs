//! diffusers' `UNet2DConditionModel` for SD 1.x and 2.x, built from `unet/config.json`.

mod blocks;
pub mod config;
pub(crate) mod embeddings;
mod transformer;

use candle_core::{Result, Tensor};
use candle_nn::{conv2d, Conv2d, Conv2dConfig, VarBuilder};

use crate::kernels::{self, GroupNorm};

use blocks::{BlockAttention, BlockCommon, BlockShape, DownBlock, MidBlock, UpBlock};
pub use config::UNetConfig;
use embeddings::{timestep_embedding, TimestepMlp};

/// The conditional UNet: predicts noise (or v, or the sample) from noisy latents, a timestep
/// and text-encoder states.
#[derive(Debug)]
pub struct UNet2DConditionModel {
    conv_in: Conv2d,
    time_embedding: TimestepMlp,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    config: UNetConfig,
}

fn conv_k(in_c: usize, out_c: usize, k: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: (k - 1) / 2,
        ..Default::default()
    };
    conv2d(in_c, out_c, k, cfg, vb)
}

impl UNet2DConditionModel {
    /// Builds the model described by `config` from the weights in `vb`.
    pub fn new(vb: VarBuilder, config: &UNetConfig) -> Result<Self> {
        let plan = config.plan().map_err(candle_core::Error::Msg)?;
        let ch = &config.block_out_channels;
        let n = ch.len();
        let temb_channels = ch[0] * 4;
        let common = BlockCommon {
            temb_channels,
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            linear_projection: config.use_linear_projection,
        };
        let attention = |i: usize, has: bool| {
            has.then_some(BlockAttention {
                heads: plan.heads[i],
                layers: plan.transformer_layers[i],
                cross_attention_dim: plan.cross_attention_dim[i],
            })
        };

        let mut down_blocks = Vec::with_capacity(n);
        // Widths of the skip states the down path pushes, in push order.
        let mut skip_widths = vec![ch[0]];
        for i in 0..n {
            let shape = BlockShape {
                in_channels: if i == 0 { ch[0] } else { ch[i - 1] },
                out_channels: ch[i],
                layers: plan.layers[i],
                resample: i + 1 < n,
            };
            down_blocks.push(DownBlock::new(
                vb.pp(format!("down_blocks.{i}")),
                shape,
                common,
                attention(i, plan.cross_attn[i]),
                config.downsample_padding,
            )?);
            skip_widths.extend(std::iter::repeat_n(
                ch[i],
                plan.layers[i] + usize::from(shape.resample),
            ));
        }

        let mid_attention = BlockAttention {
            heads: plan.heads[n - 1],
            layers: plan.transformer_layers[n - 1],
            cross_attention_dim: plan.cross_attention_dim[n - 1],
        };
        let mid_block = MidBlock::new(
            vb.pp("mid_block"),
            ch[n - 1],
            common,
            mid_attention,
            config.mid_block_scale_factor,
        )?;

        let mut up_blocks = Vec::with_capacity(n);
        let mut prev = ch[n - 1];
        for i in 0..n {
            let level = n - 1 - i; // the down level this up block mirrors
            let layers = plan.layers[level] + 1;
            let skips: Vec<usize> = (0..layers)
                .map(|_| skip_widths.pop().unwrap_or(0))
                .collect();
            let shape = BlockShape {
                in_channels: ch[level.saturating_sub(1)],
                out_channels: ch[level],
                layers,
                resample: i + 1 < n,
            };
            up_blocks.push(UpBlock::new(
                vb.pp(format!("up_blocks.{i}")),
                shape,
                prev,
                &skips,
                common,
                attention(level, plan.up_cross_attn[i]),
            )?);
            prev = ch[level];
        }

        Ok(Self {
            conv_in: conv_k(
                config.in_channels,
                ch[0],
                config.conv_in_kernel,
                vb.pp("conv_in"),
            )?,
            time_embedding: TimestepMlp::new(vb.pp("time_embedding"), ch[0], temb_channels)?,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::new(
                vb.pp("conv_norm_out"),
                config.norm_num_groups,
                ch[0],
                config.norm_eps,
            )?,
            conv_out: conv_k(
                ch[0],
                config.out_channels,
                config.conv_out_kernel,
                vb.pp("conv_out"),
            )?,
            config: config.clone(),
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Predicts the model output for `sample` [B, C, H, W] at `timestep` conditioned on
    /// `context` [B, S, D].
    pub fn forward(&self, sample: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        let (batch, _, _, _) = sample.dims4()?;
        let c = &self.config;
        let t = timestep_embedding(
            timestep,
            batch,
            c.block_out_channels[0],
            c.flip_sin_to_cos,
            c.freq_shift,
            sample.device(),
        )?;
        let temb = self.time_embedding.forward(&t, sample.dtype())?;
        let sample = if c.center_input_sample {
            ((sample * 2.0)? - 1.0)?
        } else {
            sample.clone()
        };
        let mut xs = kernels::conv2d(&self.conv_in, &sample, None, 1.0)?;
        let mut skips = vec![xs.clone()];
        for block in &self.down_blocks {
            xs = block.forward(xs, &temb, context, &mut skips)?;
        }
        xs = self.mid_block.forward(&xs, &temb, context)?;
        for block in &self.up_blocks {
            xs = block.forward(xs, &temb, context, &mut skips)?;
        }
        let xs = self.conv_norm_out.forward(&xs, None, true)?;
        kernels::conv2d(&self.conv_out, &xs, None, 1.0)
    }
}
