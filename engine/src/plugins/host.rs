//! Loading plugins from manifest entries and using them: [`LoadedPlugin`] and [`Plugins`].

use std::sync::Arc;

use beeswax_plugin_sdk::wire::{self, Image};

use super::abi::{decode_rgb, encode_rgb};
use super::call::{Call, Instance};
use super::manifest::{self, Capability, PluginEntry, PluginKind};
use super::native::{NativeInstance, NativePlugin};
use super::scheduler::PluginScheduler;
use super::wasm::WasmPlugin;
use super::PluginError;
pub use crate::digest::sha256_hex;
use crate::extensions::{Extensions, PostProcessFn, PreInput, PreProcessFn, Processor};
use crate::image_in::Mask;
use crate::image_out::RgbImage;
use crate::manifest::ManifestFolder;
use crate::schedulers::{
    BuildContext, Scheduler, SchedulerConfig, SchedulerEntry, SchedulerError, SchedulerKind,
};

/// Largest plugin file read, in bytes.
const MAX_FILE_BYTES: u64 = 256 << 20;

/// How a loaded plugin runs.
#[derive(Debug)]
enum Backend {
    Wasm(WasmPlugin),
    Native(Arc<NativePlugin>),
}

/// A plugin that passed every check: hash, ABI version, exports and declared capabilities.
#[derive(Debug)]
pub struct LoadedPlugin {
    /// Its manifest entry.
    pub entry: PluginEntry,
    /// The SHA-256 of the file that was loaded.
    pub sha256: String,
    backend: Backend,
}

/// Names of the capabilities in `bits`.
pub fn capability_names(bits: u32) -> Vec<&'static str> {
    Capability::ALL
        .into_iter()
        .filter(|c| bits & c.bit() != 0)
        .map(Capability::as_str)
        .collect()
}

impl LoadedPlugin {
    /// Reads the entry's file, checks its SHA-256 (before compiling or opening it), loads it
    /// (ABI version first) and checks it provides what the entry declares.
    pub fn load(entry: &PluginEntry) -> Result<Self, PluginError> {
        let plugin = entry.name.clone();
        let path = &entry.path;
        let io = |source: std::io::Error| PluginError::Io {
            plugin: plugin.clone(),
            location: format!("{}:{}", entry.manifest_path.display(), entry.path_line),
            path: path.clone(),
            source,
        };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > MAX_FILE_BYTES {
            return Err(PluginError::Load {
                plugin,
                message: format!(
                    "{} is {size} bytes; plugins may be at most {MAX_FILE_BYTES}",
                    path.display()
                ),
            });
        }
        let bytes = crate::fs_limits::read_regular(path, crate::fs_limits::PLUGIN_BYTES)
            .map_err(|e| io(e.into_io()))?;
        let actual = sha256_hex(&bytes);
        if let Some(expected) = &entry.sha256 {
            if *expected != actual {
                return Err(PluginError::HashMismatch {
                    plugin,
                    location: format!("{}:{}", entry.manifest_path.display(), entry.sha256_line),
                    path: path.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let backend = match entry.kind {
            PluginKind::Wasm => Backend::Wasm(WasmPlugin::load(&entry.name, &bytes, entry.limits)?),
            PluginKind::Native => Backend::Native(NativePlugin::load(&entry.name, path)?),
        };
        let loaded = Self {
            entry: entry.clone(),
            sha256: actual,
            backend,
        };
        let have = loaded.capabilities();
        let missing: Vec<&str> = entry
            .provides
            .iter()
            .filter(|c| have & c.bit() == 0)
            .map(|c| c.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(PluginError::Capabilities {
                plugin: entry.name.clone(),
                location: format!("{}:{}", entry.manifest_path.display(), entry.line),
                missing: missing.join(", "),
                reported: capability_names(have).join(", "),
            });
        }
        Ok(loaded)
    }

    /// The capability bits the plugin reports.
    pub fn capabilities(&self) -> u32 {
        match &self.backend {
            Backend::Wasm(w) => w.capabilities(),
            Backend::Native(n) => n.capabilities(),
        }
    }

    /// The ABI version the plugin reports (`major << 16 | minor`).
    pub fn abi_version(&self) -> u32 {
        match &self.backend {
            Backend::Wasm(w) => w.abi_version(),
            Backend::Native(n) => n.abi_version(),
        }
    }

    /// Whether the manifest declares `cap` for this plugin.
    pub fn provides(&self, cap: Capability) -> bool {
        self.entry.provides.contains(&cap)
    }

    /// A fresh instance for one job (WASM: new store and memory; native: the library).
    pub fn instance(&self) -> Result<Box<dyn Instance>, PluginError> {
        Ok(match &self.backend {
            Backend::Wasm(w) => Box::new(w.instantiate()?),
            Backend::Native(n) => Box::new(NativeInstance(n.clone())),
        })
    }

    /// A scheduler of `steps` steps of `config` (a diffusion model) from this plugin.
    pub fn build_scheduler(
        self: &Arc<Self>,
        config: &SchedulerConfig,
        steps: usize,
    ) -> Result<Box<dyn Scheduler>, SchedulerError> {
        self.build_scheduler_for(config, &BuildContext::diffusion(steps))
    }

    /// A scheduler for `context` (steps, model kind) of `config` from this plugin.
    pub fn build_scheduler_for(
        self: &Arc<Self>,
        config: &SchedulerConfig,
        context: &BuildContext,
    ) -> Result<Box<dyn Scheduler>, SchedulerError> {
        Ok(Box::new(PluginScheduler::new(
            self.clone(),
            config,
            context,
        )?))
    }

    /// Runs the post-processor on an RGB image (in a fresh WASM instance).
    pub fn postprocess(&self, image: &RgbImage) -> Result<RgbImage, PluginError> {
        let params = self.params()?;
        let mut buf = Vec::new();
        encode_rgb(image, &mut buf).map_err(|m| self.malformed(m))?;
        let out = self.instance()?.call(Call::PostProcess(&params, &buf))?;
        let out = decode_rgb(&out).map_err(|m| self.malformed(m))?;
        self.check_size(image, &out)?;
        Ok(out)
    }

    /// A post-processor keeps the picture's size unless its manifest says `changes_size =
    /// true`, and never makes a side longer than [`crate::limits::SIZE`] allows.
    fn check_size(&self, input: &RgbImage, out: &RgbImage) -> Result<(), PluginError> {
        let (w, h) = (out.width, out.height);
        if !self.entry.changes_size && (w, h) != (input.width, input.height) {
            return Err(self.malformed(format!(
                "returned a {w}x{h} picture for a {}x{} one, but its manifest does not \
                 declare `changes_size = true` (add it to the [[plugin]] entry if the \
                 plugin resizes pictures)",
                input.width, input.height
            )));
        }
        let max = *crate::limits::SIZE.end();
        if w > max || h > max {
            return Err(self.malformed(format!(
                "returned a {w}x{h} picture: sides may be at most {max} pixels"
            )));
        }
        Ok(())
    }

    /// Runs the pre-processor on an image and its mask (1 channel, 255 = repaint).
    pub fn preprocess(&self, image: &Image, mask: &Image) -> Result<(Image, Image), PluginError> {
        let params = self.params()?;
        let mut buf = Vec::new();
        image
            .encode_into(&mut buf)
            .map_err(|e| self.malformed(e.0))?;
        mask.encode_into(&mut buf)
            .map_err(|e| self.malformed(e.0))?;
        let out = self.instance()?.call(Call::PreProcess(&params, &buf))?;
        let mut r = wire::Reader::new(&out);
        let image = Image::decode(&mut r).map_err(|e| self.malformed(e.0))?;
        let mask = Image::decode(&mut r).map_err(|e| self.malformed(e.0))?;
        Ok((image, mask))
    }

    fn params(&self) -> Result<Vec<u8>, PluginError> {
        self.entry.params.encode().map_err(|e| self.malformed(e.0))
    }

    fn malformed(&self, message: String) -> PluginError {
        PluginError::Malformed {
            plugin: self.entry.name.clone(),
            message,
        }
    }

    /// The registry entry of this plugin's scheduler: canonical name = the plugin name with
    /// `-` as `_` (the registry's snake case), the plugin name itself as an alias.
    pub fn scheduler_entry(self: &Arc<Self>) -> SchedulerEntry {
        let name = &self.entry.name;
        let canonical = name.replace('-', "_");
        let aliases = if canonical == *name {
            Vec::new()
        } else {
            vec![name.clone()]
        };
        let summary = format!(
            "plugin {} ({}){}",
            name,
            self.entry.kind.as_str(),
            self.entry
                .description
                .as_ref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        );
        let plugin = self.clone();
        // The plugin learns the model's kind (FLAG_FLOW_MODEL) and may refuse it.
        let kinds = vec![SchedulerKind::Diffusion, SchedulerKind::Flow];
        SchedulerEntry::for_kinds(
            canonical,
            aliases,
            summary,
            kinds,
            move |config, context| plugin.build_scheduler_for(config, context),
        )
        .from_plugin(name.clone())
    }

    /// This plugin's pre-processor as an [`Extensions`] processor: the picture as RGB and the
    /// mask as one channel (255 = repaint; all black when the job has none, and the returned
    /// mask is then ignored). A result whose image and mask differ in size, or whose channels
    /// are not RGB and one, is refused.
    fn pre_processor(self: &Arc<Self>) -> Processor<PreProcessFn> {
        let plugin = self.clone();
        Processor {
            name: self.entry.name.clone(),
            summary: self.summary(),
            run: Arc::new(move |input: PreInput| plugin.run_pre(input)),
        }
    }

    fn run_pre(&self, input: PreInput) -> Result<PreInput, String> {
        let (w, h) = (input.picture.width, input.picture.height);
        let image = Image {
            width: w as u32,
            height: h as u32,
            channels: 3,
            data: input.picture.data,
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
        let (image, mask) = self.preprocess(&image, &mask).map_err(|e| e.to_string())?;
        if image.channels != 3
            || mask.channels != 1
            || (image.width, image.height) != (mask.width, mask.height)
        {
            return Err(format!(
                "returned a {}x{}x{} image and a {}x{}x{} mask; expected RGB and a 1-channel \
                 mask of one size",
                image.width, image.height, image.channels, mask.width, mask.height, mask.channels
            ));
        }
        let (w, h) = (image.width as usize, image.height as usize);
        Ok(PreInput {
            picture: RgbImage {
                width: w,
                height: h,
                data: image.data,
            },
            mask: input.mask.map(|_| Mask {
                width: w,
                height: h,
                data: mask.data.iter().map(|&b| b as f32 / 255.0).collect(),
            }),
        })
    }

    /// This plugin's post-processor as an [`Extensions`] processor.
    fn post_processor(self: &Arc<Self>) -> Processor<PostProcessFn> {
        let plugin = self.clone();
        Processor {
            name: self.entry.name.clone(),
            summary: self.summary(),
            run: Arc::new(move |image: RgbImage| {
                plugin.postprocess(&image).map_err(|e| e.to_string())
            }),
        }
    }

    fn summary(&self) -> String {
        format!("plugin {} ({})", self.entry.name, self.entry.kind.as_str())
    }
}

/// The plugins of a manifest folder, loaded.
#[derive(Debug, Default)]
pub struct Plugins {
    /// Loaded plugins, in manifest order.
    pub loaded: Vec<Arc<LoadedPlugin>>,
    /// Entries with `enabled = false` (validated, not loaded).
    pub disabled: Vec<PluginEntry>,
}

impl Plugins {
    /// Loads every enabled `[[plugin]]` of the parsed manifest folder, returning what loaded
    /// and every problem found (manifest errors, missing files, hashes, ABI, capabilities).
    pub fn load_all(folder: &ManifestFolder<'_>) -> (Self, Vec<PluginError>) {
        let (entries, manifest_problems) = manifest::entries(folder);
        let mut problems: Vec<PluginError> = manifest_problems
            .into_iter()
            .map(|e| PluginError::from(Box::new(e)))
            .collect();
        let mut plugins = Self::default();
        for entry in entries {
            if !entry.enabled {
                plugins.disabled.push(entry);
                continue;
            }
            match LoadedPlugin::load(&entry) {
                Ok(p) => plugins.loaded.push(Arc::new(p)),
                Err(e) => problems.push(e),
            }
        }
        (plugins, problems)
    }

    /// Loads the plugins of the folder as `generate` and `serve` do at startup: any problem is
    /// an error listing them all. A folder without `[[plugin]]` entries gives no plugins.
    pub fn load(folder: &ManifestFolder<'_>) -> Result<Self, PluginError> {
        let (plugins, problems) = Self::load_all(folder);
        if problems.is_empty() {
            Ok(plugins)
        } else {
            Err(PluginError::Startup {
                dir: folder.dir().to_path_buf(),
                problems: problems.iter().map(ToString::to_string).collect(),
            })
        }
    }

    /// Adds every plugin's schedulers, pre-processors and post-processors to `extensions`,
    /// under the plugins' names (so that `--scheduler NAME`, `--pre NAME`, `--post NAME` and
    /// the pipelines' lists find them like built-ins). A name clash is an error.
    pub fn extend(&self, extensions: &mut Extensions) -> crate::Result<()> {
        for p in &self.loaded {
            if p.provides(Capability::Scheduler) {
                extensions.schedulers.register(p.scheduler_entry())?;
            }
            if p.provides(Capability::PreProcessor) {
                extensions.add_pre(p.pre_processor())?;
            }
            if p.provides(Capability::PostProcessor) {
                extensions.add_post(p.post_processor())?;
            }
        }
        Ok(())
    }

    /// The loaded plugin `name` that declares `cap`.
    pub fn find(&self, name: &str, cap: Capability) -> Result<&Arc<LoadedPlugin>, PluginError> {
        self.loaded
            .iter()
            .find(|p| p.entry.name == name && p.provides(cap))
            .ok_or_else(|| PluginError::Unknown {
                name: name.to_string(),
                capability: cap.as_str(),
                available: self
                    .loaded
                    .iter()
                    .filter(|p| p.provides(cap))
                    .map(|p| p.entry.name.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}
