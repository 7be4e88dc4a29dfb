//! Prompt syntax: how the text of a prompt becomes text-encoder conditioning.
//!
//! Three syntaxes ([`PromptSyntax`]):
//!
//! * `a1111` — AUTOMATIC1111's: emphasis `(x)`, `[x]`, `(x:w)` with its "Original" weighting
//!   (weights multiply the encoder's output, whose mean is then restored), prompts of any length
//!   in 75-token chunks (with the comma backtrack) and `BREAK`, prompt editing `[a:b:when]` and
//!   alternation `[a|b]` per sampling step, composable diffusion with `AND` and `:weight`.
//! * `comfy` — ComfyUI's: `(x)`, `(x:w)` (square brackets are text), weights that move each
//!   token's output away from the empty prompt's, whole weighted segments per chunk,
//!   `embedding:NAME`.
//! * `plain` — diffusers' literal encoding: one 77-token window, truncated, no weights.
//!
//! The modules, low to high: [`schedule`] (editing, alternation, `AND`), [`attention`]
//! (emphasis parsers), [`embeddings`] (textual-inversion files and catalog), [`chunks`]
//! (tokenization into chunks), [`weighting`] (the tensor math), [`plan`] (a prompt ready to
//! encode, and its encoding), [`encode`] (one chunk through CLIP), [`infotext`] (PNG
//! parameters), [`describe`] (what `beeswax prompt` prints).
//!
//! Deliberate differences from the reference tools:
//!
//! * A1111 parses prompt editing with a lark Earley parser whose choice between readings of an
//!   ambiguous prompt (a bracket that can be an edit or stray text, `([::3](x`) depends on
//!   Python's per-process hash seed; beeswax always reads the edit. A1111's doctest
//!   `a [{b|d{:.5] c` does not hold with lark 1.1.2 (the `|` makes the prompt literal); beeswax
//!   follows lark.
//! * A1111 raises on `(x:1.2.3)` and on `[x:1e400]`; beeswax reads the first as text before a
//!   plain `)` and caps the second at the step count.
//! * When A1111's comma backtrack moves tokens holding an embedding to the next chunk, its
//!   vectors stay at their old offset (on padding); beeswax moves them with their tokens.
//! * ComfyUI ignores an unknown `embedding:NAME` (with a log warning) and an embedding of the
//!   wrong width; beeswax reports both as errors.
//! * ComfyUI batches prompts of different lengths by repeating the shorter conditioning (which
//!   attention treats exactly like separate passes); beeswax runs them as separate passes.

pub mod attention;
pub mod chunks;
pub mod describe;
pub mod embeddings;
pub mod encode;
pub mod infotext;
pub mod plan;
pub mod schedule;
pub mod weighting;

use std::path::PathBuf;

pub use chunks::{Chunk, Chunks, Placement};
pub use embeddings::{Embedding, EmbeddingCatalog, EmbeddingEntry, EmbeddingVectors, EncoderSlot};
pub use plan::{EncodedPrompt, PlanOptions, PromptPlan};

/// How prompt text is read.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PromptSyntax {
    /// AUTOMATIC1111's syntax and weighting (the default of the CLI, the native API and
    /// `/sdapi/v1/*`).
    #[default]
    A1111,
    /// ComfyUI's syntax and weighting.
    Comfy,
    /// diffusers' literal encoding (the default of `/v1/images/*`).
    Plain,
}

impl PromptSyntax {
    /// Every syntax, by name.
    pub const ALL: [PromptSyntax; 3] = [
        PromptSyntax::A1111,
        PromptSyntax::Comfy,
        PromptSyntax::Plain,
    ];

    /// The name used on the command line, in APIs and in PNG parameters.
    pub fn name(self) -> &'static str {
        match self {
            PromptSyntax::A1111 => "a1111",
            PromptSyntax::Comfy => "comfy",
            PromptSyntax::Plain => "plain",
        }
    }
}

impl std::fmt::Display for PromptSyntax {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PromptSyntax {
    type Err = PromptError;

    fn from_str(s: &str) -> Result<Self, PromptError> {
        Self::ALL
            .into_iter()
            .find(|syntax| syntax.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| PromptError::UnknownSyntax {
                value: s.to_string(),
            })
    }
}

/// The command that converts a pickled embedding to safetensors (`FILE` stands for the path).
pub const PICKLE_CONVERSION: &str = "python -c \"import sys, torch, safetensors.torch as st; \
d = torch.load(sys.argv[1], map_location='cpu', weights_only=True); \
t = d['string_to_param']['*'] if 'string_to_param' in d else next(iter(d.values())); \
st.save_file({'emb_params': t.float().reshape(-1, t.shape[-1]).contiguous()}, \
sys.argv[1].rsplit('.', 1)[0] + '.safetensors')\" FILE";

/// Errors reading prompts and embeddings. Each names the file, name or value at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PromptError {
    /// The tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    /// A syntax name is not one of a1111, comfy, plain.
    #[error("unknown prompt syntax `{value}`: use a1111, comfy or plain")]
    UnknownSyntax {
        /// The value given.
        value: String,
    },
    /// An embedding file (or folder) cannot be read or is not an embedding.
    #[error("{}: {message}", path.display())]
    EmbeddingFile {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An embedding is a pickle.
    #[error(
        "{}: pickled embeddings (.pt, .bin) are not read, because loading them can run code; \
         convert it to safetensors once with: {}",
        path.display(),
        PICKLE_CONVERSION.replace("FILE", &path.display().to_string())
    )]
    PickledEmbedding {
        /// The file.
        path: PathBuf,
    },
    /// An embedding's vectors do not fit the text encoder.
    #[error(
        "embedding `{name}` ({}) is {what}, but this model's text encoder is {width} wide: it \
         was made for another model family; use an embedding trained for this model",
        path.display()
    )]
    EmbeddingWidth {
        /// The embedding.
        name: String,
        /// Its file.
        path: PathBuf,
        /// What the file holds (its width).
        what: String,
        /// The text encoder's width.
        width: usize,
    },
    /// An embedding name is not in the catalog.
    #[error(
        "unknown embedding `{name}`: known embeddings: {}",
        list_or_none(known)
    )]
    UnknownEmbedding {
        /// The name asked for.
        name: String,
        /// The names the catalog has.
        known: Vec<String>,
    },
    /// Two embeddings share a name.
    #[error(
        "two embeddings are called `{name}`: {} and {}; rename one",
        first.display(),
        second.display()
    )]
    DuplicateEmbedding {
        /// The name.
        name: String,
        /// The first file.
        first: PathBuf,
        /// The second file.
        second: PathBuf,
    },
    /// An embedding file's SHA-256 differs from the declared one.
    #[error(
        "{}: SHA-256 is {actual} but the entry for embedding `{name}` says {expected}: the file \
         changed or is corrupted; download it again or update `sha256`",
        path.display()
    )]
    EmbeddingHash {
        /// The embedding.
        name: String,
        /// The file.
        path: PathBuf,
        /// Declared.
        expected: String,
        /// Computed.
        actual: String,
    },
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".to_string()
    } else {
        names.join(", ")
    }
}
