//! The networks of a Stable Diffusion model, owned here so that parity with diffusers (and
//! speed) is ours to decide: the CLIP text encoder, the conditional UNet and the VAE.
//!
//! Every architecture parameter comes from the component's `config.json` (serde structs that
//! mirror diffusers' and transformers' configs); weights come from safetensors files through [`crate::weights`].

pub mod attention;
pub mod clip;
pub mod config_file;
pub mod resnet;
pub mod sampling;
pub mod unet;
pub mod vae;
