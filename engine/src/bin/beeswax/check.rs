//! `beeswax check`: validates every manifest and plugin of the manifest folder and lists all
//! the problems found (exit status 1 if any, 0 otherwise).
//!
//! It runs the loaders `serve` runs, so that it refuses what `serve` refuses: TOML syntax and
//! the top-level tables of every `*.toml` (each file once); every section with file, line and
//! field; plugin files, their SHA-256, ABI versions, exports and declared capabilities (each
//! enabled plugin is loaded the way `serve` loads it; disabled ones are only validated); then
//! the service's [`Plan`] (packs, families, `[[pipeline]]` names against the samplers and
//! processors registered, LoRA sets, every `[[lora]]` file read and checked against its
//! `sha256`); and the header of every weight file of every pack ([`check_pack_files`]; no
//! weights are read).

use anyhow::{bail, Result};
use beeswax::extensions::Extensions;
use beeswax::family::Families;
use beeswax::manifest::{self, ManifestFiles};
use beeswax::plugins::Plugins;
use beeswax::server::{check_pack_files, Plan};

use crate::args::Global;

pub fn run(global: &Global) -> Result<()> {
    let dir = &global.manifests;
    let files = ManifestFiles::read(dir)?;
    let (folder, parse_problems) = files.parse_all();
    let mut problems = Problems::default();
    problems.extend(&parse_problems);
    let (packs, pack_problems) = manifest::packs_and_problems(&folder);
    problems.extend(&pack_problems);
    let (families, family_problems) = Families::from_manifests_and_problems(&folder);
    problems.extend(&family_problems);
    let (plugins, plugin_problems) = Plugins::load_all(&folder);
    problems.extend(&plugin_problems);
    // The plugins' samplers and processors join the extensions the pipelines may name.
    let mut extensions = Extensions::builtin();
    if let Err(e) = plugins.extend(&mut extensions) {
        problems.push(format!("registering the plugins: {e}"));
    }
    // `serve`'s own checks; a problem already listed above is not listed twice.
    if let Err(e) = Plan::read(&folder, &extensions, global.allow_download) {
        problems.push(e.to_string());
    }
    for pack in &packs {
        if let Err(e) = check_pack_files(pack, &families, global.allow_download) {
            problems.push(e.to_string());
        }
    }
    if problems.0.is_empty() {
        println!(
            "ok: {} manifest file(s) in {}: {} pack(s), {} families, {} plugin(s) loaded, {} \
             disabled",
            files.len(),
            dir.display(),
            packs.len(),
            families.iter().count(),
            plugins.loaded.len(),
            plugins.disabled.len()
        );
        return Ok(());
    }
    for p in &problems.0 {
        eprintln!("problem: {p}");
    }
    bail!("{} problem(s) found in {}", problems.0.len(), dir.display())
}

/// The problems found, each listed once (the service's checks repeat the section readers').
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, problem: String) {
        if !self.0.contains(&problem) {
            self.0.push(problem);
        }
    }

    fn extend<E: ToString>(&mut self, errors: &[E]) {
        for e in errors {
            self.push(e.to_string());
        }
    }
}
