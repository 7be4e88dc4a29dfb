//! Worker threads: each takes the next job from the queue and runs it to the end. Tensor
//! work happens only here, never on the async runtime; a panic in a job fails that job, not
//! the worker.

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;

use super::jobs::{Event, Job, Status};
use super::keeper::Keeper;
use super::metrics::{Metrics, Outcome};
use super::queue::Queue;
use super::request::JobSpec;
use crate::extensions::Extensions;
use crate::family::Model;
use crate::image_out::encode_png;
use crate::params::GenerationParams;
use crate::pipeline::{run as run_job, Input, StepProgress};
use crate::{Error, Result};

/// Starts `n` workers on `queue`; they exit when the queue is closed.
pub fn spawn(
    n: usize,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    extensions: Arc<Extensions>,
    keeper: Arc<Keeper>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..n.max(1))
        .map(|i| {
            let queue = queue.clone();
            let metrics = metrics.clone();
            let extensions = extensions.clone();
            let keeper = keeper.clone();
            std::thread::Builder::new()
                .name(format!("beeswax-worker-{i}"))
                .spawn(move || {
                    while let Some(job) = queue.pop() {
                        let (status, event) = run(&job, &metrics, &extensions);
                        // The counters (in `run`), the running list and the data directory
                        // change before the final state is published: whoever the last state
                        // wakes (a blocking route answering its client, an event stream, a
                        // client that then restarts the server) reads them up to date.
                        queue.done(&job.id);
                        keeper.finishing(&job, status);
                        job.finish(status, event);
                        keeper.prune();
                    }
                })
        })
        .collect()
}

/// Runs one job, counts how it ended, and returns its final status and closing event for the
/// caller to publish. The job's input pictures are taken from it and dropped once it has run.
pub fn run(job: &Job, metrics: &Metrics, extensions: &Extensions) -> (Status, Event) {
    let input = job.take_input();
    let Some(spec) = &job.spec else {
        let error = "the job cannot run: it was restored finished".to_string();
        metrics.outcome(Outcome::Failed);
        return (Status::Failed, Event::Failed { error });
    };
    if job.cancel_requested() {
        metrics.outcome(Outcome::Cancelled);
        return (Status::Cancelled, Event::Cancelled);
    }
    job.update(|s| {
        s.status = Status::Running;
        s.position = None;
        s.started_at = Some(SystemTime::now());
        s.events.push(Event::Started);
    });
    let span = tracing::info_span!("job", id = %job.id, pipeline = %spec.pipeline.name);
    let _enter = span.enter();
    tracing::info!(
        steps = spec.job.settings.steps,
        images = spec.images(),
        width = spec.job.settings.width,
        height = spec.job.settings.height,
        "job started"
    );
    let start = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let input = input
            .ok_or_else(|| Error::invalid("job input", "taken", "a job that has not run before"))?;
        execute(job, spec, input, metrics, extensions)
    }))
    .unwrap_or_else(|_| {
        Err(Error::invalid(
            "job",
            "panic",
            "an internal error stopped the job",
        ))
    });
    let seconds = start.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            metrics.outcome(Outcome::Completed);
            metrics.job_time(seconds);
            tracing::info!(seconds, "job completed");
            let images = (0..job.state().images.len())
                .map(|n| job.image_path(n))
                .collect();
            let parameters = job.summary.parameters.clone();
            (Status::Completed, Event::Completed { images, parameters })
        }
        Err(Error::Cancelled) => {
            metrics.outcome(Outcome::Cancelled);
            tracing::info!(seconds, "job cancelled");
            (Status::Cancelled, Event::Cancelled)
        }
        Err(e) => {
            let error = e.to_string();
            job.update(|s| s.error = Some(error.clone()));
            metrics.outcome(Outcome::Failed);
            tracing::warn!(seconds, %error, "job failed");
            (Status::Failed, Event::Failed { error })
        }
    }
}

/// A job's images (after its post-processors, which may resize when their manifest says so)
/// are never larger than the pipeline's limits.
fn within_limits(
    images: &[crate::image_out::RgbImage],
    limits: &super::config::Limits,
    post_processors: &[String],
) -> Result<()> {
    if post_processors.is_empty() {
        return Ok(());
    }
    let too_large = images
        .iter()
        .find(|i| i.width > limits.max_width || i.height > limits.max_height);
    match too_large {
        Some(i) => Err(Error::Extension {
            kind: "post-processor",
            name: post_processors.join(", "),
            message: format!(
                "made a {}x{} picture, larger than this pipeline's limit of {}x{} \
                 (max_width x max_height)",
                i.width, i.height, limits.max_width, limits.max_height
            ),
        }),
        None => Ok(()),
    }
}

/// Generates every iteration from `input` (dropped when done), stores the PNGs and their
/// parameters in the job.
fn execute(
    job: &Job,
    spec: &JobSpec,
    input: Input,
    metrics: &Metrics,
    extensions: &Extensions,
) -> Result<()> {
    let pipeline = &spec.pipeline;
    let total = spec.total_steps();
    // LoRAs: the prompt's `<lora:...>` tags then the `loras` field, catalog names only (never
    // files on the server); the job runs on networks patched for it, the base model untouched.
    let settings = &spec.job.settings;
    let job_loras =
        crate::lora::prepare_job(&spec.lora_catalog, &settings.prompt, &spec.loras, false)?;
    let applied;
    let model = if job_loras.loras.is_empty() {
        &*pipeline.model
    } else {
        applied = crate::lora::apply(&pipeline.model, &job_loras.loras)?;
        let mut notes = applied.warnings();
        notes.extend(job_loras.notes.iter().cloned());
        job.update(|s| s.warnings.extend(notes));
        &applied.model
    };
    for iteration in 0..spec.iterations {
        let mut one = spec.job.clone();
        one.input = input.clone();
        one.settings.prompt = job_loras.prompt.clone();
        one.settings.seed = settings
            .seed
            .wrapping_add((iteration * settings.batch) as u64);
        let done_before = iteration * settings.steps;
        let mut last = Duration::ZERO;
        let out = run_job(model, &one, extensions, &mut |p: StepProgress| {
            metrics.step(p.elapsed.saturating_sub(last).as_secs_f64());
            last = p.elapsed;
            let preview = spec
                .preview_every
                .filter(|&every| p.step % every == 0 || p.step == p.total)
                .and_then(|_| preview(model, &p));
            job.update(|s| {
                s.step = done_before + p.step;
                let url = preview.map(|(url, png)| {
                    s.preview = Some(png);
                    url
                });
                s.events.push(Event::Progress {
                    step: s.step,
                    total,
                    preview: url,
                });
            });
            if job.cancel_requested() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        within_limits(&out.images, &pipeline.limits, &one.post_processors)?;
        let mut pngs = Vec::new();
        let mut texts = Vec::new();
        for (i, image) in out.images.into_iter().enumerate() {
            let mut params =
                GenerationParams::for_image(&one, i, &spec.sampler_name, &pipeline.pack);
            params.prompt = job_loras.recorded_prompt.clone();
            params.set_embeddings(&out.embeddings);
            let text = params.to_a1111();
            pngs.push(encode_png(&image, &text)?);
            texts.push(text);
        }
        job.update(|s| {
            s.images.extend(pngs);
            s.infotexts.extend(texts);
            s.warnings.extend(out.warnings);
        });
    }
    Ok(())
}

/// The preview of the latents after a step as a `data:image/png;base64,...` URL and the PNG
/// bytes, by the model's preview (a tiny autoencoder's decoding, else the family's latent →
/// RGB map: [`Model::preview`]); a failure is logged and skipped.
fn preview(model: &Model, p: &StepProgress) -> Option<(String, Vec<u8>)> {
    let png = model
        .preview(&p.latents)
        .and_then(|rgb| encode_png(&rgb, ""));
    match png {
        Ok(png) => {
            let url = format!(
                "data:image/png;base64,{}",
                base64::engine::general_purpose::STANDARD.encode(&png)
            );
            Some((url, png))
        }
        Err(e) => {
            tracing::warn!(error = %e, "preview failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_out::RgbImage;

    #[test]
    fn post_processed_images_stay_within_the_pipeline_limits() {
        let limits = super::super::config::Limits {
            max_width: 64,
            max_height: 48,
            ..Default::default()
        };
        let image = |width, height| RgbImage {
            width,
            height,
            data: vec![0; width * height * 3],
        };
        let post = ["upscale".to_string()];
        assert!(within_limits(&[image(64, 48)], &limits, &post).is_ok());
        let e = within_limits(&[image(64, 48), image(128, 48)], &limits, &post).unwrap_err();
        let message = e.to_string();
        assert!(
            message.contains("post-processor upscale")
                && message.contains("128x48")
                && message.contains("64x48"),
            "{message}"
        );
    }
}
