//! The one way to run a job, for the CLI and the HTTP service alike: check it, pre-process an
//! image job's picture and mask, build its sampler, run its mode's pipeline, post-process the
//! images.

use std::borrow::Cow;
use std::ops::ControlFlow;

use super::refiner::Refine;
use super::stages::{Generated, StepProgress};
use super::{image_to_image, inpaint, text_to_image, Input, Job};
use crate::extensions::{Extensions, PreInput, ProcessorKind};
use crate::family::Model;
use crate::schedulers::{BuildContext, Registry, Scheduler};
use crate::Result;

/// Runs `job` on `model` with the samplers and processors of `extensions`. `on_step` is
/// called after every denoising step; returning `Break` cancels the job
/// ([`crate::Error::Cancelled`]).
pub fn run(
    model: &Model,
    job: &Job,
    extensions: &Extensions,
    on_step: &mut dyn FnMut(StepProgress) -> ControlFlow<()>,
) -> Result<Generated> {
    job.check(model)?;
    extensions.check_processors(ProcessorKind::Pre, &job.pre_processors)?;
    extensions.check_processors(ProcessorKind::Post, &job.post_processors)?;
    let build = || build_scheduler(model, job, &extensions.schedulers);
    let settings = &job.settings;
    let embeddings = &extensions.embeddings;
    let input = pre_process(extensions, job)?;
    // The refiner's own scheduler instance, built on the base's config: one schedule.
    let refine = || -> Result<Option<Refine>> {
        job.refiner
            .as_ref()
            .map(|refiner| {
                Ok(Refine {
                    refiner,
                    scheduler: build()?,
                })
            })
            .transpose()
    };
    let mut out = match input.as_ref() {
        Input::Text { init_latents } => text_to_image(
            model,
            settings,
            embeddings,
            build()?,
            refine()?,
            init_latents.as_ref(),
            on_step,
        )?,
        Input::Image(image) => image_to_image(
            model,
            settings,
            embeddings,
            image,
            build()?,
            refine()?,
            on_step,
        )?,
        Input::Inpaint { image, mask } => inpaint(
            model,
            settings,
            embeddings,
            (image, mask),
            (build()?, build()?),
            refine()?,
            on_step,
        )?,
    };
    out.images = out
        .images
        .into_iter()
        .map(|image| extensions.post_process(&job.post_processors, image))
        .collect::<Result<_>>()?;
    Ok(out)
}

/// The scheduler of `job` on `model`: the sampler's form for the family's kind (flow samplers
/// shifted for the job's image size), from the model's scheduler config.
pub fn build_scheduler(
    model: &Model,
    job: &Job,
    schedulers: &Registry,
) -> Result<Box<dyn Scheduler>> {
    let context = build_context(model, job);
    Ok(schedulers.build_for(&job.sampler, &model.scheduler_config, &context)?)
}

/// Checks that the job's sampler can be built for `model` without running plugin code (see
/// [`Registry::check_for`]): what request validation calls on the async runtime.
pub fn check_scheduler(model: &Model, job: &Job, schedulers: &Registry) -> Result<()> {
    let context = build_context(model, job);
    Ok(schedulers.check_for(&job.sampler, &model.scheduler_config, &context)?)
}

fn build_context(model: &Model, job: &Job) -> BuildContext {
    let s = &job.settings;
    BuildContext::for_image(
        s.steps,
        model.family.scheduler_kind,
        (s.width, s.height),
        model.vae_scale_factor(),
    )
}

/// The job's input after its pre-processors (unchanged without any).
fn pre_process<'a>(extensions: &Extensions, job: &'a Job) -> Result<Cow<'a, Input>> {
    if job.pre_processors.is_empty() {
        return Ok(Cow::Borrowed(&job.input));
    }
    let mut input = job.input.clone();
    let (image, mask) = match &mut input {
        Input::Text { .. } => return Ok(Cow::Borrowed(&job.input)),
        Input::Image(image) => (image, None),
        Input::Inpaint { image, mask } => (image, Some(mask)),
    };
    let processed = extensions.pre_process(
        &job.pre_processors,
        PreInput {
            picture: image.picture.clone(),
            mask: mask.as_ref().map(|m| m.mask.clone()),
        },
    )?;
    image.picture = processed.picture;
    if let (Some(mask), Some(new)) = (mask, processed.mask) {
        mask.mask = new;
    }
    Ok(Cow::Owned(input))
}
