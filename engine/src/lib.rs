//! beeswax: a Stable Diffusion inference engine on Candle.
//!
//! The crate is organised by domain: model packs and their files ([`manifest`], [`hub`],
//! [`model_files`]), the text tokenizer ([`tokenizer`]), the networks ([`models`]), the
//! schedulers ([`schedulers`]), seeded noise ([`noise`]) and the pipelines that tie them
//! together ([`pipeline`]), plus image output ([`image_out`]) and benchmarks ([`bench`]).

pub mod bench;
pub mod defaults;
pub mod device;
pub mod error;
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

pub use error::{Error, Result};
