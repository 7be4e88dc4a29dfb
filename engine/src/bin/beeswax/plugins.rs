//! Plugins at startup (`generate`, `serve`, `check`) and `beeswax plugins`.

use std::sync::Arc;

use anyhow::{Context, Result};
use beeswax::image_in::Mask;
use beeswax::image_out::RgbImage;
use beeswax::manifest::{ManifestFiles, ManifestFolder};
use beeswax::plugins::{capability_names, Capability, LoadedPlugin, PluginKind, Plugins};
use beeswax_plugin_sdk::wire::Image;

use crate::args::Global;
use crate::image_job::ImageInput;

/// Loads the plugins of the parsed manifests and registers their schedulers (so `--scheduler
/// NAME` finds them like built-ins) and post-processors (for the service's pipelines). No
/// manifest folder means no plugins.
pub fn load(folder: Option<&ManifestFolder<'_>>) -> Result<Plugins> {
    let Some(folder) = folder else {
        return Ok(Plugins::default());
    };
    let plugins = Plugins::load(folder)?;
    plugins
        .register_schedulers()
        .context("registering plugin schedulers")?;
    plugins.register_postprocessors();
    Ok(plugins)
}

/// The post-processors named by `--post`, in order; unknown names are an error.
pub fn post_processors(plugins: &Plugins, names: &[String]) -> Result<Vec<Arc<LoadedPlugin>>> {
    names
        .iter()
        .map(|n| Ok(plugins.find(n, Capability::PostProcessor)?.clone()))
        .collect()
}

/// The pre-processors named by `--pre`, in order; unknown names are an error.
pub fn pre_processors(plugins: &Plugins, names: &[String]) -> Result<Vec<Arc<LoadedPlugin>>> {
    names
        .iter()
        .map(|n| Ok(plugins.find(n, Capability::PreProcessor)?.clone()))
        .collect()
}

/// Runs the picture and mask of an image job through `pre`, in order. Without a mask the
/// plugin sees an all-black one (nothing to repaint) and its returned mask is ignored.
pub fn apply_pre(pre: &[Arc<LoadedPlugin>], mut input: ImageInput) -> Result<ImageInput> {
    for p in pre {
        let (w, h) = (input.picture.width, input.picture.height);
        let image = Image {
            width: w as u32,
            height: h as u32,
            channels: 3,
            data: input.picture.data.clone(),
        };
        let mask_bytes = match &input.mask {
            Some(m) => m
                .data
                .iter()
                .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
                .collect(),
            None => vec![0; w * h],
        };
        let mask = Image {
            width: w as u32,
            height: h as u32,
            channels: 1,
            data: mask_bytes,
        };
        let (image, mask) = p.preprocess(&image, &mask)?;
        let name = &p.entry.name;
        if image.channels != 3
            || mask.channels != 1
            || (image.width, image.height) != (mask.width, mask.height)
        {
            anyhow::bail!(
                "pre-processor {name} returned a {}x{}x{} image and a {}x{}x{} mask; expected RGB and a 1-channel mask of one size",
                image.width, image.height, image.channels, mask.width, mask.height, mask.channels
            );
        }
        let (w, h) = (image.width as usize, image.height as usize);
        input.picture = RgbImage {
            width: w,
            height: h,
            data: image.data,
        };
        if input.mask.is_some() {
            input.mask = Some(Mask {
                width: w,
                height: h,
                data: mask.data.iter().map(|&b| b as f32 / 255.0).collect(),
            });
        }
    }
    Ok(input)
}

/// Runs `image` through `post`, in order.
pub fn apply_post(post: &[Arc<LoadedPlugin>], image: &RgbImage) -> Result<RgbImage> {
    let mut image = image.clone();
    for p in post {
        image = p.postprocess(&image)?;
    }
    Ok(image)
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
                Capability::PreProcessor => "preprocessor".to_string(),
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
