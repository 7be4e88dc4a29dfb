//! A job's counters and state change before anyone is told it ended: right after a blocking
//! route (OpenAI, A1111) answers, or the event stream says `completed`, `/metrics` counts the
//! job and `/sdapi/v1/progress` no longer shows it running.
//!
//! To make a late update visible every time, not only under load, the worker is held for a
//! while when it logs the end of a job of the pipeline `linger` ([`Linger`], a tracing layer):
//! counters changed after the job's final state was published would be read during that pause.

use std::sync::OnceLock;
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use super::*;

/// How long the worker is held.
const LINGER: Duration = Duration::from_secs(1);

/// Marks the spans of jobs of the pipeline `linger`.
struct Lingers;

/// Holds the worker thread for [`LINGER`] at the `job completed` event of a `linger` job.
struct Linger;

/// Finds a field's value by name.
struct Find<'a> {
    name: &'a str,
    value: Option<String>,
}

impl Visit for Find<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == self.name {
            self.value = Some(format!("{value:?}"));
        }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Linger {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut pipeline = Find {
            name: "pipeline",
            value: None,
        };
        attrs.record(&mut pipeline);
        if pipeline.value.as_deref() == Some("linger") {
            ctx.span(id).unwrap().extensions_mut().insert(Lingers);
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut message = Find {
            name: "message",
            value: None,
        };
        event.record(&mut message);
        let lingers = ctx.event_scope(event).is_some_and(|mut scope| {
            scope.any(|span| span.extensions().get::<Lingers>().is_some())
        });
        if lingers && message.value.as_deref() == Some("job completed") {
            std::thread::sleep(LINGER);
        }
    }
}

/// Installs [`Linger`] for the whole test process (once).
fn install_linger() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(Linger);
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
}

/// The `/metrics` value of `beeswax_jobs_total{outcome="completed"}`, and of running jobs.
async fn completed_and_running(server: &TestServer) -> (Option<f64>, Option<f64>) {
    let text = metrics(&server.url).await;
    (
        metric(&text, "beeswax_jobs_total{outcome=\"completed\"}"),
        metric(&text, "beeswax_jobs_running"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_progress_are_up_to_date_when_a_generation_returns() {
    install_linger();
    let linger = "[[pipeline]]\nname = \"linger\"\npack = \"tiny-sd\"\n";
    let server = TestServer::start_with(config(), &[("zz-linger.toml", linger)]).await;

    let body = json!({"prompt": "openai", "model": "linger", "steps": 2, "size": "64x64",
                      "response_format": "b64_json"});
    expect_json(post(&server.at("/v1/images/generations"), body).await, 200).await;
    let counts = completed_and_running(&server).await;
    assert_eq!(counts, (Some(1.0), Some(0.0)), "after OpenAI");

    let body = json!({"prompt": "a1111", "steps": 2,
                      "override_settings": {"sd_model_checkpoint": "linger"}});
    expect_json(post(&server.at("/sdapi/v1/txt2img"), body).await, 200).await;
    let progress = get_json(&server.at("/sdapi/v1/progress")).await;
    assert_eq!(
        progress["state"]["job"], "",
        "A1111 progress is idle: {progress}"
    );
    assert_eq!(progress["progress"], 0.0, "{progress}");
    let counts = completed_and_running(&server).await;
    assert_eq!(counts, (Some(2.0), Some(0.0)), "after A1111");

    let id = submit(
        &server.url,
        json!({"prompt": "native", "pipeline": "linger", "steps": 2}),
    )
    .await;
    let events = get(&server.at(&format!("/v1/jobs/{id}/events"))).await;
    let events = read_events(events, |_, _| {}).await;
    assert_eq!(events.last().unwrap().0, "completed");
    let counts = completed_and_running(&server).await;
    assert_eq!(counts, (Some(3.0), Some(0.0)), "after the completed event");
    server.stop().await;
}
