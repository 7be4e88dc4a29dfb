//! The reference cases the fixture scripts recorded from diffusers, and the fixture files they
//! point at. Every `cases.json` of a whole-pipeline reference (text to image, the sampler runs,
//! image to image and inpainting, LoRAs) is a list of [`Case`]; [`cases`] reads one and
//! [`Case::tensors`] the tensors of one run. Turning a case into a library job is
//! `jobs.rs`'s business.

use std::collections::HashMap;
use std::path::Path;

use beeswax::prompt::PromptSyntax;
use candle_core::{Device, Tensor};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::fixture;

/// One reference run of a fixture script (`make_fixtures.py`, `make_img2img_fixtures.py`,
/// `make_lora_fixtures.py`, `make_scheduler_pipeline_fixtures.py`), or, built in a test, the
/// settings of a run of its own. Fields a script does not write take their defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// The safetensors file of the run's tensors, beside `cases.json`.
    #[serde(default)]
    pub file: String,
    /// Sampler name as diffusers' class was set up (beeswax name or A1111 alias).
    pub scheduler: String,
    /// Classifier-free guidance scale.
    pub guidance: f64,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Denoising steps.
    pub steps: usize,
    /// Images per run.
    #[serde(default = "one")]
    pub batch: usize,
    /// The prompt.
    pub prompt: String,
    /// The negative prompt.
    #[serde(default)]
    pub negative_prompt: String,
    /// diffusers' `clip_skip` (A1111's minus one), if set.
    #[serde(default)]
    pub clip_skip_diffusers: Option<usize>,
    /// Seed of seeded noise (the references pass their noise instead: 0).
    #[serde(default)]
    pub seed: u64,
    /// Image to image: `img2img` or `inpaint`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Image to image: the miniature model.
    #[serde(default)]
    pub model: Option<String>,
    /// Image to image: how much is repainted.
    #[serde(default)]
    pub strength: Option<f64>,
    /// Image to image: the UNet's input channels (9 for an inpainting UNet).
    #[serde(default)]
    pub unet_in_channels: Option<usize>,
    /// LoRAs: (file beside `cases.json`, weight).
    #[serde(default)]
    pub loras: Vec<(String, f64)>,
    /// How the prompts are read: diffusers' references are literal (`plain`).
    #[serde(default = "plain")]
    pub prompt_syntax: PromptSyntax,
    /// Pad prompt and negative prompt to the same chunk count.
    #[serde(default)]
    pub pad_prompts: bool,
    /// The fixture folder the case was read from (set by [`cases`]).
    #[serde(skip)]
    pub dir: String,
}

fn one() -> usize {
    1
}

fn plain() -> PromptSyntax {
    PromptSyntax::Plain
}

impl Case {
    /// A run of the test's own: `steps` of `scheduler` at `width × height`, guidance 7.5,
    /// seed 0, one image, no negative prompt.
    pub fn new(prompt: &str, scheduler: &str, steps: usize, width: usize, height: usize) -> Self {
        Self {
            file: String::new(),
            scheduler: scheduler.into(),
            guidance: 7.5,
            width,
            height,
            steps,
            batch: 1,
            prompt: prompt.into(),
            negative_prompt: String::new(),
            clip_skip_diffusers: None,
            seed: 0,
            kind: None,
            model: None,
            strength: None,
            unet_in_channels: None,
            loras: Vec::new(),
            prompt_syntax: PromptSyntax::Plain,
            pad_prompts: false,
            dir: String::new(),
        }
    }

    /// This case with its prompts read in `syntax`, padded to the same length when `pad`.
    pub fn with_syntax(mut self, syntax: PromptSyntax, pad: bool) -> Self {
        self.prompt_syntax = syntax;
        self.pad_prompts = pad;
        self
    }

    /// Every tensor the reference saved for this run.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        load(&format!("{}/{}", self.dir, self.file))
    }

    /// `dir/file`, to name the case in messages.
    pub fn name(&self) -> String {
        format!("{}/{}", self.dir, self.file)
    }
}

/// The cases of `tests/fixtures/<dir>/cases.json`.
pub fn cases(dir: &str) -> Vec<Case> {
    let mut cases: Vec<Case> = json(&format!("{dir}/cases.json"));
    assert!(!cases.is_empty(), "{dir}/cases.json lists no case");
    for case in &mut cases {
        case.dir = dir.to_string();
    }
    cases
}

/// A JSON fixture under `tests/fixtures/`, parsed.
pub fn json<T: DeserializeOwned>(rel: &str) -> T {
    let path = fixture(rel);
    let text = read(&path);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every tensor of a safetensors fixture under `tests/fixtures/` (as stored).
pub fn load(rel: &str) -> HashMap<String, Tensor> {
    let path = fixture(rel);
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One whole FLUX run of `make_flux_fixtures.py` (`reference/flux/pipelines.json`): diffusers'
/// FluxPipeline or FluxImg2ImgPipeline on a miniature model.
#[derive(Debug, Clone, Deserialize)]
pub struct FluxCase {
    /// The run's name: its tensors are `reference/flux/pipe_{name}.safetensors`.
    pub name: String,
    /// `dev` or `schnell` (the model `models/tiny-flux-{model}`).
    pub model: String,
    /// `txt2img` or `img2img`.
    pub mode: String,
    /// `flow_euler` or `flow_dpmpp_2m`.
    pub sampler: String,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Denoising steps.
    pub steps: usize,
    /// Guidance scale (dev's embedding).
    pub guidance: f64,
    /// Seed of the generator (image-to-image draws from it).
    pub seed: u64,
    /// The prompt.
    pub prompt: String,
    /// T5 tokens per prompt.
    pub max_sequence_length: usize,
    /// Image to image: how much is repainted.
    #[serde(default)]
    pub strength: Option<f64>,
    /// A LoRA file under `tests/fixtures/`.
    #[serde(default)]
    pub lora: Option<String>,
    /// The LoRA's weight.
    #[serde(default)]
    pub lora_scale: Option<f64>,
    /// The dynamic shift diffusers used.
    #[serde(default)]
    pub mu: Option<f64>,
}

impl FluxCase {
    /// The miniature model's folder name.
    pub fn model_name(&self) -> String {
        format!("tiny-flux-{}", self.model)
    }

    /// The run's tensors.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        load(&format!("reference/flux/pipe_{}.safetensors", self.name))
    }
}

/// The FLUX pipeline runs.
pub fn flux_cases() -> Vec<FluxCase> {
    #[derive(Deserialize)]
    struct Cases {
        cases: Vec<FluxCase>,
    }
    json::<Cases>("reference/flux/pipelines.json").cases
}
