//! `[family]`: a model family as a manifest (`manifests/families/<name>.toml`). The format is
//! written down in the repository README ("Model families"); in short:
//!
//! ```toml
//! [family]
//! name = "sdxl"
//! description = "Stable Diffusion XL base"
//! architecture = "sdxl"            # sd | sdxl | flux
//! prediction = "epsilon"           # epsilon | v (optional: else the scheduler config says)
//! scheduler = "diffusion"          # diffusion | flow
//! guidance = "classifier-free"     # classifier-free | distilled | none
//! default_size = 1024
//! config = "sdxl"                  # diffusers-layout configs + tokenizers beside this file
//!                                  # (else the bundled folder of that name, if any)
//! priority = 10                    # detection order, highest first (default 0)
//! # max_sequence_length = 512      # T5 tokens per prompt (families with T5)
//! # default_steps = 28             # when neither request nor pack says
//! # default_guidance = 3.5
//! # size_multiple = 16             # width/height multiple (default: the VAE's factor)
//!
//! [family.latent]
//! channels = 4
//! preview = [[0.3, 0.2, 0.2], ...] # one RGB row per latent channel
//! preview_bias = [0.0, 0.0, 0.0]
//!
//! [[family.text_encoder]]          # in concatenation order
//! component = "text_encoder"
//! tokenizer = "tokenizer"
//! kind = "clip"                    # clip | clip-projection | t5
//! hidden_states = "penultimate"    # last-normed | penultimate
//! pooled = false
//! lora = { kohya = "lora_te1", peft = "text_encoder" }
//! single_file = { prefix = "conditioner.embedders.0.transformer.", layout = "clip" }
//!
//! [family.denoiser]
//! component = "unet"
//! lora = { kohya = "lora_unet", peft = "unet" }
//! single_file = { prefix = "model.diffusion_model.", layout = "ldm-unet" }
//!
//! [family.vae]
//! component = "vae"
//! single_file = { prefix = "first_stage_model.", layout = "ldm-vae" }
//! taesd = "madebyollin/taesd"      # optional: the tiny autoencoder `--vae taesd` names
//!
//! [family.conditioning]            # optional
//! time_ids = "size"                # size | aesthetic
//! force_zeros_for_empty_prompt = true
//!
//! [[family.detect]]                # single files: every rule must hold
//! key = "model.diffusion_model.input_blocks.0.0.weight"
//! shape = ["*", 4, 3, 3]
//! [[family.detect]]
//! key = "cond_stage_model.model.ln_final.weight"
//! present = false
//!
//! [[family.folder]]                # diffusers folders: every rule must hold
//! file = "unet/config.json"
//! field = "addition_embed_type"
//! equals = "text_time"             # or `missing = true` (absent or null)
//! # default = false                # the value assumed when the field is absent
//! ```

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::preview::LatentPreview;
use super::spec::*;
use crate::manifest::{Document, Located, ManifestError};
use crate::schedulers::{PredictionType, SchedulerKind};

/// The section key.
pub const SECTION: &str = "family";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFamily {
    name: Spanned<String>,
    description: String,
    architecture: Spanned<String>,
    prediction: Option<Spanned<String>>,
    #[serde(default = "diffusion")]
    scheduler: Spanned<String>,
    #[serde(default = "classifier_free")]
    guidance: Spanned<String>,
    default_size: Spanned<i64>,
    config: Option<String>,
    #[serde(default)]
    priority: i64,
    max_sequence_length: Option<Spanned<i64>>,
    default_steps: Option<Spanned<i64>>,
    default_guidance: Option<f64>,
    size_multiple: Option<Spanned<i64>>,
    latent: RawLatent,
    #[serde(default)]
    text_encoder: Vec<RawTextEncoder>,
    denoiser: RawDenoiser,
    vae: RawVae,
    #[serde(default)]
    conditioning: RawConditioning,
    #[serde(default)]
    detect: Vec<RawKeyRule>,
    #[serde(default)]
    folder: Vec<RawConfigRule>,
}

fn diffusion() -> Spanned<String> {
    Spanned::new(0..0, "diffusion".into())
}

fn classifier_free() -> Spanned<String> {
    Spanned::new(0..0, "classifier-free".into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLatent {
    channels: Spanned<i64>,
    preview: Spanned<Vec<[f32; 3]>>,
    #[serde(default)]
    preview_bias: [f32; 3],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLora {
    kohya: String,
    peft: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSingleFile {
    prefix: String,
    layout: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTextEncoder {
    component: String,
    tokenizer: String,
    kind: Spanned<String>,
    hidden_states: Spanned<String>,
    #[serde(default)]
    pooled: bool,
    lora: RawLora,
    single_file: Option<RawSingleFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDenoiser {
    component: String,
    lora: RawLora,
    single_file: Option<RawSingleFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVae {
    component: String,
    single_file: Option<RawSingleFile>,
    taesd: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConditioning {
    time_ids: Option<Spanned<String>>,
    #[serde(default)]
    force_zeros_for_empty_prompt: bool,
    aesthetic_score: Option<f64>,
    negative_aesthetic_score: Option<f64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawDim {
    Size(i64),
    Any(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyRule {
    key: Spanned<String>,
    #[serde(default = "yes")]
    present: bool,
    shape: Option<Vec<RawDim>>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfigRule {
    file: String,
    field: Spanned<String>,
    equals: Option<serde_json::Value>,
    default: Option<serde_json::Value>,
    #[serde(default)]
    missing: bool,
}

/// Parses the `[family]` table of `document`; `Ok(None)` if it has none. Errors name the
/// file, line and field.
pub fn read(document: &Document<'_>) -> Result<Option<Family>, ManifestError> {
    let Some(raw) = document.table::<RawFamily>(SECTION)? else {
        return Ok(None);
    };
    let located = document.located();
    let l = &located;
    let name = l.non_empty(&raw.name, "family.name", "e.g. `name = \"sdxl\"`")?;
    let (latent_channels, preview) = latent(l, &raw.latent)?;
    let (detect, folder_rules) = rules(l, &raw)?;
    let text_encoders = raw
        .text_encoder
        .iter()
        .map(|t| text_encoder(l, t))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Family {
        name: name.to_string(),
        description: raw.description.clone(),
        architecture: choice(
            l,
            &raw.architecture,
            "family.architecture",
            &Architecture::ALL.map(|a| (a.as_str(), a)),
        )?,
        prediction: prediction(l, raw.prediction.as_ref())?,
        scheduler_kind: choice(
            l,
            &raw.scheduler,
            "family.scheduler",
            &[
                ("diffusion", SchedulerKind::Diffusion),
                ("flow", SchedulerKind::Flow),
            ],
        )?,
        guidance: choice(l, &raw.guidance, "family.guidance", &GuidanceMode::NAMED)?,
        default_size: required(l, &raw.default_size, "family.default_size", 8..=8192, 8)?,
        latent_channels,
        preview,
        text_encoders,
        denoiser: DenoiserSpec {
            component: raw.denoiser.component.clone(),
            lora: lora(&raw.denoiser.lora),
            single_file: single_file(l, &raw.denoiser.single_file, "family.denoiser")?,
        },
        vae: VaeSpec {
            component: raw.vae.component.clone(),
            single_file: single_file(l, &raw.vae.single_file, "family.vae")?,
            taesd: taesd_repo(l, raw.vae.taesd.as_ref())?,
        },
        conditioning: conditioning(l, &raw.conditioning)?,
        config: raw.config.clone(),
        config_dir: raw.config.as_deref().map(|c| l.relative_path(c)),
        priority: raw.priority,
        detect,
        folder_rules,
        max_sequence_length: l.whole(
            &raw.max_sequence_length,
            "family.max_sequence_length",
            &(1..=4096),
            None,
        )?,
        default_steps: l.whole(
            &raw.default_steps,
            "family.default_steps",
            &(1..=1000),
            None,
        )?,
        default_guidance: raw.default_guidance,
        size_multiple: l.whole(
            &raw.size_multiple,
            "family.size_multiple",
            &(8..=256),
            Some(8),
        )?,
        manifest: Some(document.path().to_path_buf()),
    }))
}

/// Parses one family manifest's text (`path` names it in errors).
pub fn parse(path: &Path, text: &str) -> Result<Option<Family>, ManifestError> {
    read(&Document::parse(path, text)?)
}

/// The single-file detection rules and the diffusers-folder rules.
fn rules(
    l: &Located<'_>,
    raw: &RawFamily,
) -> Result<(Vec<KeyRule>, Vec<ConfigRule>), ManifestError> {
    let detect = raw.detect.iter().map(|r| key_rule(l, r));
    let folder = raw.folder.iter().map(|r| config_rule(l, r));
    Ok((
        detect.collect::<Result<_, _>>()?,
        folder.collect::<Result<_, _>>()?,
    ))
}

/// The hub repo of the family's tiny autoencoder, checked to be a repo id.
fn taesd_repo(
    l: &Located<'_>,
    repo: Option<&Spanned<String>>,
) -> Result<Option<String>, ManifestError> {
    match repo {
        Some(r) if !crate::hub::is_repo_id(r.get_ref()) => Err(l.at(
            r,
            "family.vae.taesd",
            format!(
                "must be a Hugging Face repo id like `madebyollin/taesd` (got `{}`)",
                r.get_ref()
            ),
        )),
        r => Ok(r.map(|r| r.get_ref().clone())),
    }
}

/// The latent channels and their preview factors (one RGB row per channel).
fn latent(l: &Located<'_>, raw: &RawLatent) -> Result<(usize, LatentPreview), ManifestError> {
    let channels = required(l, &raw.channels, "family.latent.channels", 1..=64, 1)?;
    let rows = raw.preview.get_ref();
    if rows.len() != channels {
        return Err(l.at(
            &raw.preview,
            "family.latent.preview",
            format!(
                "has {} rows but the latents have {channels} channels: give one RGB row per \
                 channel",
                rows.len()
            ),
        ));
    }
    let preview = LatentPreview {
        rgb: rows.clone(),
        bias: raw.preview_bias,
    };
    Ok((channels, preview))
}

/// `family.prediction`: `epsilon` or `v`, when given.
fn prediction(
    l: &Located<'_>,
    raw: Option<&Spanned<String>>,
) -> Result<Option<PredictionType>, ManifestError> {
    let named = [
        ("epsilon", PredictionType::Epsilon),
        ("v", PredictionType::VPrediction),
    ];
    raw.map(|p| choice(l, p, "family.prediction", &named))
        .transpose()
}

fn required(
    l: &Located<'_>,
    value: &Spanned<i64>,
    field: &str,
    range: std::ops::RangeInclusive<usize>,
    multiple_of: usize,
) -> Result<usize, ManifestError> {
    Ok(
        l.whole(&Some(value.clone()), field, &range, Some(multiple_of))?
            .unwrap_or_default(),
    )
}

fn choice<T: Copy>(
    l: &Located<'_>,
    value: &Spanned<String>,
    field: &str,
    options: &[(&str, T)],
) -> Result<T, ManifestError> {
    options
        .iter()
        .find(|(name, _)| *name == value.get_ref())
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            l.at(
                value,
                field,
                format!(
                    "must be one of {} (got `{}`): fix the value",
                    names.join(", "),
                    value.get_ref()
                ),
            )
        })
}

fn lora(raw: &RawLora) -> LoraPrefixes {
    LoraPrefixes {
        kohya: raw.kohya.clone(),
        peft: raw.peft.clone(),
    }
}

fn single_file(
    l: &Located<'_>,
    raw: &Option<RawSingleFile>,
    section: &str,
) -> Result<Option<SingleFile>, ManifestError> {
    let Some(raw) = raw else { return Ok(None) };
    Ok(Some(SingleFile {
        prefix: raw.prefix.clone(),
        layout: choice(
            l,
            &raw.layout,
            &format!("{section}.single_file.layout"),
            &KeyLayout::ALL.map(|k| (k.as_str(), k)),
        )?,
    }))
}

fn text_encoder(l: &Located<'_>, raw: &RawTextEncoder) -> Result<TextEncoderSpec, ManifestError> {
    let section = "family.text_encoder";
    Ok(TextEncoderSpec {
        component: raw.component.clone(),
        tokenizer: raw.tokenizer.clone(),
        kind: choice(
            l,
            &raw.kind,
            &format!("{section}.kind"),
            &[
                ("clip", TextEncoderKind::Clip),
                ("clip-projection", TextEncoderKind::ClipProjection),
                ("t5", TextEncoderKind::T5),
            ],
        )?,
        hidden_states: choice(
            l,
            &raw.hidden_states,
            &format!("{section}.hidden_states"),
            &[
                ("last-normed", HiddenStates::LastNormed),
                ("penultimate", HiddenStates::Penultimate),
            ],
        )?,
        pooled: raw.pooled,
        lora: lora(&raw.lora),
        single_file: single_file(l, &raw.single_file, section)?,
    })
}

fn conditioning(l: &Located<'_>, raw: &RawConditioning) -> Result<ConditioningSpec, ManifestError> {
    let default = ConditioningSpec::default();
    Ok(ConditioningSpec {
        time_ids: raw
            .time_ids
            .as_ref()
            .map(|t| {
                choice(
                    l,
                    t,
                    "family.conditioning.time_ids",
                    &[("size", TimeIds::Size), ("aesthetic", TimeIds::Aesthetic)],
                )
            })
            .transpose()?,
        force_zeros_for_empty_prompt: raw.force_zeros_for_empty_prompt,
        aesthetic_score: raw.aesthetic_score.unwrap_or(default.aesthetic_score),
        negative_aesthetic_score: raw
            .negative_aesthetic_score
            .unwrap_or(default.negative_aesthetic_score),
    })
}

fn config_rule(l: &Located<'_>, raw: &RawConfigRule) -> Result<ConfigRule, ManifestError> {
    let equals = match (&raw.equals, raw.missing) {
        (Some(v), false) => v.clone(),
        (None, true) => serde_json::Value::Null,
        _ => {
            return Err(l.at(
                &raw.field,
                "family.folder.equals",
                "give exactly one of `equals = VALUE` or `missing = true`",
            ))
        }
    };
    Ok(ConfigRule {
        file: raw.file.clone(),
        field: raw.field.get_ref().clone(),
        equals,
        default: raw.default.clone().unwrap_or(serde_json::Value::Null),
    })
}

fn key_rule(l: &Located<'_>, raw: &RawKeyRule) -> Result<KeyRule, ManifestError> {
    let shape = match &raw.shape {
        None => None,
        Some(dims) => Some(
            dims.iter()
                .map(|d| match d {
                    RawDim::Size(n) if *n >= 0 => Ok(Dim::Is(*n as usize)),
                    RawDim::Any(s) if s == "*" => Ok(Dim::Any),
                    _ => Err(l.at(
                        &raw.key,
                        "family.detect.shape",
                        "dimensions must be sizes (whole numbers) or \"*\" for any size",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    if !raw.present && shape.is_some() {
        return Err(l.at(
            &raw.key,
            "family.detect.shape",
            "a key that must be absent has no shape: remove `shape` or `present = false`",
        ));
    }
    Ok(KeyRule {
        key: raw.key.get_ref().clone(),
        present: raw.present,
        shape,
    })
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
