//! Loading a single-file checkpoint: detect its family, map each component's keys to the
//! diffusers names its network reads (per the family's `single_file` layouts), take configs
//! and tokenizers from `--model-config DIR` or the family's bundled folder, and build the
//! model. Each component reads its own tensors from the (mapped) file, so a 16-bit file is
//! never in memory twice over.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::detect::{detect, Detection};
use super::keymap::{ldm_to_unet, ldm_to_vae, open_clip_to_clip, vae_needs_squeeze, OpenClipPart};
use crate::family::{
    bundled, load_source, Families, Family, KeyLayout, LoadOptions, Model, ModelSource, SingleFile,
};
use crate::manifest::{FileSource, PackCheckpoint};
use crate::models::clip::ClipTextConfig;
use crate::models::config_file::read_json;
use crate::schedulers::PredictionType;
use crate::weights::{KeyMap, SafetensorsFile, TensorOp, TensorRef, WeightSource};
use crate::{Error, Result};

/// File extensions of pickled checkpoints, which beeswax never unpickles.
const PICKLES: [&str; 4] = ["ckpt", "pt", "pth", "bin"];

/// How to load a single file.
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    /// The family, when the user or a manifest says (else detected).
    pub family: Option<String>,
    /// Configs and tokenizers from this diffusers folder instead of the family's bundled ones.
    pub config_dir: Option<PathBuf>,
    /// What the denoiser predicts, when the user or a manifest says.
    pub prediction: Option<PredictionType>,
    /// A VAE file replacing the checkpoint's.
    pub vae: Option<PathBuf>,
}

/// The file of a single-file pack (resolved in the hub cache for `repo` + `file`, downloaded
/// when allowed) and its reading options; `family` when the pack declares one. The pack's
/// `vae` is [`crate::family::LoadPlan`]'s to place.
pub fn pack_checkpoint(
    single: &PackCheckpoint,
    family: Option<&str>,
    allow_download: bool,
) -> Result<(PathBuf, CheckpointOptions)> {
    let path = match &single.file {
        FileSource::Path(p) => p.clone(),
        FileSource::Hub {
            repo,
            file,
            revision,
        } => crate::hub::repo_file(repo, file, revision, allow_download)?,
    };
    let prediction = single.prediction.as_deref().map(|p| match p {
        "v" => PredictionType::VPrediction,
        _ => PredictionType::Epsilon,
    });
    let options = CheckpointOptions {
        family: family.map(str::to_string),
        config_dir: single.model_config.clone(),
        prediction,
        vae: None,
    };
    Ok((path, options))
}

/// Whether `path` names a single-file checkpoint rather than a diffusers folder.
pub fn is_single_file(path: &Path) -> bool {
    path.is_file()
        || path
            .extension()
            .is_some_and(|e| e == "safetensors" || PICKLES.iter().any(|p| e == *p))
}

/// A pickle is refused with the command that converts it.
fn refuse_pickle(path: &Path) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !PICKLES.contains(&ext) {
        return Ok(());
    }
    let out = path.with_extension("safetensors");
    Err(Error::Config {
        path: path.to_path_buf(),
        message: format!(
            "pickled checkpoints (.{ext}) can run code when loaded, so beeswax does not read \
             them; convert it once with: python -c \"import torch, safetensors.torch as s; \
             d = torch.load('{}', map_location='cpu', weights_only=True); d = \
             d.get('state_dict', d); s.save_file({{k: v.contiguous() for k, v in d.items() \
             if isinstance(v, torch.Tensor)}}, '{}')\"",
            path.display(),
            out.display()
        ),
    })
}

/// Loads the single file `path` with the `families` known.
pub fn load(
    path: &Path,
    families: &Families,
    options: &CheckpointOptions,
    load: &LoadOptions,
) -> Result<Model> {
    refuse_pickle(path)?;
    let file = Arc::new(SafetensorsFile::open(path)?);
    let detection = family_of(&file, families, options)?;
    tracing::info!(
        file = %path.display(),
        family = %detection.family.name,
        rule = %detection.rule,
        "single-file checkpoint detected"
    );
    let source = model_source(&file, &detection.family, options)?;
    load_source(detection.family, &source, load)
}

/// The detected family, switched by the prediction type where the weights cannot tell (SD 2.x
/// epsilon vs v): `--prediction` or the manifest's decides, else ComfyUI's heuristic, logged.
pub fn family_of(
    file: &SafetensorsFile,
    families: &Families,
    options: &CheckpointOptions,
) -> Result<Detection> {
    let mut detection = detect(file, families, options.family.as_deref())?;
    let family = detection.family.clone();
    let prediction = match (options.prediction, family.prediction) {
        (Some(asked), Some(fixed)) if asked != fixed && options.family.is_none() => {
            // A v-prediction twin of the detected family takes the asked prediction.
            match twin(families, &family, asked) {
                Some(t) => {
                    detection.family = t;
                    return Ok(detection);
                }
                None => {
                    return Err(Error::Config {
                        path: file.path().to_path_buf(),
                        message: format!(
                            "--prediction {} contradicts family `{}`, whose denoiser predicts \
                             {}; drop --prediction or pass the right one",
                            prediction_name(asked),
                            family.name,
                            prediction_name(fixed)
                        ),
                    })
                }
            }
        }
        (Some(asked), _) => asked,
        (None, Some(fixed)) => fixed,
        (None, None) if twin(families, &family, PredictionType::VPrediction).is_none() => {
            return Ok(detection);
        }
        (None, None) => {
            let guess = guess_prediction(file);
            tracing::info!(
                file = %file.path().display(),
                prediction = prediction_name(guess),
                "SD 2.x prediction type guessed from the weights (std of \
                 output_blocks.11.1.transformer_blocks.0.norm1.bias > 0.09: v); pass \
                 --prediction or set it in the manifest to be sure"
            );
            guess
        }
    };
    if family.prediction != Some(prediction) {
        if let Some(t) = twin(families, &family, prediction) {
            detection.rule = format!(
                "{}; prediction {}",
                detection.rule,
                prediction_name(prediction)
            );
            detection.family = t;
        }
    }
    Ok(detection)
}

fn prediction_name(p: PredictionType) -> &'static str {
    match p {
        PredictionType::VPrediction => "v",
        PredictionType::Epsilon => "epsilon",
        _ => "sample",
    }
}

/// The family with the same architecture, text encoders and detection rules as `family` but
/// predicting `prediction` (sd2 → sd2-v): the family named `<name>-v` for v.
fn twin(families: &Families, family: &Family, prediction: PredictionType) -> Option<Arc<Family>> {
    let name = match prediction {
        PredictionType::VPrediction => format!("{}-v", family.name),
        _ => family.name.strip_suffix("-v")?.to_string(),
    };
    families
        .get(&name)
        .filter(|t| t.architecture == family.architecture)
}

/// ComfyUI's rule for SD 2.x files: v-prediction when the standard deviation of one late
/// LayerNorm bias exceeds 0.09 (epsilon models keep it near zero).
fn guess_prediction(file: &SafetensorsFile) -> PredictionType {
    let key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias";
    let std = file
        .read(key, candle_core::DType::F32, &candle_core::Device::Cpu)
        .ok()
        .and_then(|t| {
            let mean = t.mean_all().ok()?;
            let var = t.broadcast_sub(&mean).ok()?.sqr().ok()?.mean_all().ok()?;
            var.to_scalar::<f32>().ok()
        })
        .map(f32::sqrt);
    match std {
        Some(s) if s > 0.09 => PredictionType::VPrediction,
        _ => PredictionType::Epsilon,
    }
}

/// Each component's view of the file, with the configs it needs.
pub fn model_source(
    file: &Arc<SafetensorsFile>,
    family: &Family,
    options: &CheckpointOptions,
) -> Result<ModelSource> {
    let config_dir = config_dir(family, options, file.path())?;
    let maps = component_maps(file, family, &config_dir)?;
    let components = maps
        .into_iter()
        .map(|(name, map)| (name, WeightSource::mapped(file.clone(), map)))
        .collect();
    let vae = options.vae.as_deref().map(vae_file).transpose()?;
    Ok(ModelSource {
        config_dir,
        components: Some(components),
        origin: file.path().to_path_buf(),
        prediction: options.prediction.or(family.prediction),
        vae,
    })
}

/// The configs and tokenizers for a single file of `family`: `--model-config DIR` when given,
/// else the family's `config` folder beside its manifest, else the bundled folder of that name
/// (embedded in the binary). Every tokenizer the family's text encoders read must be there.
pub fn config_dir(family: &Family, options: &CheckpointOptions, path: &Path) -> Result<PathBuf> {
    let (dir, given) = match (&options.config_dir, &family.config_dir) {
        (Some(d), _) => (Some(d.clone()), "--model-config"),
        (None, Some(d)) if d.is_dir() => (Some(d.clone()), "the family's config folder"),
        (None, _) => match family.config.as_deref() {
            Some(name) => (bundled::config_dir(name)?, "the bundled configs"),
            None => (None, ""),
        },
    };
    let Some(dir) = dir.filter(|d| d.is_dir()) else {
        let missing = options
            .config_dir
            .as_ref()
            .or(family.config_dir.as_ref())
            .map_or(String::new(), |d| format!(" ({} is missing)", d.display()));
        return Err(Error::Config {
            path: path.to_path_buf(),
            message: format!(
                "family `{}` has no bundled configs{missing}: pass --model-config DIR (a \
                 diffusers folder of the same architecture: its configs and tokenizers are used)",
                family.name,
            ),
        });
    };
    for te in &family.text_encoders {
        let tokenizer = dir.join(&te.tokenizer);
        if !tokenizer.is_dir() {
            return Err(Error::Config {
                path: path.to_path_buf(),
                message: format!(
                    "family `{}` needs the tokenizer `{}/` of its `{}` text encoder, which {given} \
                     ({}) do not hold; pass --model-config DIR, a diffusers folder of this family \
                     holding {}/ (and the components the file does not carry)",
                    family.name,
                    te.tokenizer,
                    te.component,
                    dir.display(),
                    te.tokenizer
                ),
            });
        }
    }
    Ok(dir)
}

/// Component name → key map, per the family's `single_file` layouts; only components with
/// tensors in the file are listed.
pub fn component_maps(
    file: &SafetensorsFile,
    family: &Family,
    config_dir: &Path,
) -> Result<BTreeMap<String, KeyMap>> {
    let mut out = BTreeMap::new();
    let mut parts: Vec<(&str, &SingleFile)> = Vec::new();
    for te in &family.text_encoders {
        if let Some(sf) = &te.single_file {
            parts.push((&te.component, sf));
        }
    }
    if let Some(sf) = &family.denoiser.single_file {
        parts.push((&family.denoiser.component, sf));
    }
    if let Some(sf) = &family.vae.single_file {
        parts.push((&family.vae.component, sf));
    }
    for (component, sf) in parts {
        let map = key_map(file, component, sf, config_dir)?;
        if !map.is_empty() {
            out.insert(component.to_string(), map);
        }
    }
    Ok(out)
}

/// The file keys under `sf.prefix`, without it.
fn keys_under<'a>(file: &'a SafetensorsFile, prefix: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut keys: Vec<(&str, &str)> = file
        .names()
        .into_iter()
        .filter_map(|k| Some((k, k.strip_prefix(prefix)?)))
        .collect();
    keys.sort_unstable();
    keys
}

fn key_map(
    file: &SafetensorsFile,
    component: &str,
    sf: &SingleFile,
    config_dir: &Path,
) -> Result<KeyMap> {
    let keys = keys_under(file, &sf.prefix);
    let mut map = KeyMap::new();
    match sf.layout {
        KeyLayout::Diffusers | KeyLayout::Clip => {
            for (full, rest) in keys {
                map.insert(rest.to_string(), tensor_ref(full, TensorOp::Whole));
            }
        }
        KeyLayout::LdmUnet => {
            let layers = unet_layers(&keys);
            for (full, rest) in keys {
                if let Some(d) = ldm_to_unet(rest, layers) {
                    map.insert(d, tensor_ref(full, TensorOp::Whole));
                }
            }
        }
        KeyLayout::LdmVae => ldm_vae_map(&keys, &mut map),
        KeyLayout::OpenClip => {
            let config_path = config_dir.join(component).join("config.json");
            let config: ClipTextConfig = read_json(&config_path)?;
            open_clip_map(&keys, &config, &mut map);
        }
    }
    Ok(map)
}

fn tensor_ref(key: &str, op: TensorOp) -> TensorRef {
    TensorRef {
        key: key.to_string(),
        op,
    }
}

/// LDM VAE keys to diffusers names; the number of levels comes from `encoder.down.N`.
fn ldm_vae_map(keys: &[(&str, &str)], map: &mut KeyMap) {
    let levels = keys
        .iter()
        .filter_map(|(_, r)| {
            r.strip_prefix("encoder.down.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |n| n + 1);
    for &(full, rest) in keys {
        if let Some(d) = ldm_to_vae(rest, levels) {
            let op = if vae_needs_squeeze(&d) {
                TensorOp::Squeeze
            } else {
                TensorOp::Whole
            };
            map.insert(d, tensor_ref(full, op));
        }
    }
}

/// OpenCLIP keys (fused `in_proj`, transposed `text_projection`) to transformers' CLIP names.
fn open_clip_map(keys: &[(&str, &str)], config: &ClipTextConfig, map: &mut KeyMap) {
    for &(full, rest) in keys {
        for (d, part) in open_clip_to_clip(rest, config.hidden_size, config.num_hidden_layers) {
            let op = match part {
                OpenClipPart::Whole => TensorOp::Whole,
                OpenClipPart::Transposed => TensorOp::Transpose,
                OpenClipPart::Rows(start) => TensorOp::Rows {
                    start,
                    len: config.hidden_size,
                },
            };
            map.insert(d, tensor_ref(full, op));
        }
    }
}

/// The UNet's layers per block, from where the first downsampler sits
/// (`input_blocks.{L + 1}.0.op`), else from the number of input blocks (one level).
fn unet_layers(keys: &[(&str, &str)]) -> usize {
    let index = |r: &str| -> Option<usize> {
        r.strip_prefix("input_blocks.")?
            .split('.')
            .next()?
            .parse()
            .ok()
    };
    let first_op = keys
        .iter()
        .filter(|(_, r)| r.contains(".0.op."))
        .filter_map(|(_, r)| index(r))
        .min();
    match first_op {
        Some(n) => n.saturating_sub(1),
        None => keys.iter().filter_map(|(_, r)| index(r)).max().unwrap_or(0),
    }
}

/// A VAE file for `--vae`: diffusers names, or LDM names with or without `first_stage_model.`.
pub fn vae_file(path: &Path) -> Result<WeightSource> {
    refuse_pickle(path)?;
    let file = Arc::new(SafetensorsFile::open(path)?);
    if file.info("encoder.conv_in.weight").is_some()
        && file
            .info("encoder.down_blocks.0.resnets.0.conv1.weight")
            .is_some()
    {
        return Ok(WeightSource::new(file, ""));
    }
    let prefix = if file
        .info("first_stage_model.encoder.conv_in.weight")
        .is_some()
    {
        "first_stage_model."
    } else {
        ""
    };
    let sf = SingleFile {
        prefix: prefix.to_string(),
        layout: KeyLayout::LdmVae,
    };
    let map = key_map(&file, "vae", &sf, Path::new(""))?;
    if map.is_empty() {
        return Err(Error::Config {
            path: path.to_path_buf(),
            message: "holds no VAE tensors (expected `encoder.conv_in.weight`, in diffusers or \
                      original names)"
                .into(),
        });
    }
    Ok(WeightSource::mapped(file, map))
}

/// What `beeswax inspect` reports about a single file.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The detected family and rule.
    pub detection: Detection,
    /// Tensor count by stored dtype.
    pub dtypes: BTreeMap<String, usize>,
    /// Component name → tensors mapped.
    pub components: BTreeMap<String, usize>,
    /// File keys no component uses.
    pub unused: Vec<String>,
    /// Whether the configs came from somewhere (else components are counted from keys only).
    pub config_dir: Option<PathBuf>,
}

/// Inspects `path` without loading any weights.
pub fn inspect(
    path: &Path,
    families: &Families,
    options: &CheckpointOptions,
) -> Result<Inspection> {
    refuse_pickle(path)?;
    let file = SafetensorsFile::open(path)?;
    let detection = family_of(&file, families, options)?;
    let mut dtypes = BTreeMap::new();
    for name in file.names() {
        if let Some(info) = file.info(name) {
            *dtypes.entry(format!("{:?}", info.dtype)).or_insert(0) += 1;
        }
    }
    let config_dir = config_dir(&detection.family, options, path).ok();
    let maps = match &config_dir {
        Some(dir) => component_maps(&file, &detection.family, dir)?,
        None => BTreeMap::new(),
    };
    let used: HashSet<&str> = maps
        .values()
        .flat_map(|m| m.values().map(|r| r.key.as_str()))
        .collect();
    let mut unused: Vec<String> = file
        .names()
        .into_iter()
        .filter(|k| !used.contains(k))
        .map(str::to_string)
        .collect();
    unused.sort();
    let components = maps.iter().map(|(k, m)| (k.clone(), m.len())).collect();
    Ok(Inspection {
        detection,
        dtypes,
        components,
        unused,
        config_dir,
    })
}
