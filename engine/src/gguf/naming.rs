//! Tensor names and architectures of the GGUF files beeswax reads and writes.
//!
//! What is accepted, following the two tools that make these files:
//!
//! - **ComfyUI-GGUF** (city96, `tools/convert.py` + its patched `llama-quantize`) keeps the
//!   diffusion model's original checkpoint keys: FLUX in Black Forest Labs' layout
//!   (`double_blocks.0.img_attn.qkv.weight`), SD1/SD2/SDXL UNets in the LDM layout
//!   (`input_blocks.1.1.proj_in.weight`) or, for UNets converted from diffusers, the diffusers
//!   layout (`down_blocks.0...`); a `model.diffusion_model.` prefix may remain. It writes
//!   `general.architecture` (`flux`, `sd1`, `sdxl`, `sd3`, `aura`, ...), and for tensors it
//!   reshaped to rows of 256 the original shape in `comfy.gguf.orig_shape.<name>`
//!   (handled by the reader).
//! - **stable-diffusion.cpp** (`sd -M convert`) keeps every key of the checkpoint it converts,
//!   with `model.diffusion_model.` before the denoiser's (and `first_stage_model.`,
//!   `cond_stage_model.` ... before the other components'), and writes no
//!   `general.architecture`; the architecture is then told from the tensor names, as
//!   ComfyUI-GGUF does in its "compatibility mode".
//!
//! When any tensor name starts with a known denoiser prefix ([`DENOISER_PREFIXES`]), the
//! denoiser is the tensors under that prefix, with it stripped; otherwise every tensor is the
//! denoiser's. `beeswax quantize` keeps its input's key names unchanged.

use std::fmt;

/// Prefixes before the denoiser's tensor names, most specific first.
pub const DENOISER_PREFIXES: [&str; 2] = ["model.diffusion_model.", "diffusion_model."];

/// A model architecture, as `general.architecture` names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// FLUX.1 transformer (`flux`).
    Flux,
    /// SD 1.x / 2.x UNet (`sd1`; ComfyUI-GGUF uses it for both).
    Sd1,
    /// SDXL UNet (`sdxl`).
    Sdxl,
    /// SD3 / SD3.5 MMDiT (`sd3`).
    Sd3,
    /// Any other name (`aura`, `wan`, `t5`, `llama`, ...).
    Other(String),
}

impl Architecture {
    /// The architecture called `name` in `general.architecture` (case-insensitive).
    pub fn from_name(name: &str) -> Self {
        match name.to_ascii_lowercase().as_str() {
            "flux" => Architecture::Flux,
            "sd1" => Architecture::Sd1,
            "sdxl" => Architecture::Sdxl,
            "sd3" => Architecture::Sd3,
            other => Architecture::Other(other.to_string()),
        }
    }

    /// The name written in `general.architecture`.
    pub fn name(&self) -> &str {
        match self {
            Architecture::Flux => "flux",
            Architecture::Sd1 => "sd1",
            Architecture::Sdxl => "sdxl",
            Architecture::Sd3 => "sd3",
            Architecture::Other(name) => name,
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `name` without a known denoiser prefix ([`DENOISER_PREFIXES`]), or unchanged.
pub fn strip_known_prefix(name: &str) -> &str {
    DENOISER_PREFIXES
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name)
}

/// The denoiser prefix used by `names`, if any name has one: the denoiser is then the tensors
/// under it, and the others belong to other components (VAE, text encoders).
pub fn denoiser_prefix<'a>(
    names: impl IntoIterator<Item = &'a str> + Clone,
) -> Option<&'static str> {
    DENOISER_PREFIXES
        .iter()
        .copied()
        .find(|p| names.clone().into_iter().any(|n| n.starts_with(p)))
}

/// Tells the denoiser's architecture from its tensor names (any prefix is ignored), the way
/// ComfyUI-GGUF's `detect_arch` does, in both the original and the diffusers layouts. `None`
/// when no rule matches.
pub fn detect_architecture<'a>(
    names: impl IntoIterator<Item = &'a str> + Clone,
) -> Option<Architecture> {
    let has = |key: &str| {
        names
            .clone()
            .into_iter()
            .any(|n| strip_known_prefix(n) == key)
    };
    if has("double_blocks.0.img_attn.qkv.weight")
        || has("double_blocks.0.img_attn.proj.weight")
        || has("single_transformer_blocks.0.proj_mlp.weight")
    {
        return Some(Architecture::Flux);
    }
    if has("joint_blocks.0.x_block.attn.qkv.weight")
        || has("transformer_blocks.0.attn.add_q_proj.weight")
    {
        return Some(Architecture::Sd3);
    }
    let ldm_unet = has("input_blocks.0.0.weight") && has("out.2.weight");
    let diffusers_unet = has("conv_in.weight") && has("down_blocks.0.resnets.0.conv1.weight");
    if ldm_unet || diffusers_unet {
        let xl = has("label_emb.0.0.weight") || has("add_embedding.linear_1.weight");
        return Some(if xl {
            Architecture::Sdxl
        } else {
            Architecture::Sd1
        });
    }
    None
}

/// "a", "a or b", "a, b or c".
pub(crate) fn one_of(archs: &[Architecture]) -> String {
    let names: Vec<&str> = archs.iter().map(Architecture::name).collect();
    match names.split_last() {
        None => "(none)".into(),
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(
            strip_known_prefix("model.diffusion_model.input_blocks.0.0.weight"),
            "input_blocks.0.0.weight"
        );
        assert_eq!(
            strip_known_prefix("first_stage_model.x"),
            "first_stage_model.x"
        );
        let names = ["first_stage_model.a", "model.diffusion_model.b"];
        assert_eq!(denoiser_prefix(names), Some("model.diffusion_model."));
        assert_eq!(denoiser_prefix(["a", "b"]), None);
    }

    #[test]
    fn detection() {
        let flux = ["model.diffusion_model.double_blocks.0.img_attn.qkv.weight"];
        assert_eq!(detect_architecture(flux), Some(Architecture::Flux));
        let sdxl = [
            "input_blocks.0.0.weight",
            "out.2.weight",
            "label_emb.0.0.weight",
        ];
        assert_eq!(detect_architecture(sdxl), Some(Architecture::Sdxl));
        let sd1 = ["conv_in.weight", "down_blocks.0.resnets.0.conv1.weight"];
        assert_eq!(detect_architecture(sd1), Some(Architecture::Sd1));
        assert_eq!(detect_architecture(["encoder.conv_in.weight"]), None);
        assert_eq!(Architecture::from_name("SDXL"), Architecture::Sdxl);
        assert_eq!(
            one_of(&[Architecture::Sd1, Architecture::Sdxl, Architecture::Flux]),
            "sd1, sdxl or flux"
        );
    }
}
