//! Pipelines: a loaded model ([`StableDiffusion`]) and the jobs run on it, each one readable
//! top to bottom as a single function (encode prompt, prepare latents, denoise, decode).

mod denoise;
mod image_to_image;
mod inpaint;
mod load;
mod prompt;
mod settings;
mod text_to_image;

pub use denoise::{denoise, Conditioning, Hooks};
pub use image_to_image::{image_to_image, ImageToImage};
pub use inpaint::{inpaint, Inpaint, InpaintArea, MaskedContent};
pub use load::{LoadOptions, StableDiffusion};
pub use prompt::encode_prompt;
pub use settings::{random_seed, resolve, JobRequest};
pub use text_to_image::{text_to_image, Generated, StageTimes, StepProgress, TextToImage};
