//! Pipelines: a loaded model ([`StableDiffusion`]) and the jobs run on it, each one readable
//! top to bottom as a single function (encode prompt, prepare latents, denoise, decode).

mod load;
mod prompt;
mod text_to_image;

pub use load::{LoadOptions, StableDiffusion};
pub use prompt::encode_prompt;
pub use text_to_image::{text_to_image, Generated, StageTimes, StepProgress, TextToImage};
