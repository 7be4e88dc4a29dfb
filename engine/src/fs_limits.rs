//! Reading files a user names (init images, manifests, plugins, configs, tokenizer files,
//! embeddings): they must be regular files, and are read through a size limit. Without this,
//! `--init-image /dev/zero` reads until memory runs out and a FIFO blocks forever.
//!
//! Files are opened without blocking (`O_NONBLOCK`, so opening a FIFO with no writer returns
//! at once), the opened file is checked to be a regular file, then at most `max + 1` bytes are
//! read. Weight files are mapped or read in place: [`open_regular`] gives them the same check.
//!
//! A leaf module: it imports nothing from the crate.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest text file (manifest, config.json, tokenizer vocabulary) read whole: 64 MiB.
pub const TEXT_BYTES: u64 = 64 << 20;
/// Largest plugin module or library read whole: 512 MiB.
pub const PLUGIN_BYTES: u64 = 512 << 20;
/// Largest LoRA file read whole (it is hashed, then its tensors are read): 4 GiB.
pub const LORA_BYTES: u64 = 4 << 30;
/// Largest textual-inversion embedding read whole: 256 MiB.
pub const EMBEDDING_BYTES: u64 = 256 << 20;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The path names a directory, FIFO, socket or device.
    #[error("{}: is a {kind}, not a regular file; give the path of a file", path.display())]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What it is instead (`directory`, `FIFO`, `device`, ...).
        kind: &'static str,
    },
    /// The file is larger than the limit.
    #[error("{}: the file is larger than the limit of {limit} bytes", path.display())]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// Its size as far as it was read (at least `limit + 1`).
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// Opening or reading failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl ReadError {
    /// The error as an [`std::io::Error`] whose message does not repeat the path (for error
    /// types that print the path themselves).
    pub fn into_io(self) -> std::io::Error {
        match self {
            ReadError::Io { source, .. } => source,
            ReadError::NotRegular { kind, .. } => std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("is a {kind}, not a regular file; give the path of a file"),
            ),
            ReadError::TooLarge { limit, .. } => std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the file is larger than the limit of {limit} bytes"),
            ),
        }
    }
}

/// Opens `path` for reading without blocking and checks it is a regular file (symbolic links
/// are followed); for files that are then memory-mapped or streamed.
pub fn open_regular(path: &Path) -> Result<File, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(io)?;
    let kind = file.metadata().map_err(io)?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    Err(ReadError::NotRegular {
        path: path.to_path_buf(),
        kind: kind_name(&kind),
    })
}

fn kind_name(kind: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "FIFO";
        }
        if kind.is_socket() {
            return "socket";
        }
        if kind.is_block_device() || kind.is_char_device() {
            return "device";
        }
    }
    if kind.is_dir() {
        "directory"
    } else {
        "special file"
    }
}

/// Reads the regular file `path` whole, refusing it when it has more than `max` bytes (also
/// when it grows while being read).
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let file = open_regular(path)?;
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = file.metadata().map_err(io)?.len();
    let too_large = |bytes| ReadError::TooLarge {
        path: path.to_path_buf(),
        bytes,
        limit: max,
    };
    if size > max {
        return Err(too_large(size));
    }
    let mut data = Vec::with_capacity(size as usize);
    file.take(max.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(io)?;
    if data.len() as u64 > max {
        return Err(too_large(data.len() as u64));
    }
    Ok(data)
}

/// [`read_regular`] for UTF-8 text.
pub fn read_regular_string(path: &Path, max: u64) -> Result<String, ReadError> {
    let bytes = read_regular(path, max)?;
    String::from_utf8(bytes).map_err(|e| ReadError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, b"hello").unwrap();
        assert_eq!(read_regular(&path, 5).unwrap(), b"hello");
        let e = read_regular(&path, 4).unwrap_err();
        assert!(matches!(e, ReadError::TooLarge { limit: 4, .. }), "{e}");
        let e = read_regular(dir.path(), 100).unwrap_err();
        assert!(
            matches!(
                e,
                ReadError::NotRegular {
                    kind: "directory",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn devices_and_fifos_are_refused_without_reading_or_hanging() {
        let e = read_regular(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(
            matches!(e, ReadError::NotRegular { kind: "device", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("/dev/zero"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success(), "mkfifo");
        let e = read_regular(&fifo, 1 << 20).unwrap_err();
        assert!(
            matches!(e, ReadError::NotRegular { kind: "FIFO", .. }),
            "{e}"
        );
    }
}
