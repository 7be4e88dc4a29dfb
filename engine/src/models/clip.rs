//! The CLIP text encoder (transformers' `CLIPTextModel`), configured by
//! `text_encoder/config.json`.
//!
//! Weights saved by transformers 4 (most hub models) are named `text_model.*`; transformers 5
//! drops that prefix. Both are accepted: the prefix is detected from the file.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};

/// The fields of transformers' `CLIPTextConfig` that shape the network.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ClipTextConfig {
    /// Token vocabulary size.
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Width of the hidden states (the UNet's `cross_attention_dim`).
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Sequence length the position embeddings cover.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    /// MLP activation.
    #[serde(default)]
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_vocab() -> usize {
    49408
}
fn default_positions() -> usize {
    77
}
fn default_eps() -> f64 {
    1e-5
}

/// CLIP's MLP activations.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`, OpenAI CLIP (SD 1.x).
    #[default]
    QuickGelu,
    /// Exact (erf) GELU, OpenCLIP (SD 2.x).
    Gelu,
    /// Tanh-approximated GELU.
    #[serde(alias = "gelu_pytorch_tanh")]
    GeluNew,
}

impl Activation {
    fn apply(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Activation::Gelu => xs.gelu_erf(),
            Activation::GeluNew => xs.gelu(),
        }
    }
}

#[derive(Debug)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    activation: Activation,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, c: &ClipTextConfig) -> Result<Self> {
        let d = c.hidden_size;
        let attn = vb.pp("self_attn");
        Ok(Self {
            layer_norm1: layer_norm(d, c.layer_norm_eps, vb.pp("layer_norm1"))?,
            q_proj: linear(d, d, attn.pp("q_proj"))?,
            k_proj: linear(d, d, attn.pp("k_proj"))?,
            v_proj: linear(d, d, attn.pp("v_proj"))?,
            out_proj: linear(d, d, attn.pp("out_proj"))?,
            layer_norm2: layer_norm(d, c.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: linear(d, c.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: linear(c.intermediate_size, d, vb.pp("mlp.fc2"))?,
            heads: c.num_attention_heads,
            activation: c.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor, causal_mask: &Tensor) -> Result<Tensor> {
        let h = self.layer_norm1.forward(xs)?;
        let (q, k, v) = (
            self.q_proj.forward(&h)?,
            self.k_proj.forward(&h)?,
            self.v_proj.forward(&h)?,
        );
        let h = self
            .out_proj
            .forward(&masked_attention(&q, &k, &v, self.heads, causal_mask)?)?;
        let xs = (xs + h)?;
        let h = self.layer_norm2.forward(&xs)?;
        let h = self
            .fc2
            .forward(&self.activation.apply(&self.fc1.forward(&h)?)?)?;
        xs + h
    }
}

/// Attention with an additive mask; CLIP's text model is causal.
fn masked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: &Tensor,
) -> Result<Tensor> {
    let (b, s, inner) = q.dims3()?;
    let head_dim = inner / heads;
    let split = |t: &Tensor| -> Result<Tensor> {
        t.reshape((b, s, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()
    };
    let scale = (head_dim as f64).powf(-0.5);
    let scores = ((split(q)? * scale)?.matmul(&split(k)?.t()?)?).broadcast_add(mask)?;
    let probs =
        candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(q.dtype())?;
    probs
        .matmul(&split(v)?)?
        .transpose(1, 2)?
        .reshape((b, s, inner))
}

/// `CLIPTextModel`: token and position embeddings, transformer layers, final LayerNorm.
#[derive(Debug)]
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
}

impl ClipTextModel {
    /// Loads the model; `vb` is the root of `text_encoder/model.safetensors`.
    pub fn new(vb: VarBuilder, c: &ClipTextConfig) -> Result<Self> {
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        let emb = vb.pp("embeddings");
        let layers = (0..c.num_hidden_layers)
            .map(|i| EncoderLayer::new(vb.pp(format!("encoder.layers.{i}")), c))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            token_embedding: embedding(c.vocab_size, c.hidden_size, emb.pp("token_embedding"))?,
            position_embedding: embedding(
                c.max_position_embeddings,
                c.hidden_size,
                emb.pp("position_embedding"),
            )?,
            layers,
            final_layer_norm: layer_norm(
                c.hidden_size,
                c.layer_norm_eps,
                vb.pp("final_layer_norm"),
            )?,
        })
    }

    /// Number of transformer layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Hidden states for `ids` [B, S] after `layers` transformer layers (all of them for the
    /// usual output; one fewer for AUTOMATIC1111's "CLIP skip 2"), then the final LayerNorm.
    pub fn forward(&self, ids: &Tensor, layers: usize) -> Result<Tensor> {
        self.forward_embeddings(&self.embed_tokens(ids)?, layers)
    }

    /// The token embeddings of `ids` [B, S] -> [B, S, D], before position embeddings: where
    /// textual-inversion vectors replace the rows of their placeholder tokens.
    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        self.token_embedding.forward(ids)
    }

    /// Width of the token embeddings (the hidden size).
    pub fn hidden_size(&self) -> usize {
        self.token_embedding.embeddings().dim(1).unwrap_or(0)
    }

    /// [`forward`](Self::forward) from token embeddings [B, S, D] (see
    /// [`embed_tokens`](Self::embed_tokens)) instead of ids.
    pub fn forward_embeddings(&self, token_embeddings: &Tensor, layers: usize) -> Result<Tensor> {
        let (_, s, _) = token_embeddings.dims3()?;
        let device = token_embeddings.device();
        let positions = Tensor::arange(0u32, s as u32, device)?;
        let mut xs =
            token_embeddings.broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = causal_mask(s, xs.dtype(), device)?;
        for layer in self.layers.iter().take(layers) {
            xs = layer.forward(&xs, &mask)?;
        }
        self.final_layer_norm.forward(&xs)
    }
}

fn causal_mask(s: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..s)
        .flat_map(|i| (0..s).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (s, s), device)?
        .to_dtype(dtype)?
        .unsqueeze(0)
}
