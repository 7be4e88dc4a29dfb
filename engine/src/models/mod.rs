//! The networks of a Stable Diffusion model, owned here so that parity with diffusers (and
//! speed) is ours to decide: the CLIP text encoder, the conditional UNet and the VAE, and for
//! FLUX.1 the T5 encoder and the FLUX transformer.
//!
//! Every architecture parameter comes from the component's `config.json` (serde structs that
//! mirror diffusers' and transformers' configs); weights come from safetensors files through [`crate::weights`].

pub mod attention;
pub mod clip;
pub mod config_file;
pub mod flux;
pub mod linear;
pub mod resnet;
pub mod sampling;
pub mod t5;
pub mod taesd;
pub mod unet;
pub mod vae;

/// `copies` copies of the batch `xs` one after another along the batch dimension: `[x; x]`
/// for a guidance pair, `xs` itself for one copy.
pub fn repeat_batch(
    xs: &candle_core::Tensor,
    copies: usize,
) -> candle_core::Result<candle_core::Tensor> {
    match copies {
        1 => Ok(xs.clone()),
        n => candle_core::Tensor::cat(&vec![xs; n], 0),
    }
}
