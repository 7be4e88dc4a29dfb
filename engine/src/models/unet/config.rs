//! `unet/config.json`: diffusers' `UNet2DConditionModel` configuration, as data.

use serde::Deserialize;

use crate::models::config_file::PerBlock;

/// diffusers' `UNet2DConditionModel` config. Fields keep diffusers' names and defaults; the
/// ones beeswax does not implement are read so that a model using them is refused clearly.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct UNetConfig {
    /// Latent channels in.
    pub in_channels: usize,
    /// Latent channels out.
    pub out_channels: usize,
    /// `sample = 2 * sample - 1` before conv_in.
    pub center_input_sample: bool,
    /// Cosine first in the timestep embedding.
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift` of the timestep embedding.
    pub freq_shift: f64,
    /// Down block kinds, e.g. `CrossAttnDownBlock2D`, `DownBlock2D`.
    pub down_block_types: Vec<String>,
    /// Mid block kind (`UNetMidBlock2DCrossAttn`).
    pub mid_block_type: Option<String>,
    /// Up block kinds, e.g. `UpBlock2D`, `CrossAttnUpBlock2D`.
    pub up_block_types: Vec<String>,
    /// Self-attention replaced by cross-attention only.
    pub only_cross_attention: PerBlock<bool>,
    /// Output channels of each down block.
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (up blocks have one more).
    pub layers_per_block: PerBlock<usize>,
    /// Padding of the downsampling convs.
    pub downsample_padding: usize,
    /// Output scale of the mid block's resnets.
    pub mid_block_scale_factor: f64,
    /// Activation (`silu`).
    pub act_fn: String,
    /// GroupNorm groups.
    pub norm_num_groups: usize,
    /// GroupNorm epsilon.
    pub norm_eps: f64,
    /// Width of the text-encoder hidden states.
    pub cross_attention_dim: PerBlock<usize>,
    /// Transformer blocks per attention layer.
    pub transformer_layers_per_block: PerBlock<usize>,
    /// Despite its name, the number of attention heads when `num_attention_heads` is unset
    /// (a known naming quirk of diffusers' config).
    pub attention_head_dim: PerBlock<usize>,
    /// Attention heads per block.
    pub num_attention_heads: Option<PerBlock<usize>>,
    /// Linear (SD 2) instead of 1x1 conv (SD 1) projections around the transformer.
    pub use_linear_projection: bool,
    /// Attention scores computed in f32 (always so on beeswax).
    pub upcast_attention: bool,
    /// Class embedding (not used by SD 1/2).
    pub class_embed_type: Option<String>,
    /// Added embedding (SDXL's `text_time`).
    pub addition_embed_type: Option<String>,
    /// `default` or `scale_shift`.
    pub resnet_time_scale_shift: String,
    /// `positional` or `fourier`.
    pub time_embedding_type: String,
    /// Kernel of conv_in.
    pub conv_in_kernel: usize,
    /// Kernel of conv_out.
    pub conv_out_kernel: usize,
    /// Latent side length the model was trained at.
    pub sample_size: Option<usize>,
    /// Dual cross-attention (not supported).
    pub dual_cross_attention: bool,
    /// Extra time conditioning width (LCM distilled models; not supported yet).
    pub time_cond_proj_dim: Option<usize>,
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: [
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            up_block_types: [
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            only_cross_attention: PerBlock::All(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::All(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: "silu".into(),
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::All(1280),
            transformer_layers_per_block: PerBlock::All(1),
            attention_head_dim: PerBlock::All(8),
            num_attention_heads: None,
            use_linear_projection: false,
            upcast_attention: false,
            class_embed_type: None,
            addition_embed_type: None,
            resnet_time_scale_shift: "default".into(),
            time_embedding_type: "positional".into(),
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            sample_size: None,
            dual_cross_attention: false,
            time_cond_proj_dim: None,
        }
    }
}

/// Per-block values resolved from a [`UNetConfig`], in down-block order.
#[derive(Debug, Clone)]
pub struct BlockPlan {
    /// Whether each down block has attention.
    pub cross_attn: Vec<bool>,
    /// Resnets per down block.
    pub layers: Vec<usize>,
    /// Attention heads per block.
    pub heads: Vec<usize>,
    /// Transformer blocks per attention layer.
    pub transformer_layers: Vec<usize>,
    /// Cross-attention width per block.
    pub cross_attention_dim: Vec<usize>,
    /// Whether up block `i` (in up order) has attention.
    pub up_cross_attn: Vec<bool>,
}

impl UNetConfig {
    /// Checks the config is one beeswax implements and resolves the per-block lists; the
    /// message names the field at fault.
    pub fn plan(&self) -> Result<BlockPlan, String> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err("`block_out_channels` is empty".into());
        }
        let unsupported = [
            (self.class_embed_type.is_some(), "class_embed_type"),
            (self.addition_embed_type.is_some(), "addition_embed_type"),
            (self.dual_cross_attention, "dual_cross_attention"),
            (self.time_cond_proj_dim.is_some(), "time_cond_proj_dim"),
            (
                self.resnet_time_scale_shift != "default",
                "resnet_time_scale_shift",
            ),
            (
                self.time_embedding_type != "positional",
                "time_embedding_type",
            ),
            (self.act_fn != "silu", "act_fn"),
        ];
        if let Some((_, field)) = unsupported.iter().find(|(bad, _)| *bad) {
            return Err(format!(
                "`{field}` is set to a value beeswax does not support yet (SD 1.x/2.x UNets are supported)"
            ));
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "`down_block_types` ({}) and `up_block_types` ({}) must each list one block per `block_out_channels` entry ({n})",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if let Some(mid) = &self.mid_block_type {
            if mid != "UNetMidBlock2DCrossAttn" {
                return Err(format!(
                    "`mid_block_type` {mid:?} is not supported (expected UNetMidBlock2DCrossAttn)"
                ));
            }
        }
        let kind = |t: &str, field: &str, attn: &str, plain: &str| match t {
            x if x == attn => Ok(true),
            x if x == plain => Ok(false),
            other => Err(format!(
                "`{field}` entry {other:?} is not supported (expected {attn} or {plain})"
            )),
        };
        let cross_attn = self
            .down_block_types
            .iter()
            .map(|t| kind(t, "down_block_types", "CrossAttnDownBlock2D", "DownBlock2D"))
            .collect::<Result<Vec<_>, _>>()?;
        let up_cross_attn = self
            .up_block_types
            .iter()
            .map(|t| kind(t, "up_block_types", "CrossAttnUpBlock2D", "UpBlock2D"))
            .collect::<Result<Vec<_>, _>>()?;
        if self
            .only_cross_attention
            .expand(n, "only_cross_attention")?
            .contains(&true)
        {
            return Err("`only_cross_attention` is not supported".into());
        }
        let heads = self
            .num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .expand(n, "attention_head_dim")?;
        for (i, (&h, &c)) in heads.iter().zip(&self.block_out_channels).enumerate() {
            if h == 0 || c % h != 0 {
                return Err(format!(
                    "block {i}: {c} channels cannot be split into {h} attention heads (`attention_head_dim`)"
                ));
            }
            if c % self.norm_num_groups != 0 {
                return Err(format!(
                    "block {i}: {c} channels are not divisible by `norm_num_groups` {}",
                    self.norm_num_groups
                ));
            }
        }
        Ok(BlockPlan {
            cross_attn,
            layers: self.layers_per_block.expand(n, "layers_per_block")?,
            heads,
            transformer_layers: self
                .transformer_layers_per_block
                .expand(n, "transformer_layers_per_block")?,
            cross_attention_dim: self.cross_attention_dim.expand(n, "cross_attention_dim")?,
            up_cross_attn,
        })
    }
}
