//! diffusers' `Transformer2DModel` as used by SD 1/2: GroupNorm, projection in (1x1 conv or
//! linear), `BasicTransformerBlock`s (self-attention, cross-attention, GEGLU feed-forward),
//! projection out, residual.

use candle_core::{Module, Result, Tensor};
use candle_nn::{conv2d, layer_norm, Conv2d, LayerNorm, VarBuilder};

use crate::gguf::GgufWeights;
use crate::kernels::{self, GroupNorm};
use crate::models::attention::scaled_dot_product;
use crate::models::linear::Linear;
use crate::models::repeat_batch;

/// Where linear layers may take quantized blocks from (a GGUF UNet), by diffusers name.
pub type Quant<'a> = Option<&'a GgufWeights>;

/// Shape of one transformer.
#[derive(Debug, Clone, Copy)]
pub struct TransformerSpec<'a> {
    /// Channels of the feature map (= heads x head width).
    pub channels: usize,
    /// Attention heads.
    pub heads: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Width of the text-encoder states.
    pub cross_attention_dim: usize,
    /// GroupNorm groups of the input norm.
    pub groups: usize,
    /// Linear rather than 1x1 conv projections.
    pub linear_projection: bool,
    /// Quantized linear weights (a GGUF UNet).
    pub quantized: Quant<'a>,
}

#[derive(Debug)]
struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl Attention {
    fn new(vb: VarBuilder, dim: usize, context_dim: usize, heads: usize, q: Quant) -> Result<Self> {
        Ok(Self {
            to_q: Linear::load(vb.pp("to_q"), dim, dim, false, q)?,
            to_k: Linear::load(vb.pp("to_k"), context_dim, dim, false, q)?,
            to_v: Linear::load(vb.pp("to_v"), context_dim, dim, false, q)?,
            to_out: Linear::load(vb.pp("to_out.0"), dim, dim, true, q)?,
            heads,
        })
    }

    /// Attention of `xs` over `context` (itself when `None`), plus `residual`.
    fn forward(&self, xs: &Tensor, context: Option<&Tensor>, residual: &Tensor) -> Result<Tensor> {
        let context = context.unwrap_or(xs);
        let q = self.to_q.forward(xs)?;
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
        let attended = scaled_dot_product(&q, &k, &v, self.heads)?;
        self.to_out.forward_add(&attended, Some(residual))
    }
}

#[derive(Debug)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    geglu: Linear,
    ff_out: Linear,
}

impl BasicTransformerBlock {
    fn new(vb: VarBuilder, dim: usize, heads: usize, context_dim: usize, q: Quant) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads, q)?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, context_dim, heads, q)?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            geglu: Linear::load(vb.pp("ff.net.0.proj"), dim, inner * 2, true, q)?,
            ff_out: Linear::load(vb.pp("ff.net.2"), inner, dim, true, q)?,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        self.attend_to_text(&self.self_attention(xs)?, context)
    }

    /// The block's first step, self-attention (with its residual): the last one that does not
    /// see the text.
    fn self_attention(&self, xs: &Tensor) -> Result<Tensor> {
        self.attn1.forward(&self.norm1.forward(xs)?, None, xs)
    }

    /// The block's steps after [`Self::self_attention`]: cross-attention to `context`, then
    /// the feed-forward.
    fn attend_to_text(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let xs = self
            .attn2
            .forward(&self.norm2.forward(xs)?, Some(context), xs)?;
        let gated = self.geglu.geglu(&self.norm3.forward(&xs)?)?;
        self.ff_out.forward_add(&gated, Some(&xs))
    }
}

#[derive(Debug)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn new(vb: VarBuilder, in_c: usize, out_c: usize, linear: bool, q: Quant) -> Result<Self> {
        Ok(if linear {
            Projection::Linear(Linear::load(vb, in_c, out_c, true, q)?)
        } else {
            Projection::Conv(conv2d(in_c, out_c, 1, Default::default(), vb)?)
        })
    }
}

/// `Transformer2DModel` with continuous input.
#[derive(Debug)]
pub struct Transformer2D {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2D {
    /// Loads the transformer under `vb` (an `attentions.N` prefix).
    pub fn new(vb: VarBuilder, s: TransformerSpec<'_>) -> Result<Self> {
        let c = s.channels;
        let blocks = (0..s.layers)
            .map(|i| {
                BasicTransformerBlock::new(
                    vb.pp(format!("transformer_blocks.{i}")),
                    c,
                    s.heads,
                    s.cross_attention_dim,
                    s.quantized,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: GroupNorm::new(vb.pp("norm"), s.groups, c, 1e-6)?,
            proj_in: Projection::new(vb.pp("proj_in"), c, c, s.linear_projection, s.quantized)?,
            blocks,
            proj_out: Projection::new(vb.pp("proj_out"), c, c, s.linear_projection, s.quantized)?,
        })
    }

    /// `xs` [B, C, H, W] attending to `context` [B, S, D].
    pub fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let mut tokens = self.tokens_in(xs)?;
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        self.map_out(&tokens, xs)
    }

    /// [`Self::forward`] for `copies` copies of `xs` [B, C, H, W] (the output is [copies · B,
    /// C, H, W], `context` [copies · B, S, D]): everything before the first cross-attention
    /// (the norm, the projection in, the first block's self-attention) runs once, on `xs`,
    /// and its result is repeated, since every kernel computes an image independently of the
    /// others in its batch. The rest runs on all copies.
    pub fn forward_copies(&self, xs: &Tensor, context: &Tensor, copies: usize) -> Result<Tensor> {
        let mut tokens = self.tokens_in(xs)?;
        let mut blocks = self.blocks.iter();
        if let Some(first) = blocks.next() {
            let shared = first.self_attention(&tokens)?;
            tokens = first.attend_to_text(&repeat_batch(&shared, copies)?, context)?;
        } else {
            tokens = repeat_batch(&tokens, copies)?;
        }
        for block in blocks {
            tokens = block.forward(&tokens, context)?;
        }
        self.map_out(&tokens, &repeat_batch(xs, copies)?)
    }

    /// The map `xs` [B, C, H, W] normed and projected into tokens [B, H·W, C].
    fn tokens_in(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let normed = self.norm.forward(xs, None, false)?;
        let to_tokens =
            |t: &Tensor| kernels::transpose::swap_last_two(&t.reshape((b, c, h * w))?);
        match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&kernels::conv2d(conv, &normed, None, 1.0)?),
            Projection::Linear(lin) => lin.forward(&to_tokens(&normed)?),
        }
    }

    /// The tokens [B, H·W, C] projected out as a map shaped like `xs`, plus `xs`.
    fn map_out(&self, tokens: &Tensor, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let to_map = |t: &Tensor| kernels::transpose::swap_last_two(t)?.reshape((b, c, h, w));
        match &self.proj_out {
            Projection::Conv(conv) => kernels::conv2d(conv, &to_map(tokens)?, Some(xs), 1.0),
            Projection::Linear(lin) => to_map(&lin.forward(tokens)?)? + xs,
        }
    }
}
