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
    /// What `/v1/pipelines` shows of each of its pipelines (defaults, limits, the form's
    /// native size and size multiple), so that an API node can list and check them; empty
    /// in heartbeats of older workers.
    #[serde(default)]
    pub described: Vec<serde_json::Value>,
    /// The samplers its jobs may name (names, aliases and A1111 display names); empty in
    /// heartbeats of older workers.
    #[serde(default)]
    pub samplers: Vec<String>,
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

    /// What the live workers offer: their pipelines' descriptions and every sampler name
    /// one of them knows.
    pub fn offer(&self) -> crate::server::Offer {
        let alive = self.alive();
        let mut samplers: Vec<String> = Vec::new();
        for name in alive.iter().flat_map(|beat| beat.samplers.iter()) {
            if !samplers.contains(name) {
                samplers.push(name.clone());
            }
        }
        crate::server::Offer {
            pipelines: described(&alive),
            samplers,
        }
    }
}

/// One description per pipeline name among `beats` (the first given wins), sorted by name.
fn described(beats: &[Heartbeat]) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = Vec::new();
    for entry in beats.iter().flat_map(|beat| beat.described.iter()) {
        let name = entry.get("name").and_then(|n| n.as_str());
        let seen = out
            .iter()
            .any(|e| e.get("name").and_then(|n| n.as_str()) == name);
        if name.is_some() && !seen {
            out.push(entry.clone());
        }
    }
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn beat(node: &str, pipelines: &[(&str, u64)]) -> Heartbeat {
        Heartbeat {
            node: node.to_string(),
            pipelines: pipelines.iter().map(|(p, _)| p.to_string()).collect(),
            concurrency: 1,
            described: (pipelines.iter())
                .map(|(p, steps)| json!({"name": p, "limits": {"max_steps": steps}}))
                .collect(),
            samplers: vec!["euler".to_string(), "Euler".to_string()],
        }
    }

    #[test]
    fn reads_heartbeats_of_older_workers() {
        let old = r#"{"node":"w1","pipelines":["tiny-sd"],"concurrency":2}"#;
        let beat: Heartbeat = serde_json::from_str(old).unwrap();
        assert_eq!(beat.pipelines, ["tiny-sd"]);
        assert!(beat.described.is_empty() && beat.samplers.is_empty());
        let new = beat_round_trip(&self::beat("w2", &[("a", 7)]));
        assert_eq!(new.described[0]["limits"]["max_steps"], 7);
        assert_eq!(new.samplers, ["euler", "Euler"]);
    }

    fn beat_round_trip(beat: &Heartbeat) -> Heartbeat {
        serde_json::from_slice(&serde_json::to_vec(beat).unwrap()).unwrap()
    }

    #[test]
    fn describes_each_pipeline_once_first_worker_wins() {
        let beats = [
            beat("w1", &[("zeta", 1), ("alpha", 2)]),
            beat("w2", &[("alpha", 3), ("mid", 4)]),
        ];
        let list = described(&beats);
        let names: Vec<_> = list.iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["alpha", "mid", "zeta"]);
        assert_eq!(list[0]["limits"]["max_steps"], 2);
    }
}
