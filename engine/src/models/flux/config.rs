//! `transformer/config.json`: diffusers' `FluxTransformer2DModel` configuration, as data.

use std::path::Path;

use serde::Deserialize;

use crate::models::config_file::read_json;
use crate::{Error, Result};

/// diffusers' `FluxTransformer2DModel` config. Fields keep diffusers' names; missing ones take
/// diffusers' defaults, which are FLUX.1's (dev and schnell differ only in `guidance_embeds`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct FluxConfig {
    /// Side of the patches the output projection produces per token (FLUX.1: 1; the 2x2
    /// latent packing is done outside the model).
    pub patch_size: usize,
    /// Width of one packed image token (16 latent channels x 2 x 2 = 64).
    pub in_channels: usize,
    /// Width of one output token; `in_channels` when unset.
    pub out_channels: Option<usize>,
    /// Double-stream blocks (`transformer_blocks.N`).
    pub num_layers: usize,
    /// Single-stream blocks (`single_transformer_blocks.N`).
    pub num_single_layers: usize,
    /// Width of one attention head.
    pub attention_head_dim: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Width of the T5 text states.
    pub joint_attention_dim: usize,
    /// Width of the pooled CLIP embedding.
    pub pooled_projection_dim: usize,
    /// Whether the model embeds a guidance scale (FLUX.1-dev's distilled guidance).
    pub guidance_embeds: bool,
    /// Widths of the rotary embedding's axes (index, row, column); they sum to
    /// `attention_head_dim`.
    pub axes_dims_rope: Vec<usize>,
}

impl Default for FluxConfig {
    /// diffusers' defaults (FLUX.1-schnell's architecture).
    fn default() -> Self {
        Self {
            patch_size: 1,
            in_channels: 64,
            out_channels: None,
            num_layers: 19,
            num_single_layers: 38,
            attention_head_dim: 128,
            num_attention_heads: 24,
            joint_attention_dim: 4096,
            pooled_projection_dim: 768,
            guidance_embeds: false,
            axes_dims_rope: vec![16, 56, 56],
        }
    }
}

/// RoPE's base frequency (diffusers' `FluxPosEmbed(theta=10000)`, not a config field).
pub const ROPE_THETA: f64 = 10000.0;

impl FluxConfig {
    /// Reads and checks a `transformer/config.json`; errors name the file and the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Self = read_json(path)?;
        config.validate().map_err(|message| Error::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// The transformer's width: heads x head width.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// The width of the single-stream blocks' MLP (diffusers' `mlp_ratio` 4).
    pub fn mlp_dim(&self) -> usize {
        4 * self.inner_dim()
    }

    /// The width of one output token.
    pub fn out_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.out_channels.unwrap_or(self.in_channels)
    }

    /// Checks the config is one the transformer can be built from; the message names the
    /// field at fault.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (name, value) in [
            ("patch_size", self.patch_size),
            ("in_channels", self.in_channels),
            ("attention_head_dim", self.attention_head_dim),
            ("num_attention_heads", self.num_attention_heads),
            ("joint_attention_dim", self.joint_attention_dim),
            ("pooled_projection_dim", self.pooled_projection_dim),
        ] {
            if value == 0 {
                return Err(format!("`{name}` is 0; it must be at least 1"));
            }
        }
        if self.out_channels == Some(0) {
            return Err("`out_channels` is 0; leave it out or give at least 1".into());
        }
        let axes = &self.axes_dims_rope;
        if axes.is_empty() || axes.iter().any(|d| d % 2 != 0) {
            return Err(format!(
                "`axes_dims_rope` {axes:?} must list one even width per position axis"
            ));
        }
        let sum: usize = axes.iter().sum();
        if sum != self.attention_head_dim {
            return Err(format!(
                "`axes_dims_rope` {axes:?} sums to {sum} but `attention_head_dim` is {}; the \
                 rotary axes must cover one head exactly",
                self.attention_head_dim
            ));
        }
        Ok(())
    }

    /// The config of a transformer stored in the original Black Forest Labs layout (single-file
    /// and GGUF checkpoints, which carry no config), from the shapes of its tensors: `shape`
    /// returns a tensor's dims by BFL name (without any `model.diffusion_model.` prefix), or
    /// `None` when the file lacks it. The rotary axes cannot be seen in the weights: give them
    /// as `axes_dims_rope`, or `None` for FLUX.1's `[16, 56, 56]`.
    pub fn from_bfl_shapes(
        shape: impl Fn(&str) -> Option<Vec<usize>>,
        axes_dims_rope: Option<&[usize]>,
    ) -> std::result::Result<Self, String> {
        let dims = |name: &str, rank: usize| -> std::result::Result<Vec<usize>, String> {
            match shape(name) {
                Some(d) if d.len() == rank => Ok(d),
                Some(d) => Err(format!(
                    "tensor {name} has shape {d:?}; expected {rank} dims"
                )),
                None => Err(format!(
                    "tensor {name} is missing; this is not a FLUX.1 transformer in the \
                     original (Black Forest Labs) layout"
                )),
            }
        };
        let img_in = dims("img_in.weight", 2)?;
        let head_dim = dims("double_blocks.0.img_attn.norm.query_norm.scale", 1)?[0];
        let inner = img_in[0];
        if head_dim == 0 || inner % head_dim != 0 {
            return Err(format!(
                "img_in.weight has {inner} outputs, not a multiple of the head width {head_dim}"
            ));
        }
        let count = |probe: &dyn Fn(usize) -> String| {
            (0..).take_while(|&i| shape(&probe(i)).is_some()).count()
        };
        let num_layers = count(&|i| format!("double_blocks.{i}.img_attn.qkv.weight"));
        let num_single_layers = count(&|i| format!("single_blocks.{i}.linear1.weight"));
        let out = dims("final_layer.linear.weight", 2)?[0];
        let axes_dims_rope = match axes_dims_rope {
            Some(axes) => axes.to_vec(),
            None => Self::default().axes_dims_rope,
        };
        let config = Self {
            patch_size: 1,
            in_channels: img_in[1],
            out_channels: Some(out),
            num_layers,
            num_single_layers,
            attention_head_dim: head_dim,
            num_attention_heads: inner / head_dim,
            joint_attention_dim: dims("txt_in.weight", 2)?[1],
            pooled_projection_dim: dims("vector_in.in_layer.weight", 2)?[1],
            guidance_embeds: shape("guidance_in.in_layer.weight").is_some(),
            axes_dims_rope,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_flux1() {
        let config: FluxConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, FluxConfig::default());
        assert_eq!(config.inner_dim(), 3072);
        assert_eq!(config.mlp_dim(), 12288);
        assert_eq!(config.out_dim(), 64);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn rope_axes_must_cover_a_head() {
        let config = FluxConfig {
            axes_dims_rope: vec![16, 56, 54],
            ..Default::default()
        };
        let err = config.validate().unwrap_err();
        assert!(
            err.contains("axes_dims_rope") && err.contains("126"),
            "{err}"
        );
        let odd = FluxConfig {
            axes_dims_rope: vec![15, 57, 56],
            ..Default::default()
        };
        assert!(odd.validate().unwrap_err().contains("even"));
    }

    #[test]
    fn bfl_shapes_give_the_config() {
        let shapes: std::collections::HashMap<&str, Vec<usize>> = [
            ("img_in.weight", vec![3072, 64]),
            ("txt_in.weight", vec![3072, 4096]),
            ("vector_in.in_layer.weight", vec![3072, 768]),
            ("guidance_in.in_layer.weight", vec![3072, 256]),
            ("double_blocks.0.img_attn.norm.query_norm.scale", vec![128]),
            ("double_blocks.0.img_attn.qkv.weight", vec![9216, 3072]),
            ("double_blocks.1.img_attn.qkv.weight", vec![9216, 3072]),
            ("single_blocks.0.linear1.weight", vec![21504, 3072]),
            ("final_layer.linear.weight", vec![64, 3072]),
        ]
        .into_iter()
        .collect();
        let config = FluxConfig::from_bfl_shapes(|n| shapes.get(n).cloned(), None).unwrap();
        assert_eq!(config.num_layers, 2);
        assert_eq!(config.num_single_layers, 1);
        assert_eq!(config.num_attention_heads, 24);
        assert!(config.guidance_embeds);
        let err = FluxConfig::from_bfl_shapes(|_| None, None).unwrap_err();
        assert!(err.contains("img_in.weight"), "{err}");
        let err = FluxConfig::from_bfl_shapes(|n| shapes.get(n).cloned(), Some(&[16, 56, 54]))
            .unwrap_err();
        assert!(err.contains("axes_dims_rope"), "{err}");
    }
}
