//! diffusers' `ResnetBlock2D`: two GroupNorm-SiLU-conv stages, an optional time-embedding
//! projection between them, and a 1x1 shortcut when the channel count changes.

use candle_core::{Result, Tensor};
use candle_nn::{conv2d, Conv2d, Conv2dConfig, VarBuilder};

use crate::gguf::GgufWeights;
use crate::kernels::{self, GroupNorm};
use crate::models::linear::Linear;

/// The shape of one resnet block.
#[derive(Debug, Clone, Copy)]
pub struct ResnetSpec {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Time-embedding width, or `None` in the VAE (no time conditioning).
    pub temb_channels: Option<usize>,
    /// GroupNorm groups.
    pub groups: usize,
    /// GroupNorm epsilon.
    pub eps: f64,
    /// The output is divided by this (`output_scale_factor`).
    pub output_scale_factor: f64,
}

/// `ResnetBlock2D` with diffusers' key names.
#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

/// A 3x3 convolution with padding 1, the most common layer of the UNet and VAE.
pub fn conv3x3(in_c: usize, out_c: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    conv2d(in_c, out_c, 3, cfg, vb)
}

impl ResnetBlock2D {
    /// Loads the block from `vb` (the block's prefix).
    pub fn new(vb: VarBuilder, spec: ResnetSpec) -> Result<Self> {
        Self::new_quantized(vb, spec, None)
    }

    /// [`new`](Self::new), the time-embedding projection's quantized blocks from `q` when it
    /// holds them (a GGUF UNet).
    pub fn new_quantized(
        vb: VarBuilder,
        spec: ResnetSpec,
        q: Option<&GgufWeights>,
    ) -> Result<Self> {
        let ResnetSpec {
            in_channels,
            out_channels,
            groups,
            eps,
            ..
        } = spec;
        let conv_shortcut = if in_channels != out_channels {
            Some(conv2d(
                in_channels,
                out_channels,
                1,
                Default::default(),
                vb.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        let time_emb_proj = match spec.temb_channels {
            Some(t) => Some(Linear::load(
                vb.pp("time_emb_proj"),
                t,
                out_channels,
                true,
                q,
            )?),
            None => None,
        };
        Ok(Self {
            norm1: GroupNorm::new(vb.pp("norm1"), groups, in_channels, eps)?,
            conv1: conv3x3(in_channels, out_channels, vb.pp("conv1"))?,
            time_emb_proj,
            norm2: GroupNorm::new(vb.pp("norm2"), groups, out_channels, eps)?,
            conv2: conv3x3(out_channels, out_channels, vb.pp("conv2"))?,
            conv_shortcut,
            output_scale_factor: spec.output_scale_factor,
        })
    }

    /// `xs` [B, C, H, W]; `temb` [B, T] (already passed through nothing: SiLU is applied here).
    ///
    /// Fused as: norm1+SiLU read by conv1 as its input transform reads `xs`; conv1 with its
    /// bias; the time projection added inside norm2 (+SiLU), read the same way by conv2; conv2
    /// with its bias, the shortcut and the output scale in its epilogue. `xs` is taken by value
    /// and dropped once conv1 and the shortcut have read it: at a VAE's 512x512 blocks it is the
    /// largest tensor alive (256 MiB), so a caller that passes its only handle lowers the peak.
    pub fn forward(&self, xs: Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let shortcut = match &self.conv_shortcut {
            Some(conv) => kernels::conv2d(conv, &xs, None, 1.0)?,
            None => xs.clone(),
        };
        let h = kernels::conv2d_normed(&self.conv1, &self.norm1, &xs, None, None, 1.0)?;
        drop(xs);
        let shift = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => Some(proj.forward(&candle_nn::ops::silu(temb)?)?),
            _ => None,
        };
        kernels::conv2d_normed(
            &self.conv2,
            &self.norm2,
            &h,
            shift.as_ref(),
            Some(&shortcut),
            self.output_scale_factor,
        )
    }
}
