//! `vae/config.json`: diffusers' `AutoencoderKL` configuration, as data.

use serde::Deserialize;

/// diffusers' `AutoencoderKL` config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    /// Image channels in.
    pub in_channels: usize,
    /// Image channels out.
    pub out_channels: usize,
    /// Encoder block kinds (`DownEncoderBlock2D`).
    pub down_block_types: Vec<String>,
    /// Decoder block kinds (`UpDecoderBlock2D`).
    pub up_block_types: Vec<String>,
    /// Channels per level; the image is `2^(levels-1)` times the latent size.
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (decoder blocks have one more).
    pub layers_per_block: usize,
    /// Activation (`silu`).
    pub act_fn: String,
    /// Latent channels.
    pub latent_channels: usize,
    /// GroupNorm groups.
    pub norm_num_groups: usize,
    /// Latents are multiplied by this after encoding (and divided before decoding).
    pub scaling_factor: f64,
    /// Subtracted after encoding (before scaling) and added back before decoding.
    pub shift_factor: Option<f64>,
    /// Run the VAE in f32 when the rest runs in f16 (SD's VAE overflows in f16).
    pub force_upcast: bool,
    /// Whether `quant_conv` exists.
    pub use_quant_conv: bool,
    /// Whether `post_quant_conv` exists.
    pub use_post_quant_conv: bool,
    /// Whether the mid blocks have attention.
    pub mid_block_add_attention: bool,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl VaeConfig {
    /// How many image pixels one latent pixel covers per side (diffusers' `vae_scale_factor`).
    pub fn scale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// Checks the config is one beeswax implements; the message names the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err("`block_out_channels` is empty".into());
        }
        if self.act_fn != "silu" {
            return Err(format!(
                "`act_fn` {:?} is not supported (expected silu)",
                self.act_fn
            ));
        }
        let check = |types: &[String], field: &str, want: &str| {
            if types.len() != n {
                return Err(format!(
                    "`{field}` lists {} blocks but `block_out_channels` has {n}",
                    types.len()
                ));
            }
            match types.iter().find(|t| t.as_str() != want) {
                Some(t) => Err(format!(
                    "`{field}` entry {t:?} is not supported (expected {want})"
                )),
                None => Ok(()),
            }
        };
        check(
            &self.down_block_types,
            "down_block_types",
            "DownEncoderBlock2D",
        )?;
        check(&self.up_block_types, "up_block_types", "UpDecoderBlock2D")?;
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|&&c| c % self.norm_num_groups != 0)
        {
            return Err(format!(
                "{c} channels in `block_out_channels` are not divisible by `norm_num_groups` {}",
                self.norm_num_groups
            ));
        }
        Ok(())
    }
}
