//! The shipped families' bundled configs: diffusers-layout `config.json` files, scheduler
//! configs and tokenizer settings (`manifests/families/<family>/`, written by
//! scripts/make_bundled_configs.py), plus one shared CLIP BPE vocabulary
//! (`manifests/families/clip-tokenizer/*.gz`). They are embedded in the binary and expanded on
//! first use into a cache folder keyed by their digest, so a single-file checkpoint loads with
//! no `--model-config` and no network.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// One embedded file: its path inside the family folder and its bytes.
type File = (&'static str, &'static [u8]);

macro_rules! bundle {
    ($family:literal: $($file:literal),+ $(,)?) => {
        (
            $family,
            &[$((
                $file,
                include_bytes!(concat!("../../../manifests/families/", $family, "/", $file))
                    as &[u8],
            )),+] as &[File],
        )
    };
}

/// The files of an SD 1.x/2.x family folder.
macro_rules! sd {
    ($family:literal) => {
        bundle!($family: "model_index.json", "scheduler/scheduler_config.json",
            "text_encoder/config.json", "tokenizer/special_tokens_map.json",
            "tokenizer/tokenizer_config.json", "unet/config.json", "vae/config.json")
    };
}

/// The files of an SDXL base-like family folder.
macro_rules! sdxl {
    ($family:literal) => {
        bundle!($family: "model_index.json", "scheduler/scheduler_config.json",
            "text_encoder/config.json", "text_encoder_2/config.json",
            "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
            "tokenizer_2/special_tokens_map.json", "tokenizer_2/tokenizer_config.json",
            "unet/config.json", "vae/config.json")
    };
}

/// The files of a FLUX family folder (no T5 tokenizer: it cannot be bundled).
macro_rules! flux {
    ($family:literal) => {
        bundle!($family: "model_index.json", "scheduler/scheduler_config.json",
            "text_encoder/config.json", "text_encoder_2/config.json",
            "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
            "transformer/config.json", "vae/config.json")
    };
}

/// The bundled folders, by name (a family's `config = "<name>"`).
const BUNDLED: &[(&str, &[File])] = &[
    sd!("sd1"),
    sd!("sd1-inpaint"),
    sd!("sd2"),
    sd!("sd2-v"),
    sd!("sd2-inpaint"),
    sdxl!("sdxl"),
    sdxl!("sdxl-inpaint"),
    bundle!("sdxl-refiner": "model_index.json", "scheduler/scheduler_config.json",
        "text_encoder_2/config.json", "tokenizer_2/special_tokens_map.json",
        "tokenizer_2/tokenizer_config.json", "unet/config.json", "vae/config.json"),
    flux!("flux-dev"),
    flux!("flux-schnell"),
];

/// CLIP's 49408-token vocabulary and its merges, gzipped; written into every bundled
/// `tokenizer*/` folder that has a `tokenizer_config.json`.
const CLIP_VOCAB_GZ: &[u8] =
    include_bytes!("../../../manifests/families/clip-tokenizer/vocab.json.gz");
const CLIP_MERGES_GZ: &[u8] =
    include_bytes!("../../../manifests/families/clip-tokenizer/merges.txt.gz");

/// The names of the bundled config folders.
pub fn names() -> impl Iterator<Item = &'static str> {
    BUNDLED.iter().map(|(name, _)| *name)
}

/// Whether a bundled config folder is called `name`.
pub fn is_bundled(name: &str) -> bool {
    names().any(|n| n == name)
}

/// The embedded files of the bundled folder `name` (paths inside it), for tests and listings.
pub fn files(name: &str) -> Option<&'static [File]> {
    BUNDLED.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The bundled config folder `name` on disk, expanded from the binary on first use into
/// `<cache>/bundled-configs/<digest>/<name>` (`<cache>`: `$BEESWAX_CACHE`, else
/// `$XDG_CACHE_HOME/beeswax`, else `~/.cache/beeswax`, else the temporary folder); `None` when
/// no bundled folder has that name.
pub fn config_dir(name: &str) -> Result<Option<PathBuf>> {
    // A read-only cache (a locked-down service account) falls back to the temporary folder.
    config_dir_in(&cache_root(), name)
        .or_else(|e| config_dir_in(&std::env::temp_dir().join("beeswax"), name).map_err(|_| e))
}

/// [`config_dir`] with the cache folder `cache`.
pub fn config_dir_in(cache: &Path, name: &str) -> Result<Option<PathBuf>> {
    let Some(files) = files(name) else {
        return Ok(None);
    };
    let root = cache.join("bundled-configs").join(digest());
    let dir = root.join(name);
    if dir.is_dir() {
        return Ok(Some(dir));
    }
    expand(&root, name, files).map_err(|(path, source)| Error::Io { path, source })?;
    Ok(Some(dir))
}

/// Writes the folder under a temporary name, then renames it into place (another process
/// expanding the same folder at the same time is harmless).
fn expand(
    root: &Path,
    name: &str,
    files: &[File],
) -> std::result::Result<(), (PathBuf, std::io::Error)> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = root.join(format!(".{name}.{}.{nanos}", std::process::id()));
    let write = |path: PathBuf, bytes: &[u8]| {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| (parent.to_path_buf(), e))?;
        }
        std::fs::write(&path, bytes).map_err(|e| (path, e))
    };
    for (file, bytes) in files {
        write(tmp.join(file), bytes)?;
        if let Some(tokenizer) = file.strip_suffix("/tokenizer_config.json") {
            let (vocab, merges) = clip_vocabulary().map_err(|e| (tmp.join(tokenizer), e))?;
            write(tmp.join(tokenizer).join("vocab.json"), vocab)?;
            write(tmp.join(tokenizer).join("merges.txt"), merges)?;
        }
    }
    let dir = root.join(name);
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(()),
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => Err((dir, e)),
    }
}

/// The CLIP vocab.json and merges.txt, decompressed once.
fn clip_vocabulary() -> std::io::Result<(&'static [u8], &'static [u8])> {
    static TEXT: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    if let Some((v, m)) = TEXT.get() {
        return Ok((v, m));
    }
    let gunzip = |bytes: &[u8]| -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
        Ok(out)
    };
    let text = (gunzip(CLIP_VOCAB_GZ)?, gunzip(CLIP_MERGES_GZ)?);
    let (v, m) = TEXT.get_or_init(|| text);
    Ok((v, m))
}

/// The first 16 hex digits of the SHA-256 of every bundled byte, so a binary with other
/// bundled files never reads a stale expansion.
fn digest() -> &'static str {
    static DIGEST: OnceLock<String> = OnceLock::new();
    DIGEST.get_or_init(|| {
        let mut hasher = Sha256::new();
        for (name, files) in BUNDLED {
            for (file, bytes) in *files {
                hasher.update(name.as_bytes());
                hasher.update(file.as_bytes());
                hasher.update((bytes.len() as u64).to_le_bytes());
                hasher.update(bytes);
            }
        }
        hasher.update(CLIP_VOCAB_GZ);
        hasher.update(CLIP_MERGES_GZ);
        hasher
            .finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

/// Where bundled folders are expanded.
fn cache_root() -> PathBuf {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("BEESWAX_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("beeswax")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("beeswax")))
        .unwrap_or_else(|| std::env::temp_dir().join("beeswax"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Every shipped family names a bundled folder that expands to a complete diffusers layout
    /// whose configs parse, with the full CLIP vocabulary beside each CLIP tokenizer.
    #[test]
    fn bundled_folders_expand_to_complete_layouts() {
        let cache = tempfile::tempdir().unwrap();
        for family in super::super::Families::builtin().iter() {
            let name = family.config.as_deref().unwrap();
            let dir = config_dir_in(cache.path(), name).unwrap().unwrap();
            assert!(dir.starts_with(cache.path()), "{}", dir.display());
            use crate::models::config_file::read_json;
            let config = |part: &str| dir.join(part).join("config.json");
            for te in &family.text_encoders {
                if te.kind == super::super::TextEncoderKind::T5 {
                    read_json::<crate::models::t5::T5Config>(&config(&te.component)).unwrap();
                    continue;
                }
                read_json::<crate::models::clip::ClipTextConfig>(&config(&te.component)).unwrap();
                let tok =
                    crate::tokenizer::ClipTokenizer::from_dir(&dir.join(&te.tokenizer)).unwrap();
                let ids = tok
                    .token_ids("a photograph of an astronaut riding a horse")
                    .unwrap();
                assert_eq!(ids, [320, 8853, 539, 550, 18376, 6765, 320, 4558], "{name}");
            }
            let denoiser = config(&family.denoiser.component);
            match family.architecture {
                super::super::Architecture::Flux => {
                    read_json::<crate::models::flux::FluxConfig>(&denoiser).unwrap();
                }
                _ => {
                    read_json::<crate::models::unet::UNetConfig>(&denoiser).unwrap();
                }
            }
            read_json::<crate::models::vae::VaeConfig>(&config(&family.vae.component)).unwrap();
            crate::schedulers::SchedulerConfig::from_file(
                dir.join("scheduler/scheduler_config.json"),
            )
            .unwrap();
            // A second call finds the expanded folder.
            assert_eq!(config_dir_in(cache.path(), name).unwrap().unwrap(), dir);
        }
        assert!(config_dir_in(cache.path(), "no-such-family")
            .unwrap()
            .is_none());
    }
}
