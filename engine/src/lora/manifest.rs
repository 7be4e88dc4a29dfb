//! Reading the `[[lora]]` and `[[lora_set]]` tables (the syntax is in [`super::catalog`]) of the
//! parsed manifest folder: names, sources, weights, hashes and set members, with errors naming
//! the file, line and field (through [`crate::manifest::Located`]).

use serde::Deserialize;
use toml::Spanned;

use super::catalog::{LoraCatalog, LoraEntry, LoraSet, LoraSource, WeightRange};
use crate::defaults;
use crate::manifest::file_source::{file_source, SourceFields};
use crate::manifest::{list_or_none, Located, ManifestError, ManifestFolder, UniqueNames};

/// One `[[lora]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLora {
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoraSet {
    name: Spanned<String>,
    loras: Spanned<Vec<RawMember>>,
    description: Option<String>,
}

/// A member of a `[[lora_set]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    name: Spanned<String>,
    weight: Option<Spanned<f64>>,
}

/// A set with the line of its name and the names and lines of its members.
type SetAt = (LoraSet, usize, Vec<(String, usize)>);

/// Every `[[lora]]` and `[[lora_set]]` of the folder (files in name order), validated: names
/// unique across files, weights within the default [`WeightRange`], set members declared.
pub fn catalog(folder: &ManifestFolder<'_>) -> Result<LoraCatalog, ManifestError> {
    let range = WeightRange::default();
    let mut entries: Vec<(LoraEntry, usize)> = Vec::new();
    let mut sets: Vec<SetAt> = Vec::new();
    let mut entry_names = UniqueNames::new("lora.name", "LoRAs");
    let mut set_names = UniqueNames::new("lora_set.name", "sets");
    for document in folder.documents() {
        let located = document.located();
        for raw in document.entries::<RawLora>("lora") {
            let raw = raw?;
            let line = located.line_of(&raw.name);
            let entry = entry(&located, raw, range)?;
            entry_names.insert(&entry.name, document.path(), line)?;
            entries.push((entry, line));
        }
        for raw in document.entries::<RawLoraSet>("lora_set") {
            let raw = raw?;
            let line = located.line_of(&raw.name);
            let (set, member_lines) = set(&located, raw, range)?;
            set_names.insert(&set.name, document.path(), line)?;
            sets.push((set, line, member_lines));
        }
    }
    check_sets(&entries, &sets)?;
    Ok(LoraCatalog::new(
        entries.into_iter().map(|(e, _)| e).collect(),
        sets.into_iter().map(|(s, ..)| s).collect(),
    ))
}

/// Set names must not be LoRA names, and set members must be LoRAs.
fn check_sets(entries: &[(LoraEntry, usize)], sets: &[SetAt]) -> Result<(), ManifestError> {
    let names: Vec<&str> = entries.iter().map(|(e, _)| e.name.as_str()).collect();
    for (set, line, member_lines) in sets {
        if let Some((e, _)) = entries.iter().find(|(e, _)| e.name == set.name) {
            let message = format!(
                "`{}` is also a [[lora]] in {}: give the set another name",
                set.name,
                e.manifest_path.display()
            );
            return Err(ManifestError::invalid(
                &set.manifest_path,
                *line,
                "lora_set.name",
                message,
            ));
        }
        if let Some((member, line)) = member_lines
            .iter()
            .find(|(m, _)| !names.contains(&m.as_str()))
        {
            let message = format!(
                "`{member}` is not a [[lora]] in any manifest (known: {}): fix the name or add \
                 the LoRA",
                list_or_none(&names)
            );
            return Err(ManifestError::invalid(
                &set.manifest_path,
                *line,
                "lora_set.loras.name",
                message,
            ));
        }
    }
    Ok(())
}

/// A LoRA or set name: written in prompts as `<lora:NAME:WEIGHT>`; letters (any script),
/// digits, `-`, `_` and `.`, as the message says.
fn name(located: &Located<'_>, v: &Spanned<String>, field: &str) -> Result<String, ManifestError> {
    let name = v.get_ref().trim();
    let usable = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if usable {
        return Ok(name.to_string());
    }
    let message = format!(
        "`{}` is not a usable name: use letters, digits, `-`, `_` or `.`, without spaces, `:`, \
         `<`, `>` or `,` (it is written in prompts as <lora:NAME:WEIGHT>)",
        v.get_ref().escape_debug()
    );
    Err(located.at(v, field, message))
}

fn weight(
    located: &Located<'_>,
    v: &Option<Spanned<f64>>,
    field: &str,
    range: WeightRange,
) -> Result<Option<f64>, ManifestError> {
    located.number(v, field, &(range.min..=range.max), None)
}

fn entry(
    located: &Located<'_>,
    raw: RawLora,
    range: WeightRange,
) -> Result<LoraEntry, ManifestError> {
    let name = name(located, &raw.name, "lora.name")?;
    let source = source(located, &raw)?;
    if let LoraSource::Path(p) = &source {
        let safetensors = p.extension().is_some_and(|e| e == "safetensors");
        if !safetensors {
            let message = format!(
                "`{}` is not a .safetensors file: beeswax reads LoRAs only as safetensors \
                 (pickle files can run code); convert it first",
                p.display()
            );
            return Err(located.at(raw.path.as_ref().unwrap_or(&raw.name), "lora.path", message));
        }
    }
    let sha256 = match &raw.sha256 {
        Some(h) => {
            let file = raw
                .path
                .as_ref()
                .or(raw.file.as_ref())
                .map_or("FILE", |f| f.get_ref());
            Some(located.sha256(h, "lora.sha256", file)?)
        }
        None => None,
    };
    Ok(LoraEntry {
        name,
        source,
        sha256,
        weight: weight(located, &raw.weight, "lora.weight", range)?
            .unwrap_or(defaults::LORA_WEIGHT),
        triggers: raw.triggers,
        description: raw.description,
        manifest_path: located.file().to_path_buf(),
    })
}

/// The `path` or `repo` + `file` of a `[[lora]]`.
fn source(located: &Located<'_>, raw: &RawLora) -> Result<LoraSource, ManifestError> {
    let fields = SourceFields {
        name: &raw.name,
        path: &raw.path,
        repo: &raw.repo,
        file: &raw.file,
        revision: &raw.revision,
    };
    file_source(located, "lora", "LoRAs", fields)
}

/// A validated set with the names and lines of its members.
fn set(
    located: &Located<'_>,
    raw: RawLoraSet,
    range: WeightRange,
) -> Result<(LoraSet, Vec<(String, usize)>), ManifestError> {
    let name = name(located, &raw.name, "lora_set.name")?;
    if raw.loras.get_ref().is_empty() {
        let message =
            "must list at least one LoRA, e.g. `loras = [{ name = \"x\", weight = 0.8 }]`";
        return Err(located.at(&raw.loras, "lora_set.loras", message));
    }
    let mut loras = Vec::new();
    let mut lines = Vec::new();
    for member in raw.loras.into_inner() {
        let member_name = self::name(located, &member.name, "lora_set.loras.name")?;
        let weight = weight(located, &member.weight, "lora_set.loras.weight", range)?;
        lines.push((member_name.clone(), located.line_of(&member.name)));
        loras.push((member_name, weight));
    }
    let set = LoraSet {
        name,
        loras,
        description: raw.description,
        manifest_path: located.file().to_path_buf(),
    };
    Ok((set, lines))
}
