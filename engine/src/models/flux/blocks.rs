//! FLUX's two kinds of transformer block: the double-stream block, where text and image
//! tokens keep their own weights and meet in one joint attention (diffusers'
//! `FluxTransformerBlock`), and the single-stream block, where the joint sequence shares one
//! set of weights and the attention and MLP run in parallel (`FluxSingleTransformerBlock`).

use candle_core::{Result, Tensor, D};
use candle_nn::VarBuilder;

use super::embeddings::RopeTable;
use super::layers::{gated_add, norm_weight, FeedForward, Modulation, PlainNorm, Proj, Quant};
use crate::kernels;

/// diffusers' norm epsilon inside the blocks (LayerNorms and the query/key RMSNorms).
const EPS: f64 = 1e-6;

/// The width and head layout shared by all blocks.
#[derive(Debug, Clone, Copy)]
pub struct BlockShape {
    /// Transformer width (heads x head width).
    pub dim: usize,
    /// Attention heads.
    pub heads: usize,
    /// Head width.
    pub head_dim: usize,
}

/// Query, key and value projections of one token stream, with the query/key RMSNorms.
#[derive(Debug, Clone)]
struct Qkv {
    q: Proj,
    k: Proj,
    v: Proj,
    norm_q: Tensor,
    norm_k: Tensor,
}

impl Qkv {
    /// `names`: the q, k, v projections and the q, k norms under `vb`.
    fn new(vb: &VarBuilder, s: BlockShape, names: [&str; 5], q: Quant) -> Result<Self> {
        Ok(Self {
            q: Proj::new(vb.pp(names[0]), s.dim, s.dim, q)?,
            k: Proj::new(vb.pp(names[1]), s.dim, s.dim, q)?,
            v: Proj::new(vb.pp(names[2]), s.dim, s.dim, q)?,
            norm_q: norm_weight(vb.pp(names[3]), s.head_dim)?,
            norm_k: norm_weight(vb.pp(names[4]), s.head_dim)?,
        })
    }

    /// Normed and rotated queries and keys, and values, of `x`, whose tokens take the rotary
    /// rows `cos`/`sin`.
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, heads: usize) -> Result<[Tensor; 3]> {
        let q = kernels::rms_norm_rope(&self.q.forward(x)?, &self.norm_q, EPS, cos, sin, heads)?;
        let k = kernels::rms_norm_rope(&self.k.forward(x)?, &self.norm_k, EPS, cos, sin, heads)?;
        Ok([q, k, self.v.forward(x)?])
    }
}

/// `FluxTransformerBlock`: text (`context`) and image streams, each with its adaLN-Zero
/// modulation, attention projections and feed-forward, joined in one attention.
#[derive(Debug, Clone)]
pub struct DoubleBlock {
    norm1: Modulation,
    norm1_context: Modulation,
    img: Qkv,
    txt: Qkv,
    to_out: Proj,
    to_add_out: Proj,
    ff: FeedForward,
    ff_context: FeedForward,
    norm: PlainNorm,
    shape: BlockShape,
}

impl DoubleBlock {
    /// Loads `transformer_blocks.N` from `vb`.
    pub fn new(vb: VarBuilder, shape: BlockShape, q: Quant) -> Result<Self> {
        let attn = vb.pp("attn");
        let d = shape.dim;
        Ok(Self {
            norm1: Modulation::new(vb.pp("norm1"), d, 6, q)?,
            norm1_context: Modulation::new(vb.pp("norm1_context"), d, 6, q)?,
            img: Qkv::new(
                &attn,
                shape,
                ["to_q", "to_k", "to_v", "norm_q", "norm_k"],
                q,
            )?,
            txt: Qkv::new(
                &attn,
                shape,
                [
                    "add_q_proj",
                    "add_k_proj",
                    "add_v_proj",
                    "norm_added_q",
                    "norm_added_k",
                ],
                q,
            )?,
            to_out: Proj::new(attn.pp("to_out.0"), d, d, q)?,
            to_add_out: Proj::new(attn.pp("to_add_out"), d, d, q)?,
            ff: FeedForward::new(vb.pp("ff"), d, q)?,
            ff_context: FeedForward::new(vb.pp("ff_context"), d, q)?,
            norm: PlainNorm::new(&vb, d, EPS)?,
            shape,
        })
    }

    /// Updates the image tokens `img` `[B, Si, dim]` and text tokens `txt` `[B, St, dim]`;
    /// `silu_temb` is `silu` of the conditioning, `rope` the table of `[txt, img]`.
    pub fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        silu_temb: &Tensor,
        rope: &RopeTable,
    ) -> Result<(Tensor, Tensor)> {
        let st = txt.dim(1)?;
        let si = img.dim(1)?;
        let m = self.norm1.forward(silu_temb)?;
        let c = self.norm1_context.forward(silu_temb)?;
        // Chunks: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp.
        let norm_img = self.norm.modulate(img, &m[0], &m[1])?;
        let norm_txt = self.norm.modulate(txt, &c[0], &c[1])?;

        let heads = self.shape.heads;
        let (cos_t, sin_t) = rope.rows(0, st)?;
        let (cos_i, sin_i) = rope.rows(st, si)?;
        let [qt, kt, vt] = self.txt.forward(&norm_txt, &cos_t, &sin_t, heads)?;
        let [qi, ki, vi] = self.img.forward(&norm_img, &cos_i, &sin_i, heads)?;
        let joint = |a: Tensor, b: Tensor| Tensor::cat(&[a, b], 1);
        let attn = kernels::attention(&joint(qt, qi)?, &joint(kt, ki)?, &joint(vt, vi)?, heads)?;
        let txt_attn = self.to_add_out.forward(&attn.narrow(1, 0, st)?)?;
        let img_attn = self.to_out.forward(&attn.narrow(1, st, si)?)?;

        let img = gated_add(img, &m[2], &img_attn)?;
        let ff = self.ff.forward(&self.norm.modulate(&img, &m[3], &m[4])?)?;
        let img = gated_add(&img, &m[5], &ff)?;

        let txt = gated_add(txt, &c[2], &txt_attn)?;
        let ff = self
            .ff_context
            .forward(&self.norm.modulate(&txt, &c[3], &c[4])?)?;
        let txt = gated_add(&txt, &c[5], &ff)?;
        Ok((img, txt))
    }
}

/// `FluxSingleTransformerBlock`: one modulation, attention and a parallel MLP over the joint
/// `[text, image]` sequence, projected back together by `proj_out`.
#[derive(Debug, Clone)]
pub struct SingleBlock {
    norm: Modulation,
    qkv: Qkv,
    proj_mlp: Proj,
    proj_out: Proj,
    layer_norm: PlainNorm,
    shape: BlockShape,
}

impl SingleBlock {
    /// Loads `single_transformer_blocks.N` from `vb`.
    pub fn new(vb: VarBuilder, shape: BlockShape, q: Quant) -> Result<Self> {
        let d = shape.dim;
        let mlp = 4 * d;
        Ok(Self {
            norm: Modulation::new(vb.pp("norm"), d, 3, q)?,
            qkv: Qkv::new(
                &vb.pp("attn"),
                shape,
                ["to_q", "to_k", "to_v", "norm_q", "norm_k"],
                q,
            )?,
            proj_mlp: Proj::new(vb.pp("proj_mlp"), d, mlp, q)?,
            proj_out: Proj::new(vb.pp("proj_out"), d + mlp, d, q)?,
            layer_norm: PlainNorm::new(&vb, d, EPS)?,
            shape,
        })
    }

    /// Updates the joint sequence `x` `[B, St + Si, dim]` (text first), whose rotary table is
    /// `rope`.
    pub fn forward(&self, x: &Tensor, silu_temb: &Tensor, rope: &RopeTable) -> Result<Tensor> {
        // Chunks: shift, scale, gate.
        let m = self.norm.forward(silu_temb)?;
        let normed = self.layer_norm.modulate(x, &m[0], &m[1])?;
        let mlp = self.proj_mlp.forward(&normed)?.gelu()?;
        let [q, k, v] = self
            .qkv
            .forward(&normed, &rope.cos, &rope.sin, self.shape.heads)?;
        let attn = kernels::attention(&q, &k, &v, self.shape.heads)?;
        let out = self
            .proj_out
            .forward(&Tensor::cat(&[attn, mlp], D::Minus1)?)?;
        gated_add(x, &m[2], &out)
    }
}
