//! Diffusers models from the Hugging Face hub, found in (and optionally downloaded to) the
//! local Hugging Face cache.
//!
//! The cache has the layout the Python `huggingface_hub` library uses:
//! `models--org--name/refs/<revision>` holds a commit hash, and
//! `models--org--name/snapshots/<commit>/` holds the files. By default nothing is downloaded;
//! with `allow_download` the model's configs, tokenizer files and `.safetensors` weights are
//! fetched (never pickle weights).

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::model_files::{self, ModelFilesError, MODEL_INDEX, PICKLE_EXTENSIONS};

/// Components beeswax never runs, so they are not downloaded.
pub const SKIPPED_COMPONENTS: [&str; 2] = ["safety_checker", "feature_extractor"];

/// Errors finding or downloading a hub model.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The model is not in the local cache and downloading was not allowed.
    #[error(
        "model `{repo}` at revision `{revision}` is not in the Hugging Face cache {}: pass \
         `--allow-download` to fetch it, or run `huggingface-cli download {repo} --revision \
         {revision}` (set HF_HUB_CACHE or HF_HOME if your cache is elsewhere)",
        cache.display()
    )]
    NotCached {
        /// The repo id.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The cache searched.
        cache: PathBuf,
    },
    /// The repo id is malformed.
    #[error("`{repo}` is not a Hugging Face repo id: use `name` or `org/name`, e.g. `org/model`")]
    InvalidRepo {
        /// The repo id given.
        repo: String,
    },
    /// The revision is malformed.
    #[error("`{revision}` is not a valid revision: use a branch, tag or commit hash, e.g. `main`")]
    InvalidRevision {
        /// The revision given.
        revision: String,
    },
    /// The hub could not be queried.
    #[error(
        "could not query the Hugging Face hub for `{repo}` at revision `{revision}`: {source}; \
         check the repo id, the revision and your network, and for gated or private models \
         run `huggingface-cli login` or set HF_TOKEN"
    )]
    Api {
        /// The repo id.
        repo: String,
        /// The revision.
        revision: String,
        /// hf-hub's error.
        source: Box<ApiError>,
    },
    /// A file could not be downloaded.
    #[error(
        "could not download `{file}` from `{repo}`: {source}; check your network and retry \
         (completed files are kept in the cache)"
    )]
    Download {
        /// The repo id.
        repo: String,
        /// The file within the repo.
        file: String,
        /// hf-hub's error.
        source: Box<ApiError>,
    },
    /// The repo is not in diffusers format.
    #[error(
        "`{repo}` at revision `{revision}` has no {MODEL_INDEX}, so it is not a diffusers \
         model: use the model's diffusers repo"
    )]
    NotDiffusers {
        /// The repo id.
        repo: String,
        /// The revision.
        revision: String,
    },
    /// A component is only published as pickle weights.
    #[error(
        "`{repo}` publishes no .safetensors weights for `{component}`, only {file}, which \
         beeswax will not download or unpickle (it can execute arbitrary code): use a repo \
         with safetensors weights, or convert the file to safetensors yourself"
    )]
    PickleOnly {
        /// The repo id.
        repo: String,
        /// The component folder.
        component: String,
        /// The pickle file in the repo.
        file: String,
    },
    /// The downloaded model folder is unusable.
    #[error(transparent)]
    ModelFiles(#[from] ModelFilesError),
    /// The cache could not be written.
    #[error("could not write {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The Hugging Face cache: `HF_HUB_CACHE` if set, else `$HF_HOME/hub`, else hf-hub's default
/// (`~/.cache/huggingface/hub`).
pub fn cache_dir() -> PathBuf {
    let var = |name| std::env::var_os(name).filter(|value| !value.is_empty());
    if let Some(dir) = var("HF_HUB_CACHE") {
        PathBuf::from(dir)
    } else if let Some(home) = var("HF_HOME") {
        PathBuf::from(home).join("hub")
    } else {
        Cache::default().path().clone()
    }
}

/// The snapshot folder of diffusers model `repo` at `revision` in the [`cache_dir`].
///
/// Without `allow_download` only the cache is searched.
pub fn resolve(repo: &str, revision: &str, allow_download: bool) -> Result<PathBuf, HubError> {
    resolve_in(&cache_dir(), repo, revision, allow_download)
}

/// Like [`resolve`], with the cache folder `cache` given.
///
/// A snapshot already in the cache with every component's folder is used as is; otherwise,
/// with `allow_download`, the missing files are fetched.
pub fn resolve_in(
    cache: &Path,
    repo: &str,
    revision: &str,
    allow_download: bool,
) -> Result<PathBuf, HubError> {
    check_ids(repo, revision)?;
    let cached = cached_snapshot(cache, repo, revision);
    match cached {
        Some(snapshot) if !allow_download || is_complete(&snapshot) => Ok(snapshot),
        _ if allow_download => download(cache, repo, revision),
        _ => Err(HubError::NotCached {
            repo: repo.to_string(),
            revision: revision.to_string(),
            cache: cache.to_path_buf(),
        }),
    }
}

/// A file of a hub repo from the local cache, downloaded if allowed (LoRAs, embeddings).
pub fn repo_file(
    repo: &str,
    file: &str,
    revision: &str,
    allow_download: bool,
) -> std::result::Result<PathBuf, HubError> {
    let cache = Cache::new(cache_dir());
    let r = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
    if let Some(path) = cache.repo(r.clone()).get(file) {
        return Ok(path);
    }
    if !allow_download {
        return Err(HubError::NotCached {
            repo: repo.to_string(),
            revision: revision.to_string(),
            cache: cache.path().clone(),
        });
    }
    let mut builder = ApiBuilder::from_cache(cache);
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(token));
    }
    let download = |source| HubError::Download {
        repo: repo.to_string(),
        file: file.to_string(),
        source: Box::new(source),
    };
    builder
        .build()
        .map_err(download)?
        .repo(r)
        .get(file)
        .map_err(download)
}

/// Whether `repo` is a well-formed Hugging Face repo id: `name` or `org/name`.
pub fn is_repo_id(repo: &str) -> bool {
    let parts: Vec<&str> = repo.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|part| {
            !part.is_empty()
                && !matches!(*part, "." | "..")
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// Whether `revision` is a well-formed branch, tag or commit: branches may contain `/` (e.g.
/// `refs/pr/1`), but the revision must stay inside the cache folder (no `.` or `..` part, no
/// empty part, no backslash).
pub fn is_revision(revision: &str) -> bool {
    !revision.is_empty()
        && !revision.contains('\\')
        && revision
            .split('/')
            .all(|part| !part.is_empty() && !matches!(part, "." | ".."))
}

fn check_ids(repo: &str, revision: &str) -> Result<(), HubError> {
    if !is_repo_id(repo) {
        return Err(HubError::InvalidRepo {
            repo: repo.to_string(),
        });
    }
    if !is_revision(revision) {
        return Err(HubError::InvalidRevision {
            revision: revision.to_string(),
        });
    }
    Ok(())
}

/// The cached snapshot holding `model_index.json`, found through `refs/<revision>`, or
/// directly when `revision` is a commit hash.
fn cached_snapshot(cache: &Path, repo: &str, revision: &str) -> Option<PathBuf> {
    let cache = Cache::new(cache.to_path_buf());
    let model = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
    if let Some(index) = cache.repo(model.clone()).get(MODEL_INDEX) {
        return index.parent().map(Path::to_path_buf);
    }
    // hf-hub reads the ref verbatim; tolerate a trailing newline, and commit-hash revisions.
    let repo_dir = cache.path().join(model.folder_name());
    let commit = match std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
        Ok(text) => text.trim().to_string(),
        Err(_) if is_commit_hash(revision) => revision.to_string(),
        Err(_) => return None,
    };
    let snapshot = repo_dir.join("snapshots").join(commit);
    snapshot.join(MODEL_INDEX).is_file().then_some(snapshot)
}

/// Every snapshot folder of `repo` in the cache `cache`, whatever files it holds (a repo that
/// is not a diffusers model, e.g. a tiny autoencoder): `main`'s first, then the others by name.
pub fn cached_snapshots(cache: &Path, repo: &str) -> Vec<PathBuf> {
    let model = Repo::new(repo.to_string(), RepoType::Model);
    let repo_dir = cache.join(model.folder_name());
    let main = std::fs::read_to_string(repo_dir.join("refs").join(crate::defaults::HUB_REVISION))
        .ok()
        .map(|commit| repo_dir.join("snapshots").join(commit.trim()));
    let mut others: Vec<PathBuf> = std::fs::read_dir(repo_dir.join("snapshots"))
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    others.sort();
    let mut all: Vec<PathBuf> = main.into_iter().filter(|m| m.is_dir()).collect();
    for dir in others {
        if dir.is_dir() && !all.contains(&dir) {
            all.push(dir);
        }
    }
    all
}

fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

/// Whether every component beeswax uses has its folder, with weights beside any `config.json`.
fn is_complete(snapshot: &Path) -> bool {
    let Ok(index) = model_files::model_index(snapshot) else {
        return false;
    };
    index
        .components
        .iter()
        .filter(|c| !SKIPPED_COMPONENTS.contains(&c.as_str()))
        .all(|component| {
            let folder = snapshot.join(component);
            let has_weights = std::fs::read_dir(&folder).is_ok_and(|entries| {
                entries
                    .flatten()
                    .any(|e| e.path().extension().is_some_and(|ext| ext == "safetensors"))
            });
            folder.is_dir() && (!folder.join("config.json").exists() || has_weights)
        })
}

/// Downloads the files beeswax needs and returns the snapshot folder.
fn download(cache: &Path, repo: &str, revision: &str) -> Result<PathBuf, HubError> {
    let api_error = |source| HubError::Api {
        repo: repo.to_string(),
        revision: revision.to_string(),
        source: Box::new(source),
    };
    let mut builder = ApiBuilder::from_cache(Cache::new(cache.to_path_buf()));
    if let Some(endpoint) = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()) {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(token));
    }
    let api = builder.build().map_err(api_error)?;
    let model = |rev: &str| Repo::with_revision(repo.to_string(), RepoType::Model, rev.into());
    let info = api.repo(model(revision)).info().map_err(api_error)?;
    let listing: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    if !listing.iter().any(|f| f == MODEL_INDEX) {
        return Err(HubError::NotDiffusers {
            repo: repo.to_string(),
            revision: revision.to_string(),
        });
    }
    // Fetch everything at the resolved commit so all files land in one snapshot.
    let pinned = api.repo(model(&info.sha));
    let index_path = fetch(&pinned, repo, MODEL_INDEX)?;
    let snapshot = index_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let index = model_files::model_index(&snapshot)?;
    for file in files_to_fetch(repo, &listing, &index.components)? {
        fetch(&pinned, repo, &file)?;
    }
    // Point the requested revision at the commit, so later offline runs find it.
    let cache = Cache::new(cache.to_path_buf());
    let refs = cache
        .path()
        .join(model(revision).folder_name())
        .join("refs");
    cache
        .repo(model(revision))
        .create_ref(&info.sha)
        .map_err(|source| HubError::Io {
            path: refs.join(revision),
            source,
        })?;
    Ok(snapshot)
}

fn fetch(api: &ApiRepo, repo: &str, file: &str) -> Result<PathBuf, HubError> {
    api.get(file).map_err(|source| HubError::Download {
        repo: repo.to_string(),
        file: file.to_string(),
        source: Box::new(source),
    })
}

/// The repo files to fetch for `components`: each component folder's JSON and text files
/// (configs, tokenizer) and its `.safetensors` weights, preferring full precision and taking
/// `*.fp16.safetensors` only when no full-precision file is listed.
fn files_to_fetch(
    repo: &str,
    listing: &[String],
    components: &[String],
) -> Result<Vec<String>, HubError> {
    let mut files = Vec::new();
    for component in components {
        if SKIPPED_COMPONENTS.contains(&component.as_str()) {
            continue;
        }
        let prefix = format!("{component}/");
        let in_folder: Vec<&String> = listing
            .iter()
            .filter(|f| {
                f.strip_prefix(&prefix)
                    .is_some_and(|name| !name.contains('/'))
            })
            .collect();
        let small = in_folder
            .iter()
            .filter(|f| (f.ends_with(".json") || f.ends_with(".txt")) && !f.contains(".bin."));
        files.extend(small.map(|f| f.to_string()));
        let plain: Vec<&String> = weights_of(&in_folder, Precision::Full);
        let chosen = if plain.is_empty() {
            weights_of(&in_folder, Precision::Fp16)
        } else {
            plain
        };
        if chosen.is_empty() {
            let pickle = in_folder.iter().find(|f| {
                Path::new(f.as_str())
                    .extension()
                    .is_some_and(|ext| PICKLE_EXTENSIONS.iter().any(|p| ext == *p))
            });
            if let Some(pickle) = pickle {
                return Err(HubError::PickleOnly {
                    repo: repo.to_string(),
                    component: component.clone(),
                    file: pickle.to_string(),
                });
            }
        }
        files.extend(chosen.into_iter().cloned());
    }
    Ok(files)
}

#[derive(PartialEq)]
enum Precision {
    Full,
    Fp16,
    Other,
}

/// The `.safetensors` files of `precision`: `name.safetensors` (or shards
/// `name-00001-of-00002.safetensors`) is full precision, `name.fp16.safetensors` fp16, and
/// other variants (`.non_ema`, ...) are never used.
fn weights_of<'a>(files: &[&'a String], precision: Precision) -> Vec<&'a String> {
    let classify = |file: &str| {
        let name = file.rsplit('/').next().unwrap_or(file);
        let stem = name.strip_suffix(".safetensors")?;
        Some(match stem.split_once('.') {
            None => Precision::Full,
            Some((_, variant)) if variant.starts_with("fp16") => Precision::Fp16,
            Some(_) => Precision::Other,
        })
    };
    files
        .iter()
        .filter(|f| classify(f.as_str()).is_some_and(|p| p == precision))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(files: &[&str]) -> Vec<String> {
        files.iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn picks_full_precision_safetensors_and_configs() {
        let listing = names(&[
            "model_index.json",
            "v1-5-pruned.safetensors",
            "unet/config.json",
            "unet/diffusion_pytorch_model.bin",
            "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/diffusion_pytorch_model.non_ema.safetensors",
            "vae/config.json",
            "vae/diffusion_pytorch_model.fp16.safetensors",
            "tokenizer/merges.txt",
            "tokenizer/vocab.json",
            "text_encoder/pytorch_model.bin.index.json",
            "safety_checker/model.safetensors",
        ]);
        let components = names(&["safety_checker", "text_encoder", "tokenizer", "unet", "vae"]);
        let files = files_to_fetch("org/name", &listing, &components).unwrap();
        assert_eq!(
            files,
            names(&[
                "tokenizer/merges.txt",
                "tokenizer/vocab.json",
                "unet/config.json",
                "unet/diffusion_pytorch_model.safetensors",
                "vae/config.json",
                "vae/diffusion_pytorch_model.fp16.safetensors",
            ])
        );
    }

    #[test]
    fn refuses_pickle_only_components() {
        let listing = names(&["unet/config.json", "unet/diffusion_pytorch_model.bin"]);
        let err = files_to_fetch("org/name", &listing, &names(&["unet"])).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("unet/diffusion_pytorch_model.bin"),
            "{message}"
        );
        assert!(message.contains("arbitrary code"), "{message}");
    }
}
