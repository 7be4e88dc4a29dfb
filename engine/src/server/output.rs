//! `beeswax serve --output-dir DIR`: every finished image saved as a PNG with its parameters,
//! named as AUTOMATIC1111 names them: a five-digit number that continues from the highest one
//! in the folder, then the seed (`00000-1234.png`).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::store::{write_atomic, StoreError};

/// The output folder and the next image number.
#[derive(Debug)]
pub struct OutputDir {
    dir: PathBuf,
    next: Mutex<u64>,
}

impl OutputDir {
    /// Opens (creating it if needed) `dir`; numbering continues after its highest number.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let io = |source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut next = 0;
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            let Some(name) = name.to_str() else { continue };
            let digits: String = name.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(n) = digits.parse::<u64>() {
                next = next.max(n.saturating_add(1));
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            next: Mutex::new(next),
        })
    }

    /// Saves `images` (PNGs) made with `seeds`; returns the files written.
    pub fn save(&self, images: &[Vec<u8>], seeds: &[u64]) -> Result<Vec<PathBuf>, StoreError> {
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let mut written = Vec::new();
        for (i, png) in images.iter().enumerate() {
            let name = match seeds.get(i) {
                Some(seed) => format!("{:05}-{seed}.png", *next),
                None => format!("{:05}.png", *next),
            };
            let path = self.dir.join(name);
            write_atomic(&path, png)?;
            *next += 1;
            written.push(path);
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_continue_after_the_highest_in_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::open(dir.path()).unwrap();
        let files = out.save(&[vec![1], vec![2]], &[7, 8]).unwrap();
        let names: Vec<_> = files.iter().map(|p| p.file_name().unwrap()).collect();
        assert_eq!(names, ["00000-7.png", "00001-8.png"]);
        assert_eq!(std::fs::read(&files[1]).unwrap(), vec![2]);
        std::fs::write(dir.path().join("00041-3-a cat.png"), "x").unwrap();
        let out = OutputDir::open(dir.path()).unwrap();
        let files = out.save(&[vec![3]], &[9]).unwrap();
        assert!(files[0].ends_with("00042-9.png"), "{files:?}");
    }
}
