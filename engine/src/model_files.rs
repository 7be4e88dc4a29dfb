//! Locating files inside a diffusers model folder.
//!
//! A diffusers folder holds `model_index.json` and one sub-folder per component (`unet/`,
//! `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`, ...). Weights are only ever read from
//! `.safetensors` files: pickle checkpoints (`.bin`, `.ckpt`, `.pt`, `.pth`) can run arbitrary
//! code when loaded, so they are refused with advice on converting them.

use std::path::{Path, PathBuf};

/// The name of the file describing a diffusers pipeline.
pub const MODEL_INDEX: &str = "model_index.json";

/// Extensions of pickle-based weight files, which beeswax never loads.
pub const PICKLE_EXTENSIONS: [&str; 4] = ["bin", "ckpt", "pt", "pth"];

/// Extensions of single-file checkpoints that are not diffusers folders.
const CHECKPOINT_EXTENSIONS: [&str; 5] = ["safetensors", "ckpt", "bin", "pt", "pth"];

/// Errors finding files in a model folder.
#[derive(Debug, thiserror::Error)]
pub enum ModelFilesError {
    /// The model folder does not exist.
    #[error(
        "model folder {} does not exist: pass a diffusers model folder (one containing \
         {MODEL_INDEX}), or fix the pack's `path`",
        path.display()
    )]
    MissingDir {
        /// The folder.
        path: PathBuf,
    },
    /// The model path is a single checkpoint file, not a diffusers folder.
    #[error(
        "{} is a single-file checkpoint, but beeswax needs a diffusers model folder \
         ({MODEL_INDEX} plus unet/, vae/, text_encoder/, tokenizer/, scheduler/): convert it \
         with diffusers' scripts/convert_original_stable_diffusion_to_diffusers.py \
         (`--checkpoint_path FILE --dump_path DIR`, adding `--from_safetensors` for \
         .safetensors files), or use the model's diffusers repo on the Hugging Face hub",
        path.display()
    )]
    SingleFile {
        /// The checkpoint file.
        path: PathBuf,
    },
    /// The model path is a file but not a checkpoint.
    #[error(
        "{} is a file, not a model folder: pass a diffusers model folder (one containing \
         {MODEL_INDEX})",
        path.display()
    )]
    NotADirectory {
        /// The file.
        path: PathBuf,
    },
    /// `model_index.json` is missing.
    #[error(
        "{} not found: the folder is not a diffusers model folder; point at the folder that \
         holds {MODEL_INDEX} and the component sub-folders",
        path.display()
    )]
    MissingModelIndex {
        /// The expected `model_index.json` path.
        path: PathBuf,
    },
    /// `model_index.json` could not be parsed.
    #[error("{}: {message}; fix the file or download the model again", path.display())]
    InvalidModelIndex {
        /// The `model_index.json` path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A component's config file is missing.
    #[error(
        "{} not found: the model folder is incomplete; download the missing config file again",
        path.display()
    )]
    MissingConfig {
        /// The expected config path.
        path: PathBuf,
    },
    /// A component has no weights at all.
    #[error(
        "{} not found (nor its .fp16.safetensors variant): the model folder is incomplete; \
         download the component's safetensors weights",
        path.display()
    )]
    MissingWeights {
        /// The expected weights path.
        path: PathBuf,
    },
    /// A component only has pickle weights.
    #[error(
        "{} is a pickle file and will not be loaded: unpickling can execute arbitrary code. \
         Convert it to safetensors (for example with diffusers' convert_* scripts, or \
         `safetensors.torch.save_file(torch.load(FILE), OUT)` on a machine you trust) and save \
         it as {}",
        path.display(),
        expected.display()
    )]
    Pickle {
        /// The pickle file found.
        path: PathBuf,
        /// Where the safetensors file should go.
        expected: PathBuf,
    },
    /// A component's weights are split into shards.
    #[error(
        "{} describes sharded weights, which beeswax cannot load yet: merge the shards into \
         a single {}",
        index.display(),
        expected.display()
    )]
    Sharded {
        /// The shard index file.
        index: PathBuf,
        /// Where the merged safetensors file should go.
        expected: PathBuf,
    },
    /// A file or folder could not be read.
    #[error("could not read {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The parts of `model_index.json` beeswax uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIndex {
    /// The diffusers pipeline class, e.g. `StableDiffusionPipeline`.
    pub class_name: String,
    /// Components present (listed with a library and class, not `[null, null]`), sorted.
    pub components: Vec<String>,
}

impl ModelIndex {
    /// Whether the pipeline lists `component`.
    pub fn has(&self, component: &str) -> bool {
        self.components.iter().any(|c| c == component)
    }
}

/// The weights of `component`: `<dir>/<component>/<stem>.safetensors`, else the
/// `<stem>.fp16.safetensors` variant. Pickle-only components are refused.
pub fn weights(model_dir: &Path, component: &str, stem: &str) -> Result<PathBuf, ModelFilesError> {
    check_dir(model_dir)?;
    let folder = model_dir.join(component);
    let expected = folder.join(format!("{stem}.safetensors"));
    let fp16 = folder.join(format!("{stem}.fp16.safetensors"));
    if expected.is_file() {
        return Ok(expected);
    }
    if fp16.is_file() {
        return Ok(fp16);
    }
    let index = folder.join(format!("{stem}.safetensors.index.json"));
    if index.is_file() {
        return Err(ModelFilesError::Sharded { index, expected });
    }
    if let Some(path) = find_pickle(&folder)? {
        return Err(ModelFilesError::Pickle { path, expected });
    }
    Err(ModelFilesError::MissingWeights { path: expected })
}

/// The config file `<dir>/<component>/<file_name>`, which must exist.
pub fn config(
    model_dir: &Path,
    component: &str,
    file_name: &str,
) -> Result<PathBuf, ModelFilesError> {
    check_dir(model_dir)?;
    let path = model_dir.join(component).join(file_name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ModelFilesError::MissingConfig { path })
    }
}

/// Reads `<dir>/model_index.json`.
pub fn model_index(model_dir: &Path) -> Result<ModelIndex, ModelFilesError> {
    check_dir(model_dir)?;
    let path = model_dir.join(MODEL_INDEX);
    if !path.is_file() {
        return Err(ModelFilesError::MissingModelIndex { path });
    }
    let text = crate::fs_limits::read_regular_string(&path, crate::fs_limits::TEXT_BYTES)
        .map_err(crate::fs_limits::ReadError::into_io)
        .map_err(|source| ModelFilesError::Io {
            path: path.clone(),
            source,
        })?;
    parse_model_index(&text).map_err(|message| ModelFilesError::InvalidModelIndex { path, message })
}

fn parse_model_index(text: &str) -> Result<ModelIndex, String> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|err| format!("invalid JSON: {err}"))?;
    let object = json
        .as_object()
        .ok_or("expected a JSON object at the top level")?;
    let class_name = object
        .get("_class_name")
        .and_then(|v| v.as_str())
        .ok_or("missing string field `_class_name`")?
        .to_string();
    let mut components: Vec<String> = object
        .iter()
        .filter(|(key, value)| !key.starts_with('_') && is_component(value))
        .map(|(key, _)| key.clone())
        .collect();
    components.sort();
    Ok(ModelIndex {
        class_name,
        components,
    })
}

/// A component entry is `["library", "Class"]`; `[null, null]` marks an absent one.
fn is_component(value: &serde_json::Value) -> bool {
    value
        .as_array()
        .is_some_and(|pair| pair.len() == 2 && pair.iter().all(|v| v.is_string()))
}

/// Checks `dir` is an existing folder, with a helpful error for single-file checkpoints.
fn check_dir(dir: &Path) -> Result<(), ModelFilesError> {
    let path = dir.to_path_buf();
    if dir.is_dir() {
        Ok(())
    } else if !dir.exists() {
        Err(ModelFilesError::MissingDir { path })
    } else if has_extension(dir, &CHECKPOINT_EXTENSIONS) {
        Err(ModelFilesError::SingleFile { path })
    } else {
        Err(ModelFilesError::NotADirectory { path })
    }
}

/// The first (sorted) pickle file in `folder`, if the folder exists.
fn find_pickle(folder: &Path) -> Result<Option<PathBuf>, ModelFilesError> {
    if !folder.is_dir() {
        return Ok(None);
    }
    let io_error = |source| ModelFilesError::Io {
        path: folder.to_path_buf(),
        source,
    };
    let mut pickles = Vec::new();
    for entry in std::fs::read_dir(folder).map_err(io_error)? {
        let path = entry.map_err(io_error)?.path();
        if path.is_file() && has_extension(&path, &PICKLE_EXTENSIONS) {
            pickles.push(path);
        }
    }
    pickles.sort();
    Ok(pickles.into_iter().next())
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| extensions.iter().any(|e| ext.eq_ignore_ascii_case(e)))
}
