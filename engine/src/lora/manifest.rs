//! Reading `[[lora]]` and `[[lora_set]]` manifest tables (the syntax is in [`super::catalog`]):
//! types are checked with the pack manifests ([`crate::manifest`]); names, sources, weights,
//! hashes and set members here, with errors naming the file, line and field.

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::catalog::{LoraCatalog, LoraEntry, LoraSet, LoraSource, WeightRange};
use crate::hub;
use crate::manifest::ManifestError;

/// One `[[lora]]` table as written (types are checked by [`crate::manifest`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraEntryRaw {
    name: Spanned<String>,
    path: Option<Spanned<String>>,
    repo: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
    revision: Option<Spanned<String>>,
    sha256: Option<Spanned<String>>,
    weight: Option<Spanned<f64>>,
    #[serde(default)]
    triggers: Vec<String>,
    description: Option<String>,
}

/// One `[[lora_set]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSetRaw {
    name: Spanned<String>,
    loras: Spanned<Vec<LoraSetMemberRaw>>,
    description: Option<String>,
}

/// A member of a `[[lora_set]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSetMemberRaw {
    name: Spanned<String>,
    weight: Option<Spanned<f64>>,
}

/// The `[[lora]]` and `[[lora_set]]` tables of a manifest file; the rest is read elsewhere.
#[derive(Deserialize)]
struct LoraTables {
    #[serde(default)]
    lora: Vec<LoraEntryRaw>,
    #[serde(default)]
    lora_set: Vec<LoraSetRaw>,
}

/// A set with the line of its name and the names and lines of its members.
type SetAt = (LoraSet, usize, Vec<(String, usize)>);

/// Reads every `[[lora]]` and `[[lora_set]]` in the `*.toml` files of `dir` (sorted by name;
/// types were checked by [`crate::manifest::load_dir`]) and validates names, sources, weights
/// and set members, naming the file, line and field at fault.
pub fn load_dir(dir: &Path) -> std::result::Result<LoraCatalog, ManifestError> {
    let mut entries: Vec<(LoraEntry, usize)> = Vec::new();
    let mut sets: Vec<SetAt> = Vec::new();
    let range = WeightRange::default();
    for file in crate::manifest::toml_files(dir)? {
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Io {
            path: file.clone(),
            source,
        })?;
        let ctx = Ctx {
            file: &file,
            text: &text,
        };
        let tables: LoraTables = toml::from_str(&text).map_err(|e| ManifestError::Syntax {
            file: file.clone(),
            line: ctx.line(e.span().map_or(0, |s| s.start)),
            message: e.message().trim().to_string(),
        })?;
        for raw in tables.lora {
            let line = ctx.line(raw.name.span().start);
            let entry = ctx.entry(raw, range)?;
            if let Some((first, first_line)) = entries.iter().find(|(e, _)| e.name == entry.name) {
                let message = format!(
                    "`{}` is defined twice, also in {}:{first_line}: rename one of the LoRAs",
                    entry.name,
                    first.manifest_path.display()
                );
                return Err(ctx.invalid(line, "lora.name", message));
            }
            entries.push((entry, line));
        }
        for raw in tables.lora_set {
            let line = ctx.line(raw.name.span().start);
            let (set, member_lines) = ctx.set(raw, range)?;
            if let Some((first, first_line, _)) = sets.iter().find(|(s, ..)| s.name == set.name) {
                let message = format!(
                    "`{}` is defined twice, also in {}:{first_line}: rename one of the sets",
                    set.name,
                    first.manifest_path.display()
                );
                return Err(ctx.invalid(line, "lora_set.name", message));
            }
            sets.push((set, line, member_lines));
        }
    }
    let names: Vec<String> = entries.iter().map(|(e, _)| e.name.clone()).collect();
    for (set, _, member_lines) in &sets {
        if let Some(e) = entries.iter().find(|(e, _)| e.name == set.name) {
            return Err(ManifestError::Invalid {
                file: set.manifest_path.clone(),
                line: member_lines.first().map_or(1, |(_, l)| *l),
                field: "lora_set.name".into(),
                message: format!(
                    "`{}` is also a [[lora]] in {}: give the set another name",
                    set.name,
                    e.0.manifest_path.display()
                ),
            });
        }
        for (member, line) in member_lines {
            if !names.contains(member) {
                return Err(ManifestError::Invalid {
                    file: set.manifest_path.clone(),
                    line: *line,
                    field: "lora_set.loras.name".into(),
                    message: format!(
                        "`{member}` is not a [[lora]] in any manifest (known: {}): fix the name \
                         or add the LoRA",
                        if names.is_empty() {
                            "(none)".to_string()
                        } else {
                            names.join(", ")
                        }
                    ),
                });
            }
        }
    }
    Ok(LoraCatalog::new(
        entries.into_iter().map(|(e, _)| e).collect(),
        sets.into_iter().map(|(s, ..)| s).collect(),
    ))
}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn invalid(&self, line: usize, field: &str, message: String) -> ManifestError {
        ManifestError::Invalid {
            file: self.file.to_path_buf(),
            line,
            field: field.to_string(),
            message,
        }
    }

    fn at<T>(&self, v: &Spanned<T>, field: &str, message: String) -> ManifestError {
        self.invalid(self.line(v.span().start), field, message)
    }

    fn name(&self, v: &Spanned<String>, field: &str) -> std::result::Result<String, ManifestError> {
        let name = v.get_ref().trim();
        let ok = !name.is_empty()
            && !name.contains([':', '<', '>', ','])
            && !name.chars().any(char::is_whitespace);
        if ok {
            Ok(name.to_string())
        } else {
            let message = format!(
                "`{}` is not a usable name: use letters, digits, `-`, `_` or `.`, without spaces, \
                 `:`, `<`, `>` or `,` (it is written in prompts as <lora:NAME:WEIGHT>)",
                v.get_ref()
            );
            Err(self.at(v, field, message))
        }
    }

    fn weight(
        &self,
        v: &Option<Spanned<f64>>,
        field: &str,
        range: WeightRange,
    ) -> std::result::Result<Option<f64>, ManifestError> {
        let Some(v) = v else { return Ok(None) };
        let w = *v.get_ref();
        if w.is_finite() && (range.min..=range.max).contains(&w) {
            Ok(Some(w))
        } else {
            let message = format!(
                "must be between {} and {} (got {w}): change the value",
                range.min, range.max
            );
            Err(self.at(v, field, message))
        }
    }

    fn entry(
        &self,
        raw: LoraEntryRaw,
        range: WeightRange,
    ) -> std::result::Result<LoraEntry, ManifestError> {
        let name = self.name(&raw.name, "lora.name")?;
        let source = match (&raw.path, &raw.repo) {
            (Some(path), None) => {
                for (other, field) in [(&raw.file, "lora.file"), (&raw.revision, "lora.revision")] {
                    if let Some(o) = other {
                        let message =
                            "only applies to `repo` LoRAs: remove it, or use `repo` instead of `path`";
                        return Err(self.at(o, field, message.into()));
                    }
                }
                if path.get_ref().trim().is_empty() {
                    let message = "must not be empty: set it to a .safetensors file".to_string();
                    return Err(self.at(path, "lora.path", message));
                }
                let joined = self
                    .file
                    .parent()
                    .unwrap_or(Path::new(""))
                    .join(path.get_ref());
                LoraSource::Path(std::path::absolute(&joined).unwrap_or(joined))
            }
            (None, Some(repo)) => {
                if !hub::is_repo_id(repo.get_ref()) {
                    let message = format!(
                        "must be a Hugging Face repo id like `org/name` (got `{}`)",
                        repo.get_ref()
                    );
                    return Err(self.at(repo, "lora.repo", message));
                }
                let Some(file) = raw.file.as_ref().filter(|f| !f.get_ref().trim().is_empty())
                else {
                    let message = "is required with `repo`: name the .safetensors file in the \
                                   repo, e.g. `file = \"lora.safetensors\"`";
                    return Err(self.at(repo, "lora.file", message.into()));
                };
                LoraSource::Hub {
                    repo: repo.get_ref().clone(),
                    file: file.get_ref().clone(),
                    revision: raw
                        .revision
                        .as_ref()
                        .map_or_else(|| "main".to_string(), |r| r.get_ref().clone()),
                }
            }
            (Some(_), Some(repo)) => {
                let message =
                    "conflicts with `path`: set either `path` (a local file) or `repo` + `file`";
                return Err(self.at(repo, "lora.repo", message.into()));
            }
            (None, None) => {
                let message = "is missing: set `path = \"...\"` to a .safetensors file (relative \
                               to this manifest) or `repo = \"org/name\"` and `file = \"...\"`";
                return Err(self.at(&raw.name, "lora.path", message.into()));
            }
        };
        if let LoraSource::Path(p) = &source {
            let ext_ok = p.extension().is_some_and(|e| e == "safetensors");
            if !ext_ok {
                let message = format!(
                    "`{}` is not a .safetensors file: beeswax reads LoRAs only as safetensors \
                     (pickle files can run code); convert it first",
                    p.display()
                );
                return Err(self.at(raw.path.as_ref().unwrap_or(&raw.name), "lora.path", message));
            }
        }
        let sha256 = match &raw.sha256 {
            Some(h) => {
                let hex = h.get_ref().trim().to_ascii_lowercase();
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    let message = "must be 64 hexadecimal digits (the file's SHA-256, as \
                                   `sha256sum` prints it)";
                    return Err(self.at(h, "lora.sha256", message.into()));
                }
                Some(hex)
            }
            None => None,
        };
        Ok(LoraEntry {
            name,
            source,
            sha256,
            weight: self
                .weight(&raw.weight, "lora.weight", range)?
                .unwrap_or(1.0),
            triggers: raw.triggers,
            description: raw.description,
            manifest_path: self.file.to_path_buf(),
        })
    }

    fn set(
        &self,
        raw: LoraSetRaw,
        range: WeightRange,
    ) -> std::result::Result<(LoraSet, Vec<(String, usize)>), ManifestError> {
        let name = self.name(&raw.name, "lora_set.name")?;
        if raw.loras.get_ref().is_empty() {
            let message =
                "must list at least one LoRA, e.g. `loras = [{ name = \"x\", weight = 0.8 }]`";
            return Err(self.at(&raw.loras, "lora_set.loras", message.into()));
        }
        let mut loras = Vec::new();
        let mut lines = Vec::new();
        for member in raw.loras.into_inner() {
            let member_name = self.name(&member.name, "lora_set.loras.name")?;
            let weight = self.weight(&member.weight, "lora_set.loras.weight", range)?;
            lines.push((member_name.clone(), self.line(member.name.span().start)));
            loras.push((member_name, weight));
        }
        Ok((
            LoraSet {
                name,
                loras,
                description: raw.description,
                manifest_path: self.file.to_path_buf(),
            },
            lines,
        ))
    }
}
