//! What the data directory records of a job, as JSON: the request as accepted (enough to run
//! it again after a restart) and how it finished.

use serde::{Deserialize, Serialize};

use crate::image_in::{Mask, ResizeMode};
use crate::image_out::RgbImage;
use crate::lora::LoraRequest;
use crate::pipeline::{ImageRequest, MaskRequest, MaskedContent};
use crate::prompt::PromptSyntax;
use crate::server::jobs::{Origin, Status, Summary};
use crate::server::request::GenerateRequest;

/// The record format; a record of another version is reported and skipped.
pub const VERSION: u32 = 1;

/// An accepted job (`<id>.job.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    /// [`VERSION`].
    pub version: u32,
    /// The job id.
    pub id: String,
    /// Acceptance order: restored jobs queue again in this order.
    pub seq: u64,
    /// The API that submitted it.
    pub origin: Origin,
    /// When it was submitted, in ms since the Unix epoch.
    pub created_at_ms: u64,
    /// What the routes show of it.
    pub summary: Summary,
    /// The request, to run it again.
    pub request: StoredRequest,
}

/// A finished job (`<id>.done.json`); its images are `<id>.image-<n>.png`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finished {
    /// [`VERSION`].
    pub version: u32,
    /// Completed, failed or cancelled.
    pub status: Status,
    /// When it started running, in ms since the Unix epoch.
    pub started_at_ms: Option<u64>,
    /// When it finished, in ms since the Unix epoch (retention counts from it).
    pub finished_at_ms: u64,
    /// The error, when failed.
    pub error: Option<String>,
    /// Warnings.
    pub warnings: Vec<String>,
    /// AUTOMATIC1111 `parameters` text of each image.
    pub infotexts: Vec<String>,
    /// How many images.
    pub images: usize,
}

/// A [`GenerateRequest`] without its pictures (stored beside it as PNGs), its seed fixed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)] // the fields are GenerateRequest's
pub struct StoredRequest {
    pub pipeline: Option<String>,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub steps: Option<i64>,
    pub guidance: Option<f64>,
    pub true_cfg: Option<f64>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub seed: Option<i64>,
    pub batch: Option<i64>,
    pub iterations: Option<i64>,
    pub scheduler: Option<String>,
    pub schedule: Option<String>,
    pub clip_skip: Option<i64>,
    pub prompt_syntax: Option<PromptSyntax>,
    pub pad_prompts: Option<bool>,
    pub preview_every: Option<i64>,
    pub loras: Vec<LoraRequest>,
    pub image: Option<StoredImage>,
    pub pre_processors: Vec<String>,
    pub refiner: Option<String>,
    pub refiner_switch_at: Option<f64>,
}

/// The settings of an image job's picture (the picture is `<id>.init.png`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredImage {
    /// Strength.
    pub strength: Option<f64>,
    /// `stretch`, `crop` or `fill`.
    pub resize: Option<String>,
    /// Sample the VAE posterior.
    pub sample_posterior: bool,
    /// The mask's settings (the mask is `<id>.mask.png`).
    pub mask: Option<StoredMask>,
}

/// The settings of an inpainting mask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMask {
    /// Blur in pixels.
    pub blur: Option<f32>,
    /// Only the masked region, with this padding.
    pub only_masked: Option<Option<usize>>,
    /// `original`, `fill` or `latent-noise`.
    pub content: Option<String>,
}

fn resize_name(r: ResizeMode) -> &'static str {
    match r {
        ResizeMode::Stretch => "stretch",
        ResizeMode::Crop => "crop",
        ResizeMode::Fill => "fill",
    }
}

fn content_name(c: MaskedContent) -> &'static str {
    match c {
        MaskedContent::Original => "original",
        MaskedContent::Fill => "fill",
        MaskedContent::LatentNoise => "latent-noise",
    }
}

impl StoredRequest {
    /// `req` without its pictures, for the pipeline named `pipeline`.
    pub fn of(req: &GenerateRequest, pipeline: &str) -> Self {
        Self {
            pipeline: Some(pipeline.to_string()),
            prompt: req.prompt.clone(),
            negative_prompt: req.negative_prompt.clone(),
            steps: req.steps,
            guidance: req.guidance,
            true_cfg: req.true_cfg,
            width: req.width,
            height: req.height,
            seed: req.seed,
            batch: req.batch,
            iterations: req.iterations,
            scheduler: req.scheduler.clone(),
            schedule: req.schedule.clone(),
            clip_skip: req.clip_skip,
            prompt_syntax: req.prompt_syntax,
            pad_prompts: req.pad_prompts,
            preview_every: req.preview_every,
            loras: req.loras.clone(),
            image: req.image.as_ref().map(|i| StoredImage {
                strength: i.strength,
                resize: i.resize.map(|r| resize_name(r).to_string()),
                sample_posterior: i.sample_posterior,
                mask: i.mask.as_ref().map(|m| StoredMask {
                    blur: m.blur,
                    only_masked: m.only_masked,
                    content: m.content.map(|c| content_name(c).to_string()),
                }),
            }),
            pre_processors: req.pre_processors.clone(),
            refiner: req.refiner.clone(),
            refiner_switch_at: req.refiner_switch_at,
        }
    }

    /// The request again, with its `picture` and `mask` (an image job's); an error names
    /// what is missing or unreadable.
    pub fn into_request(
        self,
        picture: Option<RgbImage>,
        mask: Option<Mask>,
    ) -> Result<GenerateRequest, String> {
        let image = match (self.image, picture) {
            (None, _) => None,
            (Some(_), None) => return Err("its input picture is missing".into()),
            (Some(i), Some(picture)) => {
                let resize = i.resize.map(|r| r.parse::<ResizeMode>()).transpose()?;
                let mask = match (i.mask, mask) {
                    (None, _) => None,
                    (Some(_), None) => return Err("its mask is missing".into()),
                    (Some(m), Some(mask)) => Some(MaskRequest {
                        mask,
                        blur: m.blur,
                        only_masked: m.only_masked,
                        content: m.content.map(|c| c.parse()).transpose()?,
                    }),
                };
                Some(ImageRequest {
                    picture,
                    strength: i.strength,
                    resize,
                    sample_posterior: i.sample_posterior,
                    init_noise: None,
                    mask,
                })
            }
        };
        Ok(GenerateRequest {
            pipeline: self.pipeline,
            prompt: self.prompt,
            negative_prompt: self.negative_prompt,
            steps: self.steps,
            guidance: self.guidance,
            true_cfg: self.true_cfg,
            width: self.width,
            height: self.height,
            seed: self.seed,
            batch: self.batch,
            iterations: self.iterations,
            scheduler: self.scheduler,
            schedule: self.schedule,
            clip_skip: self.clip_skip,
            prompt_syntax: self.prompt_syntax,
            pad_prompts: self.pad_prompts,
            preview_every: self.preview_every,
            loras: self.loras,
            image,
            pre_processors: self.pre_processors,
            refiner: self.refiner,
            refiner_switch_at: self.refiner_switch_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inpainting_request_round_trips_through_json() {
        let req = GenerateRequest {
            prompt: "a cat".into(),
            steps: Some(3),
            seed: Some(42),
            loras: vec![LoraRequest {
                name: "x".into(),
                weight: Some(0.5),
            }],
            image: Some(ImageRequest {
                picture: RgbImage {
                    width: 2,
                    height: 1,
                    data: vec![1, 2, 3, 4, 5, 6],
                },
                strength: Some(0.5),
                resize: Some(ResizeMode::Crop),
                sample_posterior: false,
                init_noise: None,
                mask: Some(MaskRequest {
                    mask: Mask {
                        width: 2,
                        height: 1,
                        data: vec![0.0, 1.0],
                    },
                    blur: Some(3.0),
                    only_masked: Some(Some(16)),
                    content: Some(MaskedContent::LatentNoise),
                }),
            }),
            ..Default::default()
        };
        let stored = StoredRequest::of(&req, "tiny");
        let text = serde_json::to_string(&stored).unwrap();
        let back: StoredRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, stored);
        let (picture, mask) = {
            let i = req.image.as_ref().unwrap();
            (i.picture.clone(), i.mask.as_ref().unwrap().mask.clone())
        };
        let again = back.into_request(Some(picture), Some(mask)).unwrap();
        assert_eq!(again.pipeline.as_deref(), Some("tiny"));
        assert_eq!(again.seed, Some(42));
        let image = again.image.unwrap();
        assert_eq!(image.resize, Some(ResizeMode::Crop));
        let mask = image.mask.unwrap();
        assert_eq!(mask.only_masked, Some(Some(16)));
        assert_eq!(mask.content, Some(MaskedContent::LatentNoise));
        assert_eq!(mask.mask.data, vec![0.0, 1.0]);
    }

    #[test]
    fn an_image_request_without_its_picture_is_refused() {
        let stored = StoredRequest {
            image: Some(StoredImage {
                strength: None,
                resize: None,
                sample_posterior: false,
                mask: None,
            }),
            ..Default::default()
        };
        let e = stored.into_request(None, None).unwrap_err();
        assert!(e.contains("picture is missing"), "{e}");
    }
}
