//! The CLIP text encoder (transformers' `CLIPTextModel` and `CLIPTextModelWithProjection`),
//! configured by `text_encoder/config.json` (or `text_encoder_2/`).
//!
//! Weights saved by transformers 4 (most hub models) are named `text_model.*`; transformers 5
//! drops that prefix for `CLIPTextModel`. Both are accepted: the prefix is detected from the
//! file. `CLIPTextModelWithProjection` (SDXL's second encoder) is saved as `text_model.*` plus a
//! top-level `text_projection.weight` by both versions.
//!
//! [`ClipTextModel::forward`] gives SD 1/2's conditioning (hidden states after some layers,
//! then the final LayerNorm); [`ClipTextModel::encode`] gives everything else: hidden states
//! with or without the final LayerNorm (SDXL uses diffusers' `hidden_states[-2]`, the states
//! after all layers but one, un-normed), the pooled output and the projected `text_embeds`.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, layer_norm, Embedding, LayerNorm, VarBuilder};

use crate::models::linear::Linear;

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
    /// The end-of-text id the pooled output is read at. Configs written before transformers'
    /// PR #24773 say 2 (SD 1.x, SDXL); transformers then pools at `argmax(input_ids)` (the eos
    /// token has the largest id of the vocabulary) instead.
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
    /// Output width of `text_projection` (`CLIPTextModelWithProjection`).
    #[serde(default = "default_projection")]
    pub projection_dim: usize,
    /// The transformers classes the weights were saved from (`CLIPTextModelWithProjection`
    /// requires `text_projection.weight`).
    #[serde(default)]
    pub architectures: Vec<String>,
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
fn default_eos() -> u32 {
    49407
}
fn default_projection() -> usize {
    512
}

/// The `eos_token_id` of configs written before transformers fixed it: pool at the largest id.
const LEGACY_EOS: u32 = 2;

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
            q_proj: Linear::load(attn.pp("q_proj"), d, d, true, None)?,
            k_proj: Linear::load(attn.pp("k_proj"), d, d, true, None)?,
            v_proj: Linear::load(attn.pp("v_proj"), d, d, true, None)?,
            out_proj: Linear::load(attn.pp("out_proj"), d, d, true, None)?,
            layer_norm2: layer_norm(d, c.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: Linear::load(vb.pp("mlp.fc1"), d, c.intermediate_size, true, None)?,
            fc2: Linear::load(vb.pp("mlp.fc2"), c.intermediate_size, d, true, None)?,
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

/// What [`ClipTextModel::encode`] returns.
#[derive(Debug, Clone)]
pub struct ClipOutput {
    /// Hidden states [B, S, D] after the requested number of layers, with the final LayerNorm
    /// if it was asked for.
    pub states: Tensor,
    /// transformers' `pooler_output` [B, D]: the output of all layers and the final LayerNorm
    /// at each sequence's end-of-text token, whatever `layers` was (FLUX uses CLIP-L's).
    pub pooled: Tensor,
    /// `pooled` through `text_projection` [B, projection_dim]: transformers'
    /// `CLIPTextModelWithProjection.text_embeds` (SDXL's pooled conditioning); `None` for a
    /// model without a projection.
    pub text_embeds: Option<Tensor>,
}

/// `CLIPTextModel`: token and position embeddings, transformer layers, final LayerNorm; with
/// `text_projection` when the weights have one (`CLIPTextModelWithProjection`).
#[derive(Debug)]
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
    eos_token_id: u32,
}

impl ClipTextModel {
    /// Loads the model; `vb` is the root of `text_encoder/model.safetensors`. The projection is
    /// loaded when the file has `text_projection.weight` or the config's `architectures` names
    /// `CLIPTextModelWithProjection` (then a missing tensor is an error that names it).
    pub fn new(vb: VarBuilder, c: &ClipTextConfig) -> Result<Self> {
        let with_projection = vb.contains_tensor("text_projection.weight")
            || c.architectures
                .iter()
                .any(|a| a == "CLIPTextModelWithProjection");
        let text_projection = if with_projection {
            Some(Linear::load(
                vb.pp("text_projection"),
                c.hidden_size,
                c.projection_dim,
                false,
                None,
            )?)
        } else {
            None
        };
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
            text_projection,
            eos_token_id: c.eos_token_id,
        })
    }

    /// Number of transformer layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Whether the model has `text_projection` (so [`ClipOutput::text_embeds`] is set).
    pub fn has_projection(&self) -> bool {
        self.text_projection.is_some()
    }

    /// Hidden states for `ids` [B, S] after `layers` transformer layers (all of them for the
    /// usual output; one fewer for AUTOMATIC1111's "CLIP skip 2"), then the final LayerNorm.
    pub fn forward(&self, ids: &Tensor, layers: usize) -> Result<Tensor> {
        self.forward_embeddings(&self.embed_tokens(ids)?, layers)
    }

    /// The token embeddings of `ids` [B, S] -> [B, S, D], before position embeddings: where
    /// textual-inversion vectors replace the rows of their placeholder tokens. A table kept
    /// 16-bit in memory ([`crate::weights::is_kernel_weight`]) gives its rows widened to the
    /// compute dtype (the position table's).
    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        let rows = self.token_embedding.forward(ids)?;
        rows.to_dtype(self.position_embedding.embeddings().dtype())
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

    /// Encodes `ids` [B, S]: the hidden states after `layers` transformer layers (transformers'
    /// `hidden_states[layers]`; 0 is the embeddings), passed through the final LayerNorm when
    /// `final_layer_norm`; and the pooled output and `text_embeds`, which always use every
    /// layer. diffusers' SDXL takes `layers = num_layers() - 1 - clip_skip` without the
    /// LayerNorm (`hidden_states[-(clip_skip + 2)]`); SD 1/2's [`forward`](Self::forward) is
    /// `layers = num_layers() - clip_skip` with it.
    pub fn encode(
        &self,
        ids: &Tensor,
        layers: usize,
        final_layer_norm: bool,
    ) -> Result<ClipOutput> {
        self.encode_embeddings(&self.embed_tokens(ids)?, ids, layers, final_layer_norm)
    }

    /// [`encode`](Self::encode) from token embeddings [B, S, D] (see
    /// [`embed_tokens`](Self::embed_tokens), where textual-inversion vectors replace rows);
    /// `ids` [B, S] still say where each row's end-of-text token is, for the pooled output.
    pub fn encode_embeddings(
        &self,
        token_embeddings: &Tensor,
        ids: &Tensor,
        layers: usize,
        final_layer_norm: bool,
    ) -> Result<ClipOutput> {
        let n = self.layers.len();
        if layers > n {
            return Err(candle_core::Error::Msg(format!(
                "hidden states after {layers} layers were asked of a CLIP text encoder with {n} layers (`num_hidden_layers`); use at most {n} (lower the CLIP skip)"
            )));
        }
        let (_, s, _) = token_embeddings.dims3()?;
        let device = token_embeddings.device();
        let positions = Tensor::arange(0u32, s as u32, device)?;
        let mut xs =
            token_embeddings.broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = causal_mask(s, xs.dtype(), device)?;
        let mut states = (layers == 0).then(|| xs.clone());
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer.forward(&xs, &mask)?;
            if i + 1 == layers {
                states = Some(xs.clone());
            }
        }
        let last = self.final_layer_norm.forward(&xs)?;
        let states = match (states, final_layer_norm) {
            (_, true) if layers == n => last.clone(),
            (Some(s), true) => self.final_layer_norm.forward(&s)?,
            (Some(s), false) => s,
            (None, _) => xs,
        };
        let pooled = self.pool(&last, ids)?;
        let text_embeds = match &self.text_projection {
            Some(projection) => Some(projection.forward(&pooled)?),
            None => None,
        };
        Ok(ClipOutput {
            states,
            pooled,
            text_embeds,
        })
    }

    /// `last` [B, S, D] at each row's end-of-text position [B, D], as transformers picks it:
    /// the first position of `eos_token_id`, or of the largest id for legacy configs
    /// (`eos_token_id` 2); position 0 when a row has no end-of-text token.
    fn pool(&self, last: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let rows = ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let pooled = rows
            .iter()
            .enumerate()
            .map(|(b, row)| {
                let target = if self.eos_token_id == LEGACY_EOS {
                    row.iter().copied().max().unwrap_or(0)
                } else {
                    self.eos_token_id
                };
                let position = row.iter().position(|&id| id == target).unwrap_or(0);
                last.get(b)?.get(position)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&pooled, 0)
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
