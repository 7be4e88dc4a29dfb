//! The pipelines the service offers: every `[[pipeline]]` of the manifests, then every pack
//! under its own name with its own defaults. Models load once, eagerly, when the catalog is
//! built (a pipeline answers its first request as fast as its hundredth), and are shared
//! between the pipelines that use them.

use std::path::Path;
use std::sync::Arc;

use super::config::Limits;
use crate::extensions::Extensions;
use crate::family::denoiser::is_gguf;
use crate::family::{load_pack, Families, LoadOptions, LoadPlan, Model, Vae};
use crate::gguf::GgufFile;
use crate::lora::{LoraCatalog, LoraError, LoraRequest, WeightRange};
use crate::manifest::{
    self, Family, FileSource, ManifestFolder, Mode, PackCheckpoint, PackDefaults, PackManifest,
    PackSource, PipelineConfig, VaeChoice,
};
use crate::pipeline::Refiner;
use crate::weights::SafetensorsFile;
use crate::{checkpoint, hub, model_files, Error, Result};

/// One servable pipeline, with its model loaded.
#[derive(Debug)]
pub struct Pipeline {
    /// The name clients use.
    pub name: String,
    /// The pack it runs.
    pub pack: String,
    /// The pack's model family.
    pub family: Family,
    /// What it does.
    pub mode: Mode,
    /// A human description.
    pub description: Option<String>,
    /// Whether this is a pack served under its own name (no `[[pipeline]]`).
    pub is_pack: bool,
    /// Generation defaults (scheduler and schedule included).
    pub defaults: PackDefaults,
    /// Effective request limits.
    pub limits: Limits,
    /// Pre-processors run on an image job's picture and mask, before the request's.
    pub pre_processors: Vec<String>,
    /// Post-processors run on each image.
    pub post_processors: Vec<String>,
    /// A LoRA set (or LoRA) of the catalog applied to every job, before the request's LoRAs.
    pub lora_set: Option<String>,
    /// The pack whose model finishes every job unless the request says otherwise.
    pub refiner: Option<String>,
    /// The refiner's default switch point.
    pub refiner_switch_at: Option<f64>,
    /// The loaded model.
    pub model: Arc<Model>,
}

/// Every pipeline the service offers.
#[derive(Debug, Default)]
pub struct Catalog {
    pipelines: Vec<Arc<Pipeline>>,
    models: usize,
    loras: Arc<LoraCatalog>,
}

/// What the manifests declare, validated as far as it can be without loading a model: the
/// packs, families, `[[pipeline]]`s with the scheduler, processor and LoRA set names they give
/// (against the extensions of this process), and the `[[lora]]` files (each read and checked
/// against its `sha256` by the loader jobs use). [`Catalog::load`] starts from it, and
/// `beeswax check` runs it, so that both accept and refuse the same manifests.
#[derive(Debug)]
pub struct Plan {
    /// The `[pack]`s.
    pub packs: Vec<PackManifest>,
    /// The families: built-in and the manifests'.
    pub families: Families,
    /// The `[[pipeline]]`s.
    pub pipelines: Vec<PipelineConfig>,
    /// The `[[lora]]`s and `[[lora_set]]`s, with their files read into the cache.
    pub loras: LoraCatalog,
}

impl Plan {
    /// Reads and checks the manifests of `folder`; the first problem is the error.
    pub fn read(
        folder: &ManifestFolder<'_>,
        extensions: &Extensions,
        allow_download: bool,
    ) -> Result<Self> {
        let packs = manifest::packs(folder)?;
        let families = Families::from_manifests(folder)?;
        let pipelines = manifest::pipelines(folder, &packs)?;
        let mut loras = LoraCatalog::from_manifests(folder)?;
        loras.allow_download = allow_download;
        check_names(&pipelines, extensions, &loras)?;
        check_lora_files(&loras)?;
        Ok(Self {
            packs,
            families,
            pipelines,
            loras,
        })
    }
}

impl Catalog {
    /// Reads the packs, pipelines and LoRAs of the parsed manifest folder ([`Plan::read`])
    /// and loads every pack's model once.
    ///
    /// A pack that a `[[pipeline]]` uses must load, or this fails naming it; a pack no
    /// pipeline uses is skipped with a warning when its files cannot be found or loaded
    /// (e.g. a hub pack not in the cache), so one missing download does not stop the service.
    pub fn load(
        folder: &ManifestFolder<'_>,
        options: &LoadOptions,
        allow_download: bool,
        limits: Limits,
        extensions: &Extensions,
    ) -> Result<Self> {
        let Plan {
            packs,
            families,
            pipelines: configs,
            loras,
        } = Plan::read(folder, extensions, allow_download)?;
        let mut loaded: Vec<(PackManifest, Arc<Model>)> = Vec::new();
        for pack in packs {
            let needed = (configs.iter())
                .any(|c| c.pack == pack.name || c.refiner.as_ref() == Some(&pack.name));
            match load_pack(&pack, &families, options, allow_download) {
                Ok(model) => {
                    tracing::info!(pack = %pack.name, "model loaded");
                    loaded.push((pack, Arc::new(model)));
                }
                Err(e) if needed => return Err(e),
                Err(e) => {
                    tracing::warn!(pack = %pack.name, error = %e, "pack skipped: its model did not load");
                }
            }
        }
        let mut pipelines = Vec::new();
        for c in configs {
            let Some((pack, model)) = loaded.iter().find(|(p, _)| p.name == c.pack) else {
                continue; // unreachable: needed packs loaded or returned an error above
            };
            check_refiner(&c, model, &loaded)?;
            let o = c.limits;
            pipelines.push(Arc::new(Pipeline {
                name: c.name,
                pack: c.pack,
                family: family_of(pack, model)?,
                mode: c.mode,
                description: c.description,
                is_pack: false,
                defaults: c.defaults,
                limits: Limits {
                    max_width: o.max_width.unwrap_or(limits.max_width),
                    max_height: o.max_height.unwrap_or(limits.max_height),
                    max_steps: o.max_steps.unwrap_or(limits.max_steps),
                    max_images: o.max_images.unwrap_or(limits.max_images),
                },
                pre_processors: c.pre_processors,
                post_processors: c.post_processors,
                lora_set: c.lora_set,
                refiner: c.refiner,
                refiner_switch_at: c.refiner_switch_at,
                model: model.clone(),
            }));
        }
        let models = loaded.len();
        for (pack, model) in loaded {
            let family = family_of(&pack, &model)?;
            pipelines.push(Arc::new(Pipeline {
                name: pack.name.clone(),
                pack: pack.name,
                family,
                mode: Mode::TextToImage,
                description: pack.description,
                is_pack: true,
                defaults: pack.defaults,
                limits,
                pre_processors: Vec::new(),
                post_processors: Vec::new(),
                lora_set: None,
                refiner: None,
                refiner_switch_at: None,
                model,
            }));
        }
        Ok(Self {
            pipelines,
            models,
            loras: Arc::new(loras),
        })
    }

    /// The pipeline called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Pipeline>> {
        self.pipelines.iter().find(|p| p.name == name)
    }

    /// Every pipeline: configured pipelines first, then packs.
    pub fn all(&self) -> &[Arc<Pipeline>] {
        &self.pipelines
    }

    /// The pipeline used when a request names none: the first one.
    pub fn default_pipeline(&self) -> Option<&Arc<Pipeline>> {
        self.pipelines.first()
    }

    /// Every pipeline name, comma separated, for error messages.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.pipelines.iter().map(|p| p.name.as_str()).collect();
        if names.is_empty() {
            "(none)".to_string()
        } else {
            names.join(", ")
        }
    }

    /// The `[[lora]]` and `[[lora_set]]` entries of the manifests, shared with the workers
    /// (its file cache is thread-safe).
    pub fn loras(&self) -> &Arc<LoraCatalog> {
        &self.loras
    }

    /// Sets the weights requests may give LoRAs (default -5 to 5). Call before serving.
    pub fn set_lora_range(&mut self, range: WeightRange) {
        // Before serving the catalog is the only holder: keep the files read at start.
        if let Some(loras) = Arc::get_mut(&mut self.loras) {
            loras.range = range;
            return;
        }
        let mut loras = LoraCatalog::new(self.loras.entries.clone(), self.loras.sets.clone());
        loras.range = range;
        loras.allow_download = self.loras.allow_download;
        self.loras = Arc::new(loras);
    }

    /// How many models are loaded.
    pub fn models_loaded(&self) -> usize {
        self.models
    }
}

/// Checks the names each pipeline gives against what this process has: the samplers and
/// processors of `extensions` (plugins' included) and the LoRA catalog.
fn check_names(
    configs: &[PipelineConfig],
    extensions: &Extensions,
    loras: &LoraCatalog,
) -> Result<()> {
    let scheduler = |name: &str| {
        (extensions.schedulers.resolve(name))
            .map(drop)
            .map_err(|e| e.to_string())
    };
    let (pre, post) = (extensions.pre_names(), extensions.post_names());
    let lora_names = loras.names();
    for config in configs {
        config.check_names(&scheduler, &post, &pre)?;
        config.check_lora_set(&lora_names)?;
    }
    Ok(())
}

/// Reads every `[[lora]]` file the way a job reads it (through the catalog's cache, checking
/// its `sha256`), so that a missing, unreadable or changed file stops the start rather than
/// every job that names it. A hub file that is not in the cache while downloads are off is
/// left for the first job (with a warning), as a hub pack that is not cached is.
fn check_lora_files(loras: &LoraCatalog) -> Result<()> {
    for entry in &loras.entries {
        if let FileSource::Hub {
            repo,
            file,
            revision,
        } = &entry.source
        {
            if !loras.allow_download && hub::repo_file(repo, file, revision, false).is_err() {
                tracing::warn!(lora = %entry.name, %repo, %file, "LoRA not in the hub cache: not checked");
                continue;
            }
        }
        let request = LoraRequest {
            name: entry.name.clone(),
            weight: None,
        };
        let read = (loras.resolve(&[request], false))
            .map_err(Error::from)
            .and_then(|resolved| loras.load(&resolved));
        if let Err(e) = read {
            let field = match (&e, &entry.source) {
                (Error::Lora(l), _) if matches!(**l, LoraError::HashMismatch { .. }) => {
                    "lora.sha256"
                }
                (_, FileSource::Path(_)) => "lora.path",
                (_, FileSource::Hub { .. }) => "lora.file",
            };
            return Err(Error::Config {
                path: entry.manifest_path.clone(),
                message: format!("`{field}` of [[lora]] `{}`: {e}", entry.name),
            });
        }
    }
    Ok(())
}

/// Checks that the refiner pack of `config` (loaded among `loaded`) can finish `base`'s jobs,
/// naming the pipeline's manifest.
fn check_refiner(
    config: &PipelineConfig,
    base: &Arc<Model>,
    loaded: &[(PackManifest, Arc<Model>)],
) -> Result<()> {
    let Some(name) = &config.refiner else {
        return Ok(());
    };
    let Some((_, model)) = loaded.iter().find(|(p, _)| &p.name == name) else {
        return Ok(()); // unreachable: needed packs loaded or returned an error above
    };
    let refiner = Refiner {
        name: name.clone(),
        model: (**model).clone(),
        switch_at: config
            .refiner_switch_at
            .unwrap_or(crate::defaults::REFINER_SWITCH_AT),
    };
    refiner.check_models(base).map_err(|e| Error::Config {
        path: config.manifest_path.clone(),
        message: format!(
            "`pipeline.refiner` of [[pipeline]] `{}` names pack `{name}`, which cannot refine \
             pack `{}`: {e}",
            config.name, config.pack
        ),
    })
}

/// The family a pack declares.
fn pack_family(pack: &PackManifest) -> Option<&str> {
    pack.family.as_ref().map(Family::as_str)
}

/// The family a pack declares, else its model's (a single-file pack's detected family).
fn family_of(pack: &PackManifest, model: &Model) -> Result<Family> {
    match &pack.family {
        Some(f) => Ok(f.clone()),
        None => model.family.name.parse().map_err(|message: String| {
            crate::Error::invalid("family", model.family.name.clone(), message)
        }),
    }
}

/// Opens the header of every weight file `pack` names, as [`load_pack`] would find them,
/// without reading any weights: a diffusers folder's text encoder, denoiser and VAE files (and
/// the pack's `gguf` denoiser), or a single-file checkpoint (its keys match the family, its
/// configs are found, its `vae` file opens). A hub pack that is not in the cache while
/// downloads are off is not checked (`serve` skips it with a warning unless a pipeline needs
/// it). Errors name the pack's manifest and field.
pub fn check_pack_files(
    pack: &PackManifest,
    families: &Families,
    allow_download: bool,
) -> Result<()> {
    let at = |field: &str, e: Error| Error::Config {
        path: pack.manifest_path.clone(),
        message: format!("`{field}` of pack {}: {e}", pack.name),
    };
    check_vae_files(pack)?;
    let keyword_field = match pack.vae {
        Some(VaeChoice::Taesd) => "pack.vae",
        _ => "pack.preview",
    };
    check_taesd(pack, families, allow_download).map_err(|e| at(keyword_field, e))?;
    match &pack.source {
        PackSource::Path(dir) => {
            check_folder_files(dir, pack, families).map_err(|e| at("pack.path", e))
        }
        PackSource::Hub { repo, revision } => match hub::resolve(repo, revision, allow_download) {
            Ok(dir) => check_folder_files(&dir, pack, families).map_err(|e| at("pack.repo", e)),
            Err(crate::hub::HubError::NotCached { .. }) => Ok(()),
            Err(e) => Err(at("pack.repo", e.into())),
        },
        PackSource::Checkpoint(single) => {
            check_checkpoint_files(single, pack, families, allow_download)
                .map_err(|e| at("pack.checkpoint", e))
        }
    }
}

/// The weight files of the diffusers folder `dir` of `pack`'s family open.
fn check_folder_files(dir: &Path, pack: &PackManifest, families: &Families) -> Result<()> {
    model_files::model_index(dir)?;
    let family = families.for_folder(dir, pack_family(pack))?;
    for encoder in &family.text_encoders {
        SafetensorsFile::open(&model_files::weights(dir, &encoder.component, "model")?)?;
    }
    match &pack.gguf {
        Some(file) if is_gguf(file) => drop(GgufFile::open(file)?),
        Some(file) => drop(SafetensorsFile::open(file)?),
        None => {
            let stem = "diffusion_pytorch_model";
            SafetensorsFile::open(&model_files::weights(
                dir,
                &family.denoiser.component,
                stem,
            )?)?;
        }
    }
    let vae = model_files::weights(dir, &family.vae.component, "diffusion_pytorch_model")?;
    SafetensorsFile::open(&vae)?;
    Ok(())
}

/// A single-file pack's file is readable, of the declared family by its keys, and has its
/// configs (the bundled ones, or `model_config`); its `vae` file opens.
fn check_checkpoint_files(
    single: &PackCheckpoint,
    pack: &PackManifest,
    families: &Families,
    allow_download: bool,
) -> Result<()> {
    let (file, options) =
        checkpoint::load::pack_checkpoint(single, pack_family(pack), allow_download)?;
    let report = checkpoint::inspect(&file, families, &options)?;
    checkpoint::load::config_dir(&report.detection.family, &options, &file)?;
    Ok(())
}

/// The family's tiny autoencoder is found when the pack names it by the `taesd` keyword (a
/// hub pack that is not in the cache, or a single file leaving its family to detection, is
/// not checked).
fn check_taesd(pack: &PackManifest, families: &Families, allow_download: bool) -> Result<()> {
    let Ok(plan) = LoadPlan::for_pack(pack, allow_download) else {
        return Ok(()); // the source's own check reports it
    };
    let family = pack_family(pack).and_then(|f| families.get(f));
    match family {
        Some(family) if plan.needs_taesd() => plan.find_taesd(&family).map(drop),
        _ => Ok(()),
    }
}

/// The pack's `vae` and `preview_vae` files open: a tiny autoencoder's (folder or file) or an
/// `AutoencoderKL` weights file (the `taesd` keyword: [`check_taesd`]).
fn check_vae_files(pack: &PackManifest) -> Result<()> {
    let vae = match &pack.vae {
        Some(VaeChoice::Path(p)) => Some((p, "pack.vae")),
        _ => None,
    };
    let preview = pack.preview_vae.as_ref().map(|p| (p, "pack.preview_vae"));
    for (path, field) in vae.into_iter().chain(preview) {
        let opened = if Vae::is_tiny_at(path) || field == "pack.preview_vae" {
            Vae::check_tiny_at(path)
        } else {
            SafetensorsFile::open(path).map(drop).map_err(Error::from)
        };
        opened.map_err(|e| Error::Config {
            path: pack.manifest_path.clone(),
            message: format!("`{field}` of pack {}: {e}", pack.name),
        })?;
    }
    Ok(())
}
