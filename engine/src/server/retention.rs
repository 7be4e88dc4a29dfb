//! The jobs the service holds: every waiting and running job, and finished ones for a while.
//! Finished jobs go when they are older than `--keep-finished`, when there are more than
//! `--max-finished` of them, or when their images and texts add up to more than
//! `--max-finished-bytes`: the oldest go first (the newest finished job stays whatever its
//! size, so that its client can still fetch its images).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::jobs::Job;

/// How long and how many finished jobs are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// How long after it finished a job is kept.
    pub keep: Duration,
    /// Most finished jobs kept.
    pub max_finished: usize,
    /// Most bytes (images, previews, texts) the finished jobs may hold together.
    pub max_bytes: usize,
}

/// Jobs by id, and their ids in submission order.
type JobMap = (HashMap<String, Arc<Job>>, VecDeque<String>);

/// Every job the service knows, finished ones kept within a [`Retention`].
#[derive(Debug)]
pub struct JobStore {
    jobs: Mutex<JobMap>,
    retention: Retention,
}

impl JobStore {
    /// A store keeping finished jobs within `retention`.
    pub fn new(retention: Retention) -> Self {
        Self {
            jobs: Mutex::new((HashMap::new(), VecDeque::new())),
            retention,
        }
    }

    /// Adds a job after the ones held, first dropping finished jobs beyond the retention;
    /// returns the ids dropped.
    pub fn insert(&self, job: Arc<Job>) -> Vec<String> {
        let mut guard = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let dropped = self.prune_locked(&mut guard);
        let (map, order) = &mut *guard;
        order.push_back(job.id.clone());
        map.insert(job.id.clone(), job);
        dropped
    }

    /// Drops finished jobs beyond the retention (called when a job finishes); returns the
    /// ids dropped.
    pub fn prune(&self) -> Vec<String> {
        let mut guard = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        self.prune_locked(&mut guard)
    }

    fn prune_locked(&self, guard: &mut JobMap) -> Vec<String> {
        let (map, order) = guard;
        let now = Instant::now();
        let (mut finished, mut bytes) = (0usize, 0usize);
        let mut expired = Vec::new();
        // Newest first, so the oldest finished jobs are the ones over the count or the bytes.
        for id in order.iter().rev() {
            let Some(j) = map.get(id) else { continue };
            let s = j.state();
            let Some(at) = s.finished else { continue };
            finished += 1;
            bytes = bytes.saturating_add(s.bytes());
            if now.duration_since(at) > self.retention.keep
                || finished > self.retention.max_finished
                || (bytes > self.retention.max_bytes && finished > 1)
            {
                expired.push(id.clone());
            }
        }
        for id in &expired {
            map.remove(id);
        }
        if !expired.is_empty() {
            order.retain(|id| map.contains_key(id));
        }
        expired
    }

    /// The job with `id`, unless unknown or expired.
    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        let guard = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let job = guard.0.get(id)?.clone();
        drop(guard);
        (!self.expired(&job)).then_some(job)
    }

    fn expired(&self, job: &Job) -> bool {
        job.state()
            .finished
            .is_some_and(|at| at.elapsed() > self.retention.keep)
    }

    /// Every job held and not expired, in submission order.
    pub fn all(&self) -> Vec<Arc<Job>> {
        let jobs: Vec<Arc<Job>> = {
            let guard = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            let (map, order) = &*guard;
            order.iter().filter_map(|id| map.get(id).cloned()).collect()
        };
        jobs.into_iter().filter(|j| !self.expired(j)).collect()
    }

    /// The bytes the finished jobs held hold together (see [`super::jobs::JobState::bytes`]).
    pub fn finished_bytes(&self) -> usize {
        self.all()
            .iter()
            .map(|j| j.state())
            .filter(|s| s.finished.is_some())
            .map(|s| s.bytes())
            .sum()
    }

    /// How many jobs are held.
    pub fn len(&self) -> usize {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .len()
    }

    /// Whether no job is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::jobs::{Origin, Status, Summary};
    use std::time::SystemTime;

    fn finished(id: &str, image_bytes: usize, ago: Duration) -> Arc<Job> {
        let summary = Summary {
            pipeline: "p".into(),
            parameters: serde_json::Value::Null,
            image_parameters: Vec::new(),
        };
        Arc::new(Job::closed(
            id.into(),
            Origin::Native,
            summary,
            SystemTime::now(),
            |s| {
                s.status = Status::Completed;
                s.images = vec![vec![0; image_bytes]];
                s.finished = Instant::now().checked_sub(ago);
                s.finished_at = Some(SystemTime::now());
            },
        ))
    }

    fn store(max_finished: usize, max_bytes: usize) -> JobStore {
        JobStore::new(Retention {
            keep: Duration::from_secs(600),
            max_finished,
            max_bytes,
        })
    }

    #[test]
    fn finished_jobs_beyond_the_byte_bound_go_oldest_first() {
        let jobs = store(1000, 2500);
        for id in ["a", "b", "c"] {
            assert!(jobs.insert(finished(id, 1000, Duration::ZERO)).is_empty());
        }
        assert_eq!(jobs.finished_bytes(), 3000);
        // Over 2500 bytes: the oldest (a) goes, b and c stay.
        assert_eq!(jobs.prune(), vec!["a".to_string()]);
        assert_eq!(jobs.finished_bytes(), 2000);
        assert!(jobs.get("a").is_none());
        assert!(jobs.get("b").is_some() && jobs.get("c").is_some());
        // A new job prunes again: d makes 3000 again once it counts, b goes at the next prune.
        jobs.insert(finished("d", 1000, Duration::ZERO));
        assert_eq!(jobs.prune(), vec!["b".to_string()]);
        assert_eq!(jobs.len(), 2);
    }

    #[test]
    fn the_newest_finished_job_stays_whatever_its_size() {
        let jobs = store(1000, 10);
        jobs.insert(finished("a", 100, Duration::ZERO));
        assert!(jobs.prune().is_empty());
        jobs.insert(finished("b", 100, Duration::ZERO));
        assert_eq!(jobs.prune(), vec!["a".to_string()]);
        assert!(jobs.get("b").is_some());
    }

    #[test]
    fn finished_jobs_beyond_the_count_or_age_go() {
        let jobs = store(2, usize::MAX);
        jobs.insert(finished("old", 1, Duration::from_secs(601)));
        for id in ["a", "b", "c"] {
            jobs.insert(finished(id, 1, Duration::ZERO));
        }
        let mut dropped = jobs.prune();
        dropped.sort();
        assert_eq!(dropped, vec!["a".to_string()]);
        // "old" went at the insert of "a" (expired).
        assert_eq!(
            jobs.all().iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
            vec!["b", "c"]
        );
    }
}
