//! Textual-inversion embeddings: learned token vectors, used by writing the embedding's name in
//! a prompt.
//!
//! Files are read from safetensors only, in every layout found in the wild:
//!
//! | layout | tensors |
//! |---|---|
//! | kohya / sd-scripts | `emb_params` [n, d] |
//! | AUTOMATIC1111 (converted to safetensors) | `string_to_param.*` [n, d] |
//! | diffusers `learned_embeds` | one key, the token (`<cat-toy>`): [n, d] or [d] |
//! | SDXL | `clip_l` [n, 768] and `clip_g` [n, 1280] |
//!
//! As in A1111, any file holding a single tensor is an embedding whatever the key. Pickled
//! `.pt`/`.bin` files are refused (reading them would run code from the file) with the command
//! that converts them. The embedding's name is the file stem for an `--embeddings DIR` folder
//! (A1111's rule) or the name of its `[[embedding]]` manifest entry; its short hash (the
//! `TI hashes` of the PNG parameters) is the first 12 hex digits of the file's SHA-256, as A1111
//! writes it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};

use super::PromptError;
use crate::digest::sha256_hex;

/// The vectors of one embedding.
#[derive(Debug, Clone)]
pub enum EmbeddingVectors {
    /// One text encoder's vectors [n, d].
    Single(Tensor),
    /// SDXL's pair: `clip_l` [n, 768] for the first text encoder, `clip_g` [n, 1280] for the
    /// second.
    Sdxl {
        /// Vectors for CLIP ViT-L.
        clip_l: Tensor,
        /// Vectors for OpenCLIP ViT-bigG.
        clip_g: Tensor,
    },
}

/// Which text encoder an embedding's vectors are wanted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderSlot {
    /// The only text encoder of SD 1.x/2.x.
    Only,
    /// SDXL's first text encoder (CLIP ViT-L, `clip_l`).
    ClipL,
    /// SDXL's second text encoder (OpenCLIP ViT-bigG, `clip_g`).
    ClipG,
}

/// A loaded textual-inversion embedding.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// The name written in prompts.
    pub name: String,
    /// The file it was read from.
    pub path: PathBuf,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
    /// The vectors (f32, CPU).
    pub vectors: EmbeddingVectors,
}

impl Embedding {
    /// Reads an embedding file; `name` is what prompts write. Pickles (`.pt`, `.bin`, `.ckpt`,
    /// `.pth`) are refused with the conversion command.
    pub fn read(name: &str, path: &Path) -> Result<Self, PromptError> {
        refuse_pickle(path)?;
        let bytes = crate::fs_limits::read_regular(path, crate::fs_limits::EMBEDDING_BYTES)
            .map_err(crate::fs_limits::ReadError::into_io)
            .map_err(|e| PromptError::EmbeddingFile {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Self::from_bytes(name, path, &bytes)
    }

    /// Parses the bytes of a safetensors embedding file read from `path`.
    pub fn from_bytes(name: &str, path: &Path, bytes: &[u8]) -> Result<Self, PromptError> {
        let bad = |message: String| PromptError::EmbeddingFile {
            path: path.to_path_buf(),
            message,
        };
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| bad(format!("not a readable safetensors file ({e})")))?;
        let matrix = |key: &str, t: &Tensor| -> Result<Tensor, PromptError> {
            let t = t
                .to_dtype(DType::F32)
                .map_err(|e| bad(format!("`{key}`: {e}")))?;
            match t.rank() {
                1 => t.unsqueeze(0).map_err(|e| bad(e.to_string())),
                2 if t.dim(0).unwrap_or(0) > 0 => Ok(t),
                _ => Err(bad(format!(
                    "`{key}` has shape {:?}; an embedding is [vectors, width] or [width]",
                    t.dims()
                ))),
            }
        };
        let vectors =
            if let (Some(l), Some(g)) = (tensors.get("clip_l"), tensors.get("clip_g")) {
                let (clip_l, clip_g) = (matrix("clip_l", l)?, matrix("clip_g", g)?);
                if clip_l.dim(0).ok() != clip_g.dim(0).ok() {
                    return Err(bad(format!(
                        "`clip_l` has {} vectors but `clip_g` {}: they must match",
                        clip_l.dim(0).unwrap_or(0),
                        clip_g.dim(0).unwrap_or(0)
                    )));
                }
                EmbeddingVectors::Sdxl { clip_l, clip_g }
            } else if let Some(t) = tensors.get("emb_params") {
                EmbeddingVectors::Single(matrix("emb_params", t)?)
            } else if let Some(t) = tensors.get("string_to_param.*") {
                EmbeddingVectors::Single(matrix("string_to_param.*", t)?)
            } else if tensors.len() == 1 {
                let (key, t) = tensors.iter().next().ok_or_else(|| bad("empty".into()))?;
                EmbeddingVectors::Single(matrix(key, t)?)
            } else {
                let mut keys: Vec<&String> = tensors.keys().collect();
                keys.sort();
                return Err(bad(format!(
                "not a textual-inversion embedding: expected `emb_params`, `string_to_param.*`, \
                 `clip_l` + `clip_g`, or a single tensor, found {}",
                keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            )));
            };
        Ok(Self {
            name: name.to_string(),
            path: path.to_path_buf(),
            sha256: sha256_hex(bytes),
            vectors,
        })
    }

    /// How many token positions the embedding takes in a prompt.
    pub fn vector_count(&self) -> usize {
        let t = match &self.vectors {
            EmbeddingVectors::Single(t) => t,
            EmbeddingVectors::Sdxl { clip_g, .. } => clip_g,
        };
        t.dim(0).unwrap_or(0)
    }

    /// A1111's short hash: the first 12 hex digits of the file's SHA-256.
    pub fn short_hash(&self) -> &str {
        &self.sha256[..12.min(self.sha256.len())]
    }

    /// The vectors [n, width] for `slot`, checked against the text encoder's `width`: an
    /// embedding made for another model family is an error naming both widths.
    pub fn vectors_for(&self, slot: EncoderSlot, width: usize) -> Result<&Tensor, PromptError> {
        let t = match (&self.vectors, slot) {
            (EmbeddingVectors::Single(t), EncoderSlot::Only) => t,
            (EmbeddingVectors::Sdxl { clip_l, .. }, EncoderSlot::ClipL) => clip_l,
            (EmbeddingVectors::Sdxl { clip_g, .. }, EncoderSlot::ClipG) => clip_g,
            (EmbeddingVectors::Sdxl { clip_l, clip_g }, EncoderSlot::Only) => {
                return Err(self.width_error(
                    format!(
                        "an SDXL embedding (clip_l {} + clip_g {})",
                        clip_l.dim(1).unwrap_or(0),
                        clip_g.dim(1).unwrap_or(0)
                    ),
                    width,
                ))
            }
            (EmbeddingVectors::Single(t), _) => {
                return Err(self.width_error(
                    format!(
                        "a single-encoder embedding {} wide, not an SDXL clip_l/clip_g pair",
                        t.dim(1).unwrap_or(0)
                    ),
                    width,
                ))
            }
        };
        let got = t.dim(1).unwrap_or(0);
        if got != width {
            return Err(self.width_error(format!("{got} wide"), width));
        }
        Ok(t)
    }

    fn width_error(&self, what: String, width: usize) -> PromptError {
        PromptError::EmbeddingWidth {
            name: self.name.clone(),
            path: self.path.clone(),
            what,
            width,
        }
    }
}

fn refuse_pickle(path: &Path) -> Result<(), PromptError> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if matches!(ext.as_str(), "pt" | "bin" | "ckpt" | "pth") {
        return Err(PromptError::PickledEmbedding {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Where an embedding comes from (an `[[embedding]]` entry or a file of an `--embeddings`
/// folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingEntry {
    /// The name written in prompts.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// Expected SHA-256 (hex), checked when the file is read.
    pub sha256: Option<String>,
}

/// The embeddings a job may use, read on first use and cached.
#[derive(Debug, Default)]
pub struct EmbeddingCatalog {
    entries: Vec<EmbeddingEntry>,
    cache: Mutex<HashMap<String, Arc<Embedding>>>,
}

/// File extensions an embeddings folder is scanned for (pickles included, so that using one
/// gives the conversion hint rather than "unknown").
const EMBEDDING_EXTENSIONS: [&str; 5] = ["safetensors", "pt", "bin", "ckpt", "pth"];

impl EmbeddingCatalog {
    /// A catalog of `(name, path, sha256)` entries (the `[[embedding]]` manifest entries,
    /// paths already resolved). Names must be unique.
    pub fn from_entries(entries: Vec<EmbeddingEntry>) -> Result<Self, PromptError> {
        let mut seen = HashMap::new();
        for entry in &entries {
            if let Some(first) = seen.insert(entry.name.clone(), entry.path.clone()) {
                return Err(PromptError::DuplicateEmbedding {
                    name: entry.name.clone(),
                    first,
                    second: entry.path.clone(),
                });
            }
        }
        Ok(Self {
            entries,
            cache: Mutex::default(),
        })
    }

    /// Every embedding file of `dir` and its subfolders (A1111's `--embeddings-dir`): the name is
    /// the file stem. When two files share a stem, the first in path order wins.
    pub fn from_dir(dir: &Path) -> Result<Self, PromptError> {
        let mut files = Vec::new();
        collect_files(dir, &mut files)?;
        files.sort();
        let mut entries: Vec<EmbeddingEntry> = Vec::new();
        for path in files {
            let Some(name) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
                continue;
            };
            if !entries.iter().any(|e| e.name == name) {
                entries.push(EmbeddingEntry {
                    name,
                    path,
                    sha256: None,
                });
            }
        }
        Self::from_entries(entries)
    }

    /// This catalog followed by `other`'s entries whose names it does not have.
    pub fn merged(mut self, other: EmbeddingCatalog) -> Self {
        for entry in other.entries {
            if self.entry(&entry.name).is_none() {
                self.entries.push(entry);
            }
        }
        self
    }

    /// The entries, in order (what `/sdapi/v1/embeddings` lists).
    pub fn entries(&self) -> &[EmbeddingEntry] {
        &self.entries
    }

    /// The entry called `name`.
    pub fn entry(&self, name: &str) -> Option<&EmbeddingEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Reads (or takes from the cache) the embedding called `name`, checking a declared hash.
    pub fn load(&self, name: &str) -> Result<Arc<Embedding>, PromptError> {
        let entry = self
            .entry(name)
            .ok_or_else(|| PromptError::UnknownEmbedding {
                name: name.to_string(),
                known: self.entries.iter().map(|e| e.name.clone()).collect(),
            })?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = cache.get(name) {
            return Ok(e.clone());
        }
        refuse_pickle(&entry.path)?;
        let bytes = crate::fs_limits::read_regular(&entry.path, crate::fs_limits::EMBEDDING_BYTES)
            .map_err(crate::fs_limits::ReadError::into_io)
            .map_err(|e| PromptError::EmbeddingFile {
                path: entry.path.clone(),
                message: e.to_string(),
            })?;
        let embedding = Embedding::from_bytes(name, &entry.path, &bytes)?;
        if let Some(expected) = &entry.sha256 {
            if !embedding.sha256.eq_ignore_ascii_case(expected) {
                return Err(PromptError::EmbeddingHash {
                    name: name.to_string(),
                    path: entry.path.clone(),
                    expected: expected.clone(),
                    actual: embedding.sha256.clone(),
                });
            }
        }
        let embedding = Arc::new(embedding);
        cache.insert(name.to_string(), embedding.clone());
        Ok(embedding)
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PromptError> {
    let read = std::fs::read_dir(dir).map_err(|e| PromptError::EmbeddingFile {
        path: dir.to_path_buf(),
        message: format!("cannot read the embeddings folder: {e}"),
    })?;
    for item in read.flatten() {
        let path = item.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if path.extension().is_some_and(|e| {
            let e = e.to_string_lossy().to_ascii_lowercase();
            EMBEDDING_EXTENSIONS.contains(&e.as_str())
        }) && std::fs::metadata(&path).is_ok_and(|m| m.len() > 0)
        {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, tensors: &[(&str, Tensor)]) -> PathBuf {
        let path = dir.join(name);
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, t)| (k.to_string(), t.clone()))
            .collect();
        candle_core::safetensors::save(&map, &path).unwrap();
        path
    }

    fn randn(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn reads_every_layout() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cases = [
            ("kohya.safetensors", vec![("emb_params", randn(&[3, 8]))], 3),
            (
                "a1111.safetensors",
                vec![("string_to_param.*", randn(&[2, 8]))],
                2,
            ),
            ("diffusers.safetensors", vec![("<cat-toy>", randn(&[8]))], 1),
        ];
        for (file, tensors, n) in cases {
            let e = Embedding::read("x", &write(d, file, &tensors)).unwrap();
            assert_eq!(e.vector_count(), n, "{file}");
            assert_eq!(e.vectors_for(EncoderSlot::Only, 8).unwrap().dims(), [n, 8]);
            assert_eq!(e.sha256.len(), 64);
            assert_eq!(e.short_hash(), &e.sha256[..12]);
        }
        let sdxl = write(
            d,
            "xl.safetensors",
            &[("clip_l", randn(&[2, 8])), ("clip_g", randn(&[2, 12]))],
        );
        let e = Embedding::read("xl", &sdxl).unwrap();
        assert_eq!(e.vectors_for(EncoderSlot::ClipL, 8).unwrap().dims(), [2, 8]);
        assert_eq!(
            e.vectors_for(EncoderSlot::ClipG, 12).unwrap().dims(),
            [2, 12]
        );
        let err = e.vectors_for(EncoderSlot::Only, 8).unwrap_err().to_string();
        assert!(
            err.contains("clip_l 8 + clip_g 12") && err.contains("8 wide"),
            "{err}"
        );
    }

    #[test]
    fn refuses_pickles_wrong_widths_and_unknown_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let pt = dir.path().join("old.pt");
        std::fs::write(&pt, b"\x80\x02pickle").unwrap();
        let err = Embedding::read("old", &pt).unwrap_err().to_string();
        assert!(
            err.contains("old.pt") && err.contains("safetensors"),
            "{err}"
        );
        let path = write(
            dir.path(),
            "w.safetensors",
            &[("emb_params", randn(&[1, 768]))],
        );
        let err = Embedding::read("w", &path)
            .unwrap()
            .vectors_for(EncoderSlot::Only, 1024)
            .unwrap_err()
            .to_string();
        assert!(err.contains("768") && err.contains("1024"), "{err}");
        let path = write(
            dir.path(),
            "two.safetensors",
            &[("a", randn(&[1, 4])), ("b", randn(&[1, 4]))],
        );
        let err = Embedding::read("two", &path).unwrap_err().to_string();
        assert!(err.contains("`a`, `b`"), "{err}");
    }

    #[test]
    fn catalog_from_folder_and_entries() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let a = write(
            dir.path(),
            "alpha.safetensors",
            &[("emb_params", randn(&[1, 4]))],
        );
        write(
            &dir.path().join("sub"),
            "beta.safetensors",
            &[("x", randn(&[2, 4]))],
        );
        std::fs::write(dir.path().join("gamma.pt"), b"pickle").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"hi").unwrap();
        let catalog = EmbeddingCatalog::from_dir(dir.path()).unwrap();
        let names: Vec<&str> = catalog.entries().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["alpha", "gamma", "beta"]);
        assert_eq!(catalog.load("beta").unwrap().vector_count(), 2);
        let err = catalog.load("gamma").unwrap_err().to_string();
        assert!(err.contains("gamma.pt"), "{err}");
        let err = catalog.load("delta").unwrap_err().to_string();
        assert!(err.contains("delta") && err.contains("alpha"), "{err}");

        let entry = |sha: &str| EmbeddingEntry {
            name: "alpha".into(),
            path: a.clone(),
            sha256: Some(sha.into()),
        };
        let good = Embedding::read("alpha", &a).unwrap().sha256;
        let catalog = EmbeddingCatalog::from_entries(vec![entry(&good.to_uppercase())]).unwrap();
        assert!(catalog.load("alpha").is_ok());
        let catalog = EmbeddingCatalog::from_entries(vec![entry("00ff")]).unwrap();
        let err = catalog.load("alpha").unwrap_err().to_string();
        assert!(err.contains("00ff") && err.contains(&good), "{err}");
        assert!(EmbeddingCatalog::from_entries(vec![entry("1"), entry("2")]).is_err());
    }
}
