//! Reading a manifest folder the way the commands do (read and parse once), for the tests that
//! look at one section: packs, LoRAs, plugins, or the service's catalog.

use std::path::Path;

use beeswax::extensions::Extensions;
use beeswax::lora::LoraCatalog;
use beeswax::manifest::{self, ManifestError, ManifestFiles, PackManifest};
use beeswax::plugins::PluginEntry;
use beeswax::server::{Catalog, Limits};

/// The packs of folder `dir`.
pub fn packs(dir: &Path) -> Result<Vec<PackManifest>, ManifestError> {
    let files = ManifestFiles::read(dir)?;
    manifest::packs(&files.parse()?)
}

/// The pack `name` of folder `dir`.
pub fn find_pack(dir: &Path, name: &str) -> Result<PackManifest, ManifestError> {
    let files = ManifestFiles::read(dir)?;
    manifest::find_pack(&files.parse()?, name)
}

/// The LoRA catalog of folder `dir`.
pub fn lora_catalog(dir: &Path) -> beeswax::Result<LoraCatalog> {
    let files = ManifestFiles::read(dir)?;
    Ok(LoraCatalog::from_manifests(&files.parse()?)?)
}

/// The `[[plugin]]` entries of folder `dir`, and their problems.
pub fn plugin_entries(dir: &Path) -> (Vec<PluginEntry>, Vec<ManifestError>) {
    let files = ManifestFiles::read(dir).unwrap();
    beeswax::plugins::manifest::entries(&files.parse().unwrap())
}

/// The service's catalog of folder `dir`, on the CPU in f32.
pub fn catalog(dir: &Path, limits: Limits, extensions: &Extensions) -> beeswax::Result<Catalog> {
    let files = ManifestFiles::read(dir)?;
    Catalog::load(
        &files.parse()?,
        &super::cpu_f32(),
        false,
        limits,
        extensions,
    )
}

/// The built-in extensions with the `[[plugin]]` and `[[embedding]]` entries of folder `dir`
/// (as `beeswax serve` registers them).
pub fn extensions(dir: &Path) -> beeswax::Result<Extensions> {
    let files = ManifestFiles::read(dir)?;
    let folder = files.parse()?;
    let mut extensions = Extensions::builtin();
    // The plugins' samplers and processors join as `serve` adds them.
    let plugins = beeswax::plugins::Plugins::load(&folder)
        .unwrap_or_else(|e| panic!("the test manifests' plugins: {e}"));
    plugins.extend(&mut extensions)?;
    extensions.set_embeddings(&manifest::embeddings(&folder)?, None, false)?;
    Ok(extensions)
}
