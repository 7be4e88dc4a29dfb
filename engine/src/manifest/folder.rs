//! The manifest folder, read once per command: [`ManifestFiles`] lists and reads its `*.toml`
//! files, and parsing them gives a [`ManifestFolder`] of located [`Document`]s that each
//! section's owner reads (`[pack]` by [`super::pack`], `[[lora]]` by the LoRA catalog, ...).
//!
//! A document's table borrows the text it was parsed from (`toml::de::DeTable` keeps strings
//! and numbers as slices of the input), so the texts ([`ManifestFiles`]) outlive the parsed
//! folder: `let files = ManifestFiles::read(dir)?; let folder = files.parse()?;`.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::located::{self, Located};
use super::{sections, ManifestError};

/// One `*.toml` file of the folder, as read.
#[derive(Debug)]
struct SourceFile {
    path: PathBuf,
    text: std::io::Result<String>,
}

/// The `*.toml` files directly inside a manifest folder (sorted by name), read once.
#[derive(Debug)]
pub struct ManifestFiles {
    dir: PathBuf,
    files: Vec<SourceFile>,
}

impl ManifestFiles {
    /// Lists and reads the `*.toml` files of `dir`. A file that cannot be read is reported when
    /// the files are parsed; a missing or unreadable folder is an error here.
    pub fn read(dir: &Path) -> Result<Self, ManifestError> {
        if !dir.is_dir() {
            return Err(ManifestError::DirMissing {
                dir: dir.to_path_buf(),
            });
        }
        let io_error = |source| ManifestError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_error)? {
            let path = entry.map_err(io_error)?.path();
            if path.extension().is_some_and(|ext| ext == "toml") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        let files = paths
            .into_iter()
            .map(|path| SourceFile {
                text: crate::fs_limits::read_regular_string(&path, crate::fs_limits::TEXT_BYTES)
                    .map_err(crate::fs_limits::ReadError::into_io),
                path,
            })
            .collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many `*.toml` files the folder holds.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the folder holds no `*.toml` file.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Parses every file once; the first file that cannot be read or parsed is an error.
    pub fn parse(&self) -> Result<ManifestFolder<'_>, ManifestError> {
        let (folder, problems) = self.parse_all();
        match problems.into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(folder),
        }
    }

    /// Parses every file once, leaving out the files that cannot be read or parsed and
    /// returning their problems (for `beeswax check`, which lists them all).
    pub fn parse_all(&self) -> (ManifestFolder<'_>, Vec<ManifestError>) {
        let mut documents = Vec::new();
        let mut problems = Vec::new();
        for file in &self.files {
            let parsed = match &file.text {
                Ok(text) => Document::parse(&file.path, text),
                Err(e) => Err(ManifestError::Io {
                    path: file.path.clone(),
                    source: std::io::Error::new(e.kind(), e.to_string()),
                }),
            };
            match parsed {
                Ok(document) => documents.push(document),
                Err(problem) => problems.push(problem),
            }
        }
        let folder = ManifestFolder {
            dir: &self.dir,
            documents,
        };
        (folder, problems)
    }
}

/// A parsed manifest folder: what every section's owner reads.
#[derive(Debug)]
pub struct ManifestFolder<'a> {
    dir: &'a Path,
    documents: Vec<Document<'a>>,
}

impl<'a> ManifestFolder<'a> {
    /// A folder of already parsed documents (tests, or manifests that are not files).
    pub fn from_documents(dir: &'a Path, documents: Vec<Document<'a>>) -> Self {
        Self { dir, documents }
    }

    /// The folder the documents come from.
    pub fn dir(&self) -> &'a Path {
        self.dir
    }

    /// The documents, in file name order.
    pub fn documents(&self) -> &[Document<'a>] {
        &self.documents
    }
}

/// One manifest file, parsed once: its path, its text and its table with byte spans.
#[derive(Debug)]
pub struct Document<'a> {
    path: &'a Path,
    text: &'a str,
    table: Spanned<DeTable<'a>>,
}

impl<'a> Document<'a> {
    /// Parses the manifest `text` read from `path`, refusing invalid TOML and top-level tables
    /// that no section owns.
    pub fn parse(path: &'a Path, text: &'a str) -> Result<Self, ManifestError> {
        let table = DeTable::parse(text).map_err(|err| ManifestError::Syntax {
            file: path.to_path_buf(),
            line: located::line(text, err.span().map_or(0, |span| span.start)),
            message: err.message().trim().to_string(),
        })?;
        let document = Self { path, text, table };
        document.check_keys()?;
        Ok(document)
    }

    /// The file.
    pub fn path(&self) -> &'a Path {
        self.path
    }

    /// The file's text.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The error helper of this file.
    pub fn located(&self) -> Located<'_> {
        Located::new(self.path, self.text, self.table.get_ref())
    }

    /// The value of top-level key `key`, if the file has one.
    pub fn value(&self, key: &str) -> Option<&Spanned<DeValue<'a>>> {
        let table = self.table.get_ref();
        table
            .iter()
            .find_map(|(k, v)| (k.get_ref() == key).then_some(v))
    }

    /// Deserializes the `[key]` table into the owner's type `T` (spans intact); `None` if the
    /// file has none.
    pub fn table<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, ManifestError> {
        let Some(value) = self.value(key) else {
            return Ok(None);
        };
        T::deserialize(ValueDeserializer::from(value.clone()))
            .map(Some)
            .map_err(|err| self.located().serde_error(key, &err))
    }

    /// Deserializes each `[[key]]` table into `T`, in file order; each fails on its own, so
    /// one bad entry does not hide the others.
    pub fn entries<T: DeserializeOwned>(&self, key: &str) -> Vec<Result<T, ManifestError>> {
        let Some(value) = self.value(key) else {
            return Vec::new();
        };
        let located = self.located();
        match value.get_ref() {
            DeValue::Array(items) => items
                .iter()
                .map(|item| {
                    T::deserialize(ValueDeserializer::from(item.clone()))
                        .map_err(|err| located.serde_error(key, &err))
                })
                .collect(),
            other => {
                let header = sections::find(key).map_or(format!("[[{key}]]"), |s| s.header());
                let message = format!(
                    "has the wrong type: expected {header} tables, found {}; write each entry \
                     as a {header} table",
                    other.type_str()
                );
                vec![Err(located.at(value, key, message))]
            }
        }
    }

    /// Refuses the first top-level key (in the file's order) that no section owns.
    fn check_keys(&self) -> Result<(), ManifestError> {
        let unknown = self
            .table
            .get_ref()
            .keys()
            .filter(|key| sections::find(key.get_ref()).is_none())
            .min_by_key(|key| key.span().start);
        let Some(key) = unknown else {
            return Ok(());
        };
        let message = format!(
            "is not allowed at the top level: manifests hold {} tables; remove it or fix its \
             spelling",
            sections::headers()
        );
        Err(self.located().at(key, key.get_ref(), message))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Thing {
        name: Spanned<String>,
        #[allow(dead_code)]
        size: Option<i64>,
    }

    fn doc(text: &str) -> Result<Document<'_>, ManifestError> {
        Document::parse(Path::new("/m/a.toml"), text)
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = doc("[pack]\nname = \"x\nfamily = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/m/a.toml:2: invalid TOML"), "{err}");
    }

    #[test]
    fn unknown_top_level_keys_name_every_section() {
        let err = doc("[pack]\nname = \"x\"\n\n[[widget]]\nname = \"y\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/m/a.toml:4: `widget` is not allowed"),
            "{err}"
        );
        assert!(
            err.contains(
                "[pack], [[pipeline]], [[lora]], [[lora_set]], [[plugin]], [[embedding]] and \
                 [family]"
            ),
            "{err}"
        );
    }

    #[test]
    fn entries_keep_spans_and_fail_one_by_one() {
        let text = "[[lora]]\nname = \"a\"\n\n[[lora]]\nname = \"b\"\nsize = \"big\"\n\n\
                    [[lora]]\nname = \"c\"\n";
        let d = doc(text).unwrap();
        let entries = d.entries::<Thing>("lora");
        assert_eq!(entries.len(), 3);
        let first = entries[0].as_ref().unwrap();
        assert_eq!(d.located().line_of(&first.name), 2);
        let err = entries[1].as_ref().unwrap_err().to_string();
        assert!(
            err.starts_with("/m/a.toml:6: `lora.size` has the wrong type"),
            "{err}"
        );
        assert!(err.contains("expected a whole number"), "{err}");
        assert_eq!(entries[2].as_ref().unwrap().name.get_ref(), "c");
        assert!(d.entries::<Thing>("plugin").is_empty());
    }

    #[test]
    fn a_field_missing_from_a_later_entry_names_its_section() {
        let d = doc("[[lora]]\nname = \"a\"\n\n[[lora]]\nsize = 3\n").unwrap();
        let err = d.entries::<Thing>("lora")[1]
            .as_ref()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "/m/a.toml:4: `lora.name` is required: add `name = ...` to the \
                             [[lora]] table"
            ),
            "{err}"
        );
    }

    #[test]
    fn tables_name_missing_and_unknown_fields() {
        let d = doc("\n[pack]\nsize = 3\n").unwrap();
        let err = d.table::<Thing>("pack").unwrap_err().to_string();
        assert!(
            err.starts_with("/m/a.toml:2: `pack.name` is required"),
            "{err}"
        );
        assert!(err.contains("to the [pack] table"), "{err}");
        let d = doc("[pack]\nname = \"x\"\ncolour = 1\n").unwrap();
        let err = d.table::<Thing>("pack").unwrap_err().to_string();
        assert!(
            err.starts_with("/m/a.toml:3: `pack.colour` is not a known field"),
            "{err}"
        );
        let d = doc("pipeline = 3\n").unwrap();
        let err = d.entries::<Thing>("pipeline")[0]
            .as_ref()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":1: `pipeline` has the wrong type: expected [[pipeline]]"),
            "{err}"
        );
    }
}
