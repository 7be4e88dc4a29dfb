//! The fleet's Prometheus lines on an API node's `/metrics`: per pipeline, jobs waiting in the
//! stream, held by workers, redelivered and idle pulls (from the pipeline's consumer); dead
//! letters now and ever; workers heard from; redeliveries of the node's finished jobs; whether
//! NATS is reachable.

use async_nats::jetstream::consumer::pull;

use super::connect::DEAD_STREAM;
use super::Fleet;

/// What the API node counts itself.
#[derive(Debug, Clone, Copy)]
pub struct Totals {
    /// Workers heard from lately.
    pub workers: usize,
    /// Deliveries after the first of the jobs this node accepted, once they finished.
    pub redeliveries: u64,
}

/// Lines of one metric family.
struct Families(Vec<String>);

impl Families {
    fn add(&mut self, name: &str, help: &str, kind: &str, values: Vec<(String, u64)>) {
        self.0
            .push(format!("# HELP {name} {help}\n# TYPE {name} {kind}"));
        for (labels, v) in values {
            self.0.push(format!("{name}{labels} {v}"));
        }
    }

    fn one(&mut self, name: &str, help: &str, kind: &str, value: u64) {
        self.add(name, help, kind, vec![(String::new(), value)]);
    }
}

/// The lines for `pipelines`.
pub async fn render(fleet: &Fleet, pipelines: &[String], totals: Totals) -> String {
    let mut out = Families(Vec::new());
    consumers(fleet, pipelines, &mut out).await;
    totals_and_dead_letters(fleet, totals, &mut out).await;
    let mut text = out.0.join("\n");
    text.push('\n');
    text
}

/// Per pipeline, from its consumer.
async fn consumers(fleet: &Fleet, pipelines: &[String], out: &mut Families) {
    let (mut depth, mut redelivered, mut held, mut pulls) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for pipeline in pipelines {
        let durable = format!("beeswax-{pipeline}");
        let Ok(mut consumer) = fleet.jobs.get_consumer::<pull::Config>(&durable).await else {
            continue;
        };
        let Ok(info) = consumer.info().await else {
            continue;
        };
        let label = format!("{{pipeline=\"{pipeline}\"}}");
        depth.push((label.clone(), info.num_pending));
        redelivered.push((label.clone(), info.num_redelivered as u64));
        held.push((label.clone(), info.num_ack_pending as u64));
        pulls.push((label, info.num_waiting as u64));
    }
    out.add(
        "beeswax_fleet_jobs_waiting",
        "Jobs in the stream no worker has taken yet, per pipeline.",
        "gauge",
        depth,
    );
    out.add(
        "beeswax_fleet_jobs_held",
        "Jobs a worker holds (running, unacknowledged), per pipeline.",
        "gauge",
        held,
    );
    out.add(
        "beeswax_fleet_jobs_redelivered",
        "Jobs held now that were delivered more than once, per pipeline.",
        "gauge",
        redelivered,
    );
    out.add(
        "beeswax_fleet_idle_pulls",
        "Pull requests of idle workers waiting for a job, per pipeline.",
        "gauge",
        pulls,
    );
}

/// Dead letters, the node's totals, the connection.
async fn totals_and_dead_letters(fleet: &Fleet, totals: Totals, out: &mut Families) {
    let (dead_now, dead_ever) = match fleet.js.get_stream(DEAD_STREAM).await {
        Ok(mut stream) => stream
            .info()
            .await
            .map_or((0, 0), |i| (i.state.messages, i.state.last_sequence)),
        Err(_) => (0, 0),
    };
    out.one(
        "beeswax_fleet_dead_letters",
        "Jobs in the dead-letter stream (kept 7 days).",
        "gauge",
        dead_now,
    );
    out.one(
        "beeswax_fleet_dead_letters_total",
        "Jobs ever dead-lettered (the dead-letter stream's last sequence).",
        "counter",
        dead_ever,
    );
    out.one(
        "beeswax_fleet_redeliveries_total",
        "Deliveries after the first of the jobs this API node accepted, counted as they finish.",
        "counter",
        totals.redeliveries,
    );
    out.one(
        "beeswax_fleet_workers",
        "Workers heard from in the last 16 seconds (heartbeats every 5).",
        "gauge",
        totals.workers as u64,
    );
    out.one(
        "beeswax_fleet_nats_connected",
        "1 while NATS is reachable.",
        "gauge",
        u64::from(fleet.connected()),
    );
}
