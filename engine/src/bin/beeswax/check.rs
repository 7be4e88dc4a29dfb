//! `beeswax check`: validates every manifest and plugin of the manifest folder and lists all
//! the problems found (exit status 1 if any, 0 otherwise).
//!
//! Checked: TOML syntax and the top-level tables of every `*.toml`; every section with file,
//! line and field (`[pack]`, `[[pipeline]]` with its scheduler, processor and LoRA names,
//! `[[lora]]`, `[[lora_set]]`, `[[plugin]]`); duplicate names; pack model folders; plugin
//! files, their SHA-256, ABI versions, exports and declared capabilities (each enabled plugin is
//! loaded the way `generate` loads it; disabled ones are only validated).

use anyhow::{bail, Result};
use beeswax::checkpoint;
use beeswax::extensions::Extensions;
use beeswax::family::Families;
use beeswax::lora::LoraCatalog;
use beeswax::manifest::PackCheckpoint;
use beeswax::manifest::{self, ManifestFiles, ManifestFolder, PackManifest, PackSource};
use beeswax::model_files;
use beeswax::plugins::Plugins;

use crate::args::Global;

pub fn run(global: &Global) -> Result<()> {
    let dir = &global.manifests;
    let files = ManifestFiles::read(dir)?;
    let (folder, parse_problems) = files.parse_all();
    let mut problems: Vec<String> = parse_problems.iter().map(ToString::to_string).collect();
    let (packs, pack_problems) = manifest::packs_and_problems(&folder);
    problems.extend(pack_problems.iter().map(ToString::to_string));
    let (families, family_problems) = Families::from_manifests_and_problems(&folder);
    problems.extend(family_problems.iter().map(ToString::to_string));
    for pack in &packs {
        let unknown = pack
            .family
            .as_ref()
            .filter(|f| families.get(f.as_str()).is_none());
        if let Some(family) = unknown {
            problems.push(format!(
                "{}: `pack.family` of pack {}: `{}` is not a known family ({}); add \
                 families/{}.toml to the manifest folder to declare it",
                pack.manifest_path.display(),
                pack.name,
                family,
                families.names(),
                family
            ));
        }
        if let PackSource::Path(folder) = &pack.source {
            if let Err(e) = model_files::model_index(folder) {
                problems.push(format!(
                    "{}: `pack.path` of pack {}: {e}",
                    pack.manifest_path.display(),
                    pack.name
                ));
            }
        }
        if let PackSource::Checkpoint(single) = &pack.source {
            if let Err(e) = check_checkpoint(single, pack, &families, global.allow_download) {
                problems.push(format!(
                    "{}: `pack.checkpoint` of pack {}: {e}",
                    pack.manifest_path.display(),
                    pack.name
                ));
            }
        }
    }
    let (plugins, plugin_problems) = Plugins::load_all(&folder);
    problems.extend(plugin_problems.iter().map(ToString::to_string));
    // The plugins' samplers and processors join the extensions the pipelines may name.
    let mut extensions = Extensions::builtin();
    if let Err(e) = plugins.extend(&mut extensions) {
        problems.push(format!("registering the plugins: {e}"));
    }
    let loras = LoraCatalog::from_manifests(&folder);
    if let Err(e) = &loras {
        problems.push(e.to_string());
    }
    if let Err(e) = check_pipelines(&folder, &packs, &extensions, loras.ok().as_ref()) {
        problems.push(e);
    }
    if problems.is_empty() {
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
    for p in &problems {
        eprintln!("problem: {p}");
    }
    bail!("{} problem(s) found in {}", problems.len(), dir.display())
}

/// The first problem of the `[[pipeline]]` tables: their fields, then the scheduler,
/// processor and LoRA set names they give (the set is checked when the LoRAs are valid).
fn check_pipelines(
    folder: &ManifestFolder<'_>,
    packs: &[PackManifest],
    extensions: &Extensions,
    loras: Option<&LoraCatalog>,
) -> Result<(), String> {
    let pipelines = manifest::pipelines(folder, packs).map_err(|e| e.to_string())?;
    let (pre, post) = (extensions.pre_names(), extensions.post_names());
    let scheduler = |name: &str| {
        (extensions.schedulers.resolve(name))
            .map(drop)
            .map_err(|e| e.to_string())
    };
    let lora_names = loras.map(LoraCatalog::names);
    for pipeline in &pipelines {
        pipeline
            .check_names(&scheduler, &post, &pre)
            .map_err(|e| e.to_string())?;
        if let Some(known) = &lora_names {
            pipeline.check_lora_set(known).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// A single-file pack's file is readable, of the declared family by its keys, and has its
/// configs (the bundled ones, or `model_config`); no weights are read.
fn check_checkpoint(
    single: &PackCheckpoint,
    pack: &PackManifest,
    families: &Families,
    allow_download: bool,
) -> beeswax::Result<()> {
    let (file, options) = checkpoint::load::pack_checkpoint(
        single,
        pack.family.as_ref().map(|f| f.as_str()),
        allow_download,
    )?;
    let report = checkpoint::inspect(&file, families, &options)?;
    checkpoint::load::config_dir(&report.detection.family, &options, &file)?;
    Ok(())
}
