//! Connecting to NATS and making sure the stream and buckets exist with settings beeswax can
//! work with.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, Consumer};
use async_nats::jetstream::{self, kv, object_store, stream};
use async_nats::ConnectOptions;

use super::{is_subject_token, job_subject, FleetConfig, FleetError};

/// A connection to the fleet's NATS: the client, JetStream, the jobs stream and the buckets.
#[derive(Clone)]
pub struct Fleet {
    /// The settings.
    pub config: FleetConfig,
    /// The core NATS client (events).
    pub client: async_nats::Client,
    /// JetStream.
    pub js: jetstream::Context,
    /// The jobs stream.
    pub jobs: stream::Stream,
    /// Job state records and cancel requests.
    pub state: kv::Store,
    /// Finished images.
    pub images: object_store::ObjectStore,
    /// Image jobs' input pictures and masks, until their job has run.
    pub inputs: object_store::ObjectStore,
}

/// The state bucket's name.
pub const STATE_BUCKET: &str = "BEESWAX_JOB_STATE";
/// The images bucket's name.
pub const IMAGE_BUCKET: &str = "BEESWAX_IMAGES";
/// The input pictures bucket's name.
pub const INPUT_BUCKET: &str = "BEESWAX_INPUTS";
/// Longest wait for one answer about a consumer in [`Fleet::lasting_consumer`].
pub const CONSUMER_WAIT: Duration = Duration::from_secs(5);
/// The dead-letter stream's name.
pub const DEAD_STREAM: &str = "BEESWAX_DEAD";

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Connects (retrying with backoff for `config.connect_timeout`), then creates the stream
    /// and buckets or checks the existing ones.
    pub async fn connect(config: FleetConfig) -> Result<Self, FleetError> {
        let client = connect_with_retry(&config).await?;
        let js = jetstream::new(client.clone());
        let jobs = jobs_stream(&js, &config).await?;
        dead_stream(&js).await?;
        let state = state_bucket(&js, &config).await?;
        let images = object_bucket(
            &js,
            IMAGE_BUCKET,
            "beeswax finished images",
            config.keep_finished,
        )
        .await?;
        // Pictures of waiting jobs must outlive the retention of finished ones, as states do.
        let inputs = object_bucket(
            &js,
            INPUT_BUCKET,
            "beeswax input pictures of image jobs",
            config.keep_finished + Duration::from_secs(24 * 3600),
        )
        .await?;
        Ok(Self {
            config,
            client,
            js,
            jobs,
            state,
            images,
            inputs,
        })
    }

    /// The durable pull consumer of `pipeline`'s jobs (`beeswax-<pipeline>`), created if
    /// missing. Every worker serving the pipeline shares it (a work-queue stream takes one
    /// consumer per subject); API nodes create it too, so that its lag (what KEDA scales
    /// workers on) exists before any worker does.
    pub async fn consumer(&self, pipeline: &str) -> Result<Consumer<pull::Config>, FleetError> {
        if !is_subject_token(pipeline) {
            return Err(FleetError::PipelineName(pipeline.to_string()));
        }
        let durable = format!("beeswax-{pipeline}");
        let config = pull::Config {
            durable_name: Some(durable.clone()),
            description: Some(format!("beeswax workers of pipeline {pipeline}")),
            filter_subject: job_subject(pipeline),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.config.ack_wait,
            // One more than the runs allowed: the delivery after the last run is the one
            // that dead-letters the job (its worker died every time, so nobody else can).
            max_deliver: self.config.max_deliver + 1,
            ..Default::default()
        };
        self.jobs
            .get_or_create_consumer(&durable, config)
            .await
            .map_err(|e| FleetError::nats(format!("creating the consumer {durable}"), e))
    }

    /// [`Fleet::consumer`], asked for again (with backoff, each try bounded by
    /// [`CONSUMER_WAIT`]) while NATS does not answer: a request sent as the server goes away
    /// is never answered, and a worker starting just as NATS restarted waited for ever (or
    /// exited) and left its jobs to others. Other errors (a pipeline name NATS cannot take)
    /// come back at once.
    pub async fn lasting_consumer(
        &self,
        pipeline: &str,
    ) -> Result<Consumer<pull::Config>, FleetError> {
        let mut backoff = FIRST_RETRY;
        loop {
            let error = match tokio::time::timeout(CONSUMER_WAIT, self.consumer(pipeline)).await {
                Ok(Err(e @ FleetError::Nats { .. })) => e,
                Ok(done) => return done,
                Err(_) => FleetError::nats(
                    format!("getting the consumer of {pipeline}"),
                    "no answer (reconnecting?)",
                ),
            };
            tracing::warn!(%error, retry_in = ?backoff, "cannot get the job consumer yet");
            tokio::time::sleep(backoff).await;
            backoff = next_retry(backoff);
        }
    }

    /// Whether the client is connected now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

async fn options(config: &FleetConfig) -> Result<ConnectOptions, FleetError> {
    let options = match &config.creds {
        Some(path) => credentials(path).await?,
        None => ConnectOptions::new(),
    };
    let options = match &config.tls_ca {
        Some(ca) => {
            if !ca.is_file() {
                return Err(FleetError::Tls {
                    path: ca.display().to_string(),
                    reason: "no such file".to_string(),
                });
            }
            options.add_root_certificates(ca.clone())
        }
        None => options,
    };
    let url = config.url.clone();
    Ok(options
        .name(format!("beeswax {}", config.node))
        .connection_timeout(Duration::from_secs(5))
        // Once connected, reconnect forever: jobs wait in the stream meanwhile.
        .max_reconnects(None)
        .event_callback(move |event| {
            let url = url.clone();
            async move {
                match event {
                    async_nats::Event::Connected => tracing::info!(%url, "NATS connected"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!(%url, "NATS disconnected: reconnecting")
                    }
                    other => tracing::info!(%url, event = %other, "NATS event"),
                }
            }
        }))
}

/// The options authenticating with `path`: a `.creds` file (a user JWT and its NKey seed,
/// as `nsc` writes it), or a file holding an NKey user seed (`SU...`, for servers that list
/// users by NKey).
async fn credentials(path: &std::path::Path) -> Result<ConnectOptions, FleetError> {
    let problem = |reason: String| FleetError::Credentials {
        path: path.display().to_string(),
        reason,
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| problem(e.to_string()))?;
    if text.contains("-----BEGIN NATS USER JWT-----") {
        return ConnectOptions::with_credentials(&text).map_err(|e| problem(e.to_string()));
    }
    let seed = text.trim();
    if seed.starts_with("SU") && !seed.contains(char::is_whitespace) {
        return Ok(ConnectOptions::with_nkey(seed.to_string()));
    }
    Err(problem(
        "it is neither a .creds file (a NATS USER JWT and its NKEY SEED) nor an NKey user \
         seed (one line starting with SU)"
            .to_string(),
    ))
}

/// Wait before the first retry of a NATS request that got no answer.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// The wait before the retry after one that waited `last`: doubled, up to 5 s.
fn next_retry(last: Duration) -> Duration {
    (last * 2).min(Duration::from_secs(5))
}

/// Connects, retrying with a doubling backoff ([`FIRST_RETRY`], [`next_retry`]) until the
/// timeout.
async fn connect_with_retry(config: &FleetConfig) -> Result<async_nats::Client, FleetError> {
    let deadline = Instant::now() + config.connect_timeout;
    let mut backoff = FIRST_RETRY;
    loop {
        let urls = config.url.split(',').map(str::trim).collect::<Vec<_>>();
        let options = options(config).await?;
        match options.connect(urls).await {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() + backoff < deadline => {
                tracing::warn!(url = %config.url, error = %e, retry_in = ?backoff, "cannot reach NATS yet");
                tokio::time::sleep(backoff).await;
                backoff = next_retry(backoff);
            }
            Err(e) => {
                return Err(FleetError::Connect {
                    url: config.url.clone(),
                    reason: format!(
                        "{e}{} (tried for {} s)",
                        hint(&e.to_string()),
                        config.connect_timeout.as_secs()
                    ),
                })
            }
        }
    }
}

/// What to do about a connection error that is not a missing server.
fn hint(error: &str) -> &'static str {
    let error = error.to_ascii_lowercase();
    if error.contains("certificate") {
        "; the server's TLS certificate is not trusted: give its certificate authority with \
         --nats-tls-ca FILE"
    } else if error.contains("authorization") || error.contains("nonce") {
        "; the server refused these credentials: give the right ones with --nats-creds FILE"
    } else {
        ""
    }
}

/// The work-queue stream of jobs: created, or checked when it exists.
async fn jobs_stream(
    js: &jetstream::Context,
    config: &FleetConfig,
) -> Result<stream::Stream, FleetError> {
    let wanted = stream::Config {
        name: config.stream.clone(),
        description: Some("beeswax jobs, one subject per pipeline".to_string()),
        subjects: vec!["beeswax.jobs.>".to_string()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        // A full stream refuses new jobs (the publish fails, the client gets 429) instead of
        // dropping accepted ones.
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    let mut stream = ensure_stream(js, wanted.clone()).await?;
    let found = stream
        .info()
        .await
        .map_err(|e| FleetError::nats(format!("reading the stream {}", config.stream), e))?
        .config
        .clone();
    check_stream(&wanted, &found)?;
    Ok(stream)
}

/// An error naming the first setting of `found` beeswax cannot work with.
fn check_stream(wanted: &stream::Config, found: &stream::Config) -> Result<(), FleetError> {
    let incompatible = |setting, is: String, needs: String| FleetError::Incompatible {
        stream: wanted.name.clone(),
        setting,
        found: is,
        wanted: needs,
    };
    if found.retention != wanted.retention {
        return Err(incompatible(
            "retention",
            format!("{:?}", found.retention),
            format!("{:?}", wanted.retention),
        ));
    }
    if found.storage != wanted.storage {
        return Err(incompatible(
            "storage",
            format!("{:?}", found.storage),
            format!("{:?}", wanted.storage),
        ));
    }
    if found.discard != wanted.discard {
        return Err(incompatible(
            "discard",
            format!("{:?}", found.discard),
            "New (never drop an accepted job)".to_string(),
        ));
    }
    if !found.subjects.iter().any(|s| s == "beeswax.jobs.>") {
        return Err(incompatible(
            "subjects",
            format!("{:?}", found.subjects),
            "beeswax.jobs.>".to_string(),
        ));
    }
    if found.max_messages_per_subject > 0 {
        return Err(incompatible(
            "max_msgs_per_subject",
            found.max_messages_per_subject.to_string(),
            "unlimited (-1): a per-subject limit drops the oldest waiting job".to_string(),
        ));
    }
    Ok(())
}

/// The stream keeping dead letters for a week.
async fn dead_stream(js: &jetstream::Context) -> Result<(), FleetError> {
    ensure_stream(
        js,
        stream::Config {
            name: DEAD_STREAM.to_string(),
            description: Some("beeswax jobs that could not be run".to_string()),
            subjects: vec!["beeswax.dead.>".to_string()],
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(7 * 24 * 3600),
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}

/// The key-value bucket of job states. Its stream is made here, as the client's
/// `create_key_value` would (KV_<bucket>, `$KV.<bucket>.>`, one value per key, rollups,
/// direct gets), because that call first reads the account info in a form nats-server 2.9
/// does not answer.
async fn state_bucket(
    js: &jetstream::Context,
    config: &FleetConfig,
) -> Result<kv::Store, FleetError> {
    ensure_stream(
        js,
        stream::Config {
            name: format!("KV_{STATE_BUCKET}"),
            description: Some("beeswax job states".to_string()),
            subjects: vec![format!("$KV.{STATE_BUCKET}.>")],
            max_messages_per_subject: 1,
            // Waiting jobs must outlive the retention of finished ones.
            max_age: config.keep_finished + Duration::from_secs(24 * 3600),
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        },
    )
    .await?;
    js.get_key_value(STATE_BUCKET)
        .await
        .map_err(|e| FleetError::nats(format!("opening the key-value bucket {STATE_BUCKET}"), e))
}

/// The object store `bucket` (its objects expire after `max_age`): the existing one, else
/// created.
async fn object_bucket(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    max_age: Duration,
) -> Result<object_store::ObjectStore, FleetError> {
    if let Ok(store) = js.get_object_store(bucket).await {
        return Ok(store);
    }
    let created = js
        .create_object_store(object_store::Config {
            bucket: bucket.to_string(),
            description: Some(description.to_string()),
            max_age,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Another node created it meanwhile.
        Err(e) => js
            .get_object_store(bucket)
            .await
            .map_err(|_| FleetError::nats(format!("creating the object store {bucket}"), e)),
    }
}

/// The stream `config.name`: the existing one, else created with `config` (when another node
/// creates it at the same moment, theirs).
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, FleetError> {
    let name = config.name.clone();
    match js.get_or_create_stream(config).await {
        Ok(stream) => Ok(stream),
        Err(e) => js
            .get_stream(&name)
            .await
            .map_err(|_| FleetError::nats(format!("creating the stream {name}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_stream_with_other_settings_is_named() {
        let wanted = stream::Config {
            name: "BEESWAX_JOBS".to_string(),
            subjects: vec!["beeswax.jobs.>".to_string()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        };
        assert!(check_stream(&wanted, &wanted).is_ok());
        let mut limits = wanted.clone();
        limits.retention = stream::RetentionPolicy::Limits;
        let e = check_stream(&wanted, &limits).unwrap_err().to_string();
        assert!(e.contains("retention") && e.contains("BEESWAX_JOBS"), "{e}");
        let mut memory = wanted.clone();
        memory.storage = stream::StorageType::Memory;
        let e = check_stream(&wanted, &memory).unwrap_err().to_string();
        assert!(e.contains("storage"), "{e}");
        let mut per_subject = wanted.clone();
        per_subject.max_messages_per_subject = 5;
        let e = check_stream(&wanted, &per_subject).unwrap_err().to_string();
        assert!(e.contains("max_msgs_per_subject"), "{e}");
    }
}
