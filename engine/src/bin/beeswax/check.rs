//! `beeswax check`: validates every manifest and plugin of the manifest folder and lists all
//! the problems found (exit status 1 if any, 0 otherwise).
//!
//! Checked: TOML syntax and fields of every `*.toml` (packs and `[[plugin]]` entries, with
//! file, line and field), duplicate names, pack model folders, plugin files, their SHA-256,
//! ABI versions, exports and declared capabilities (each enabled plugin is loaded the way
//! `generate` loads it; disabled ones are only validated).

use std::path::PathBuf;

use anyhow::{bail, Result};
use beeswax::manifest::{self, PackSource};
use beeswax::model_files;
use beeswax::plugins::Plugins;

use crate::args::Global;

pub fn run(global: &Global) -> Result<()> {
    let dir = &global.manifests;
    let mut problems: Vec<String> = Vec::new();
    let mut packs: Vec<(String, PathBuf)> = Vec::new();
    if !dir.is_dir() {
        bail!(
            "manifest directory {} does not exist or is not a directory: pass `--manifests DIR`",
            dir.display()
        );
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    for file in &files {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                problems.push(format!("{}: cannot read: {e}", file.display()));
                continue;
            }
        };
        match manifest::parse(file, &text) {
            Err(e) => problems.push(e.to_string()),
            Ok(None) => {}
            Ok(Some(pack)) => {
                if let Some((_, first)) = packs.iter().find(|(n, _)| *n == pack.name) {
                    problems.push(format!(
                        "{}: pack name `{}` is already defined in {}: rename one",
                        file.display(),
                        pack.name,
                        first.display()
                    ));
                }
                if let PackSource::Path(folder) = &pack.source {
                    if let Err(e) = model_files::model_index(folder) {
                        problems.push(format!(
                            "{}: `pack.path` of pack {}: {e}",
                            file.display(),
                            pack.name
                        ));
                    }
                }
                packs.push((pack.name, file.clone()));
            }
        }
    }
    let (plugins, plugin_problems) = Plugins::load_all(dir);
    problems.extend(plugin_problems.iter().map(ToString::to_string));
    if problems.is_empty() {
        println!(
            "ok: {} manifest file(s) in {}: {} pack(s), {} plugin(s) loaded, {} disabled",
            files.len(),
            dir.display(),
            packs.len(),
            plugins.loaded.len(),
            plugins.disabled.len()
        );
        return Ok(());
    }
    for p in &problems {
        eprintln!("problem: {p}");
    }
    bail!("{} problem(s) found in {}", problems.len(), dir.display())
}
