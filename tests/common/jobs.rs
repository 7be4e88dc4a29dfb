//! The one place the tests build library job values and run them: a [`Case`] (a reference run,
//! or a test's own settings) becomes a text-to-image, image-to-image or inpainting job; a
//! server-style request becomes the job a pack's defaults make of it. When the library's job
//! types change, this file is the one to adapt.

use std::collections::HashMap;
use std::ops::ControlFlow;

use beeswax::extensions::Extensions;
use beeswax::family::Model;
use beeswax::image_in::{Mask, ResizeMode, RgbImage};
use beeswax::manifest::PackDefaults;
use beeswax::pipeline::{
    resolve, run, Generated, ImageInput, InpaintArea, Input, Job, JobRequest, MaskInput,
    MaskedContent, Settings, StepProgress,
};
use candle_core::Tensor;

use super::reference::{Case, FluxCase};

/// The library's job type: the one name the tests use for it.
pub type TextJob = Job;

/// Image-to-image and inpainting settings beyond a case's; the defaults are the references'
/// (stretched to the job size, the posterior mean, no mask blur, the whole picture, the
/// original content under the mask).
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    /// How the picture is fitted to the job size.
    pub resize: ResizeMode,
    /// Sample the VAE's latent distribution instead of taking its mean.
    pub sample_posterior: bool,
    /// Gaussian blur of the mask, in pixels.
    pub mask_blur: f32,
    /// The whole picture or only the masked region.
    pub area: InpaintArea,
    /// What the masked region starts from.
    pub masked_content: MaskedContent,
}

impl Case {
    /// The settings of this case.
    pub fn settings(&self) -> Settings {
        Settings {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            steps: self.steps,
            guidance: self.guidance,
            width: self.width,
            height: self.height,
            seed: self.seed,
            batch: self.batch,
            // diffusers' clip_skip=N is AUTOMATIC1111's N + 1.
            clip_skip: self.clip_skip_diffusers.map_or(1, |n| n + 1),
            prompt_syntax: self.prompt_syntax,
            pad_prompts: self.pad_prompts,
            true_cfg: None,
            size_conditioning: Default::default(),
        }
    }

    /// A job of this case's settings and sampler from `input`.
    pub fn job(&self, input: Input) -> Job {
        Job {
            settings: self.settings(),
            sampler: super::registry()
                .sampler(&self.scheduler, None)
                .unwrap_or_else(|e| panic!("{}: {e}", self.name())),
            input,
            pre_processors: Vec::new(),
            post_processors: Vec::new(),
            refiner: None,
        }
    }

    /// The text-to-image job of this case, from `init_latents` when given (else the seed).
    pub fn text_job(&self, init_latents: Option<&Tensor>) -> Job {
        self.job(Input::Text {
            init_latents: init_latents.cloned(),
        })
    }

    fn image_input(
        &self,
        init: &RgbImage,
        init_noise: Option<&Tensor>,
        options: &ImageOptions,
    ) -> ImageInput {
        let strength = self
            .strength
            .unwrap_or_else(|| panic!("{}: an image-to-image case needs a strength", self.name()));
        ImageInput {
            picture: init.clone(),
            strength,
            resize: options.resize,
            sample_posterior: options.sample_posterior,
            init_noise: init_noise.cloned(),
        }
    }

    /// The image-to-image job of this case from `init`, adding `init_noise` when given (else
    /// seeded noise), with the references' options.
    pub fn image_job(&self, init: &RgbImage, init_noise: Option<&Tensor>) -> Job {
        self.image_job_with(init, init_noise, &ImageOptions::default())
    }

    /// [`Case::image_job`] with other `options`.
    pub fn image_job_with(
        &self,
        init: &RgbImage,
        init_noise: Option<&Tensor>,
        options: &ImageOptions,
    ) -> Job {
        self.job(Input::Image(self.image_input(init, init_noise, options)))
    }

    /// The inpainting job of this case: `init` repainted where `mask` is 1, with the
    /// references' options.
    pub fn inpaint_job(&self, init: &RgbImage, mask: &Mask, init_noise: Option<&Tensor>) -> Job {
        self.inpaint_job_with(init, mask, init_noise, &ImageOptions::default())
    }

    /// [`Case::inpaint_job`] with other `options`.
    pub fn inpaint_job_with(
        &self,
        init: &RgbImage,
        mask: &Mask,
        init_noise: Option<&Tensor>,
        options: &ImageOptions,
    ) -> Job {
        self.job(Input::Inpaint {
            image: self.image_input(init, init_noise, options),
            mask: MaskInput {
                mask: mask.clone(),
                blur: options.mask_blur,
                area: options.area,
                content: options.masked_content,
            },
        })
    }
}

fn go_on(_: StepProgress) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

/// Runs `job` with the built-in extensions to the end (or its error).
pub fn try_generate(model: &Model, job: &Job) -> beeswax::Result<Generated> {
    try_generate_with(model, job, &Extensions::builtin())
}

/// Runs `job` with `extensions` (e.g. textual-inversion embeddings) to the end (or its error).
pub fn try_generate_with(
    model: &Model,
    job: &Job,
    extensions: &Extensions,
) -> beeswax::Result<Generated> {
    run(model, job, extensions, &mut go_on)
}

/// The built-in extensions with the embeddings of `catalog`.
pub fn with_embeddings(catalog: beeswax::prompt::EmbeddingCatalog) -> Extensions {
    let mut extensions = Extensions::builtin();
    extensions.embeddings = std::sync::Arc::new(catalog);
    extensions
}

/// Runs a job to the end; it must succeed.
pub fn generate(model: &Model, job: &Job) -> Generated {
    try_generate(model, job).unwrap()
}

/// Runs an image-to-image job to the end (or its error).
pub fn generate_image(model: &Model, job: &Job) -> beeswax::Result<Generated> {
    try_generate(model, job)
}

/// Runs an inpainting job to the end (or its error).
pub fn generate_inpaint(model: &Model, job: &Job) -> beeswax::Result<Generated> {
    try_generate(model, job)
}

/// The pixels of the first image the library makes for `prompt` with `steps` and `seed` on a
/// pack's `defaults` (what the CLI and the service resolve a request to).
pub fn pack_image(
    model: &Model,
    defaults: &PackDefaults,
    prompt: &str,
    steps: usize,
    seed: u64,
) -> Vec<u8> {
    let request = JobRequest {
        prompt: prompt.into(),
        steps: Some(steps),
        seed: Some(seed),
        ..Default::default()
    };
    let job = resolve(model, defaults, &super::registry(), request).unwrap();
    generate(model, &job).images.remove(0).data
}

impl FluxCase {
    /// The settings of this FLUX run (no negative prompt, one image).
    pub fn settings(&self) -> Settings {
        Settings {
            prompt: self.prompt.clone(),
            negative_prompt: String::new(),
            steps: self.steps,
            guidance: self.guidance,
            width: self.width,
            height: self.height,
            seed: self.seed,
            batch: 1,
            clip_skip: 1,
            prompt_syntax: beeswax::prompt::PromptSyntax::Plain,
            pad_prompts: false,
            true_cfg: None,
            size_conditioning: Default::default(),
        }
    }

    /// The job of this run: its sampler's beeswax name (`flow_euler` is `euler` on a flow
    /// model, `flow_dpmpp_2m` is `dpmpp_2m`), text to image from the reference's unpacked
    /// starting noise `r["init_latents"]`, or image to image from `r["init_image"]` with the
    /// posterior sampled from the seed (as FluxImg2ImgPipeline does).
    pub fn job(&self, r: &HashMap<String, Tensor>) -> Job {
        let name = self.sampler.strip_prefix("flow_").unwrap_or(&self.sampler);
        let input = match self.mode.as_str() {
            "img2img" => {
                let picture = &r["init_image"];
                let (height, width, _) = picture.dims3().unwrap();
                Input::Image(ImageInput {
                    picture: RgbImage {
                        width,
                        height,
                        data: picture.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
                    },
                    strength: self.strength.unwrap(),
                    resize: ResizeMode::default(),
                    sample_posterior: true,
                    init_noise: None,
                })
            }
            _ => Input::Text {
                init_latents: Some(r["init_latents"].clone()),
            },
        };
        Job {
            settings: self.settings(),
            sampler: super::registry().sampler(name, None).unwrap(),
            input,
            pre_processors: Vec::new(),
            post_processors: Vec::new(),
            refiner: None,
        }
    }
}
