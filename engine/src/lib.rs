//! beeswax: a Stable Diffusion inference engine on Candle.
//!
//! The crate is organised by domain, lower layers first:
//! - values and files: [`limits`] and [`defaults`] (the one place for allowed values and
//!   defaults), [`weights`] (the one safetensors reader), [`gguf`] (GGUF files and
//!   quantization), [`manifest`] (packs, pipelines and other sections of the manifest folder),
//!   [`hub`], [`digest`], [`model_files`], [`image_in`], [`image_out`], [`params`] (A1111's
//!   PNG parameters);
//! - maths and networks: [`kernels`], [`models`] (CLIP, UNet, VAE, FLUX, T5), [`tokenizer`],
//!   [`schedulers`], [`noise`], [`prompt`] (A1111/ComfyUI prompt syntax);
//! - [`family`]: what a model is made of and the seam every pipeline drives ([`family::Model`]);
//! - [`pipeline`]: one [`pipeline::Job`] type and [`pipeline::run`];
//! - [`extensions`] (samplers and processors as one value), [`lora`], [`plugins`];
//! - [`server`]: the HTTP service; the `beeswax` binary sits on top of all of them.

pub mod bench;
pub mod checkpoint;
pub mod defaults;
pub mod device;
pub mod digest;
pub mod error;
pub mod extensions;
pub mod family;
pub mod fleet;
pub mod fs_limits;
pub mod gguf;
pub mod hub;
pub mod image_in;
pub mod image_out;
pub mod kernels;
pub mod limits;
pub mod lora;
pub mod manifest;
pub mod model_files;
pub mod models;
pub mod noise;
pub mod params;
pub mod pipeline;
pub mod plugins;
pub mod prompt;
pub mod schedulers;
pub mod server;
pub mod tokenizer;
pub mod weights;

pub use error::{Error, Result};

/// The unit tests run with the allocator the `beeswax` binary installs (see
/// [`weights::mapping::Allocator`]).
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: weights::mapping::Allocator = weights::mapping::Allocator;
