//! `unet/config.json`: diffusers' `UNet2DConditionModel` configuration, as data.

use serde::Deserialize;

use crate::models::config_file::PerBlock;

/// A boolean that configs may write as `null` (diffusers reads it as false).
fn null_is_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

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
    /// Transformer blocks per attention layer: one depth for all, one per block, or (for
    /// asymmetric UNets) a list per block with one depth per attention layer.
    pub transformer_layers_per_block: TransformerDepth,
    /// Depths of the up blocks (in up order, one list per block with one depth per attention
    /// layer); diffusers requires it when `transformer_layers_per_block` has per-layer lists,
    /// and otherwise mirrors the down blocks' depths.
    pub reverse_transformer_layers_per_block: Option<Vec<LayerDepth>>,
    /// Despite its name, the number of attention heads when `num_attention_heads` is unset
    /// (a known naming quirk of diffusers' config).
    pub attention_head_dim: PerBlock<usize>,
    /// Attention heads per block.
    pub num_attention_heads: Option<PerBlock<usize>>,
    /// Linear (SD 2) instead of 1x1 conv (SD 1) projections around the transformer.
    pub use_linear_projection: bool,
    /// Attention scores computed in f32 (always so on beeswax); SDXL's configs write `null`.
    #[serde(deserialize_with = "null_is_false")]
    pub upcast_attention: bool,
    /// Class embedding (not used by SD 1/2).
    pub class_embed_type: Option<String>,
    /// Added embedding: `text_time` (SDXL: pooled text embeddings and time ids) or none.
    pub addition_embed_type: Option<String>,
    /// Width of the sinusoidal embedding of each `text_time` time id (`add_time_proj`).
    pub addition_time_embed_dim: Option<usize>,
    /// Input width of `add_embedding` for `text_time`: the pooled text width plus the number of
    /// time ids times `addition_time_embed_dim`.
    pub projection_class_embeddings_input_dim: Option<usize>,
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
            transformer_layers_per_block: TransformerDepth::All(1),
            reverse_transformer_layers_per_block: None,
            attention_head_dim: PerBlock::All(8),
            num_attention_heads: None,
            use_linear_projection: false,
            upcast_attention: false,
            class_embed_type: None,
            addition_embed_type: None,
            addition_time_embed_dim: None,
            projection_class_embeddings_input_dim: None,
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

/// `transformer_layers_per_block`: transformer blocks in each attention layer.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(untagged)]
pub enum TransformerDepth {
    /// The same depth everywhere (SD 1/2: 1; the SDXL refiner: 4).
    All(usize),
    /// One entry per down block, in down order (SDXL base: `[1, 2, 10]`).
    PerBlock(Vec<LayerDepth>),
}

/// The transformer depth of one block: one value, or one per attention layer.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(untagged)]
pub enum LayerDepth {
    /// Every attention layer of the block has this depth.
    All(usize),
    /// One depth per attention layer of the block (asymmetric UNets such as SSD-1B).
    PerLayer(Vec<usize>),
}

impl LayerDepth {
    /// The depths of a block's first `layers` attention layers; diffusers reads a per-layer list
    /// by index, so a longer list is accepted and a shorter one is not.
    fn expand(&self, layers: usize, what: &str) -> Result<Vec<usize>, String> {
        match self {
            LayerDepth::All(d) => Ok(vec![*d; layers]),
            LayerDepth::PerLayer(ds) if ds.len() >= layers => Ok(ds[..layers].to_vec()),
            LayerDepth::PerLayer(ds) => Err(format!(
                "{what} lists {} transformer depths but the block has {layers} attention layers",
                ds.len()
            )),
        }
    }

    /// The first layer's depth: diffusers gives the mid block (one attention layer) the last
    /// down block's entry.
    fn first(&self, what: &str) -> Result<usize, String> {
        match self {
            LayerDepth::All(d) => Ok(*d),
            LayerDepth::PerLayer(ds) => ds
                .first()
                .copied()
                .ok_or_else(|| format!("{what} is an empty list")),
        }
    }
}

/// SDXL's added conditioning (`addition_embed_type: "text_time"`), resolved from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextTime {
    /// Width of the sinusoidal embedding of each time id (`addition_time_embed_dim`).
    pub time_embed_dim: usize,
    /// Input width of `add_embedding` (`projection_class_embeddings_input_dim`).
    pub input_dim: usize,
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
    /// Transformer depth of each attention layer of each down block (empty for blocks
    /// without attention).
    pub down_depths: Vec<Vec<usize>>,
    /// Transformer depth of the mid block's attention.
    pub mid_depth: usize,
    /// Transformer depth of each attention layer of each up block, in up order (empty for
    /// blocks without attention).
    pub up_depths: Vec<Vec<usize>>,
    /// Cross-attention width per block.
    pub cross_attention_dim: Vec<usize>,
    /// Whether up block `i` (in up order) has attention.
    pub up_cross_attn: Vec<bool>,
    /// The added `text_time` conditioning, if the UNet takes it.
    pub text_time: Option<TextTime>,
}

impl UNetConfig {
    /// Checks the config is one beeswax implements and resolves the per-block lists; the
    /// message names the field at fault.
    pub fn plan(&self) -> Result<BlockPlan, String> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err("`block_out_channels` is empty".into());
        }
        self.check_supported()?;
        let text_time = self.text_time()?;
        let (cross_attn, up_cross_attn) = self.block_kinds()?;
        let heads = self.heads()?;
        let layers = self.layers_per_block.expand(n, "layers_per_block")?;
        let depths = self.depths(&layers, &cross_attn, &up_cross_attn)?;
        Ok(BlockPlan {
            cross_attn,
            layers,
            heads,
            down_depths: depths.down,
            mid_depth: depths.mid,
            up_depths: depths.up,
            cross_attention_dim: self.cross_attention_dim.expand(n, "cross_attention_dim")?,
            up_cross_attn,
            text_time,
        })
    }

    /// Refuses the config options beeswax does not implement, naming the field.
    fn check_supported(&self) -> Result<(), String> {
        let unsupported = [
            (self.class_embed_type.is_some(), "class_embed_type"),
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
                "`{field}` is set to a value beeswax does not support yet (SD 1.x/2.x and SDXL UNets are supported)"
            ));
        }
        Ok(())
    }

    /// Whether each down block and each up block (in up order) has attention.
    fn block_kinds(&self) -> Result<(Vec<bool>, Vec<bool>), String> {
        let n = self.block_out_channels.len();
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
        Ok((cross_attn, up_cross_attn))
    }

    /// Attention heads per block, checked against the block widths and group count.
    fn heads(&self) -> Result<Vec<usize>, String> {
        let n = self.block_out_channels.len();
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
        Ok(heads)
    }

    /// The `text_time` settings, `None` without added conditioning.
    fn text_time(&self) -> Result<Option<TextTime>, String> {
        match self.addition_embed_type.as_deref() {
            None => Ok(None),
            Some("text_time") => {
                let need = |value: Option<usize>, field: &str| {
                    value.filter(|&v| v > 0).ok_or_else(|| {
                        format!("`addition_embed_type` \"text_time\" needs `{field}` (a positive width)")
                    })
                };
                Ok(Some(TextTime {
                    time_embed_dim: need(self.addition_time_embed_dim, "addition_time_embed_dim")?,
                    input_dim: need(
                        self.projection_class_embeddings_input_dim,
                        "projection_class_embeddings_input_dim",
                    )?,
                }))
            }
            Some(other) => Err(format!(
                "`addition_embed_type` {other:?} is not supported (only \"text_time\", SDXL's)"
            )),
        }
    }

    /// Resolves the transformer depths as diffusers does: down block `i` takes entry `i`, the
    /// mid block the last entry's first depth, up block `i` entry `i` of
    /// `reverse_transformer_layers_per_block` or else the down entries reversed.
    fn depths(
        &self,
        layers: &[usize],
        down_attn: &[bool],
        up_attn: &[bool],
    ) -> Result<Depths, String> {
        let n = layers.len();
        let field = "`transformer_layers_per_block`";
        let entries = match &self.transformer_layers_per_block {
            TransformerDepth::All(d) => vec![LayerDepth::All(*d); n],
            TransformerDepth::PerBlock(v) if v.len() == n => v.clone(),
            TransformerDepth::PerBlock(v) => {
                return Err(format!(
                    "{field} has {} entries but there are {n} blocks; give one per block or a single value",
                    v.len()
                ))
            }
        };
        let up_entries = match &self.reverse_transformer_layers_per_block {
            Some(r) if r.len() == n => r.clone(),
            Some(r) => {
                return Err(format!(
                    "`reverse_transformer_layers_per_block` has {} entries but there are {n} up blocks",
                    r.len()
                ))
            }
            None if entries.iter().any(|e| matches!(e, LayerDepth::PerLayer(_))) => {
                return Err(format!(
                    "{field} has per-layer lists (an asymmetric UNet), so `reverse_transformer_layers_per_block` must give the up blocks' depths"
                ))
            }
            None => entries.iter().rev().cloned().collect(),
        };
        let down = (0..n)
            .map(|i| match down_attn[i] {
                true => entries[i].expand(layers[i], &format!("{field} entry {i}")),
                false => Ok(Vec::new()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let up = (0..n)
            .map(|i| match up_attn[i] {
                true => up_entries[i].expand(
                    layers[n - 1 - i] + 1,
                    &format!("up block {i}'s transformer depth entry"),
                ),
                false => Ok(Vec::new()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mid = entries[n - 1].first(&format!("{field} entry {}", n - 1))?;
        Ok(Depths { down, mid, up })
    }
}

/// Transformer depths resolved by [`UNetConfig::depths`].
struct Depths {
    down: Vec<Vec<usize>>,
    mid: usize,
    up: Vec<Vec<usize>>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn config(json: &str) -> UNetConfig {
        serde_json::from_str(json).unwrap()
    }

    /// The block layout of stabilityai/stable-diffusion-xl-base-1.0's unet/config.json.
    const SDXL_BASE: &str = r#"{
        "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "layers_per_block": 2, "num_attention_heads": null,
        "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
        "upcast_attention": null,
        "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": true
    }"#;

    #[test]
    fn sdxl_base_depths_and_added_conditioning() {
        let plan = config(SDXL_BASE).plan().unwrap();
        assert_eq!(plan.down_depths, vec![vec![], vec![2, 2], vec![10, 10]]);
        assert_eq!(plan.mid_depth, 10);
        assert_eq!(plan.up_depths, vec![vec![10; 3], vec![2; 3], vec![]]);
        assert_eq!(plan.heads, vec![5, 10, 20]);
        let text_time = TextTime {
            time_embed_dim: 256,
            input_dim: 2816,
        };
        assert_eq!(plan.text_time, Some(text_time));
    }

    #[test]
    fn sdxl_refiner_single_depth_applies_everywhere() {
        let refiner = SDXL_BASE
            .replace("[1, 2, 10]", "4")
            .replace("2816", "2560")
            .replace(r#""layers_per_block": 2"#, r#""layers_per_block": 1"#);
        let plan = config(&refiner).plan().unwrap();
        assert_eq!(plan.down_depths, vec![vec![], vec![4], vec![4]]);
        assert_eq!(plan.mid_depth, 4);
        assert_eq!(plan.up_depths, vec![vec![4, 4], vec![4, 4], vec![]]);
    }

    #[test]
    fn asymmetric_depths_need_the_reverse_list() {
        let nested = SDXL_BASE.replace("[1, 2, 10]", "[[1, 1], [2, 3], [4, 5]]");
        let error = config(&nested).plan().unwrap_err();
        assert!(
            error.contains("reverse_transformer_layers_per_block"),
            "{error}"
        );
        let with_reverse = nested.replace(
            r#""use_linear_projection""#,
            r#""reverse_transformer_layers_per_block": [[6, 7, 8], [9, 1, 2], [3, 3, 3]],
               "use_linear_projection""#,
        );
        let plan = config(&with_reverse).plan().unwrap();
        assert_eq!(plan.down_depths, vec![vec![], vec![2, 3], vec![4, 5]]);
        assert_eq!(
            plan.mid_depth, 4,
            "the mid block takes the last entry's first depth"
        );
        assert_eq!(plan.up_depths, vec![vec![6, 7, 8], vec![9, 1, 2], vec![]]);
    }

    #[test]
    fn short_or_miscounted_depth_lists_name_the_field() {
        let short = SDXL_BASE.replace("[1, 2, 10]", "[1, 2]");
        let error = config(&short).plan().unwrap_err();
        assert!(
            error.contains("`transformer_layers_per_block` has 2 entries"),
            "{error}"
        );
        let short_layer = SDXL_BASE.replace("[1, 2, 10]", "[1, [2], 10]").replace(
            r#""use_linear_projection""#,
            r#""reverse_transformer_layers_per_block": [10, 2, 1], "use_linear_projection""#,
        );
        let error = config(&short_layer).plan().unwrap_err();
        assert!(
            error.contains("entry 1 lists 1 transformer depths"),
            "{error}"
        );
    }

    #[test]
    fn text_time_needs_its_widths_and_other_kinds_are_refused() {
        let missing = SDXL_BASE.replace(r#""addition_time_embed_dim": 256,"#, "");
        let error = config(&missing).plan().unwrap_err();
        assert!(error.contains("`addition_time_embed_dim`"), "{error}");
        let kandinsky = SDXL_BASE.replace(r#""text_time""#, r#""image""#);
        let error = config(&kandinsky).plan().unwrap_err();
        assert!(error.contains("addition_embed_type"), "{error}");
    }

    #[test]
    fn sd_configs_keep_their_plan() {
        let plan = UNetConfig::default().plan().unwrap();
        assert_eq!(
            plan.down_depths,
            vec![vec![1, 1], vec![1, 1], vec![1, 1], vec![]]
        );
        assert_eq!(plan.mid_depth, 1);
        assert_eq!(
            plan.up_depths,
            vec![vec![], vec![1; 3], vec![1; 3], vec![1; 3]]
        );
        assert_eq!(plan.text_time, None);
    }
}
