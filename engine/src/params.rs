//! Generation parameters as AUTOMATIC1111 writes them into a PNG's `parameters` text chunk, so
//! that tools which read A1111 images (and "PNG Info") understand ours.

use std::sync::Arc;

use crate::pipeline::{Input, Job};
use crate::prompt::infotext::{format_params, prompt_params, ti_hashes};
use crate::prompt::{Embedding, PromptSyntax};

/// What produced one image.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt (omitted from the text when empty).
    pub negative_prompt: String,
    /// Denoising steps.
    pub steps: usize,
    /// Sampler, by its AUTOMATIC1111 display name.
    pub sampler: String,
    /// Classifier-free guidance scale.
    pub guidance: f64,
    /// The seed of this image.
    pub seed: u64,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Model or pack name.
    pub model: String,
    /// CLIP skip, AUTOMATIC1111 semantics (1 = none; written only when above 1).
    pub clip_skip: usize,
    /// Image-to-image strength (image jobs only).
    pub denoising_strength: Option<f64>,
    /// Mask blur (inpainting jobs only).
    pub mask_blur: Option<f32>,
    /// How the prompt was read (written when not a1111, A1111's own).
    pub prompt_syntax: PromptSyntax,
    /// A1111's `TI hashes` of the textual-inversion embeddings the prompts used.
    pub ti_hashes: Option<String>,
    /// The refiner's name and switch point (A1111's `Refiner`, `Refiner switch at`).
    pub refiner: Option<(String, f64)>,
}

impl GenerationParams {
    /// The parameters of image `index` of `job` (seed `seed + index`), made with the sampler
    /// called `sampler` (its A1111 display name) by model `model`.
    pub fn for_image(job: &Job, index: usize, sampler: &str, model: &str) -> Self {
        let s = &job.settings;
        Self {
            prompt: s.prompt.clone(),
            negative_prompt: s.negative_prompt.clone(),
            steps: s.steps,
            sampler: sampler.to_string(),
            guidance: s.guidance,
            seed: s.seed.wrapping_add(index as u64),
            width: s.width,
            height: s.height,
            model: model.to_string(),
            clip_skip: s.clip_skip,
            denoising_strength: job.input.image().map(|i| i.strength),
            mask_blur: match &job.input {
                Input::Inpaint { mask, .. } => Some(mask.blur),
                _ => None,
            },
            prompt_syntax: s.prompt_syntax,
            ti_hashes: None,
            refiner: job.refiner.as_ref().map(|r| (r.name.clone(), r.switch_at)),
        }
    }

    /// Records the textual-inversion embeddings the prompts used
    /// ([`crate::pipeline::Generated::embeddings`]).
    pub fn set_embeddings(&mut self, embeddings: &[Arc<Embedding>]) {
        let embeddings: Vec<&Embedding> = embeddings.iter().map(|e| &**e).collect();
        self.ti_hashes = ti_hashes(&embeddings);
    }

    /// The A1111 `parameters` text: prompt line, optional negative prompt line, settings line.
    pub fn to_a1111(&self) -> String {
        let mut text = self.prompt.clone();
        if !self.negative_prompt.is_empty() {
            text.push_str("\nNegative prompt: ");
            text.push_str(&self.negative_prompt);
        }
        text.push_str(&format!(
            "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
            self.steps, self.sampler, self.guidance, self.seed, self.width, self.height, self.model
        ));
        if self.clip_skip > 1 {
            text.push_str(&format!(", Clip skip: {}", self.clip_skip));
        }
        if let Some(strength) = self.denoising_strength {
            text.push_str(&format!(", Denoising strength: {strength}"));
        }
        if let Some(blur) = self.mask_blur {
            text.push_str(&format!(", Mask blur: {blur}"));
        }
        if let Some((name, switch_at)) = &self.refiner {
            text.push_str(&format!(
                ", Refiner: {name}, Refiner switch at: {switch_at}"
            ));
        }
        let mut prompt = prompt_params(self.prompt_syntax, PromptSyntax::default(), &[]);
        if let Some(hashes) = &self.ti_hashes {
            prompt.push(("TI hashes".to_string(), hashes.clone()));
        }
        text.push_str(&format_params(&prompt));
        text.push_str(&format!(", Version: beeswax {}", env!("CARGO_PKG_VERSION")));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_automatic1111() {
        let p = GenerationParams {
            prompt: "a red fox".into(),
            negative_prompt: "blurry".into(),
            steps: 20,
            sampler: "Euler".into(),
            guidance: 7.5,
            seed: 1,
            width: 512,
            height: 768,
            model: "tiny-sd".into(),
            clip_skip: 2,
            denoising_strength: None,
            mask_blur: None,
            prompt_syntax: PromptSyntax::A1111,
            ti_hashes: None,
            refiner: Some(("tiny-sdxl-refiner".into(), 0.8)),
        };
        let text = p.to_a1111();
        assert!(text.starts_with(
            "a red fox\nNegative prompt: blurry\nSteps: 20, Sampler: Euler, CFG scale: 7.5, Seed: 1, Size: 512x768, Model: tiny-sd, Clip skip: 2, Refiner: tiny-sdxl-refiner, Refiner switch at: 0.8"
        ), "{text}");
        assert!(!text.contains("Prompt syntax"), "{text}");
        let plain = GenerationParams {
            negative_prompt: String::new(),
            clip_skip: 1,
            prompt_syntax: PromptSyntax::Plain,
            refiner: None,
            ..p
        };
        let text = plain.to_a1111();
        assert!(!text.contains("Negative prompt") && !text.contains("Clip skip"));
        assert!(text.contains(", Prompt syntax: plain, Version"), "{text}");
        let ti = GenerationParams {
            ti_hashes: Some("owl: 0123456789ab, fox: ba9876543210".into()),
            ..plain
        };
        let text = ti.to_a1111();
        assert!(
            text.contains(
                ", Prompt syntax: plain, TI hashes: \"owl: 0123456789ab, fox: ba9876543210\", Version"
            ),
            "{text}"
        );
    }
}
