//! diffusers' `UNet2DConditionModel` for SD 1.x, 2.x and SDXL, built from `unet/config.json`.
//!
//! SDXL adds `text_time` conditioning: every time id (original size, crop top-left, target size,
//! or the refiner's aesthetic score) is embedded sinusoidally like the timestep
//! (`add_time_proj`), concatenated after the pooled text embedding and passed through
//! `add_embedding` (linear, SiLU, linear); the result is added to the time embedding.

mod blocks;
pub mod config;
pub(crate) mod embeddings;
mod transformer;

use candle_core::{Result, Tensor};
use candle_nn::{conv2d, Conv2d, Conv2dConfig, VarBuilder};

use crate::gguf::GgufWeights;
use crate::kernels::{self, GroupNorm};

use crate::models::repeat_batch;
use blocks::{BlockAttention, BlockCommon, BlockShape, DownBlock, MidBlock, UpBlock};
pub use config::{BlockPlan, LayerDepth, TextTime, TransformerDepth, UNetConfig};
use embeddings::{sinusoidal_embedding, timestep_embedding, TimestepMlp};

/// SDXL's added conditioning for a UNet with `addition_embed_type: "text_time"` (diffusers'
/// `added_cond_kwargs`), one row per sample of the batch.
#[derive(Debug, Clone)]
pub struct AddedCond {
    /// Pooled text embedding [B, P] (the second text encoder's projected `text_embeds`).
    pub text_embeds: Tensor,
    /// Time ids [B, N]: `original_size + crop_top_left + target_size` (N = 6, as (h, w) and
    /// (top, left) pairs) or, for the refiner, `original_size + crop_top_left +
    /// (aesthetic_score,)` (N = 5).
    pub time_ids: Tensor,
}

/// The conditional UNet: predicts noise (or v, or the sample) from noisy latents, a timestep
/// and text-encoder states.
#[derive(Debug)]
pub struct UNet2DConditionModel {
    conv_in: Conv2d,
    time_embedding: TimestepMlp,
    add_embedding: Option<(TextTime, TimestepMlp)>,
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

/// The attention settings of level `i` with the given transformer `depths`, if `has` attention.
fn attention<'a>(
    plan: &BlockPlan,
    i: usize,
    depths: &'a [usize],
    has: bool,
) -> Option<BlockAttention<'a>> {
    has.then_some(BlockAttention {
        heads: plan.heads[i],
        depths,
        cross_attention_dim: plan.cross_attention_dim[i],
    })
}

impl UNet2DConditionModel {
    /// Builds the model described by `config` from the weights in `vb`.
    pub fn new(vb: VarBuilder, config: &UNetConfig) -> Result<Self> {
        Self::new_quantized(vb, config, None)
    }

    /// [`new`](Self::new), with the linear layers (attention, feed-forward, linear
    /// projections, time and added embeddings, resnet time projections) multiplying against
    /// `quantized`'s blocks where it holds them in a quantized type (a GGUF UNet); `vb` serves
    /// every other tensor.
    pub fn new_quantized(
        vb: VarBuilder,
        config: &UNetConfig,
        quantized: Option<&GgufWeights>,
    ) -> Result<Self> {
        let plan = config.plan().map_err(candle_core::Error::Msg)?;
        let ch = &config.block_out_channels;
        let n = ch.len();
        let temb_channels = ch[0] * 4;
        let common = BlockCommon {
            temb_channels,
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            linear_projection: config.use_linear_projection,
            quantized,
        };

        let (down_blocks, skip_widths) = down_blocks(&vb, config, &plan, common)?;

        let mid_attention = BlockAttention {
            heads: plan.heads[n - 1],
            depths: &[plan.mid_depth],
            cross_attention_dim: plan.cross_attention_dim[n - 1],
        };
        let mid_block = MidBlock::new(
            vb.pp("mid_block"),
            ch[n - 1],
            common,
            mid_attention,
            config.mid_block_scale_factor,
        )?;

        let up_blocks = up_blocks(&vb, config, &plan, common, skip_widths)?;

        Ok(Self {
            conv_in: conv_k(
                config.in_channels,
                ch[0],
                config.conv_in_kernel,
                vb.pp("conv_in"),
            )?,
            time_embedding: TimestepMlp::new(
                vb.pp("time_embedding"),
                ch[0],
                temb_channels,
                quantized,
            )?,
            add_embedding: match plan.text_time {
                Some(tt) => Some((
                    tt,
                    TimestepMlp::new(
                        vb.pp("add_embedding"),
                        tt.input_dim,
                        temb_channels,
                        quantized,
                    )?,
                )),
                None => None,
            },
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
    /// `context` [B, S, D] and, for SDXL UNets (`text_time`), on `added`.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedCond>,
    ) -> Result<Tensor> {
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
        let mut temb = self.time_embedding.forward(&t, sample.dtype())?;
        if let Some(aug) = self.added_embedding(batch, added, sample.dtype())? {
            temb = (temb + aug)?;
        }
        let sample = if c.center_input_sample {
            ((sample * 2.0)? - 1.0)?
        } else {
            sample.clone()
        };
        // Guidance runs the same latents against two texts (`[x; x]`): without added
        // conditioning (which differs between the texts), everything before the first
        // cross-attention is the same for each copy and runs once.
        let copies = if added.is_none() {
            copies_in_batch(&sample)?
        } else {
            1
        };
        let (mut xs, mut skips) = self.down_path(&sample, &temb, context, copies)?;
        xs = self.mid_block.forward(xs, &temb, context)?;
        for block in &self.up_blocks {
            xs = block.forward(xs, &temb, context, &mut skips)?;
        }
        kernels::conv2d_normed(&self.conv_out, &self.conv_norm_out, &xs, None, None, 1.0)
    }

    /// The down blocks' output and every state they keep for the up path (conv_in's output
    /// first), for `sample` [B, C, H, W] made of `copies` copies of its first `B / copies`
    /// samples: conv_in, the first down block's first resnet and the steps of its first
    /// transformer before the cross-attention run once on those ([`DownBlock::forward_copies`];
    /// every kernel computes each sample of a batch on its own, so the result is the same).
    fn down_path(
        &self,
        sample: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        copies: usize,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut blocks = self.down_blocks.iter();
        let one = sample.dim(0)? / copies.max(1);
        let mut xs = kernels::conv2d(&self.conv_in, &sample.narrow(0, 0, one)?, None, 1.0)?;
        let mut skips = vec![repeat_batch(&xs, copies)?];
        if copies > 1 {
            xs = match blocks.next() {
                Some(first) => first.forward_copies(xs, temb, context, &mut skips, copies)?,
                None => repeat_batch(&xs, copies)?,
            };
        }
        for block in blocks {
            xs = block.forward(xs, temb, context, &mut skips)?;
        }
        Ok((xs, skips))
    }

    /// `add_embedding(concat(text_embeds, add_time_proj(time_ids)))` [B, T], or `None` for a
    /// UNet without added conditioning. Errors name what is missing or mis-shaped.
    fn added_embedding(
        &self,
        batch: usize,
        added: Option<&AddedCond>,
        dtype: candle_core::DType,
    ) -> Result<Option<Tensor>> {
        let msg = |m: String| Err(candle_core::Error::Msg(m));
        let ((tt, mlp), added) = match (&self.add_embedding, added) {
            (None, None) => return Ok(None),
            (None, Some(_)) => return msg(
                "added conditioning (pooled text embeddings and time ids) was given to a UNet without it: its config has no `addition_embed_type` \"text_time\"".into(),
            ),
            (Some(_), None) => return msg(
                "this UNet's config has `addition_embed_type` \"text_time\" (SDXL), so it needs the added conditioning: the pooled text embeddings (`text_embeds`) and the time ids (original size, crop top-left, target size or aesthetic score)".into(),
            ),
            (Some(e), Some(a)) => (e, a),
        };
        let (tb, pooled) = added.text_embeds.dims2()?;
        let (ib, ids) = added.time_ids.dims2()?;
        if tb != batch || ib != batch {
            return msg(format!(
                "added conditioning has {tb} rows of text_embeds and {ib} rows of time_ids for a batch of {batch} latents; give one row of each per sample"
            ));
        }
        if pooled + ids * tt.time_embed_dim != tt.input_dim {
            return msg(format!(
                "added conditioning of width {pooled} (text_embeds) + {ids} time ids x {} (`addition_time_embed_dim`) does not match the UNet's `projection_class_embeddings_input_dim` {}",
                tt.time_embed_dim, tt.input_dim
            ));
        }
        let values = added
            .time_ids
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let c = &self.config;
        let time_embeds = sinusoidal_embedding(
            &values,
            tt.time_embed_dim,
            c.flip_sin_to_cos,
            c.freq_shift,
            added.time_ids.device(),
        )?
        .reshape((batch, ids * tt.time_embed_dim))?;
        let input = Tensor::cat(
            &[
                added.text_embeds.to_dtype(dtype)?,
                time_embeds.to_dtype(dtype)?,
            ],
            1,
        )?;
        mlp.forward(&input, dtype).map(Some)
    }
}

/// The down path's blocks, and the widths of the skip states they push, in push order.
fn down_blocks(
    vb: &VarBuilder,
    config: &UNetConfig,
    plan: &BlockPlan,
    common: BlockCommon<'_>,
) -> Result<(Vec<DownBlock>, Vec<usize>)> {
    let ch = &config.block_out_channels;
    let n = ch.len();
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
            attention(plan, i, &plan.down_depths[i], plan.cross_attn[i]),
            config.downsample_padding,
        )?);
        skip_widths.extend(std::iter::repeat_n(
            ch[i],
            plan.layers[i] + usize::from(shape.resample),
        ));
    }
    Ok((down_blocks, skip_widths))
}

/// The up path's blocks, each taking the skip states of the down level it mirrors.
fn up_blocks(
    vb: &VarBuilder,
    config: &UNetConfig,
    plan: &BlockPlan,
    common: BlockCommon<'_>,
    mut skip_widths: Vec<usize>,
) -> Result<Vec<UpBlock>> {
    let ch = &config.block_out_channels;
    let n = ch.len();
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
            attention(plan, level, &plan.up_depths[i], plan.up_cross_attn[i]),
        )?);
        prev = ch[level];
    }
    Ok(up_blocks)
}

/// The most copies `sample` [B, ...] is of its first `B / copies` samples, repeated one after
/// another along the batch (bit for bit); 1 when it is not such a repetition.
fn copies_in_batch(sample: &Tensor) -> Result<usize> {
    let batch = sample.dim(0)?;
    if batch < 2 {
        return Ok(1);
    }
    let values = sample
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let per_sample = values.len() / batch;
    if per_sample == 0 {
        return Ok(1);
    }
    let repeats = |one: usize| {
        let period = one * per_sample;
        values
            .iter()
            .zip(&values[period..])
            .all(|(a, b)| a.to_bits() == b.to_bits())
    };
    Ok((1..batch)
        .filter(|one| batch % one == 0)
        .find(|&one| repeats(one))
        .map_or(1, |one| batch / one))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn copies_in_batch_finds_the_shortest_repeated_run() {
        let x = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[[1f32, 2.0], [3.0, 5.0]], &Device::Cpu).unwrap();
        let z = Tensor::new(&[[-0f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        let nan = Tensor::new(&[[f32::NAN, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        let copies = |parts: &[&Tensor]| {
            let batch = Tensor::stack(parts, 0).unwrap().unsqueeze(1).unwrap();
            copies_in_batch(&batch).unwrap()
        };
        assert_eq!(copies(&[&x]), 1);
        assert_eq!(copies(&[&x, &x]), 2);
        assert_eq!(copies(&[&x, &y]), 1);
        assert_eq!(copies(&[&x, &x, &x]), 3);
        assert_eq!(copies(&[&x, &y, &x]), 1);
        assert_eq!(copies(&[&x, &y, &x, &y]), 2);
        assert_eq!(copies(&[&x, &x, &x, &x]), 4);
        assert_eq!(copies(&[&x, &y, &y, &x]), 1);
        assert_eq!(copies(&[&x, &y, &x, &y, &x, &y]), 3);
        // Bits, not values: -0 is not 0, and NaN repeats.
        assert_eq!(copies(&[&x, &z]), 1);
        assert_eq!(copies(&[&nan, &nan]), 2);
    }
}
