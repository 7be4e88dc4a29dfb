//! The job message on the work-queue stream: what an API node publishes on
//! `beeswax.jobs.<pipeline>` and a worker runs. JSON, versioned (`v`), carrying the request in
//! neutral terms (the API node validated it and fixed the seed, so every delivery of the
//! message makes the same images).

use serde::{Deserialize, Serialize};

use super::FleetError;
use crate::lora::LoraRequest;
use crate::prompt::PromptSyntax;
use crate::server::{GenerateRequest, Origin};

/// The message format version this build writes and reads.
pub const VERSION: u32 = 1;

/// A job on the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMessage {
    /// Format version ([`VERSION`]).
    pub v: u32,
    /// The job id (a UUID), the same on every node.
    pub id: String,
    /// The API that accepted it: `native`, `openai` or `a1111`.
    pub origin: String,
    /// Unix seconds when it was accepted.
    pub created_at: u64,
    /// What to run.
    pub request: WireRequest,
}

/// [`GenerateRequest`] as it travels (text-to-image fields; pictures are not carried yet).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireRequest {
    /// The pipeline (always set: it is also the subject).
    pub pipeline: String,
    /// What to draw.
    pub prompt: String,
    /// What to avoid.
    #[serde(default)]
    pub negative_prompt: Option<String>,
    /// Denoising steps.
    #[serde(default)]
    pub steps: Option<i64>,
    /// Guidance scale.
    #[serde(default)]
    pub guidance: Option<f64>,
    /// True CFG scale.
    #[serde(default)]
    pub true_cfg: Option<f64>,
    /// Width in pixels.
    #[serde(default)]
    pub width: Option<i64>,
    /// Height in pixels.
    #[serde(default)]
    pub height: Option<i64>,
    /// The seed the accepting node resolved (never random here).
    pub seed: i64,
    /// Images per iteration.
    #[serde(default)]
    pub batch: Option<i64>,
    /// Iterations.
    #[serde(default)]
    pub iterations: Option<i64>,
    /// Scheduler name or alias.
    #[serde(default)]
    pub scheduler: Option<String>,
    /// Noise schedule name.
    #[serde(default)]
    pub schedule: Option<String>,
    /// CLIP skip.
    #[serde(default)]
    pub clip_skip: Option<i64>,
    /// Prompt syntax.
    #[serde(default)]
    pub prompt_syntax: Option<PromptSyntax>,
    /// Pad prompt and negative prompt to the same chunk count.
    #[serde(default)]
    pub pad_prompts: Option<bool>,
    /// Preview interval in steps.
    #[serde(default)]
    pub preview_every: Option<i64>,
    /// LoRAs by catalog name.
    #[serde(default)]
    pub loras: Vec<LoraRequest>,
    /// Pre-processors by plugin name.
    #[serde(default)]
    pub pre_processors: Vec<String>,
    /// Refiner pack or pipeline.
    #[serde(default)]
    pub refiner: Option<String>,
    /// Refiner switch point.
    #[serde(default)]
    pub refiner_switch_at: Option<f64>,
}

impl WireRequest {
    /// The travelling form of `req`, for `pipeline` with the resolved `seed`; `None` when the
    /// request carries a picture (image-to-image and inpainting do not travel yet).
    pub fn from_request(req: &GenerateRequest, pipeline: &str, seed: u64) -> Option<Self> {
        if req.image.is_some() {
            return None;
        }
        Some(Self {
            pipeline: pipeline.to_string(),
            prompt: req.prompt.clone(),
            negative_prompt: req.negative_prompt.clone(),
            steps: req.steps,
            guidance: req.guidance,
            true_cfg: req.true_cfg,
            width: req.width,
            height: req.height,
            seed: seed as i64,
            batch: req.batch,
            iterations: req.iterations,
            scheduler: req.scheduler.clone(),
            schedule: req.schedule.clone(),
            clip_skip: req.clip_skip,
            prompt_syntax: req.prompt_syntax,
            pad_prompts: req.pad_prompts,
            preview_every: req.preview_every,
            loras: req.loras.clone(),
            pre_processors: req.pre_processors.clone(),
            refiner: req.refiner.clone(),
            refiner_switch_at: req.refiner_switch_at,
        })
    }

    /// Back to a request the worker validates against its own catalog.
    pub fn to_request(&self) -> GenerateRequest {
        GenerateRequest {
            pipeline: Some(self.pipeline.clone()),
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            steps: self.steps,
            guidance: self.guidance,
            true_cfg: self.true_cfg,
            width: self.width,
            height: self.height,
            seed: Some(self.seed),
            batch: self.batch,
            iterations: self.iterations,
            scheduler: self.scheduler.clone(),
            schedule: self.schedule.clone(),
            clip_skip: self.clip_skip,
            prompt_syntax: self.prompt_syntax,
            pad_prompts: self.pad_prompts,
            preview_every: self.preview_every,
            loras: self.loras.clone(),
            image: None,
            pre_processors: self.pre_processors.clone(),
            refiner: self.refiner.clone(),
            refiner_switch_at: self.refiner_switch_at,
        }
    }
}

/// The wire name of `origin`.
pub fn origin_name(origin: Origin) -> &'static str {
    match origin {
        Origin::Native => "native",
        Origin::OpenAi => "openai",
        Origin::A1111 => "a1111",
    }
}

/// The origin named `name` (unknown names read as native).
pub fn origin_from(name: &str) -> Origin {
    match name {
        "openai" => Origin::OpenAi,
        "a1111" => Origin::A1111,
        _ => Origin::Native,
    }
}

impl JobMessage {
    /// The JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a message; the error says what is wrong with it (such a message is
    /// dead-lettered, never retried).
    pub fn parse(bytes: &[u8]) -> Result<Self, FleetError> {
        #[derive(Deserialize)]
        struct Version {
            v: Option<u32>,
        }
        let version: Version =
            serde_json::from_slice(bytes).map_err(|e| FleetError::BadMessage {
                reason: format!("not a JSON job message: {e}"),
            })?;
        match version.v {
            Some(VERSION) => {}
            Some(v) => {
                return Err(FleetError::BadMessage {
                    reason: format!(
                        "message format version {v}; this worker reads version {VERSION}: \
                         run workers of the same beeswax version as the API nodes"
                    ),
                })
            }
            None => {
                return Err(FleetError::BadMessage {
                    reason: "no `v` (format version) field".to_string(),
                })
            }
        }
        serde_json::from_slice(bytes).map_err(|e| FleetError::BadMessage {
            reason: format!("job message version {VERSION} does not parse: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> JobMessage {
        JobMessage {
            v: VERSION,
            id: "0a1b".to_string(),
            origin: "openai".to_string(),
            created_at: 7,
            request: WireRequest {
                pipeline: "tiny-sd".to_string(),
                prompt: "a bee".to_string(),
                steps: Some(3),
                seed: 42,
                loras: vec![LoraRequest {
                    name: "x".to_string(),
                    weight: Some(0.5),
                }],
                ..WireRequest::default()
            },
        }
    }

    #[test]
    fn round_trips_through_json_and_request() {
        let m = message();
        let back = JobMessage::parse(&m.to_bytes()).unwrap();
        assert_eq!(back, m);
        let req = back.request.to_request();
        assert_eq!(req.seed, Some(42));
        assert_eq!(req.pipeline.as_deref(), Some("tiny-sd"));
        let again = WireRequest::from_request(&req, "tiny-sd", 42).unwrap();
        assert_eq!(again, m.request);
        assert_eq!(origin_from(&m.origin), Origin::OpenAi);
    }

    #[test]
    fn refuses_garbage_other_versions_and_unknown_fields() {
        let garbage = JobMessage::parse(b"\x00not json").unwrap_err().to_string();
        assert!(garbage.contains("not a JSON job message"), "{garbage}");
        let mut v2 = serde_json::to_value(message()).unwrap();
        v2["v"] = 2.into();
        let e = JobMessage::parse(v2.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 2"), "{e}");
        let mut extra = serde_json::to_value(message()).unwrap();
        extra["request"]["colour"] = "red".into();
        let e = JobMessage::parse(extra.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
    }
}

/// What a worker publishes on `beeswax.events.<id>` (core NATS, not kept) while it runs a
/// job; the accepting API node turns it into the job's server-sent events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WireEvent {
    /// A worker took the job.
    Started {
        /// The worker.
        node: String,
    },
    /// A step finished.
    Progress {
        /// Steps done.
        step: usize,
        /// Steps in all.
        total: usize,
        /// A preview, `data:image/png;base64,...`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preview: Option<String>,
    },
}
