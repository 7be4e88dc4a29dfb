//! `[pack]`: a model, the family it belongs to, where its diffusers folder lives (a local
//! `path`, or a Hugging Face `repo`) and optional generation defaults:
//!
//! ```toml
//! [pack]
//! name = "tiny-sd"
//! family = "sd1"                             # optional for single-file packs (detected)
//! description = "A tiny test model"
//! path = "../tests/fixtures/models/tiny-sd"   # relative to this file's folder; or:
//! # repo = "org/name"
//! # revision = "main"
//! # gguf = "flux1-dev-Q4_K.gguf"             # optional: the denoiser from this file
//! # checkpoint = "models/dreamshaper.safetensors"   # or a single-file checkpoint (relative
//! #                                               # to this file), or `repo` + `file` [+
//! #                                               # `revision`] from the hub cache; with:
//! # prediction = "v"                          # optional: epsilon | v (SD 2.x files)
//! # model_config = "configs/sd21"             # optional: a diffusers folder's configs
//! # vae = "taesd"                            # optional, any pack: decode with the family's
//! #                                           # tiny autoencoder (TAESD), or a path: a TAESD
//! #                                           # folder/file or an AutoencoderKL file
//! # preview = "taesd"                         # optional: taesd | latent2rgb (default: taesd
//! #                                           # when the pack has a TAESD, else latent2rgb)
//! # preview_vae = "taesd"                     # optional: the TAESD previews use (a path)
//!
//! [pack.defaults]                             # ranges: crate::limits
//! steps = 20
//! guidance = 7.5
//! scheduler = "euler"
//! schedule = "karras"
//! width = 64
//! height = 64
//! negative_prompt = "blurry"
//! clip_skip = 1
//! prompt_syntax = "a1111"                    # a1111 | comfy | plain
//! pad_prompts = false
//! ```

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use toml::Spanned;

use super::file_source::{file_source, FileSource, SourceFields};
use super::folder::{Document, ManifestFolder};
use super::located::Located;
use super::ManifestError;
use crate::prompt::PromptSyntax;
use crate::{defaults, limits};

/// The name of the model family a pack belongs to (`sd1`, `sdxl`, ...): a shipped family or
/// one declared by a `[family]` manifest. The manifest layer checks its spelling; whether such
/// a family exists is checked where families are known (loading, `beeswax check`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Family(String);

impl Family {
    /// The name used in manifests and on the command line.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Family {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "`{s}` is not a family name: use lowercase letters, digits, `-`, `_` or `.` \
                 (e.g. `sd1`, `sdxl`; `beeswax families` lists them)"
            ))
        }
    }
}

/// Where a pack's diffusers model folder comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackSource {
    /// A local folder, already joined to the manifest file's folder.
    Path(PathBuf),
    /// A Hugging Face hub repository, resolved through the local cache (see [`crate::hub`]).
    Hub {
        /// The repo id, e.g. `org/name`.
        repo: String,
        /// A branch, tag or commit hash (default `main`).
        revision: String,
    },
    /// A single-file checkpoint (`checkpoint = "path"`, or `repo` + `file`).
    Checkpoint(PackCheckpoint),
}

/// A single-file pack: the file and how to read it (as `--model FILE` with `--prediction`,
/// `--model-config` and `--vae`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackCheckpoint {
    /// The file: local (joined to the manifest's folder) or from the hub cache.
    pub file: FileSource,
    /// What the denoiser predicts, when the pack says (`epsilon` or `v`).
    pub prediction: Option<String>,
    /// Configs and tokenizers from this diffusers folder instead of the family's bundled ones.
    pub model_config: Option<PathBuf>,
}

/// A pack's `vae`: what decodes its final images (and encodes pictures for image to image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaeChoice {
    /// `taesd`: the family's tiny autoencoder, found on this machine (see
    /// [`crate::family::find_taesd`]).
    Taesd,
    /// A file or folder, joined to the manifest file's folder: a tiny autoencoder (TAESD
    /// folder or file) or an `AutoencoderKL` weights file.
    Path(PathBuf),
}

impl VaeChoice {
    /// `taesd` is the keyword; anything else is a path (as `--vae` reads it).
    pub fn parse(value: &str) -> Self {
        if value == TAESD {
            Self::Taesd
        } else {
            Self::Path(PathBuf::from(value))
        }
    }
}

/// The keyword naming a family's tiny autoencoder.
pub const TAESD: &str = "taesd";

/// How a pack's live previews are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviewChoice {
    /// Decoded by a tiny autoencoder (full size, close to the final image).
    Taesd,
    /// The family's linear latent → RGB map (latent size, nearly free).
    Latent2Rgb,
}

/// Generation defaults a pack (or pipeline) suggests; each overrides the engine's own default
/// when set. The allowed values are those of [`crate::limits`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PackDefaults {
    /// Denoising steps ([`limits::STEPS`]).
    pub steps: Option<usize>,
    /// Classifier-free guidance scale ([`limits::GUIDANCE`]).
    pub guidance: Option<f64>,
    /// Scheduler name, e.g. `euler`.
    pub scheduler: Option<String>,
    /// Noise schedule name, e.g. `karras`.
    pub schedule: Option<String>,
    /// Image width in pixels ([`limits::SIZE`], a multiple of [`limits::SIZE_MULTIPLE`]).
    pub width: Option<usize>,
    /// Image height in pixels ([`limits::SIZE`], a multiple of [`limits::SIZE_MULTIPLE`]).
    pub height: Option<usize>,
    /// Negative prompt.
    pub negative_prompt: Option<String>,
    /// CLIP layers to skip ([`limits::CLIP_SKIP`]; 1 uses the last layer).
    pub clip_skip: Option<usize>,
    /// How prompts are read (`a1111`, `comfy`, `plain`).
    pub prompt_syntax: Option<PromptSyntax>,
    /// Pad prompt and negative prompt to the same chunk count.
    pub pad_prompts: Option<bool>,
}

impl PackDefaults {
    /// These defaults over `base`: each value set here wins, the others come from `base`.
    pub fn over(self, base: &PackDefaults) -> PackDefaults {
        PackDefaults {
            steps: self.steps.or(base.steps),
            guidance: self.guidance.or(base.guidance),
            scheduler: self.scheduler.or_else(|| base.scheduler.clone()),
            schedule: self.schedule.or_else(|| base.schedule.clone()),
            width: self.width.or(base.width),
            height: self.height.or(base.height),
            negative_prompt: self
                .negative_prompt
                .or_else(|| base.negative_prompt.clone()),
            clip_skip: self.clip_skip.or(base.clip_skip),
            prompt_syntax: self.prompt_syntax.or(base.prompt_syntax),
            pad_prompts: self.pad_prompts.or(base.pad_prompts),
        }
    }
}

/// A validated `[pack]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct PackManifest {
    /// The pack's unique name.
    pub name: String,
    /// The model family; `None` for a single-file pack that leaves it to detection from the
    /// file's keys.
    pub family: Option<Family>,
    /// A human description.
    pub description: Option<String>,
    /// Where the model folder comes from.
    pub source: PackSource,
    /// The denoiser's weights from this file instead of the folder's (a GGUF file, or a FLUX
    /// transformer as one safetensors file), joined to the manifest file's folder.
    pub gguf: Option<PathBuf>,
    /// What decodes the final images, when not the model's own VAE.
    pub vae: Option<VaeChoice>,
    /// How previews are made (default: [`PreviewChoice::Taesd`] when the pack has a tiny
    /// autoencoder as `vae` or `preview_vae`, else [`PreviewChoice::Latent2Rgb`]).
    pub preview: Option<PreviewChoice>,
    /// The tiny autoencoder previews decode with, joined to the manifest file's folder.
    pub preview_vae: Option<PathBuf>,
    /// Generation defaults.
    pub defaults: PackDefaults,
    /// The manifest file this pack was read from.
    pub manifest_path: PathBuf,
}

/// `[pack]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPack {
    name: Spanned<String>,
    family: Option<Spanned<String>>,
    description: Option<String>,
    path: Option<Spanned<String>>,
    repo: Option<Spanned<String>>,
    revision: Option<Spanned<String>>,
    gguf: Option<Spanned<String>>,
    checkpoint: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
    prediction: Option<Spanned<String>>,
    model_config: Option<Spanned<String>>,
    vae: Option<Spanned<String>>,
    preview: Option<Spanned<String>>,
    preview_vae: Option<Spanned<String>>,
    #[serde(default)]
    defaults: RawDefaults,
}

/// `[pack.defaults]` as written; `[pipeline.defaults]` is checked as one without a scheduler.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    pub(super) steps: Option<Spanned<i64>>,
    pub(super) guidance: Option<Spanned<f64>>,
    pub(super) scheduler: Option<Spanned<String>>,
    pub(super) schedule: Option<Spanned<String>>,
    pub(super) width: Option<Spanned<i64>>,
    pub(super) height: Option<Spanned<i64>>,
    pub(super) negative_prompt: Option<String>,
    pub(super) clip_skip: Option<Spanned<i64>>,
    pub(super) prompt_syntax: Option<Spanned<String>>,
    pub(super) pad_prompts: Option<bool>,
}

/// The packs of every document (files without a `[pack]` are skipped); the first problem,
/// in file order, is an error. Pack names must be unique across files.
pub fn packs(folder: &ManifestFolder<'_>) -> Result<Vec<PackManifest>, ManifestError> {
    let (packs, problems) = packs_and_problems(folder);
    match problems.into_iter().next() {
        Some(problem) => Err(problem),
        None => Ok(packs),
    }
}

/// Like [`packs`], returning the valid packs and every problem (for `beeswax check`).
pub fn packs_and_problems(folder: &ManifestFolder<'_>) -> (Vec<PackManifest>, Vec<ManifestError>) {
    let mut packs: Vec<(PackManifest, usize)> = Vec::new();
    let mut problems = Vec::new();
    for document in folder.documents() {
        let (pack, line) = match read(document) {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        if let Some((first, first_line)) = packs.iter().find(|(p, _)| p.name == pack.name) {
            problems.push(ManifestError::DuplicateName {
                name: pack.name,
                first: first.manifest_path.clone(),
                first_line: *first_line,
                second: document.path().to_path_buf(),
                second_line: line,
            });
            continue;
        }
        packs.push((pack, line));
    }
    (packs.into_iter().map(|(pack, _)| pack).collect(), problems)
}

/// The pack called `name` (all packs must be valid, see [`packs`]).
pub fn find_pack(folder: &ManifestFolder<'_>, name: &str) -> Result<PackManifest, ManifestError> {
    let packs = packs(folder)?;
    let available = packs.iter().map(|p| p.name.clone()).collect();
    packs
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ManifestError::UnknownPack {
            name: name.to_string(),
            dir: folder.dir().to_path_buf(),
            available,
        })
}

/// Parses and validates the manifest text read from `path`; `Ok(None)` if it has no `[pack]`.
///
/// A relative `path` source is joined to `path`'s folder.
pub fn parse(path: &Path, text: &str) -> Result<Option<PackManifest>, ManifestError> {
    let document = Document::parse(path, text)?;
    Ok(read(&document)?.map(|(pack, _)| pack))
}

/// The document's validated `[pack]`, with the line of its `name`.
fn read(document: &Document<'_>) -> Result<Option<(PackManifest, usize)>, ManifestError> {
    let Some(raw) = document.table::<Spanned<RawPack>>("pack")? else {
        return Ok(None);
    };
    let located = document.located();
    let header = raw.span();
    let raw = raw.into_inner();
    let name = located.non_empty(
        &raw.name,
        "pack.name",
        "give the pack a name, e.g. `name = \"tiny-sd\"`",
    )?;
    let family = match &raw.family {
        Some(f) => Some(
            (f.get_ref().parse())
                .map_err(|message: String| located.at(f, "pack.family", message))?,
        ),
        None if raw.checkpoint.is_some() || raw.file.is_some() => None,
        None => {
            let message = "is missing: name the model family, e.g. `family = \"sd1\"` \
                           (`beeswax families` lists them); only single-file packs may leave it \
                           to detection";
            return Err(located.invalid(header.clone(), "pack.family", message));
        }
    };
    let pack = PackManifest {
        name: name.to_string(),
        family,
        source: match checkpoint(&located, &raw)? {
            Some(single) => PackSource::Checkpoint(single),
            None => source(&located, &raw, header)?,
        },
        gguf: match &raw.gguf {
            Some(file) => {
                located.non_empty(file, "pack.gguf", "set it to the denoiser's GGUF file")?;
                Some(located.relative_path(file.get_ref()))
            }
            None => None,
        },
        vae: match &raw.vae {
            Some(v) => {
                let how = "set it to `taesd` or to a VAE file or folder";
                let value = located.non_empty(v, "pack.vae", how)?;
                Some(match VaeChoice::parse(value) {
                    VaeChoice::Path(p) => {
                        VaeChoice::Path(located.relative_path(&p.to_string_lossy()))
                    }
                    taesd => taesd,
                })
            }
            None => None,
        },
        preview: preview(&located, &raw)?,
        preview_vae: match &raw.preview_vae {
            Some(v) => {
                let how = "set it to a TAESD folder or file";
                Some(located.relative_path(located.non_empty(v, "pack.preview_vae", how)?))
            }
            None => None,
        },
        defaults: checked_defaults(&located, "pack.defaults", &raw.defaults)?,
        description: raw.description,
        manifest_path: document.path().to_path_buf(),
    };
    Ok(Some((pack, located.line_of(&raw.name))))
}

/// The pack's single file, when it names one (`checkpoint`, or `repo` + `file`), with its
/// reading options; those options on a folder pack are an error.
fn checkpoint(
    located: &Located<'_>,
    raw: &RawPack,
) -> Result<Option<PackCheckpoint>, ManifestError> {
    let options = [
        (&raw.prediction, "prediction"),
        (&raw.model_config, "model_config"),
    ];
    if raw.checkpoint.is_none() && raw.file.is_none() {
        if let Some((value, field)) = options.iter().find_map(|(v, f)| Some(((*v).as_ref()?, f))) {
            let message = "only applies to single-file packs (`checkpoint = \"...\"`, or \
                           `repo` + `file`): remove it, or point the pack at a checkpoint";
            return Err(located.at(value, &format!("pack.{field}"), message));
        }
        return Ok(None);
    }
    if let (Some(file), None) = (&raw.file, &raw.repo) {
        let message = "only applies with `repo` (a file of a Hugging Face repo); for a local \
                       file use `checkpoint = \"...\"`";
        return Err(located.at(file, "pack.file", message));
    }
    if let (Some(checkpoint), Some(other)) =
        (&raw.checkpoint, raw.path.as_ref().or(raw.repo.as_ref()))
    {
        let message = format!(
            "conflicts with `pack.checkpoint` on line {}: a pack is a single file \
             (`checkpoint`, or `repo` + `file`) or a diffusers folder (`path`, or `repo`)",
            located.line_of(checkpoint)
        );
        return Err(located.at(other, "pack", message));
    }
    let file = match &raw.checkpoint {
        Some(path) => {
            located.non_empty(path, "pack.checkpoint", "set it to a .safetensors file")?;
            FileSource::Path(located.relative_path(path.get_ref()))
        }
        None => file_source(
            located,
            "pack",
            "packs",
            SourceFields {
                name: &raw.name,
                path: &None,
                repo: &raw.repo,
                file: &raw.file,
                revision: &raw.revision,
            },
        )?,
    };
    let prediction = match &raw.prediction {
        Some(p) if !["epsilon", "v"].contains(&p.get_ref().as_str()) => {
            let message = format!("is `{}`: use `epsilon` or `v`", p.get_ref());
            return Err(located.at(p, "pack.prediction", message));
        }
        p => p.as_ref().map(|p| p.get_ref().clone()),
    };
    let path = |v: &Option<Spanned<String>>| v.as_ref().map(|v| located.relative_path(v.get_ref()));
    Ok(Some(PackCheckpoint {
        file,
        prediction,
        model_config: path(&raw.model_config),
    }))
}

/// The pack's `preview`: `taesd` or `latent2rgb`; `preview_vae` with `latent2rgb` is an error.
fn preview(located: &Located<'_>, raw: &RawPack) -> Result<Option<PreviewChoice>, ManifestError> {
    let Some(p) = &raw.preview else {
        return Ok(None);
    };
    let choice = match p.get_ref().as_str() {
        "taesd" => PreviewChoice::Taesd,
        "latent2rgb" => PreviewChoice::Latent2Rgb,
        other => {
            let message = format!("is `{other}`: use `taesd` or `latent2rgb`");
            return Err(located.at(p, "pack.preview", message));
        }
    };
    if let (PreviewChoice::Latent2Rgb, Some(v)) = (choice, &raw.preview_vae) {
        let message = "is unused with `preview = \"latent2rgb\"`: remove it, or set \
                       `preview = \"taesd\"`";
        return Err(located.at(v, "pack.preview_vae", message));
    }
    Ok(Some(choice))
}

/// The pack's `path` or `repo` (+ `revision`); `header` is the span of the `[pack]` table.
fn source(
    located: &Located<'_>,
    raw: &RawPack,
    header: Range<usize>,
) -> Result<PackSource, ManifestError> {
    match (&raw.path, &raw.repo) {
        (Some(path), Some(repo)) => {
            let message = format!(
                "conflicts with `pack.path` on line {}: set either `path` (a local diffusers \
                 folder) or `repo` (a Hugging Face repo id), not both",
                located.line_of(path)
            );
            Err(located.at(repo, "pack.repo", message))
        }
        (None, None) => {
            let message = "is missing: set `path = \"...\"` to a diffusers model folder \
                           (relative to this file) or `repo = \"org/name\"` for a Hugging Face \
                           repo";
            Err(located.invalid(header, "pack.path", message))
        }
        (Some(path), None) => {
            if let Some(revision) = &raw.revision {
                let message = "only applies to `repo` packs: remove it, or replace `path` with \
                               `repo`";
                return Err(located.at(revision, "pack.revision", message));
            }
            located.non_empty(path, "pack.path", "set it to a diffusers model folder")?;
            Ok(PackSource::Path(located.relative_path(path.get_ref())))
        }
        (None, Some(repo)) => {
            if !crate::hub::is_repo_id(repo.get_ref()) {
                let message = format!(
                    "must be a Hugging Face repo id like `org/name` (got `{}`)",
                    repo.get_ref()
                );
                return Err(located.at(repo, "pack.repo", message));
            }
            let revision = match &raw.revision {
                None => defaults::HUB_REVISION.to_string(),
                Some(revision) => {
                    let how = "use a branch, tag or commit hash, or remove it to use `main`";
                    let value = located.non_empty(revision, "pack.revision", how)?;
                    if !crate::hub::is_revision(value) {
                        let message = format!("`{value}` is not a revision: {how}");
                        return Err(located.at(revision, "pack.revision", message));
                    }
                    value.to_string()
                }
            };
            Ok(PackSource::Hub {
                repo: repo.get_ref().clone(),
                revision,
            })
        }
    }
}

/// Checks the defaults of table `table` (`pack.defaults` or `pipeline.defaults`) against
/// [`crate::limits`].
pub(super) fn checked_defaults(
    located: &Located<'_>,
    table: &str,
    raw: &RawDefaults,
) -> Result<PackDefaults, ManifestError> {
    let field = |key: &str| format!("{table}.{key}");
    let scheduler = match &raw.scheduler {
        Some(s) => {
            let how = "name a scheduler, e.g. `scheduler = \"euler\"`, or remove the line";
            Some(located.non_empty(s, &field("scheduler"), how)?.to_string())
        }
        None => None,
    };
    if let Some(schedule) = &raw.schedule {
        if let Err(e) = crate::schedulers::Schedule::parse(schedule.get_ref()) {
            return Err(located.at(schedule, &field("schedule"), e.to_string()));
        }
    }
    Ok(PackDefaults {
        steps: located.whole(&raw.steps, &field("steps"), &limits::STEPS, None)?,
        guidance: located.number(
            &raw.guidance,
            &field("guidance"),
            &limits::GUIDANCE,
            Some(defaults::GUIDANCE),
        )?,
        scheduler,
        schedule: raw.schedule.as_ref().map(|s| s.get_ref().clone()),
        width: located.size(&raw.width, &field("width"))?,
        height: located.size(&raw.height, &field("height"))?,
        negative_prompt: raw.negative_prompt.clone(),
        clip_skip: located.whole(
            &raw.clip_skip,
            &field("clip_skip"),
            &limits::CLIP_SKIP,
            None,
        )?,
        prompt_syntax: raw
            .prompt_syntax
            .as_ref()
            .map(|s| {
                s.get_ref()
                    .parse::<PromptSyntax>()
                    .map_err(|e| located.at(s, &field("prompt_syntax"), e.to_string()))
            })
            .transpose()?,
        pad_prompts: raw.pad_prompts,
    })
}
