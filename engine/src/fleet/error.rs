//! Fleet errors.

/// What can go wrong in fleet mode.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// NATS could not be reached (after retrying).
    #[error("cannot connect to NATS at {url}: {reason} (is nats-server running with -js, and is the URL right? nats://host:4222 or tls://host:4222)")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The credentials file could not be read.
    #[error("cannot read the NATS credentials file {path}: {reason}")]
    Credentials {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The TLS certificate authority file could not be used.
    #[error("cannot use the NATS TLS certificate authority file {path}: {reason} (--nats-tls-ca wants a PEM file)")]
    Tls {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A stream or bucket exists with settings beeswax cannot work with.
    #[error("the NATS stream `{stream}` exists with {setting} = {found}; beeswax needs {wanted}: delete it (nats stream rm {stream}) or pick another name with --nats-stream")]
    Incompatible {
        /// The stream.
        stream: String,
        /// The setting at fault.
        setting: &'static str,
        /// Its value.
        found: String,
        /// What beeswax needs.
        wanted: String,
    },
    /// A pipeline name cannot be a NATS subject token.
    #[error("pipeline `{0}` cannot be served in fleet mode: its name must be letters, digits, `-` and `_` only (it becomes the subject beeswax.jobs.<pipeline>)")]
    PipelineName(String),
    /// A job message that does not parse.
    #[error("bad job message: {reason}")]
    BadMessage {
        /// What is wrong with it.
        reason: String,
    },
    /// A NATS operation failed.
    #[error("NATS: {what}: {reason}")]
    Nats {
        /// What was being done.
        what: String,
        /// The client's error.
        reason: String,
    },
}

impl FleetError {
    /// A failed NATS operation `what`.
    pub fn nats(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Self::Nats {
            what: what.into(),
            reason: e.to_string(),
        }
    }
}
