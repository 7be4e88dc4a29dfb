//! Extensions: everything a job may use that is registered rather than compiled in — the
//! samplers, the image pre-processors (run on a job's picture and mask before it starts) and
//! post-processors (run on every image it makes). One value holds them: built from the
//! built-ins, extended by the loaded plugins (see [`crate::plugins::Plugins::extend`]), held by
//! the service or the command and passed down to [`crate::pipeline::run`]; the textual-inversion
//! embeddings prompts may name are registered here too. Nothing here is process-wide.

use std::path::Path;
use std::sync::Arc;

use crate::image_in::Mask;
use crate::image_out::RgbImage;
use crate::manifest::EmbeddingManifest;
use crate::prompt::EmbeddingCatalog;
use crate::schedulers::Registry;
use crate::{Error, Result};

/// A picture and its mask, as pre-processors see them.
#[derive(Debug, Clone)]
pub struct PreInput {
    /// The picture.
    pub picture: RgbImage,
    /// The inpainting mask (1 = repaint), if the job has one.
    pub mask: Option<Mask>,
}

/// A post-processor: takes an image, returns the processed image or what went wrong.
pub type PostProcessFn = dyn Fn(RgbImage) -> std::result::Result<RgbImage, String> + Send + Sync;

/// A pre-processor: takes a picture and mask, returns them processed or what went wrong.
pub type PreProcessFn = dyn Fn(PreInput) -> std::result::Result<PreInput, String> + Send + Sync;

/// A named processor.
pub struct Processor<F: ?Sized> {
    /// The name jobs use.
    pub name: String,
    /// What it is, for listings.
    pub summary: String,
    /// The function.
    pub run: Arc<F>,
}

impl<F: ?Sized> Clone for Processor<F> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            summary: self.summary.clone(),
            run: self.run.clone(),
        }
    }
}

impl<F: ?Sized> std::fmt::Debug for Processor<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("name", &self.name)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

/// What jobs may use beyond the built-in networks.
#[derive(Debug, Clone)]
pub struct Extensions {
    /// Samplers: the built-ins, then plugins'.
    pub schedulers: Registry,
    /// Textual-inversion embeddings prompts may name (`[[embedding]]` entries and the
    /// `--embeddings` folder).
    pub embeddings: Arc<EmbeddingCatalog>,
    pre: Vec<Processor<PreProcessFn>>,
    post: Vec<Processor<PostProcessFn>>,
}

impl Default for Extensions {
    fn default() -> Self {
        Self::builtin()
    }
}

/// Which list a processor belongs to, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessorKind {
    /// Runs on a job's picture and mask.
    Pre,
    /// Runs on each image a job makes.
    Post,
}

impl ProcessorKind {
    /// `pre-processor` or `post-processor`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessorKind::Pre => "pre-processor",
            ProcessorKind::Post => "post-processor",
        }
    }
}

impl Extensions {
    /// The built-in samplers and no processors.
    pub fn builtin() -> Self {
        Self {
            schedulers: Registry::with_builtins(),
            embeddings: Arc::default(),
            pre: Vec::new(),
            post: Vec::new(),
        }
    }

    /// Registers the textual-inversion embeddings of `manifests` (the `[[embedding]]`
    /// entries; hub files must be cached unless `allow_download`) and of the folder `dir`
    /// (`--embeddings`; a manifest entry wins over a file of the same name).
    pub fn set_embeddings(
        &mut self,
        manifests: &[EmbeddingManifest],
        dir: Option<&Path>,
        allow_download: bool,
    ) -> Result<()> {
        let entries = manifests
            .iter()
            .map(|m| m.resolve(allow_download))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut catalog = EmbeddingCatalog::from_entries(entries)?;
        if let Some(dir) = dir {
            catalog = catalog.merged(EmbeddingCatalog::from_dir(dir)?);
        }
        self.embeddings = Arc::new(catalog);
        Ok(())
    }

    /// Adds a pre-processor; a name already taken is an error.
    pub fn add_pre(&mut self, processor: Processor<PreProcessFn>) -> Result<()> {
        check_free(ProcessorKind::Pre, &processor.name, &self.pre_names())?;
        self.pre.push(processor);
        Ok(())
    }

    /// Adds a post-processor; a name already taken is an error.
    pub fn add_post(&mut self, processor: Processor<PostProcessFn>) -> Result<()> {
        check_free(ProcessorKind::Post, &processor.name, &self.post_names())?;
        self.post.push(processor);
        Ok(())
    }

    /// Pre-processor names, in registration order.
    pub fn pre_names(&self) -> Vec<String> {
        self.pre.iter().map(|p| p.name.clone()).collect()
    }

    /// Post-processor names, in registration order.
    pub fn post_names(&self) -> Vec<String> {
        self.post.iter().map(|p| p.name.clone()).collect()
    }

    /// The pre-processors.
    pub fn pre_processors(&self) -> &[Processor<PreProcessFn>] {
        &self.pre
    }

    /// The post-processors.
    pub fn post_processors(&self) -> &[Processor<PostProcessFn>] {
        &self.post
    }

    /// Checks every name of `names` is a registered processor of `kind`; the error lists the
    /// registered ones.
    pub fn check_processors(&self, kind: ProcessorKind, names: &[String]) -> Result<()> {
        let known = match kind {
            ProcessorKind::Pre => self.pre_names(),
            ProcessorKind::Post => self.post_names(),
        };
        match names.iter().find(|n| !known.contains(n)) {
            None => Ok(()),
            Some(name) => Err(Error::invalid(
                kind.as_str(),
                name,
                format!(
                    "is not registered (registered: {}); plugins register processors, see \
                     `beeswax plugins`",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            )),
        }
    }

    /// Runs the pre-processors `names` on `input`, in order.
    pub fn pre_process(&self, names: &[String], mut input: PreInput) -> Result<PreInput> {
        for name in names {
            let p = find(&self.pre, ProcessorKind::Pre, name)?;
            let had_mask = input.mask.is_some();
            input = (p.run)(input).map_err(|message| failed(ProcessorKind::Pre, name, message))?;
            if had_mask != input.mask.is_some() {
                return Err(failed(
                    ProcessorKind::Pre,
                    name,
                    "added or removed the mask".into(),
                ));
            }
        }
        Ok(input)
    }

    /// Runs the post-processors `names` on `image`, in order.
    pub fn post_process(&self, names: &[String], mut image: RgbImage) -> Result<RgbImage> {
        for name in names {
            let p = find(&self.post, ProcessorKind::Post, name)?;
            image = (p.run)(image).map_err(|message| failed(ProcessorKind::Post, name, message))?;
        }
        Ok(image)
    }
}

fn check_free(kind: ProcessorKind, name: &str, taken: &[String]) -> Result<()> {
    if taken.iter().any(|t| t == name) {
        return Err(Error::invalid(
            kind.as_str(),
            name,
            "is registered twice; give the plugins different names",
        ));
    }
    Ok(())
}

fn find<'a, F: ?Sized>(
    list: &'a [Processor<F>],
    kind: ProcessorKind,
    name: &str,
) -> Result<&'a Processor<F>> {
    list.iter()
        .find(|p| p.name == name)
        .ok_or_else(|| Error::invalid(kind.as_str(), name, "is not registered"))
}

fn failed(kind: ProcessorKind, name: &str, message: String) -> Error {
    Error::Extension {
        kind: kind.as_str(),
        name: name.to_string(),
        message,
    }
}
