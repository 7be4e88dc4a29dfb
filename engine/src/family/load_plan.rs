//! The one way from a pack (or the command line) to a loaded [`Model`]: where its files are
//! (a diffusers folder, a single file, the hub cache), which family it is, and which
//! autoencoders decode its final images and its live previews (`vae`, `preview`,
//! `preview_vae`). `beeswax generate` and `beeswax serve` both load through [`LoadPlan`].

use std::path::{Path, PathBuf};

use super::{Families, Family, LoadOptions, Model, Vae};
use crate::checkpoint::{self, CheckpointOptions};
use crate::manifest::{PackManifest, PackSource, PreviewChoice, VaeChoice, TAESD};
use crate::{hub, model_files, Error, Result};

/// What to load and how to decode it.
#[derive(Debug, Clone, Default)]
pub struct LoadPlan {
    /// A diffusers folder or a single-file checkpoint.
    pub source: PathBuf,
    /// The family declared (else detected).
    pub family: Option<String>,
    /// The denoiser's weights from this file (a pack's `gguf`, `--model FILE.gguf`).
    pub denoiser: Option<PathBuf>,
    /// How a single file is read (its `vae` is set from [`LoadPlan::vae`] when that names an
    /// `AutoencoderKL` file).
    pub single: CheckpointOptions,
    /// What decodes the final images, when not the model's own VAE.
    pub vae: Option<VaeChoice>,
    /// How previews are made (default: a tiny autoencoder when the plan has one).
    pub preview: Option<PreviewChoice>,
    /// The tiny autoencoder previews decode with.
    pub preview_vae: Option<PathBuf>,
    /// Folders searched for the family's tiny autoencoder beside the model's (a pack's
    /// manifest folder).
    pub search: Vec<PathBuf>,
    /// Whether a missing tiny autoencoder may be downloaded into the hub cache.
    pub allow_download: bool,
}

impl LoadPlan {
    /// The model at `source` (a folder or a single file) with its own VAE and previews.
    pub fn new(source: PathBuf) -> Self {
        Self {
            source,
            ..Self::default()
        }
    }

    /// `pack`'s plan: its folder (a hub pack resolved in the cache, downloaded when allowed)
    /// or single file, its family, denoiser file, reading options and autoencoders.
    pub fn for_pack(pack: &PackManifest, allow_download: bool) -> Result<Self> {
        let family = pack.family.as_ref().map(|f| f.as_str().to_string());
        let (source, single) = match &pack.source {
            PackSource::Path(p) => (p.clone(), CheckpointOptions::default()),
            PackSource::Hub { repo, revision } => (
                hub::resolve(repo, revision, allow_download)?,
                CheckpointOptions::default(),
            ),
            PackSource::Checkpoint(single) => {
                checkpoint::load::pack_checkpoint(single, family.as_deref(), allow_download)?
            }
        };
        Ok(Self {
            source,
            family,
            denoiser: pack.gguf.clone(),
            single,
            vae: pack.vae.clone(),
            preview: pack.preview,
            preview_vae: pack.preview_vae.clone(),
            search: pack
                .manifest_path
                .parent()
                .map(Path::to_path_buf)
                .into_iter()
                .collect(),
            allow_download,
        })
    }

    /// Whether the source is a single-file checkpoint.
    pub fn is_single_file(&self) -> bool {
        checkpoint::is_single_file(&self.source)
    }

    /// Loads the model with the `families` known, then puts its autoencoders in place.
    pub fn load(&self, families: &Families, options: &LoadOptions) -> Result<Model> {
        let kl_file = match &self.vae {
            Some(VaeChoice::Path(p)) if !Vae::is_tiny_at(p) => Some(p.clone()),
            _ => None,
        };
        let model = if self.is_single_file() {
            let mut single = self.single.clone();
            single.family = single.family.or_else(|| self.family.clone());
            single.vae = kl_file.clone().or(single.vae);
            checkpoint::load::load(&self.source, families, &single, options)?
        } else {
            let mut options = options.clone();
            options.denoiser = self.denoiser.clone().or(options.denoiser);
            let model = families.load(&self.source, self.family.as_deref(), &options)?;
            match &kl_file {
                Some(file) => {
                    // The folder's VAE config with the file's weights (diffusers or original
                    // names).
                    let config = model_files::config(&self.source, "vae", "config.json")?;
                    let weights = checkpoint::load::vae_file(file)?;
                    let vae = Vae::load(&config, &weights, model.dtype, &model.device)?;
                    model.with_vae(vae)?
                }
                None => model,
            }
        };
        self.autoencoders(model)
    }

    /// `model` with the plan's tiny autoencoders: the final one (`vae` = `taesd` or a tiny
    /// autoencoder's path) and the previews'.
    fn autoencoders(&self, mut model: Model) -> Result<Model> {
        let tiny = |path: &Path, model: &Model| {
            super::timed_load("tiny_vae", || Vae::tiny(path, model.dtype, &model.device)).map_err(
                |e| Error::Config {
                    path: path.to_path_buf(),
                    message: format!("loading the tiny autoencoder: {e}"),
                },
            )
        };
        let final_tiny = match &self.vae {
            Some(VaeChoice::Taesd) => Some(self.find_taesd(&model.family)?),
            Some(VaeChoice::Path(p)) if Vae::is_tiny_at(p) => Some(p.clone()),
            _ => None,
        };
        if let Some(path) = &final_tiny {
            let vae = tiny(path, &model)?;
            model = model.with_vae(vae)?;
        }
        let preview = match (self.preview, &self.preview_vae) {
            (Some(PreviewChoice::Latent2Rgb), _) => None,
            (_, Some(path)) => Some(tiny(path, &model)?),
            (_, None) if model.vae.is_tiny() => Some(model.vae.clone()),
            (Some(PreviewChoice::Taesd), None) => {
                let path = self.find_taesd(&model.family)?;
                Some(tiny(&path, &model)?)
            }
            (None, None) => None,
        };
        model.with_preview_vae(preview)
    }

    /// Folders beside the model: its own (a diffusers folder), the one holding it, and
    /// [`LoadPlan::search`].
    fn places(&self) -> Vec<PathBuf> {
        let mut places = Vec::new();
        if self.source.is_dir() {
            places.push(self.source.clone());
        }
        places.extend(self.source.parent().map(Path::to_path_buf));
        places.extend(self.search.iter().cloned());
        places.dedup();
        places
    }

    /// Whether loading needs the family's tiny autoencoder found by the `taesd` keyword.
    pub fn needs_taesd(&self) -> bool {
        self.vae == Some(VaeChoice::Taesd)
            || (self.preview == Some(PreviewChoice::Taesd)
                && self.preview_vae.is_none()
                && !matches!(&self.vae, Some(VaeChoice::Path(p)) if Vae::is_tiny_at(p)))
    }

    /// The family's tiny autoencoder for this model (see [`find_taesd`]; the places searched
    /// are beside the model and in [`LoadPlan::search`]).
    pub fn find_taesd(&self, family: &Family) -> Result<PathBuf> {
        find_taesd(
            family,
            &self.places(),
            &hub::cache_dir(),
            self.allow_download,
            &self.source,
        )
    }
}

/// Loads `pack`'s model ([`LoadPlan::for_pack`], then [`LoadPlan::load`]).
pub fn load_pack(
    pack: &PackManifest,
    families: &Families,
    options: &LoadOptions,
    allow_download: bool,
) -> Result<Model> {
    LoadPlan::for_pack(pack, allow_download)?.load(families, options)
}

/// Where the `taesd` keyword finds `family`'s tiny autoencoder (the repo its manifest names,
/// e.g. `madebyollin/taesd`, called `taesd` below): in each folder of `places` (beside the
/// model, the pack's folder) a `taesd` folder or a `taesd_decoder.safetensors` or
/// `taesd.safetensors` file; then every snapshot of the repo in the Hugging Face cache
/// `cache`; then, with `allow_download`, the repo's `config.json` and
/// `diffusion_pytorch_model.safetensors` downloaded into the cache. Missing, the error names
/// the repo, every place looked at and how to get it; `model` is the model the message names.
pub fn find_taesd(
    family: &Family,
    places: &[PathBuf],
    cache: &Path,
    allow_download: bool,
    model: &Path,
) -> Result<PathBuf> {
    let Some(repo) = &family.vae.taesd else {
        return Err(Error::Config {
            path: model.to_path_buf(),
            message: format!(
                "family `{}` names no tiny autoencoder for `{TAESD}` (`taesd` in the \
                 [family.vae] table of its manifest): give the autoencoder's path instead \
                 (`--vae PATH`, `vae = \"PATH\"`)",
                family.name
            ),
        });
    };
    let name = repo.rsplit('/').next().unwrap_or(repo);
    let mut looked = Vec::new();
    for dir in places {
        for candidate in [
            dir.join(name),
            dir.join(format!("{name}_decoder.safetensors")),
            dir.join(format!("{name}.safetensors")),
        ] {
            if candidate.exists() && Vae::is_tiny_at(&candidate) {
                return Ok(candidate);
            }
            looked.push(candidate);
        }
    }
    for snapshot in hub::cached_snapshots(cache, repo) {
        if Vae::is_tiny_at(&snapshot) {
            return Ok(snapshot);
        }
        looked.push(snapshot);
    }
    if looked.iter().all(|p| !p.starts_with(cache)) {
        looked.push(cache.join(format!("models--{}", repo.replace('/', "--"))));
    }
    if allow_download {
        let revision = crate::defaults::HUB_REVISION;
        hub::repo_file(repo, "config.json", revision, true)?;
        let weights = hub::repo_file(repo, "diffusion_pytorch_model.safetensors", revision, true)?;
        if let Some(dir) = weights.parent().filter(|d| Vae::is_tiny_at(d)) {
            return Ok(dir.to_path_buf());
        }
    }
    let looked: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
    Err(Error::Config {
        path: model.to_path_buf(),
        message: format!(
            "the `{TAESD}` autoencoder of family `{}` ({repo}) is not on this machine; looked \
             at: {}. Get it with `huggingface-cli download {repo}` (into the Hugging Face \
             cache: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub), pass \
             `--allow-download`, put its folder beside the model as `{name}`, or give its path \
             (`--vae PATH`)",
            family.name,
            looked.join(", ")
        ),
    })
}
