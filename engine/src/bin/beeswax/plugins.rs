//! Plugins at startup (`generate`, `serve`, `check`) and `beeswax plugins`.

use anyhow::{Context, Result};
use beeswax::extensions::Extensions;
use beeswax::manifest::{ManifestFiles, ManifestFolder};
use beeswax::plugins::{capability_names, Capability, PluginKind, Plugins};

use crate::args::Global;

/// The extensions a command runs with: the built-in samplers plus every plugin of the parsed
/// manifests (their schedulers, pre- and post-processors, under the plugins' names). No
/// manifest folder means no plugins. The plugins are returned too: they must outlive the
/// extensions' use (native libraries stay loaded).
pub fn load(folder: Option<&ManifestFolder<'_>>) -> Result<(Plugins, Extensions)> {
    let mut extensions = Extensions::builtin();
    let Some(folder) = folder else {
        return Ok((Plugins::default(), extensions));
    };
    let plugins = Plugins::load(folder)?;
    plugins
        .extend(&mut extensions)
        .context("registering the plugins")?;
    Ok((plugins, extensions))
}

/// `beeswax plugins`: one block per plugin; problems are listed and make the command fail.
pub fn list(global: &Global) -> Result<()> {
    let files = ManifestFiles::read(&global.manifests)?;
    let (folder, parse_problems) = files.parse_all();
    let (plugins, plugin_problems) = Plugins::load_all(&folder);
    let problems: Vec<String> = (parse_problems.iter().map(ToString::to_string))
        .chain(plugin_problems.iter().map(ToString::to_string))
        .collect();
    for p in &plugins.loaded {
        let e = &p.entry;
        let (major, minor) = beeswax_plugin_sdk::abi::split_version(p.abi_version());
        println!(
            "{}\t{}\tABI {major}.{minor}\t{}",
            e.name,
            e.kind.as_str(),
            e.path.display()
        );
        for cap in &e.provides {
            let how = match cap {
                Capability::Scheduler => format!(
                    "scheduler (--scheduler {}, registered as {})",
                    e.name,
                    e.name.replace('-', "_")
                ),
                Capability::PostProcessor => format!("postprocessor (--post {})", e.name),
                Capability::PreProcessor => format!("preprocessor (--pre {})", e.name),
            };
            println!("  provides: {how}");
        }
        let reported = capability_names(p.capabilities());
        if reported.len() > e.provides.len() {
            println!("  also implements (not enabled): {}", reported.join(", "));
        }
        println!("  sha256: {}", p.sha256);
        if e.kind == PluginKind::Wasm {
            println!(
                "  limits: {} MiB memory, {} ms per call",
                e.limits.memory_mib, e.limits.timeout_ms
            );
        } else {
            println!("  trusted native code (runs unsandboxed in the beeswax process)");
        }
        if !e.params.entries.is_empty() {
            let params: Vec<String> = e
                .params
                .entries
                .iter()
                .map(|(k, v)| match v {
                    beeswax_plugin_sdk::ParamValue::Number(x) => format!("{k} = {x}"),
                    beeswax_plugin_sdk::ParamValue::String(s) => format!("{k} = {s:?}"),
                })
                .collect();
            println!("  params: {}", params.join(", "));
        }
        if let Some(d) = &e.description {
            println!("  {d}");
        }
    }
    for e in &plugins.disabled {
        println!(
            "{}\t{}\tdisabled (enabled = false)\t{}",
            e.name,
            e.kind.as_str(),
            e.path.display()
        );
    }
    if plugins.loaded.is_empty() && plugins.disabled.is_empty() && problems.is_empty() {
        println!("no [[plugin]] entries in {}", global.manifests.display());
    }
    if problems.is_empty() {
        return Ok(());
    }
    for p in &problems {
        eprintln!("problem: {p}");
    }
    anyhow::bail!(
        "{} plugin problem(s) in {}; `beeswax check` validates every manifest",
        problems.len(),
        global.manifests.display()
    )
}
