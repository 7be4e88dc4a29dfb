//! The bounded job queue: jobs wait in order, worker threads take them one at a time, and a
//! full queue refuses new jobs instead of growing. The workers can be held ([`Queue::pause`]):
//! jobs then wait without starting until [`Queue::resume`].

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use super::jobs::Job;

/// The queue is full.
#[derive(Debug, Clone, Copy)]
pub struct QueueFull {
    /// Jobs waiting.
    pub waiting: usize,
    /// Jobs running.
    pub running: usize,
}

#[derive(Debug, Default)]
struct Inner {
    waiting: VecDeque<Arc<Job>>,
    running: Vec<Arc<Job>>,
    closed: bool,
    paused: bool,
}

/// A bounded FIFO of jobs shared by the handlers (push) and the workers (pop).
#[derive(Debug)]
pub struct Queue {
    inner: Mutex<Inner>,
    ready: Condvar,
    capacity: usize,
}

impl Queue {
    /// A queue holding at most `capacity` waiting jobs.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            ready: Condvar::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `job`; returns its position (1 is next), or [`QueueFull`].
    pub fn push(&self, job: Arc<Job>) -> Result<usize, QueueFull> {
        let mut inner = self.lock();
        if inner.closed || inner.waiting.len() >= self.capacity {
            return Err(QueueFull {
                waiting: inner.waiting.len(),
                running: inner.running.len(),
            });
        }
        inner.waiting.push_back(job.clone());
        let position = inner.waiting.len();
        job.set_position(position);
        drop(inner);
        self.ready.notify_one();
        Ok(position)
    }

    /// Appends a job accepted before a restart, whatever the capacity (it already got its
    /// 202); returns its position.
    pub fn push_restored(&self, job: Arc<Job>) -> usize {
        let mut inner = self.lock();
        inner.waiting.push_back(job.clone());
        let position = inner.waiting.len();
        job.set_position(position);
        drop(inner);
        self.ready.notify_one();
        position
    }

    /// Blocks until a job is waiting (and the queue is not paused) and takes it (it counts as
    /// running until [`Queue::done`]); `None` once the queue is closed.
    pub fn pop(&self) -> Option<Arc<Job>> {
        let mut inner = self.lock();
        loop {
            if inner.closed {
                return None;
            }
            if let Some(job) = (!inner.paused).then(|| inner.waiting.pop_front()).flatten() {
                inner.running.push(job.clone());
                renumber(&inner.waiting);
                return Some(job);
            }
            inner = self
                .ready
                .wait(inner)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Holds the workers: jobs keep queueing (up to the capacity) but none starts until
    /// [`Queue::resume`]; running jobs carry on. For maintenance, and for tests that need a
    /// queue that fills up at a known point.
    pub fn pause(&self) {
        self.lock().paused = true;
    }

    /// Lets the workers take jobs again after [`Queue::pause`].
    pub fn resume(&self) {
        self.lock().paused = false;
        self.ready.notify_all();
    }

    /// Marks a running job as done.
    pub fn done(&self, id: &str) {
        self.lock().running.retain(|j| j.id != id);
    }

    /// Takes a waiting job out of the queue; false if it is not waiting.
    pub fn remove(&self, id: &str) -> bool {
        let mut inner = self.lock();
        let before = inner.waiting.len();
        inner.waiting.retain(|j| j.id != id);
        let removed = inner.waiting.len() != before;
        if removed {
            renumber(&inner.waiting);
        }
        removed
    }

    /// Refuses new jobs, wakes idle workers so they exit, and returns the jobs that were
    /// still waiting.
    pub fn close(&self) -> Vec<Arc<Job>> {
        let mut inner = self.lock();
        inner.closed = true;
        let waiting = inner.waiting.drain(..).collect();
        drop(inner);
        self.ready.notify_all();
        waiting
    }

    /// Jobs waiting.
    pub fn depth(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Jobs running.
    pub fn running(&self) -> Vec<Arc<Job>> {
        self.lock().running.clone()
    }

    /// The waiting jobs, in order.
    pub fn waiting(&self) -> Vec<Arc<Job>> {
        self.lock().waiting.iter().cloned().collect()
    }

    /// The most jobs that may wait.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Tells every waiting job its new position.
fn renumber(waiting: &VecDeque<Arc<Job>>) {
    for (i, job) in waiting.iter().enumerate() {
        job.set_position(i + 1);
    }
}
