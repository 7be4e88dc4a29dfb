//! The data directory (`beeswax serve --data-dir DIR`): accepted jobs and finished images on
//! disk, so that a job that got a 202 survives a crash or a restart.
//!
//! Layout, all in `DIR/jobs/`, one set of files per job id:
//! - `<id>.job.json`: the request as accepted ([`Accepted`]), written before the 202;
//! - `<id>.init.png`, `<id>.mask.png`: an image job's picture and mask, until it has run;
//! - `<id>.done.json`: how it finished ([`Finished`]), written once its images are;
//! - `<id>.image-<n>.png`: the images, with their `parameters` chunk.
//!
//! Every file is written atomically: to `<name>.tmp`, fsync, rename, fsync the folder; a
//! leftover `.tmp` is removed at start-up. A record that cannot be read is reported, renamed
//! `<name>.damaged` (kept for inspection) and skipped. Files of a job without its
//! `.job.json` are removed.

mod picture;
pub mod record;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use picture::{decode_mask, decode_rgb, encode_mask, encode_rgb};
pub use record::{Accepted, Finished, StoredRequest};

use crate::image_in::Mask;
use crate::image_out::RgbImage;

/// A data-directory failure, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("data directory: {path}: {source} (check that the folder exists, is writable and has free space, or run with --data-dir none)")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not what it should be, or the folder is in use.
    #[error("data directory: {path}: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A job found in the data directory at start-up.
#[derive(Debug)]
pub struct Stored {
    /// Its acceptance record.
    pub accepted: Accepted,
    /// How it finished: `None` if it had not, `Some(Err)` if its record is damaged.
    pub finished: Option<std::result::Result<Finished, String>>,
}

/// The jobs folder of a data directory.
#[derive(Debug)]
pub struct DataDir {
    dir: PathBuf,
    seq: AtomicU64,
    /// `DIR/lock`, locked while this server uses the folder (released by the system when the
    /// process ends, even by SIGKILL).
    _lock: File,
}

/// Locks `DIR/lock` so that two servers never share a data directory.
fn lock(root: &Path) -> Result<File> {
    let path = root.join("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor this function owns, open for its whole life.
        #[allow(unsafe_code)]
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            return Err(StoreError::Damaged {
                path,
                reason: "another beeswax serve uses this data directory: stop it, or give this \
                         one its own --data-dir"
                    .into(),
            });
        }
    }
    Ok(file)
}

/// Whether `id` can name files (a UUID, or letters, digits and `-`).
fn plain_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl DataDir {
    /// Opens (creating it if needed) the data directory `root` and reads what it holds: the
    /// jobs in acceptance order, and the problems found (each already logged).
    pub fn open(root: &Path) -> Result<(Self, Vec<Stored>, Vec<StoreError>)> {
        let dir = root.join("jobs");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let lock = lock(root)?;
        let mut names = BTreeSet::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            if let Some(name) = entry.file_name().to_str() {
                names.insert(name.to_string());
            }
        }
        let store = Self {
            dir,
            seq: AtomicU64::new(0),
            _lock: lock,
        };
        let mut problems = Vec::new();
        let mut jobs = Vec::new();
        for name in names.iter().filter(|n| n.ends_with(".tmp")) {
            let _ = fs::remove_file(store.dir.join(name));
        }
        for name in names.iter().filter(|n| n.ends_with(".job.json")) {
            match store.read_job(name, &names) {
                Ok(stored) => jobs.push(stored),
                Err(e) => {
                    store.set_aside(name);
                    problems.push(e);
                }
            }
        }
        // Files of jobs without a record (a half-removed job): remove them.
        let known: BTreeSet<&str> = jobs.iter().map(|s| s.accepted.id.as_str()).collect();
        for name in &names {
            let id = name.split('.').next().unwrap_or_default();
            let ours = name.ends_with(".png") || name.ends_with(".done.json");
            if ours && !known.contains(id) {
                let _ = fs::remove_file(store.dir.join(name));
            }
        }
        jobs.sort_by_key(|s| s.accepted.seq);
        let next = jobs.last().map_or(0, |s| s.accepted.seq + 1);
        store.seq.store(next, Ordering::SeqCst);
        for e in &problems {
            tracing::warn!(error = %e, "skipped a damaged job record");
        }
        Ok((store, jobs, problems))
    }

    fn read_job(&self, name: &str, names: &BTreeSet<String>) -> Result<Stored> {
        let path = self.dir.join(name);
        let accepted: Accepted = read_json(&path)?;
        let id = &accepted.id;
        if !plain_id(id) || name != format!("{id}.job.json") {
            return Err(StoreError::Damaged {
                path,
                reason: format!("the record is of job `{id}`, not of this file name"),
            });
        }
        let done = format!("{id}.done.json");
        let finished = names.contains(&done).then(|| {
            let path = self.dir.join(&done);
            read_json::<Finished>(&path).map_err(|e| {
                self.set_aside(&done);
                e.to_string()
            })
        });
        Ok(Stored { accepted, finished })
    }

    /// Renames `name` to `name.damaged` so it is kept but not read again.
    fn set_aside(&self, name: &str) {
        let from = self.dir.join(name);
        let _ = fs::rename(&from, self.dir.join(format!("{name}.damaged")));
    }

    /// The next acceptance number.
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst)
    }

    fn path(&self, id: &str, what: &str) -> PathBuf {
        self.dir.join(format!("{id}.{what}"))
    }

    /// Records an accepted job, with its picture and mask (an image job's).
    pub fn accept(
        &self,
        record: &Accepted,
        picture: Option<&RgbImage>,
        mask: Option<&Mask>,
    ) -> Result<()> {
        let id = &record.id;
        if let Some(picture) = picture {
            let path = self.path(id, "init.png");
            let png = encode_rgb(picture).map_err(|reason| StoreError::Damaged {
                path: path.clone(),
                reason,
            })?;
            write_atomic(&path, &png)?;
        }
        if let Some(mask) = mask {
            let path = self.path(id, "mask.png");
            let png = encode_mask(mask).map_err(|reason| StoreError::Damaged {
                path: path.clone(),
                reason,
            })?;
            write_atomic(&path, &png)?;
        }
        write_json(&self.path(id, "job.json"), record)
    }

    /// An accepted job's picture and mask, if it has them.
    pub fn inputs(&self, record: &Accepted) -> Result<(Option<RgbImage>, Option<Mask>)> {
        let Some(image) = &record.request.image else {
            return Ok((None, None));
        };
        let read = |what: &str| {
            let path = self.path(&record.id, what);
            let bytes = fs::read(&path).map_err(io(&path))?;
            Ok::<_, StoreError>((path, bytes))
        };
        let (path, bytes) = read("init.png")?;
        let picture = decode_rgb(&bytes).map_err(|reason| StoreError::Damaged { path, reason })?;
        let mask = match &image.mask {
            None => None,
            Some(_) => {
                let (path, bytes) = read("mask.png")?;
                Some(decode_mask(&bytes).map_err(|reason| StoreError::Damaged { path, reason })?)
            }
        };
        Ok((Some(picture), mask))
    }

    /// Records how job `id` finished, its images first; its input pictures are removed.
    pub fn finish(&self, id: &str, record: &Finished, images: &[Vec<u8>]) -> Result<()> {
        for (n, png) in images.iter().enumerate() {
            write_atomic(&self.path(id, &format!("image-{n}.png")), png)?;
        }
        write_json(&self.path(id, "done.json"), record)?;
        for what in ["init.png", "mask.png"] {
            let _ = fs::remove_file(self.path(id, what));
        }
        Ok(())
    }

    /// A finished job's images.
    pub fn images(&self, id: &str, count: usize) -> Result<Vec<Vec<u8>>> {
        (0..count)
            .map(|n| {
                let path = self.path(id, &format!("image-{n}.png"));
                fs::read(&path).map_err(io(&path))
            })
            .collect()
    }

    /// Removes every file of job `id` (its record first, so a crash half-way leaves files
    /// that the next start removes).
    pub fn forget(&self, id: &str) {
        if !plain_id(id) {
            return;
        }
        let _ = fs::remove_file(self.path(id, "job.json"));
        let prefix = format!("{id}.");
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let ours = name.to_str().is_some_and(|n| n.starts_with(&prefix));
            if ours && !name.to_string_lossy().ends_with(".damaged") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(io(path))?;
    let damaged = |reason: String| StoreError::Damaged {
        path: path.to_path_buf(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| damaged(format!("not JSON: {e}")))?;
    let version = value.get("version").and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(record::VERSION)) {
        return Err(damaged(format!(
            "record version {version:?}, this beeswax reads version {}",
            record::VERSION
        )));
    }
    serde_json::from_value(value).map_err(|e| damaged(format!("not a job record: {e}")))
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Damaged {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` so that it holds either its old content or all of `bytes`, even
/// after a crash: a temporary file, fsync, rename, fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        // Makes the rename durable; not every platform can open a folder (Windows).
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
