//! `[[embedding]]`: textual-inversion embeddings prompts may name.
//!
//! ```toml
//! [[embedding]]
//! name = "owlstyle"                            # the word written in prompts
//! path = "embeddings/owlstyle.safetensors"     # relative to this file's folder; or:
//! # repo = "org/name"
//! # file = "owlstyle.safetensors"
//! # revision = "main"
//! sha256 = "…"                                 # optional, checked when the file is read
//! ```
//!
//! Only safetensors files are read (A1111's `emb_params` / `string_to_param`, SDXL's `clip_l` +
//! `clip_g`, diffusers' `<token>` files); a pickle is refused with the conversion command.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::file_source::{file_source, FileSource, SourceFields};
use super::folder::ManifestFolder;
use super::located::{Located, UniqueNames};
use super::ManifestError;
use crate::hub;

/// Where an embedding file lives.
pub type EmbeddingSource = FileSource;

/// A validated `[[embedding]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingManifest {
    /// The name written in prompts.
    pub name: String,
    /// Where the file is.
    pub source: EmbeddingSource,
    /// Expected SHA-256 (lowercase hex).
    pub sha256: Option<String>,
    /// The manifest it came from.
    pub manifest_path: PathBuf,
    /// The line of its `name`.
    pub line: usize,
}

/// `[[embedding]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmbedding {
    name: Spanned<String>,
    path: Option<Spanned<String>>,
    repo: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
    revision: Option<Spanned<String>>,
    sha256: Option<Spanned<String>>,
}

/// Every `[[embedding]]` of the folder (files in name order), validated; names must be unique
/// across files. The first problem is an error naming its file, line and field.
pub fn embeddings(folder: &ManifestFolder<'_>) -> Result<Vec<EmbeddingManifest>, ManifestError> {
    let mut out = Vec::new();
    let mut names = UniqueNames::new("embedding.name", "embeddings");
    for document in folder.documents() {
        let located = document.located();
        for raw in document.entries::<RawEmbedding>("embedding") {
            let entry = entry(&located, raw?)?;
            names.insert(&entry.name, document.path(), entry.line)?;
            out.push(entry);
        }
    }
    Ok(out)
}

fn entry(located: &Located<'_>, raw: RawEmbedding) -> Result<EmbeddingManifest, ManifestError> {
    let name = raw.name.get_ref().trim();
    let usable = !name.is_empty()
        && !name.chars().any(char::is_whitespace)
        && !name.contains(['(', ')', '[', ']', ':', ',', '|', '\\']);
    if !usable {
        let message = format!(
            "`{}` is not a usable name: it is written in prompts, so use one word without \
             spaces, brackets, `:`, `,`, `|` or `\\`",
            raw.name.get_ref()
        );
        return Err(located.at(&raw.name, "embedding.name", message));
    }
    let source = source(located, &raw)?;
    let file_name = match &source {
        EmbeddingSource::Path(p) => p.to_string_lossy().into_owned(),
        EmbeddingSource::Hub { file, .. } => file.clone(),
    };
    let lower = file_name.to_ascii_lowercase();
    if !lower.ends_with(".safetensors") {
        let field = raw.path.as_ref().or(raw.file.as_ref()).unwrap_or(&raw.name);
        let key = if raw.path.is_some() {
            "embedding.path"
        } else {
            "embedding.file"
        };
        let message = format!(
            "`{file_name}` is not a .safetensors file: beeswax reads embeddings only as \
             safetensors (pickles can run code); convert it once with: {}",
            crate::prompt::PICKLE_CONVERSION.replace("FILE", &file_name)
        );
        return Err(located.at(field, key, message));
    }
    let sha256 = raw
        .sha256
        .as_ref()
        .map(|h| located.sha256(h, "embedding.sha256", &file_name))
        .transpose()?;
    Ok(EmbeddingManifest {
        name: name.to_string(),
        source,
        sha256,
        manifest_path: located.file().to_path_buf(),
        line: located.line_of(&raw.name),
    })
}

/// The `path` or `repo` + `file` of an `[[embedding]]`.
fn source(located: &Located<'_>, raw: &RawEmbedding) -> Result<EmbeddingSource, ManifestError> {
    let fields = SourceFields {
        name: &raw.name,
        path: &raw.path,
        repo: &raw.repo,
        file: &raw.file,
        revision: &raw.revision,
    };
    file_source(located, "embedding", "embeddings", fields)
}

impl EmbeddingManifest {
    /// The catalog entry: the file's path, a hub file fetched into the cache first (only with
    /// `allow_download` when it is not there yet).
    pub fn resolve(
        &self,
        allow_download: bool,
    ) -> Result<crate::prompt::EmbeddingEntry, hub::HubError> {
        let path = match &self.source {
            EmbeddingSource::Path(p) => p.clone(),
            EmbeddingSource::Hub {
                repo,
                file,
                revision,
            } => hub::repo_file(repo, file, revision, allow_download)?,
        };
        Ok(crate::prompt::EmbeddingEntry {
            name: self.name.clone(),
            path,
            sha256: self.sha256.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ManifestFiles;

    fn read(text: &str) -> Result<Vec<EmbeddingManifest>, ManifestError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("e.toml"), text).unwrap();
        let files = ManifestFiles::read(dir.path()).unwrap();
        let folder = files.parse().unwrap();
        embeddings(&folder)
    }

    #[test]
    fn reads_entries_and_names_the_line_and_field_at_fault() {
        let ok = read(
            "[[embedding]]\nname = \"owl\"\npath = \"owl.safetensors\"\n\n[[embedding]]\n\
             name = \"fox\"\nrepo = \"org/emb\"\nfile = \"fox.safetensors\"\n",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert!(
            matches!(&ok[0].source, EmbeddingSource::Path(p) if p.ends_with("owl.safetensors"))
        );
        assert_eq!(ok[1].line, 6);
        let cases = [
            (
                "[[embedding]]\nname = \"owl\"\npath = \"owl.pt\"\n",
                ":3: `embedding.path`",
                "convert it once",
            ),
            (
                "[[embedding]]\nname = \"my owl\"\npath = \"o.safetensors\"\n",
                ":2: `embedding.name`",
                "not a usable name",
            ),
            (
                "[[embedding]]\nname = \"owl\"\n\nsha256 = \"abc\"\npath = \"o.safetensors\"\n",
                ":4: `embedding.sha256`",
                "64 hexadecimal",
            ),
            (
                "[[embedding]]\nname = \"owl\"\nrepo = \"org/x\"\n",
                ":3: `embedding.file`",
                "is required with `repo`",
            ),
            (
                "[[embedding]]\nname = \"owl\"\n",
                ":2: `embedding.path`",
                "is missing",
            ),
            (
                "[[embedding]]\nname = \"owl\"\npath = \"a.safetensors\"\n[[embedding]]\n\
                 name = \"owl\"\npath = \"b.safetensors\"\n",
                "owl",
                "twice",
            ),
        ];
        for (text, place, message) in cases {
            let err = read(text).unwrap_err().to_string();
            assert!(
                err.contains(place) && err.contains(message),
                "{text:?}: {err}"
            );
        }
    }
}
