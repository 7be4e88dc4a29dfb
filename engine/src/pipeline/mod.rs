//! Pipelines: a [`Job`] (settings, a sampler, an input) run on a [`crate::family::Model`] by
//! [`run`], which picks the mode's pipeline. Each pipeline reads top to bottom as one function
//! (encode prompt, prepare latents, denoise, decode) over the shared [`stages`]; [`resolve`]
//! fills a [`JobRequest`] in from defaults, the same way for the CLI and the HTTP service.

mod denoise;
mod guidance;
mod image_to_image;
mod inpaint;
mod inpaint_region;
mod job;
mod refiner;
mod request;
mod run;
pub mod stages;
mod text_to_image;

pub use denoise::{denoise, denoise_span, Guidance, Hooks, Span};
pub use image_to_image::image_to_image;
pub use inpaint::inpaint;
pub use job::{ImageInput, InpaintArea, Input, Job, MaskInput, MaskedContent, Settings};
pub use refiner::{denoise_and_refine, handoff, BaseRun, Handoff, Refine, Refiner};
pub use request::{
    random_seed, resolve, resolve_sampler, ImageRequest, InputRequest, JobRequest, MaskRequest,
};
pub use run::{build_scheduler, check_scheduler, run};
pub use stages::{Generated, StageTimes, StepProgress, TextConditioning};
pub use text_to_image::text_to_image;
