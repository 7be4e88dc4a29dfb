//! Reading a component's `config.json` into its serde struct, with errors that name the file.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Parses a JSON config file; errors name the file, the line and serde's reason (which names
/// the field at fault).
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = crate::fs_limits::read_regular_string(path, crate::fs_limits::TEXT_BYTES)
        .map_err(crate::fs_limits::ReadError::into_io)
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// A config value that diffusers allows as either one value for all blocks or one per block.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock<T> {
    /// The same value for every block.
    All(T),
    /// One value per block, in down-block order.
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// The values for `n` blocks, or a message saying why the list does not fit.
    pub fn expand(&self, n: usize, field: &str) -> std::result::Result<Vec<T>, String> {
        match self {
            PerBlock::All(v) => Ok(vec![v.clone(); n]),
            PerBlock::Each(vs) if vs.len() == n => Ok(vs.clone()),
            PerBlock::Each(vs) => Err(format!(
                "`{field}` has {} entries but there are {n} blocks; give one per block or a single value",
                vs.len()
            )),
        }
    }
}
