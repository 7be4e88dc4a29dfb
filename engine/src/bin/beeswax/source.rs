//! Choosing the model: a diffusers folder (`--model`) or a pack (`--pack`) from the manifests,
//! and the device and dtype to load it with.

use std::path::PathBuf;

use anyhow::{Context, Result};
use beeswax::device::{default_device, parse_device, parse_dtype};
use beeswax::manifest::{self, PackDefaults, PackManifest, PackSource};
use beeswax::pipeline::{LoadOptions, StableDiffusion};
use beeswax::{hub, model_files};
use candle_core::DType;

use crate::args::{Global, ModelChoice};

/// A model ready to use, with the pack it came from (if any).
pub struct Chosen {
    /// The loaded model.
    pub model: StableDiffusion,
    /// The name written into PNG parameters: the pack name or the folder name.
    pub name: String,
    /// The pack's defaults (empty for `--model`).
    pub defaults: PackDefaults,
}

/// The model folder for a choice, resolving packs through the manifests and the hub cache.
pub fn model_dir(global: &Global, choice: &ModelChoice) -> Result<(PathBuf, String, PackDefaults)> {
    if let Some(dir) = &choice.model {
        model_files::model_index(dir)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        return Ok((dir.clone(), name, PackDefaults::default()));
    }
    let name = choice.pack.as_deref().unwrap_or_default();
    let pack: PackManifest = manifest::find_pack(&global.manifests, name)?;
    let dir = match &pack.source {
        PackSource::Path(p) => p.clone(),
        PackSource::Hub { repo, revision } => hub::resolve(repo, revision, global.allow_download)?,
    };
    Ok((dir, pack.name.clone(), pack.defaults.clone()))
}

/// Loads the chosen model on the chosen device.
pub fn load(global: &Global, choice: &ModelChoice) -> Result<Chosen> {
    let (dir, name, defaults) = model_dir(global, choice)?;
    let device = match &global.device {
        Some(d) => parse_device(d)?,
        None => default_device(),
    };
    let dtype = match &global.dtype {
        Some(d) => parse_dtype(d)?,
        None if device.is_cpu() => DType::F32,
        None => DType::F16,
    };
    let model = StableDiffusion::load(&dir, &LoadOptions { device, dtype })
        .with_context(|| format!("loading model {name} from {}", dir.display()))?;
    Ok(Chosen {
        model,
        name,
        defaults,
    })
}

/// `beeswax packs`: one line per pack.
pub fn list_packs(global: &Global) -> Result<()> {
    for pack in manifest::load_dir(&global.manifests)? {
        let source = match &pack.source {
            PackSource::Path(p) => p.display().to_string(),
            PackSource::Hub { repo, revision } => format!("{repo}@{revision}"),
        };
        println!("{}\t{:?}\t{source}", pack.name, pack.family);
    }
    Ok(())
}
