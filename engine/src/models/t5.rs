//! transformers' `T5EncoderModel`, built from `text_encoder_2/config.json`: the T5 v1.1 / FLAN
//! encoder FLUX and SD3 use for their token sequence.
//!
//! T5 differs from CLIP in ways that are easy to get wrong: its layer norm is an RMS norm with a
//! weight and no bias (`T5LayerNorm`), attention scores are not scaled by `1/√d` and get a
//! learned relative-position bias instead, computed by the first layer only and shared by all,
//! and the feed-forward is gated (`act(wi_0 x) · wi_1 x`) with the tanh GELU (`gelu_new`) in
//! v1.1. No attention mask is applied: FLUX runs the encoder over the padded sequence as
//! diffusers' FluxPipeline does.

use std::path::Path;

use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};
use serde::Deserialize;

use crate::kernels;
use crate::models::config_file::read_json;

/// transformers' `T5Config`, the fields the encoder uses; missing ones take transformers'
/// defaults (t5-small's).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct T5Config {
    /// Token embeddings in `shared.weight`.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub d_model: usize,
    /// Width of one attention head's keys and values.
    pub d_kv: usize,
    /// Width of the feed-forward layer.
    pub d_ff: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Buckets of the relative position bias.
    pub relative_attention_num_buckets: usize,
    /// Distance beyond which relative positions share the last bucket.
    pub relative_attention_max_distance: usize,
    /// Epsilon of the RMS layer norms.
    pub layer_norm_epsilon: f64,
    /// `relu` (T5 v1.0) or `gated-gelu` (v1.1, FLAN): `[gated-]<activation>`.
    pub feed_forward_proj: String,
    /// The activation, derived from `feed_forward_proj` when unset.
    pub dense_act_fn: Option<String>,
    /// Whether the feed-forward is gated, derived from `feed_forward_proj` when unset.
    pub is_gated_act: Option<bool>,
}

impl Default for T5Config {
    fn default() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
            dense_act_fn: None,
            is_gated_act: None,
        }
    }
}

/// The feed-forward activations transformers' `ACT2FN` gives T5 checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `relu`.
    Relu,
    /// `gelu_new`, `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    /// `gelu`: the exact (erf) GELU.
    Gelu,
    /// `silu`, `swish`.
    Silu,
}

impl T5Config {
    /// Reads and checks a T5 `config.json`; errors name the file and the field.
    pub fn from_file(path: &Path) -> crate::Result<Self> {
        let config: Self = read_json(path)?;
        config
            .activation()
            .map_err(|message| crate::Error::Config {
                path: path.to_path_buf(),
                message,
            })?;
        Ok(config)
    }

    /// The feed-forward activation and whether it is gated, as transformers derives them.
    pub fn activation(&self) -> std::result::Result<(Activation, bool), String> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let derived_gated = parts.len() == 2 && parts[0] == "gated";
        if parts.len() > 2 || (parts.len() == 2 && !derived_gated) {
            return Err(format!(
                "`feed_forward_proj` {:?} is not `<act>` or `gated-<act>`",
                self.feed_forward_proj
            ));
        }
        let derived = match self.feed_forward_proj.as_str() {
            "gated-gelu" => "gelu_new",
            _ => parts[parts.len() - 1],
        };
        let name = self.dense_act_fn.as_deref().unwrap_or(derived);
        let act = match name {
            "relu" => Activation::Relu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            "silu" | "swish" => Activation::Silu,
            other => {
                return Err(format!(
                    "`dense_act_fn` {other:?} is not supported (relu, gelu, gelu_new, \
                     gelu_pytorch_tanh, silu)"
                ))
            }
        };
        Ok((act, self.is_gated_act.unwrap_or(derived_gated)))
    }
}

/// One T5 layer norm: `weight · x / √(mean(x²) + eps)`.
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32)
    }
}

fn linear(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Linear> {
    candle_nn::linear_no_bias(in_dim, out_dim, vb)
}

#[derive(Debug, Clone)]
enum FeedForward {
    Gated {
        wi_0: Linear,
        wi_1: Linear,
        wo: Linear,
    },
    Plain {
        wi: Linear,
        wo: Linear,
    },
}

#[derive(Debug, Clone)]
struct Block {
    attn_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ff_norm: RmsNorm,
    ff: FeedForward,
}

impl Block {
    fn new(vb: VarBuilder, c: &T5Config, gated: bool) -> Result<Self> {
        let attn = vb.pp("layer.0");
        let sa = attn.pp("SelfAttention");
        let inner = c.num_heads * c.d_kv;
        let ff = vb.pp("layer.1");
        let dense = ff.pp("DenseReluDense");
        Ok(Self {
            attn_norm: RmsNorm::new(attn.pp("layer_norm"), c.d_model, c.layer_norm_epsilon)?,
            q: linear(sa.pp("q"), c.d_model, inner)?,
            k: linear(sa.pp("k"), c.d_model, inner)?,
            v: linear(sa.pp("v"), c.d_model, inner)?,
            o: linear(sa.pp("o"), inner, c.d_model)?,
            ff_norm: RmsNorm::new(ff.pp("layer_norm"), c.d_model, c.layer_norm_epsilon)?,
            ff: if gated {
                FeedForward::Gated {
                    wi_0: linear(dense.pp("wi_0"), c.d_model, c.d_ff)?,
                    wi_1: linear(dense.pp("wi_1"), c.d_model, c.d_ff)?,
                    wo: linear(dense.pp("wo"), c.d_ff, c.d_model)?,
                }
            } else {
                FeedForward::Plain {
                    wi: linear(dense.pp("wi"), c.d_model, c.d_ff)?,
                    wo: linear(dense.pp("wo"), c.d_ff, c.d_model)?,
                }
            },
        })
    }

    /// One layer over `x` `[B, S, d_model]` with the position bias `[1, H, S, S]`.
    fn forward(&self, x: &Tensor, bias: &Tensor, heads: usize, act: Activation) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let h = self.attn_norm.forward(x)?;
        let split = |t: Tensor| -> Result<Tensor> {
            let d = t.dim(D::Minus1)? / heads;
            t.reshape((b, s, heads, d))?.transpose(1, 2)?.contiguous()
        };
        let q = split(kernels::linear(&self.q, &h, None)?)?;
        let k = split(kernels::linear(&self.k, &h, None)?)?;
        let v = split(kernels::linear(&self.v, &h, None)?)?;
        let dtype = q.dtype();
        let scores = q
            .matmul(&k.t()?)?
            .to_dtype(DType::F32)?
            .broadcast_add(&bias.to_dtype(DType::F32)?)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
        let attended = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, ()))?;
        let x = kernels::linear(&self.o, &attended, Some(x))?;
        let h = self.ff_norm.forward(&x)?;
        let hidden = match &self.ff {
            FeedForward::Gated { wi_0, wi_1, wo } => {
                let gate = activate(&kernels::linear(wi_0, &h, None)?, act)?;
                (wo, (gate * kernels::linear(wi_1, &h, None)?)?)
            }
            FeedForward::Plain { wi, wo } => (wo, activate(&kernels::linear(wi, &h, None)?, act)?),
        };
        kernels::linear(hidden.0, &hidden.1, Some(&x))
    }
}

fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::Relu => x.relu(),
        Activation::GeluTanh => x.gelu(),
        Activation::Gelu => x.gelu_erf(),
        Activation::Silu => candle_nn::ops::silu(x),
    }
}

/// T5's encoder: token ids to hidden states.
#[derive(Debug, Clone)]
pub struct T5EncoderModel {
    shared: Embedding,
    relative_attention_bias: Embedding,
    blocks: Vec<Block>,
    final_layer_norm: RmsNorm,
    activation: Activation,
    config: T5Config,
}

impl T5EncoderModel {
    /// Builds the encoder described by `config` from the weights in `vb` (transformers' names:
    /// `shared.weight`, or `encoder.embed_tokens.weight` when the tied copy is the one
    /// stored, and `encoder.block.N.layer.{0,1}...`).
    pub fn new(vb: VarBuilder, config: &T5Config) -> Result<Self> {
        let (activation, gated) = config.activation().map_err(candle_core::Error::Msg)?;
        let embed_name = if vb.contains_tensor("shared.weight") {
            "shared.weight"
        } else {
            "encoder.embed_tokens.weight"
        };
        let table = vb.get((config.vocab_size, config.d_model), embed_name)?;
        let enc = vb.pp("encoder");
        let bias = enc.get(
            (config.relative_attention_num_buckets, config.num_heads),
            "block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        )?;
        let blocks = (0..config.num_layers)
            .map(|i| Block::new(enc.pp(format!("block.{i}")), config, gated))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            shared: Embedding::new(table.contiguous()?, config.d_model),
            relative_attention_bias: Embedding::new(bias.contiguous()?, config.num_heads),
            blocks,
            final_layer_norm: RmsNorm::new(
                enc.pp("final_layer_norm"),
                config.d_model,
                config.layer_norm_epsilon,
            )?,
            activation,
            config: config.clone(),
        })
    }

    /// The last hidden states `[B, S, d_model]` of token ids `[B, S]` (u32 or i64), with no
    /// attention mask.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (_, s) = input_ids.dims2()?;
        let mut x = candle_nn::Module::forward(&self.shared, input_ids)?;
        let bias = self
            .position_bias(s, input_ids.device())?
            .to_dtype(x.dtype())?;
        for block in &self.blocks {
            x = block.forward(&x, &bias, self.config.num_heads, self.activation)?;
        }
        self.final_layer_norm.forward(&x)
    }

    /// The relative position bias `[1, H, S, S]` of the first layer, shared by all.
    fn position_bias(&self, s: usize, device: &candle_core::Device) -> Result<Tensor> {
        let c = &self.config;
        let (n, max) = (
            c.relative_attention_num_buckets,
            c.relative_attention_max_distance,
        );
        let buckets: Vec<u32> = (0..s as i64)
            .flat_map(|q| {
                (0..s as i64).map(move |k| relative_position_bucket(k - q, n, max) as u32)
            })
            .collect();
        let buckets = Tensor::from_vec(buckets, (s, s), device)?;
        candle_nn::Module::forward(&self.relative_attention_bias, &buckets)?
            .permute((2, 0, 1))?
            .unsqueeze(0)
    }
}

/// transformers' `T5Attention._relative_position_bucket` for the (bidirectional) encoder:
/// half the buckets for keys after the query, half before; within each half, exact buckets
/// for distances below a quarter of `num_buckets` and logarithmic ones up to `max_distance`.
/// The logarithm is taken in f32, as transformers takes it on an f32 tensor.
pub fn relative_position_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = num_buckets / 2;
    let base = if relative > 0 { half } else { 0 };
    let n = relative.unsigned_abs() as usize;
    let max_exact = half / 2;
    if n < max_exact {
        return base + n;
    }
    let ratio = (max_distance as f64 / max_exact as f64).ln() as f32;
    let log = (n as f32 / max_exact as f32).ln() / ratio * (half - max_exact) as f32;
    base + (max_exact + log as usize).min(half - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_follow_transformers() {
        let v11 = T5Config {
            feed_forward_proj: "gated-gelu".into(),
            ..Default::default()
        };
        assert_eq!(v11.activation(), Ok((Activation::GeluTanh, true)));
        assert_eq!(
            T5Config::default().activation(),
            Ok((Activation::Relu, false))
        );
        let bad = T5Config {
            feed_forward_proj: "gated-mish".into(),
            ..Default::default()
        };
        assert!(bad.activation().unwrap_err().contains("mish"));
    }

    #[test]
    fn buckets_are_exact_near_and_logarithmic_far() {
        // num_buckets 32, max_distance 128: 16 per direction, exact below 8.
        assert_eq!(relative_position_bucket(0, 32, 128), 0);
        assert_eq!(relative_position_bucket(-7, 32, 128), 7);
        assert_eq!(relative_position_bucket(7, 32, 128), 23);
        assert_eq!(relative_position_bucket(-8, 32, 128), 8);
        assert_eq!(relative_position_bucket(-127, 32, 128), 15);
        assert_eq!(relative_position_bucket(-500, 32, 128), 15);
        assert_eq!(relative_position_bucket(500, 32, 128), 31);
    }
}
