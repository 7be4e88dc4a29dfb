//! `beeswax bench pipeline`: one whole job with its stage times and peak memory, warm (the job
//! on the loaded model) or cold (`--cold`: from process start to the PNG written, with each
//! component's load time).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use beeswax::bench::{peak_rss_bytes, process_age};
use beeswax::extensions::Extensions;
use beeswax::family::LOAD_TARGET;
use beeswax::image_out::write_png;
use beeswax::params::GenerationParams;
use beeswax::pipeline::{resolve, run as run_job, JobRequest};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

use crate::args::{BenchPipelineArgs, Global};
use crate::source;

/// The measured job.
struct Report {
    /// Process start to the command's first line (`--cold` only).
    startup: Option<Duration>,
    /// Reading the manifests and loading the model (`--cold` only).
    load: Option<Duration>,
    /// Each component's load time, in the order they finished.
    components: Vec<(String, f64)>,
    encode: Duration,
    steps: Duration,
    decode: Duration,
    /// The job's time outside encoding, steps and decoding (resolving the scheduler, noise,
    /// post-processing): what a few-step job pays beyond the networks.
    other: Duration,
    save: Duration,
    /// Warm: the job (as diffusers' timed call, without saving); cold: process start to PNG.
    total: Duration,
    peak_mb: Option<f64>,
}

pub fn run(global: &Global, a: BenchPipelineArgs) -> Result<()> {
    let startup = a.cold.then(process_age).flatten();
    let begin = Instant::now();
    let components = LoadEvents::install();
    let files = source::read_manifests(global)?;
    let folder = files.as_ref().map(|f| f.parse()).transpose()?;
    let chosen = source::load(global, folder.as_ref(), &a.model)?;
    let load = begin.elapsed();
    let request = JobRequest {
        prompt: a.prompt.clone(),
        steps: a.steps,
        guidance: a.guidance,
        width: a.width,
        height: a.height,
        sampler: a.scheduler.clone(),
        seed: Some(0),
        ..Default::default()
    };
    let extensions = Extensions::builtin();
    let model = &chosen.model;
    // Each run resolves its job, as a served request does; the fastest run is reported.
    let mut fastest = None;
    for _ in 0..a.repeat.max(1) {
        let job_start = Instant::now();
        let job = resolve(
            model,
            &chosen.defaults,
            &extensions.schedulers,
            request.clone(),
        )?;
        let out = run_job(model, &job, &extensions, &mut |_| {
            std::ops::ControlFlow::Continue(())
        })?;
        let job_time = job_start.elapsed();
        if fastest.as_ref().is_none_or(|(_, _, t)| job_time < *t) {
            fastest = Some((job, out, job_time));
        }
    }
    let Some((job, out, job_time)) = fastest else {
        anyhow::bail!("--repeat must be at least 1");
    };
    let save_start = Instant::now();
    let path = a
        .output
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("beeswax-bench.png"));
    let sampler = job.sampler.to_string();
    let params = GenerationParams::for_image(&job, 0, &sampler, &chosen.name);
    if let Some(image) = out.images.first() {
        write_png(&path, image, &params.to_a1111())?;
    }
    let save = save_start.elapsed();
    let t = &out.times;
    let report = Report {
        startup,
        load: a.cold.then_some(load),
        components: components.take(),
        encode: t.text_encoding,
        steps: t.denoising,
        decode: t.decoding,
        other: job_time.saturating_sub(t.text_encoding + t.denoising + t.decoding),
        save,
        total: if a.cold {
            startup.unwrap_or_default() + begin.elapsed()
        } else {
            job_time
        },
        peak_mb: peak_rss_bytes().map(|b| b as f64 / 1048576.0),
    };
    let steps = job.settings.steps;
    if a.json {
        println!("{}", report.json(steps));
    } else {
        let s = &job.settings;
        println!(
            "pipeline {} {}x{}, {} steps of {}, guidance {}{}:",
            chosen.name,
            s.width,
            s.height,
            steps,
            job.sampler,
            s.guidance,
            if a.cold { ", cold" } else { "" }
        );
        print!("{}", report.table(steps));
        println!("  wrote {}", path.display());
    }
    Ok(())
}

impl Report {
    fn rows(&self, steps: usize) -> Vec<(String, f64)> {
        let mut rows = Vec::new();
        if let Some(d) = self.startup {
            rows.push(("startup".to_string(), d.as_secs_f64()));
        }
        if let Some(d) = self.load {
            rows.push(("load".to_string(), d.as_secs_f64()));
            for (component, seconds) in &self.components {
                rows.push((format!("load_{component}"), *seconds));
            }
        }
        rows.extend([
            ("encode".to_string(), self.encode.as_secs_f64()),
            ("steps".to_string(), self.steps.as_secs_f64()),
            (
                "mean_step".to_string(),
                self.steps.as_secs_f64() / steps.max(1) as f64,
            ),
            ("decode".to_string(), self.decode.as_secs_f64()),
            ("other".to_string(), self.other.as_secs_f64()),
            ("save".to_string(), self.save.as_secs_f64()),
            ("total".to_string(), self.total.as_secs_f64()),
        ]);
        rows
    }

    /// One JSON object: `<stage>_s` seconds and `peak_rss_mb`.
    fn json(&self, steps: usize) -> String {
        let mut fields: Vec<String> = self
            .rows(steps)
            .into_iter()
            .map(|(name, s)| format!("\"{name}_s\": {s:.4}"))
            .collect();
        fields.push(format!(
            "\"peak_rss_mb\": {}",
            self.peak_mb.map_or("null".into(), |m| format!("{m:.1}"))
        ));
        format!("{{{}}}", fields.join(", "))
    }

    fn table(&self, steps: usize) -> String {
        let mut out = String::new();
        for (name, s) in self.rows(steps) {
            out.push_str(&format!("  {:<20} {s:>9.4} s\n", name.replace('_', " ")));
        }
        if let Some(mb) = self.peak_mb {
            out.push_str(&format!("  {:<20} {mb:>9.1} MB\n", "peak RSS"));
        }
        out
    }
}

/// Collects the loaders' per-component times ([`LOAD_TARGET`] events).
#[derive(Clone, Default)]
struct LoadEvents(Arc<Mutex<Vec<(String, f64)>>>);

impl LoadEvents {
    /// Installs the collector as the process's subscriber (a no-op collector if another is
    /// already installed).
    fn install() -> Self {
        let events = Self::default();
        let subscriber = tracing_subscriber::registry().with(events.clone());
        let _ = tracing::subscriber::set_global_default(subscriber);
        events
    }

    fn take(&self) -> Vec<(String, f64)> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LoadEvents {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != LOAD_TARGET {
            return;
        }
        let mut fields = LoadFields::default();
        event.record(&mut fields);
        if let (Some(component), Some(seconds), Ok(mut events)) =
            (fields.component, fields.seconds, self.0.lock())
        {
            events.push((component, seconds));
        }
    }
}

#[derive(Default)]
struct LoadFields {
    component: Option<String>,
    seconds: Option<f64>,
}

impl Visit for LoadFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "seconds" {
            self.seconds = Some(value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "component" {
            self.component = Some(value.to_string());
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}
