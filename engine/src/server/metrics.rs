//! Prometheus metrics, kept in atomics and rendered as text by hand (the format is simple):
//! queue depth, running jobs, jobs by outcome, a step-time histogram, loaded models, HTTP
//! requests by status.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the step-time histogram buckets.
pub const STEP_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How a job ended, or that it was refused.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// Made its images.
    Completed,
    /// Stopped by an error.
    Failed,
    /// Stopped on request.
    Cancelled,
    /// Refused because the queue was full.
    Rejected,
}

const OUTCOMES: [&str; 4] = ["completed", "failed", "cancelled", "rejected"];

/// The service's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    outcomes: [AtomicU64; 4],
    step_buckets: [AtomicU64; STEP_BUCKETS.len()],
    step_count: AtomicU64,
    step_sum_micros: AtomicU64,
    job_seconds: Mutex<Option<f64>>,
    http: Mutex<Vec<(u16, u64)>>,
}

/// Values read at render time from the rest of the service.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    /// Jobs waiting.
    pub queue_depth: usize,
    /// The queue's capacity.
    pub queue_capacity: usize,
    /// Jobs running.
    pub running: usize,
    /// Models loaded.
    pub models_loaded: usize,
    /// Pipelines served.
    pub pipelines: usize,
}

impl Metrics {
    /// Counts a job outcome.
    pub fn outcome(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many jobs ended with `outcome`.
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome as usize].load(Ordering::Relaxed)
    }

    /// Records one denoising step's duration.
    pub fn step(&self, seconds: f64) {
        for (bound, bucket) in STEP_BUCKETS.iter().zip(&self.step_buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.step_count.fetch_add(1, Ordering::Relaxed);
        self.step_sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// Records a finished job's duration (a moving average feeds `Retry-After`).
    pub fn job_time(&self, seconds: f64) {
        let mut avg = self.job_seconds.lock().unwrap_or_else(|e| e.into_inner());
        *avg = Some(match *avg {
            Some(a) => 0.8 * a + 0.2 * seconds,
            None => seconds,
        });
    }

    /// The moving average of job durations, if any job finished.
    pub fn mean_job_seconds(&self) -> Option<f64> {
        *self.job_seconds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts an HTTP response.
    pub fn http(&self, status: u16) {
        let mut http = self.http.lock().unwrap_or_else(|e| e.into_inner());
        match http.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => http.push((status, 1)),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, g: Gauges) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: usize| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            "beeswax_queue_depth",
            "Jobs waiting in the queue.",
            g.queue_depth,
        );
        gauge(
            "beeswax_queue_capacity",
            "Most jobs that may wait.",
            g.queue_capacity,
        );
        gauge("beeswax_jobs_running", "Jobs running now.", g.running);
        gauge(
            "beeswax_models_loaded",
            "Models loaded in memory.",
            g.models_loaded,
        );
        gauge("beeswax_pipelines", "Pipelines served.", g.pipelines);

        let _ = writeln!(
            out,
            "# HELP beeswax_jobs_total Jobs by outcome (rejected: refused, queue full).\n# TYPE beeswax_jobs_total counter"
        );
        for (name, counter) in OUTCOMES.iter().zip(&self.outcomes) {
            let _ = writeln!(
                out,
                "beeswax_jobs_total{{outcome=\"{name}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }

        let _ = writeln!(
            out,
            "# HELP beeswax_step_seconds Time of one denoising step.\n# TYPE beeswax_step_seconds histogram"
        );
        for (bound, bucket) in STEP_BUCKETS.iter().zip(&self.step_buckets) {
            let _ = writeln!(
                out,
                "beeswax_step_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.step_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "beeswax_step_seconds_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.step_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "beeswax_step_seconds_sum {sum}\nbeeswax_step_seconds_count {count}"
        );

        let _ = writeln!(
            out,
            "# HELP beeswax_http_responses_total HTTP responses by status code.\n# TYPE beeswax_http_responses_total counter"
        );
        let mut http = self.http.lock().unwrap_or_else(|e| e.into_inner()).clone();
        http.sort();
        for (status, n) in http {
            let _ = writeln!(out, "beeswax_http_responses_total{{code=\"{status}\"}} {n}");
        }
        out
    }
}
