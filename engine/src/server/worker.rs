//! Worker threads: each takes the next job from the queue and runs it to the end. Tensor
//! work happens only here, never on the async runtime; a panic in a job fails that job, not
//! the worker.

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::image_job;
use super::jobs::{Event, Job, Status};
use super::metrics::{Metrics, Outcome};
use super::postprocess;
use super::preview::preview_png;
use super::queue::Queue;
use super::samplers::display_name;
use crate::image_out::{encode_png, RgbImage};
use crate::params::GenerationParams;
use crate::{Error, Result};

/// Starts `n` workers on `queue`; they exit when the queue is closed.
pub fn spawn(
    n: usize,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..n.max(1))
        .map(|i| {
            let queue = queue.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name(format!("beeswax-worker-{i}"))
                .spawn(move || {
                    while let Some(job) = queue.pop() {
                        let (status, event) = run(&job, &metrics);
                        // The counters (in `run`) and the running list change before the final
                        // state is published: whoever the last state wakes (a blocking route
                        // answering its client, an event stream) already reads them up to date.
                        queue.done(&job.id);
                        job.finish(status, event);
                    }
                })
        })
        .collect()
}

/// Runs one job, counts how it ended, and returns its final status and closing event for the
/// caller to publish.
pub fn run(job: &Job, metrics: &Metrics) -> (Status, Event) {
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
    let span = tracing::info_span!("job", id = %job.id, pipeline = %job.spec.pipeline.name);
    let _enter = span.enter();
    tracing::info!(
        steps = job.spec.job.steps,
        images = job.spec.images(),
        width = job.spec.job.width,
        height = job.spec.job.height,
        "job started"
    );
    let start = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| execute(job, metrics))).unwrap_or_else(|_| {
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
            let parameters = job.spec.parameters();
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

/// Generates every iteration, stores the PNGs and their parameters in the job.
fn execute(job: &Job, metrics: &Metrics) -> Result<()> {
    let spec = &job.spec;
    let pipeline = &spec.pipeline;
    let total = spec.total_steps();
    let sampler = display_name(&spec.job.scheduler);
    // LoRAs: the prompt's `<lora:...>` tags then the `loras` field, catalog names only (never
    // files on the server); the job runs on networks patched for it, the base model untouched.
    let job_loras =
        crate::lora::prepare_job(&spec.lora_catalog, &spec.job.prompt, &spec.loras, false)?;
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
        let mut settings = spec.job.clone();
        settings.prompt = job_loras.prompt.clone();
        settings.seed = spec
            .job
            .seed
            .wrapping_add((iteration * spec.job.batch) as u64);
        let done_before = iteration * spec.job.steps;
        let mut last = Duration::ZERO;
        let out = image_job::run(
            model,
            &settings,
            spec.image.as_ref(),
            spec.preview_every,
            &mut |p, latents| {
                metrics.step(p.elapsed.saturating_sub(last).as_secs_f64());
                last = p.elapsed;
                let preview = latents.and_then(|l| match preview_png(l) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::warn!(error = %e, "preview failed");
                        None
                    }
                });
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
            },
        )?;
        let mut pngs = Vec::new();
        let mut texts = Vec::new();
        for (i, image) in out.images.into_iter().enumerate() {
            let image = post_process(&pipeline.post_processors, image)?;
            let params = GenerationParams {
                prompt: job_loras.recorded_prompt.clone(),
                negative_prompt: settings.negative_prompt.clone(),
                steps: settings.steps,
                sampler: sampler.clone(),
                guidance: settings.guidance,
                seed: settings.seed.wrapping_add(i as u64),
                width: settings.width,
                height: settings.height,
                model: pipeline.pack.clone(),
                clip_skip: settings.clip_skip,
            };
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

/// Runs the pipeline's post-processors on `image`, in order.
fn post_process(names: &[String], mut image: RgbImage) -> Result<RgbImage> {
    for name in names {
        let f = postprocess::find(name)
            .ok_or_else(|| Error::invalid("post-processor", name, "is no longer registered"))?;
        image = f(image).map_err(|m| Error::invalid("post-processor", name, m))?;
    }
    Ok(image)
}
