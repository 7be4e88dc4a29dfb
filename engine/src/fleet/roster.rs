//! Which workers are alive: every worker publishes a [`Heartbeat`] on the core subject
//! `beeswax.workers` every [`HEARTBEAT_EVERY`] while it pulls jobs; API nodes listen and count
//! the workers heard from lately (`/metrics`, `/health`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{Fleet, FleetError};

/// The heartbeat subject.
pub const HEARTBEAT_SUBJECT: &str = "beeswax.workers";
/// How often a worker announces itself.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// A worker not heard from for this long is no longer counted.
const FORGET_AFTER: Duration = Duration::from_secs(16);

/// What a worker announces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The worker's node name.
    pub node: String,
    /// The pipelines it serves.
    pub pipelines: Vec<String>,
    /// Jobs it runs at once.
    pub concurrency: usize,
}

/// Publishes `heartbeat` every [`HEARTBEAT_EVERY`] until the task is aborted.
pub async fn announce(fleet: Fleet, heartbeat: Heartbeat) {
    let payload = serde_json::to_vec(&heartbeat).unwrap_or_default();
    let mut every = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        every.tick().await;
        if let Err(e) = fleet
            .client
            .publish(HEARTBEAT_SUBJECT, payload.clone().into())
            .await
        {
            tracing::debug!(error = %e, "publishing the heartbeat failed");
        }
    }
}

/// The workers an API node has heard from.
#[derive(Debug, Clone, Default)]
pub struct Roster {
    seen: Arc<Mutex<HashMap<String, (Instant, Heartbeat)>>>,
}

impl Roster {
    /// Starts listening to heartbeats on `fleet` (a task that lives as long as the runtime).
    pub async fn listen(fleet: &Fleet) -> Result<Self, FleetError> {
        let mut beats = fleet
            .client
            .subscribe(HEARTBEAT_SUBJECT)
            .await
            .map_err(|e| FleetError::nats("listening to worker heartbeats", e))?;
        let roster = Self::default();
        let seen = roster.seen.clone();
        tokio::spawn(async move {
            while let Some(message) = beats.next().await {
                let Ok(beat) = serde_json::from_slice::<Heartbeat>(&message.payload) else {
                    continue;
                };
                let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                seen.retain(|_, (at, _)| at.elapsed() < FORGET_AFTER);
                seen.insert(beat.node.clone(), (Instant::now(), beat));
            }
        });
        Ok(roster)
    }

    /// The workers heard from lately.
    pub fn alive(&self) -> Vec<Heartbeat> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let mut alive: Vec<Heartbeat> = (seen.values())
            .filter(|(at, _)| at.elapsed() < FORGET_AFTER)
            .map(|(_, beat)| beat.clone())
            .collect();
        alive.sort_by(|a, b| a.node.cmp(&b.node));
        alive
    }
}
