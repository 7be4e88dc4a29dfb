//! Choosing the model: a diffusers folder (`--model`) or a pack (`--pack`) from the manifests,
//! and the device and dtype to load it with.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use beeswax::checkpoint::{self, CheckpointOptions};
use beeswax::device::{default_device, parse_device, parse_dtype};
use beeswax::family::{Families, LoadOptions, LoadPlan, Model};
use beeswax::manifest::{
    self, FileSource, ManifestError, ManifestFiles, ManifestFolder, PackDefaults, PackSource,
    VaeChoice,
};
use beeswax::model_files;
use beeswax::schedulers::PredictionType;
use beeswax::weights::WeightsDtype;
use candle_core::{DType, Device};

use crate::args::{Global, ModelChoice};

/// A model ready to use, with the pack it came from (if any).
pub struct Chosen {
    /// The loaded model.
    pub model: Model,
    /// The name written into PNG parameters: the pack name or the folder name.
    pub name: String,
    /// The pack's defaults (empty for `--model`).
    pub defaults: PackDefaults,
}

/// The device `--device` names (else the best compiled in) and the dtype `--dtype` names
/// (else f32 on the CPU, f16 on GPUs).
pub fn device_and_dtype(global: &Global) -> Result<(Device, DType)> {
    let device = match &global.device {
        Some(d) => parse_device(d)?,
        None => default_device(),
    };
    let dtype = match &global.dtype {
        Some(d) => parse_dtype(d)?,
        None if device.is_cpu() => DType::F32,
        None => DType::F16,
    };
    Ok((device, dtype))
}

/// The `--weights-dtype` choice (the file's own 16-bit type when not given).
pub fn weights_dtype(global: &Global) -> Result<WeightsDtype> {
    match &global.weights_dtype {
        Some(d) => d
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--weights-dtype: {e}")),
        None => Ok(WeightsDtype::File),
    }
}

/// The `*.toml` files of `--manifests`, read once for the whole command, or `None` when the
/// folder does not exist (`generate --model` and `schedulers` run without manifests).
pub fn read_manifests(global: &Global) -> Result<Option<ManifestFiles>, ManifestError> {
    if global.manifests.is_dir() {
        ManifestFiles::read(&global.manifests).map(Some)
    } else {
        Ok(None)
    }
}

/// Where a chosen model comes from.
pub struct ModelSource {
    /// What to load (the pack's plan, or the `--model` folder or file), before the command
    /// line's options.
    pub plan: LoadPlan,
    /// The name written into PNG parameters.
    pub name: String,
    /// The pack's defaults.
    pub defaults: PackDefaults,
}

/// The model for a choice, resolving packs through the parsed manifests (`None`: the folder
/// does not exist) and the hub cache, with the pack's name and defaults.
pub fn model_dir(
    global: &Global,
    folder: Option<&ManifestFolder<'_>>,
    choice: &ModelChoice,
) -> Result<ModelSource> {
    if let Some(model) = &choice.model {
        // A GGUF file is a denoiser alone, and so is a file beside a --model-config folder
        // with a transformer (FLUX, BFL/ComfyUI layout); another safetensors file is a
        // single-file checkpoint (its family detected from its keys).
        let transformer_folder = global
            .model_config
            .as_ref()
            .is_some_and(|c| c.join("transformer").is_dir());
        let denoiser_only = model.is_file()
            && (model.extension().is_some_and(|e| e == "gguf") || transformer_folder);
        let dir = match (&global.model_config, denoiser_only) {
            (Some(config), true) => config,
            (None, true) => bail!(
                "--model {} is a GGUF file{}: give the diffusers folder the other components \
                 (text encoders, VAE, configs) come from with --model-config DIR",
                model.display(),
                gguf_architecture(model)
                    .map(|a| format!(" holding a `{a}` denoiser"))
                    .unwrap_or_default()
            ),
            (_, false) => model,
        };
        if !checkpoint::is_single_file(dir) {
            model_files::model_index(dir)?;
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        let name = if model.is_file() {
            model
                .file_stem()
                .map_or(name, |n| n.to_string_lossy().into_owned())
        } else {
            name
        };
        let mut plan = LoadPlan::new(dir.clone());
        plan.denoiser = Some(model.clone()).filter(|_| denoiser_only);
        return Ok(ModelSource {
            plan,
            name,
            defaults: PackDefaults::default(),
        });
    }
    let name = choice.pack.as_deref().unwrap_or_default();
    let folder = folder.ok_or_else(|| ManifestError::DirMissing {
        dir: global.manifests.clone(),
    })?;
    let pack = manifest::find_pack(folder, name)?;
    Ok(ModelSource {
        plan: LoadPlan::for_pack(&pack, global.allow_download)?,
        name: pack.name,
        defaults: pack.defaults,
    })
}

/// The architecture a GGUF file holds (its `general.architecture`, else told from its tensor
/// names), for messages.
fn gguf_architecture(path: &std::path::Path) -> Option<String> {
    let file = beeswax::gguf::GgufFile::open(path).ok()?;
    let (architecture, _) = file.architecture().ok()??;
    Some(architecture.name().to_string())
}

/// Loads the chosen model on the chosen device: the pack's (or `--model`'s) plan with the
/// command line's single-file options and `--vae` over the pack's.
pub fn load(
    global: &Global,
    folder: Option<&ManifestFolder<'_>>,
    choice: &ModelChoice,
) -> Result<Chosen> {
    let ModelSource {
        mut plan,
        name,
        defaults,
    } = model_dir(global, folder, choice)?;
    let (device, dtype) = device_and_dtype(global)?;
    let families = families(folder)?;
    let mut options = LoadOptions::new(device, dtype);
    options.weights_dtype = weights_dtype(global)?;
    options.max_sequence_length = global.max_sequence_length.map(|n| n as usize);
    options.low_memory = global.low_memory;
    let cli = checkpoint_options(global)?;
    plan.single.family = cli.family.or(plan.single.family.take());
    plan.single.config_dir = cli.config_dir.or(plan.single.config_dir.take());
    plan.single.prediction = cli.prediction.or(plan.single.prediction);
    if let Some(vae) = &global.vae {
        plan.vae = Some(VaeChoice::parse(&vae.to_string_lossy()));
    }
    plan.allow_download = global.allow_download;
    let model = plan
        .load(&families, &options)
        .with_context(|| format!("loading model {name} from {}", plan.source.display()))?;
    Ok(Chosen {
        model,
        name,
        defaults,
    })
}

/// Loads `--refiner`: an existing folder or single file (its family detected, on the base's
/// device and dtype; a single file's configs from `config` when given), else a pack of the
/// manifests.
pub fn load_refiner(
    global: &Global,
    folder: Option<&ManifestFolder<'_>>,
    refiner: &str,
    config: Option<&Path>,
) -> Result<Chosen> {
    let path = PathBuf::from(refiner);
    if !path.exists() {
        if folder.is_none() {
            bail!(
                "--refiner {refiner}: no such file or folder, and no manifests folder ({}) \
                 to find a pack of that name in",
                global.manifests.display()
            );
        }
        let choice = ModelChoice {
            model: None,
            pack: Some(refiner.to_string()),
        };
        // The base's single-file options (--model-config, --family, ...) are not the pack's.
        let own = Global {
            model_config: config.map(Path::to_path_buf),
            family: None,
            prediction: None,
            vae: None,
            ..global.clone()
        };
        return load(&own, folder, &choice).context("loading the --refiner pack");
    }
    let (device, dtype) = device_and_dtype(global)?;
    let families = families(folder)?;
    let mut options = LoadOptions::new(device, dtype);
    options.weights_dtype = weights_dtype(global)?;
    let model = if checkpoint::is_single_file(&path) {
        let single = CheckpointOptions {
            config_dir: config.map(Path::to_path_buf),
            ..CheckpointOptions::default()
        };
        checkpoint::load::load(&path, &families, &single, &options)
    } else {
        model_files::model_index(&path)?;
        families.load(&path, None, &options)
    };
    let model = model.with_context(|| format!("loading the refiner {}", path.display()))?;
    let name = path
        .file_stem()
        .map_or(refiner.to_string(), |n| n.to_string_lossy().into_owned());
    Ok(Chosen {
        model,
        name,
        defaults: PackDefaults::default(),
    })
}

/// `beeswax packs`: one line per pack.
pub fn list_packs(global: &Global) -> Result<()> {
    let files = ManifestFiles::read(&global.manifests)?;
    for pack in manifest::packs(&files.parse()?)? {
        let source = match &pack.source {
            PackSource::Path(p) => p.display().to_string(),
            PackSource::Hub { repo, revision } => format!("{repo}@{revision}"),
            PackSource::Checkpoint(single) => match &single.file {
                FileSource::Path(p) => p.display().to_string(),
                FileSource::Hub {
                    repo,
                    file,
                    revision,
                } => format!("{repo}@{revision}/{file}"),
            },
        };
        let family = pack.family.as_ref().map_or("(detected)", |f| f.as_str());
        println!("{}\t{family}\t{source}", pack.name);
    }
    Ok(())
}

/// The shipped families plus the manifests'.
fn families(folder: Option<&ManifestFolder<'_>>) -> Result<Families> {
    Ok(match folder {
        Some(folder) => Families::from_manifests(folder)?,
        None => Families::builtin(),
    })
}

/// The single-file options of the command line.
fn checkpoint_options(global: &Global) -> Result<CheckpointOptions> {
    let prediction = match global.prediction.as_deref() {
        None => None,
        Some("v") => Some(PredictionType::VPrediction),
        Some(_) => Some(PredictionType::Epsilon),
    };
    Ok(CheckpointOptions {
        family: global.family.clone(),
        config_dir: global.model_config.clone(),
        prediction,
        vae: global.vae.clone(),
    })
}

/// `beeswax inspect FILE`.
pub fn inspect(global: &Global, file: &std::path::Path) -> Result<()> {
    if beeswax::family::denoiser::is_gguf(file) {
        return inspect_gguf(file);
    }
    let files = read_manifests(global)?;
    let folder = files.as_ref().map(|f| f.parse()).transpose()?;
    let families = families(folder.as_ref())?;
    let report = checkpoint::inspect(file, &families, &checkpoint_options(global)?)?;
    println!("file: {}", file.display());
    println!("family: {}", report.detection.family.name);
    println!("rule: {}", report.detection.rule);
    let dtypes: Vec<String> = report
        .dtypes
        .iter()
        .map(|(d, n)| format!("{d} ×{n}"))
        .collect();
    println!("dtypes: {}", dtypes.join(", "));
    match &report.config_dir {
        Some(dir) => println!("configs: {}", dir.display()),
        None => println!("configs: none (pass --model-config DIR to map the components)"),
    }
    for (component, n) in &report.components {
        println!("component {component}: {n} tensors");
    }
    println!("unused keys: {}", report.unused.len());
    for key in report.unused.iter().take(20) {
        println!("  {key}");
    }
    Ok(())
}

/// `beeswax inspect FILE.gguf`: the architecture, the denoiser prefix and the tensors by type.
fn inspect_gguf(path: &std::path::Path) -> Result<()> {
    use beeswax::gguf::{naming, ArchitectureSource, GgufFile};
    let file = GgufFile::open(path)?;
    println!("file: {}", path.display());
    match file.architecture()? {
        Some((a, ArchitectureSource::Metadata)) => {
            println!("architecture: {a} (general.architecture)")
        }
        Some((a, ArchitectureSource::TensorNames)) => {
            println!("architecture: {a} (told from the tensor names)")
        }
        None => println!("architecture: unknown (no general.architecture, no known denoiser)"),
    }
    let names = file.tensors().iter().map(|t| t.name.as_str());
    let prefix = naming::denoiser_prefix(names);
    println!("denoiser prefix: {}", prefix.unwrap_or("none"));
    let mut types = std::collections::BTreeMap::new();
    let mut others = 0usize;
    for t in file.tensors() {
        if prefix.is_some_and(|p| !t.name.starts_with(p)) {
            others += 1;
            continue;
        }
        *types.entry(t.ty.name()).or_insert(0usize) += 1;
    }
    let types: Vec<String> = types.iter().map(|(t, n)| format!("{t} ×{n}")).collect();
    println!("denoiser tensors: {}", types.join(", "));
    println!("other tensors: {others}");
    Ok(())
}

/// `beeswax families`: one line per model family (the shipped ones and the manifests'), in
/// detection order.
pub fn list_families(global: &Global) -> Result<()> {
    let files = read_manifests(global)?;
    let folder = files.as_ref().map(|f| f.parse()).transpose()?;
    let families = families(folder.as_ref())?;
    for f in families.iter() {
        let origin = f
            .manifest
            .as_ref()
            .map_or("built in".to_string(), |p| p.display().to_string());
        println!(
            "{}\t{}\t{}\t{origin}",
            f.name,
            f.architecture.as_str(),
            f.description
        );
    }
    Ok(())
}
