//! Jobs and their state: status, the event history that SSE streams replay, the images.
//! A job is shared (`Arc<Job>`) between the HTTP handlers and the worker thread running it;
//! its state sits behind a mutex and every change bumps a `watch` counter that waiting
//! handlers and event streams wake on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use super::request::JobSpec;
use crate::image_in::Mask;
use crate::image_out::RgbImage;
use crate::pipeline::{ImageInput, Input, MaskInput};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting in the queue.
    Queued,
    /// On a worker.
    Running,
    /// Done, images available.
    Completed,
    /// Stopped by an error.
    Failed,
    /// Stopped on request.
    Cancelled,
}

impl Status {
    /// Whether the job has finished (completed, failed or cancelled).
    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// Which API submitted a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `/v1/jobs`.
    Native,
    /// `/v1/images/generations`.
    OpenAi,
    /// `/sdapi/v1/txt2img`.
    A1111,
}

/// One server-sent event of a job.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Waiting; `position` 1 is next.
    Queued {
        /// Place in the queue.
        position: usize,
    },
    /// A worker took the job.
    Started,
    /// A step finished.
    Progress {
        /// Steps done (over all iterations).
        step: usize,
        /// Steps in all.
        total: usize,
        /// A preview of the latents (`data:image/png;base64,...`): a tiny autoencoder's
        /// decoding at image size, else the family's latent colour map at latent size.
        #[serde(skip_serializing_if = "Option::is_none")]
        preview: Option<String>,
    },
    /// Done.
    Completed {
        /// Image URLs.
        images: Vec<String>,
        /// The settings used.
        parameters: serde_json::Value,
    },
    /// Stopped by an error.
    Failed {
        /// What went wrong.
        error: String,
    },
    /// Stopped on request.
    Cancelled,
}

impl Event {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Queued { .. } => "queued",
            Event::Started => "started",
            Event::Progress { .. } => "progress",
            Event::Completed { .. } => "completed",
            Event::Failed { .. } => "failed",
            Event::Cancelled => "cancelled",
        }
    }
}

/// A job's changing state.
#[derive(Debug)]
pub struct JobState {
    /// Where it is.
    pub status: Status,
    /// Every event so far, in order.
    pub events: Vec<Event>,
    /// Queue position while queued (1 is next).
    pub position: Option<usize>,
    /// Steps done.
    pub step: usize,
    /// Steps in all.
    pub total: usize,
    /// The latest preview PNG.
    pub preview: Option<Vec<u8>>,
    /// The finished PNGs (with their parameters chunk).
    pub images: Vec<Vec<u8>>,
    /// AUTOMATIC1111 `parameters` text of each image.
    pub infotexts: Vec<String>,
    /// Warnings (e.g. a truncated prompt).
    pub warnings: Vec<String>,
    /// The error, when failed.
    pub error: Option<String>,
    /// When it started running.
    pub started_at: Option<SystemTime>,
    /// When it finished.
    pub finished_at: Option<SystemTime>,
    /// When it finished, monotonic (for retention).
    pub finished: Option<Instant>,
}

impl JobState {
    fn new(status: Status, total: usize) -> Self {
        Self {
            status,
            events: Vec::new(),
            position: None,
            step: 0,
            total,
            preview: None,
            images: Vec::new(),
            infotexts: Vec::new(),
            warnings: Vec::new(),
            error: None,
            started_at: None,
            finished_at: None,
            finished: None,
        }
    }

    /// The bytes this state holds on the heap: images, preview, texts and the events' preview
    /// URLs; what bounds the finished-job store (`--max-finished-bytes`).
    pub fn bytes(&self) -> usize {
        let texts = |v: &[String]| v.iter().map(String::len).sum::<usize>();
        let events: usize = (self.events.iter())
            .map(|e| match e {
                Event::Progress {
                    preview: Some(url), ..
                } => url.len(),
                Event::Failed { error } => error.len(),
                _ => 0,
            })
            .sum();
        self.images.iter().map(Vec::len).sum::<usize>()
            + self.preview.as_ref().map_or(0, Vec::len)
            + texts(&self.infotexts)
            + texts(&self.warnings)
            + self.error.as_ref().map_or(0, String::len)
            + events
    }
}

/// What every route shows of a job, fixed when it is accepted: kept (and written to the data
/// directory) for as long as the job, after its input pictures are gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The pipeline's name.
    pub pipeline: String,
    /// The settings used (the native API's `parameters`).
    pub parameters: Value,
    /// Each image's settings as a `/v1/jobs` body would give them (the gallery's).
    pub image_parameters: Vec<Value>,
}

impl Summary {
    /// The summary of `spec`.
    pub fn of(spec: &JobSpec) -> Self {
        Self {
            pipeline: spec.pipeline.name.clone(),
            parameters: spec.parameters(),
            image_parameters: (0..spec.images())
                .map(|i| spec.image_parameters(i))
                .collect(),
        }
    }
}

/// A submitted job.
#[derive(Debug)]
pub struct Job {
    /// Its id (a UUID).
    pub id: String,
    /// The API that submitted it.
    pub origin: Origin,
    /// What to run, with its input pictures left out (they wait in the job until a worker
    /// takes them, then go); `None` for a job restored from the data directory that will not
    /// run again (finished, or failed because it could not be re-run).
    pub spec: Option<JobSpec>,
    /// What the routes show of it.
    pub summary: Summary,
    /// When it was submitted.
    pub created_at: SystemTime,
    input: Mutex<Option<Input>>,
    cancel: AtomicBool,
    shutdown: AtomicBool,
    state: Mutex<JobState>,
    version: watch::Sender<u64>,
}

impl Job {
    /// A new queued job.
    pub fn new(spec: JobSpec, origin: Origin) -> Self {
        Self::accepted(
            uuid::Uuid::new_v4().to_string(),
            spec,
            origin,
            SystemTime::now(),
        )
    }

    /// A queued job with a given id and submission time (one accepted before a restart).
    pub fn accepted(id: String, mut spec: JobSpec, origin: Origin, created_at: SystemTime) -> Self {
        let summary = Summary::of(&spec);
        let shell = without_pixels(&spec.job.input);
        let input = std::mem::replace(&mut spec.job.input, shell);
        let total = spec.total_steps();
        Self {
            id,
            origin,
            spec: Some(spec),
            summary,
            created_at,
            input: Mutex::new(Some(input)),
            cancel: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            state: Mutex::new(JobState::new(Status::Queued, total)),
            version: watch::channel(0).0,
        }
    }

    /// A job that will not run here: one restored from the data directory already finished
    /// (or failed at restore), or a fleet job that runs elsewhere and that this API node
    /// follows (see `crate::fleet`), its state given.
    pub fn closed(
        id: String,
        origin: Origin,
        summary: Summary,
        created_at: SystemTime,
        state: impl FnOnce(&mut JobState),
    ) -> Self {
        let mut s = JobState::new(Status::Failed, 0);
        state(&mut s);
        Self {
            id,
            origin,
            spec: None,
            summary,
            created_at,
            input: Mutex::new(None),
            cancel: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            state: Mutex::new(s),
            version: watch::channel(0).0,
        }
    }

    /// The job's input (its picture and mask for image jobs), for the worker that runs it:
    /// taken once, so the job no longer holds it once it has run.
    pub fn take_input(&self) -> Option<Input> {
        self.input
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// The job's input while it has not been taken (to record it), or `None`.
    pub fn with_input<R>(&self, f: impl FnOnce(Option<&Input>) -> R) -> R {
        f(self
            .input
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref())
    }

    /// Bytes of input pixels the job holds (0 once a worker took them).
    pub fn input_bytes(&self) -> usize {
        self.with_input(|input| input.map_or(0, pixel_bytes))
    }

    /// Locks the state for reading.
    pub fn state(&self) -> MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the state and wakes everyone waiting on the job.
    pub fn update(&self, f: impl FnOnce(&mut JobState)) {
        f(&mut self.state());
        self.version.send_modify(|v| *v += 1);
    }

    /// A receiver that changes whenever the state does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Asks a running job to stop at its next step.
    pub fn request_cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Stops the job because the server shuts down: it stays accepted in the data directory
    /// and runs again at the next start.
    pub fn stop_for_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.request_cancel();
    }

    /// Whether the job was stopped by a shutdown (not by a client).
    pub fn stopped_for_shutdown(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Whether cancellation was asked for.
    pub fn cancel_requested(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Sets the queue position, with a `queued` event when it changes.
    pub fn set_position(&self, position: usize) {
        if self.state().position == Some(position) {
            return;
        }
        self.update(|s| {
            s.position = Some(position);
            s.events.push(Event::Queued { position });
        });
    }

    /// Ends the job with `status` and its closing `event`, unless it already ended.
    pub fn finish(&self, status: Status, event: Event) {
        self.update(|s| {
            if s.status.is_final() {
                return;
            }
            s.status = status;
            s.position = None;
            s.events.push(event);
            s.finished_at = Some(SystemTime::now());
            s.finished = Some(Instant::now());
        });
    }

    /// Waits until the job has finished; returns its final status.
    pub async fn finished(&self) -> Status {
        let mut rx = self.subscribe();
        loop {
            let status = self.state().status;
            if status.is_final() {
                return status;
            }
            if rx.changed().await.is_err() {
                return self.state().status;
            }
        }
    }

    /// The URL path of image `n` (0-based).
    pub fn image_path(&self, n: usize) -> String {
        format!("/v1/jobs/{}/images/{n}", self.id)
    }
}

/// `input` without its pixels: the same mode, strength and mask settings (what the routes
/// show), the picture and mask empty.
fn without_pixels(input: &Input) -> Input {
    let image = |i: &ImageInput| ImageInput {
        picture: RgbImage {
            width: i.picture.width,
            height: i.picture.height,
            data: Vec::new(),
        },
        strength: i.strength,
        resize: i.resize,
        sample_posterior: i.sample_posterior,
        init_noise: None,
    };
    match input {
        Input::Text { .. } => Input::Text { init_latents: None },
        Input::Image(i) => Input::Image(image(i)),
        Input::Inpaint { image: i, mask } => Input::Inpaint {
            image: image(i),
            mask: MaskInput {
                mask: Mask {
                    width: mask.mask.width,
                    height: mask.mask.height,
                    data: Vec::new(),
                },
                blur: mask.blur,
                area: mask.area,
                content: mask.content,
            },
        },
    }
}

/// Bytes of pixels in `input`.
fn pixel_bytes(input: &Input) -> usize {
    let mask = match input {
        Input::Inpaint { mask, .. } => mask.mask.data.len() * std::mem::size_of::<f32>(),
        _ => 0,
    };
    input.image().map_or(0, |i| i.picture.data.len()) + mask
}

/// Seconds since the Unix epoch.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch (how the data directory records times).
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time `ms` milliseconds after the Unix epoch.
pub fn from_unix_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_bytes_count_images_preview_texts_and_preview_events() {
        let mut s = JobState::new(Status::Completed, 4);
        assert_eq!(s.bytes(), 0);
        s.images = vec![vec![0; 1000], vec![0; 24]];
        s.preview = Some(vec![0; 100]);
        s.infotexts = vec!["abc".into()];
        s.events.push(Event::Progress {
            step: 1,
            total: 4,
            preview: Some("x".repeat(50)),
        });
        s.events.push(Event::Started);
        assert_eq!(s.bytes(), 1000 + 24 + 100 + 3 + 50);
    }

    #[test]
    fn without_pixels_keeps_settings_and_drops_the_pixels() {
        let picture = RgbImage {
            width: 40,
            height: 30,
            data: vec![7; 40 * 30 * 3],
        };
        let input = Input::Inpaint {
            image: ImageInput {
                picture,
                strength: 0.6,
                resize: Default::default(),
                sample_posterior: false,
                init_noise: None,
            },
            mask: MaskInput {
                mask: Mask {
                    width: 40,
                    height: 30,
                    data: vec![1.0; 1200],
                },
                blur: 2.0,
                area: Default::default(),
                content: Default::default(),
            },
        };
        assert_eq!(pixel_bytes(&input), 3600 + 4800);
        let shell = without_pixels(&input);
        assert_eq!(pixel_bytes(&shell), 0);
        assert_eq!(shell.mode(), "inpaint");
        assert_eq!(shell.image().map(|i| i.strength), Some(0.6));
    }

    #[test]
    fn unix_millis_round_trip() {
        let t = from_unix_millis(1_764_800_000_123);
        assert_eq!(unix_millis(t), 1_764_800_000_123);
    }
}
