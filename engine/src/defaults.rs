//! The one place that holds the engine's own defaults: what a job gets when neither the
//! request, the pipeline, the pack nor the model says otherwise. Read by the command line, the
//! manifests and the HTTP service alike. A leaf module: it imports nothing from the crate.

/// Denoising steps (diffusers' pipelines use 50; AUTOMATIC1111 and ComfyUI 20).
pub const STEPS: usize = 20;
/// Guidance scale (diffusers' 7.5).
pub const GUIDANCE: f64 = 7.5;
/// Images per batch.
pub const BATCH: usize = 1;
/// CLIP skip: the last layer.
pub const CLIP_SKIP: usize = 1;
/// Image-to-image strength (diffusers' and AUTOMATIC1111's default).
pub const STRENGTH: f64 = 0.75;
/// The share of the schedule the base model runs before a refiner takes over
/// (AUTOMATIC1111's default `refiner_switch_at`, diffusers' documented `denoising_end`).
pub const REFINER_SWITCH_AT: f64 = 0.8;
/// Mask blur in pixels (AUTOMATIC1111's).
pub const MASK_BLUR: f64 = 4.0;
/// Context pixels around the mask with "only masked" inpainting (AUTOMATIC1111's).
pub const INPAINT_PADDING: usize = 32;
/// The sampler used when neither the job, the pack nor the model's scheduler config names one
/// beeswax has.
pub const SAMPLER: &str = "euler";
/// The Hugging Face revision (branch, tag or commit) a pack or LoRA reads when its manifest
/// names none.
pub const HUB_REVISION: &str = "main";
/// The weight of a `[[lora]]` whose manifest gives none.
pub const LORA_WEIGHT: f64 = 1.0;
/// Memory cap of a WASM plugin whose manifest sets none, in MiB.
pub const PLUGIN_MEMORY_MIB: u64 = 256;
/// Deadline of one WASM plugin call whose manifest sets none, in milliseconds.
pub const PLUGIN_TIMEOUT_MS: u64 = 10_000;
