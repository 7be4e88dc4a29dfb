//! CLIP's byte-level BPE tokenizer, as Stable Diffusion's text encoders expect it, and in
//! [`t5`] T5's SentencePiece tokenizer (FLUX's second text encoder).
//!
//! [`ClipTokenizer::from_dir`] reads a diffusers `tokenizer/` folder. A `tokenizer.json` there is
//! loaded as is; otherwise the tokenizer is built from `vocab.json` and `merges.txt` the way
//! transformers' `CLIPTokenizerFast` converter builds it: NFC, collapsed whitespace and lowercase;
//! CLIP's word regex (the slow tokenizer's, which keeps `<|startoftext|>` and `<|endoftext|>`
//! whole); byte-level BPE with `</w>` word ends.
//!
//! The reference is transformers' *slow* `CLIPTokenizer` with `ftfy` installed, which diffusers
//! used under transformers 4 (`tests/fixtures/make_fixtures.py` ports it). To match it,
//! [`ClipTokenizer::encode`]:
//!
//! 1. splits the raw prompt on the special token strings (bos, eos, unk and pad, longest first)
//!    and maps those straight to their ids. With SD2's pad token `!` every `!` is a token of its
//!    own, as in transformers;
//! 2. cleans every other piece as `whitespace_clean(ftfy.fix_text(piece)).lower()`, with the part
//!    of `ftfy.fix_text` prompts meet in practice: HTML entities (numeric ones and the common
//!    named ones; none on a line holding `<` or after it, as ftfy does), UTF-8 read as
//!    Latin-1/Windows-1252 (`cafÃ©` → `café`), C1 controls, Latin ligatures (`ﬁ` → `fi`),
//!    fullwidth and halfwidth forms (`ＡＢＣ` → `ABC`), curly quotes, line breaks, terminal
//!    escapes, control characters and NFC;
//! 3. runs the cleaned pieces through the `tokenizers` pipeline, then adds bos and eos, truncates
//!    to `max_length - 2` tokens and pads, as `tokenizer(prompt, padding="max_length",
//!    truncation=True)` does.
//!
//! Not reproduced from ftfy: its "badness" heuristic, which decides when text is mojibake. Here
//! a line is re-decoded when all of it forms valid UTF-8 (so a lone `CAFÉ»` becomes `CAFɻ`,
//! which ftfy leaves alone), and inside other text only sequences starting with the commonest
//! mojibake leads (`Â`, `Ã`, `â`, `ð`). Mojibake through other single-byte encodings and rare
//! named entities are left as written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{replace::ReplacePattern, Lowercase, Replace, Sequence, NFC};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{Decoder, SplitDelimiterBehavior, Tokenizer};

mod ftfy;
mod spiece;
pub mod t5;

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
/// What CLIP's text encoder takes, used when `model_max_length` is absent or unset.
const DEFAULT_MAX_LENGTH: usize = 77;
/// transformers writes "no limit" as a huge `model_max_length` (1e30).
const UNSET_MAX_LENGTH: f64 = 1e6;
/// The slow tokenizer reads only this many merges (`49152 - 256 - 2`).
const MAX_MERGES: usize = 48_894;
/// The slow tokenizer's word pattern (transformers' `CLIPTokenizer.pat`).
const WORD_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Errors of this module. Each names the file (and field) at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// The tokenizer folder does not exist.
    #[error("tokenizer folder not found: {path}")]
    MissingDir {
        /// The folder looked for.
        path: PathBuf,
    },
    /// A file the tokenizer needs does not exist.
    #[error("tokenizer file not found: {path}")]
    MissingFile {
        /// The file looked for.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file is malformed or not of the expected shape.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// serde's error, which gives the line and column.
        source: serde_json::Error,
    },
    /// A line of `merges.txt` is not two space-separated tokens.
    #[error("{path}, line {line}: expected two space-separated tokens, found {text:?}")]
    Merges {
        /// The merges file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// A field holds a value that cannot be used.
    #[error("{path}: `{field}`: {message}")]
    Field {
        /// The file holding the field (or the vocabulary, for a defaulted token).
        path: PathBuf,
        /// The field.
        field: String,
        /// What is wrong, naming the value.
        message: String,
    },
    /// The `tokenizers` library rejected the files.
    #[error("{path}: {message}")]
    Load {
        /// The file it was reading.
        path: PathBuf,
        /// Its error.
        message: String,
    },
    /// Tokenizing a prompt failed.
    #[error("tokenizer {path} failed on prompt {prompt:?}: {message}")]
    Encode {
        /// The tokenizer folder.
        path: PathBuf,
        /// The prompt.
        prompt: String,
        /// The `tokenizers` error.
        message: String,
    },
}

type Result<T> = std::result::Result<T, TokenizerError>;

/// A prompt tokenized for a text encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// Exactly `max_length` ids: for CLIP bos, the prompt's tokens, eos, then pad ids; for T5
    /// ([`t5::T5Tokenizer`]) the tokens, eos, then pad ids.
    pub ids: Vec<u32>,
    /// The text that did not fit, reconstructed from the dropped tokens (e.g. "with a tail"), for
    /// the truncation warning; `None` when the whole prompt fits.
    pub truncated: Option<String>,
}

/// CLIP's tokenizer, loaded from a diffusers `tokenizer/` folder.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    dir: PathBuf,
    inner: Tokenizer,
    /// The special token strings the raw prompt is split on, longest first, with their ids.
    specials: Vec<(String, u32)>,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    max_length: usize,
}

impl ClipTokenizer {
    /// Loads from a diffusers `tokenizer/` folder; the pad token comes from
    /// `tokenizer_config.json` (`pad_token`, a string or an AddedToken object
    /// `{"content": ...}`) or `special_tokens_map.json` (which wins, as in transformers, unless the
    /// config lists `added_tokens_decoder`); default `<|endoftext|>`. bos, eos and unk are read
    /// the same way. The max length is `model_max_length` (default 77; values > 1e6 mean unset,
    /// so 77).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(TokenizerError::MissingDir {
                path: dir.to_path_buf(),
            });
        }
        let settings = Settings::read(dir)?;
        let (unk, _) = settings.token("unk_token", EOS)?;
        let json_path = dir.join("tokenizer.json");
        let (inner, vocab_path) = if json_path.is_file() {
            (load_tokenizer_json(&json_path)?, json_path)
        } else {
            (build_from_vocab(dir, &unk)?, dir.join("vocab.json"))
        };
        let id = |field: &str, default: &str| -> Result<(String, u32)> {
            let (token, source) = settings.token(field, default)?;
            let path = source.unwrap_or_else(|| vocab_path.clone());
            match inner.token_to_id(&token) {
                Some(id) => Ok((token, id)),
                None => Err(TokenizerError::Field {
                    path,
                    field: field.to_string(),
                    message: format!("token {token:?} is not in the vocabulary"),
                }),
            }
        };
        let bos = id("bos_token", BOS)?;
        let eos = id("eos_token", EOS)?;
        let pad = id("pad_token", EOS)?;
        let unk = id("unk_token", EOS)?;
        let mut specials = vec![bos.clone(), eos.clone(), pad.clone(), unk];
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        specials.dedup();
        Ok(Self {
            dir: dir.to_path_buf(),
            inner,
            specials,
            bos_id: bos.1,
            eos_id: eos.1,
            pad_id: pad.1,
            max_length: settings.max_length()?,
        })
    }

    /// Tokenizes one prompt to exactly `max_length` ids: bos, tokens, eos, then pad ids; when
    /// too long, truncated to max_length-1 tokens + eos (as transformers does with
    /// truncation=True).
    pub fn encode(&self, prompt: &str) -> Result<Encoding> {
        let tokens = self.tokens(prompt)?;
        let room = self.max_length - 2;
        let kept = tokens.len().min(room);
        let truncated = match tokens.get(room..) {
            Some(dropped) if !dropped.is_empty() => Some(self.decode(prompt, dropped)?),
            _ => None,
        };
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos_id);
        ids.extend_from_slice(&tokens[..kept]);
        ids.push(self.eos_id);
        ids.resize(self.max_length, self.pad_id);
        Ok(Encoding { ids, truncated })
    }

    /// The number of ids [`encode`](Self::encode) returns (CLIP's context length).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The id padding fills with: `<|endoftext|>` for SD1, `!` for SD2.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The id of the start token (`<|startoftext|>`).
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// The id of the end token (`<|endoftext|>`).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The id of a vocabulary entry written as in `vocab.json` (e.g. `",</w>"`), if present.
    pub fn vocab_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary entry of `id` (e.g. `"fox</w>"`), for showing tokens.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The text's token ids without bos/eos, padding or truncation, as
    /// `tokenizer(text, add_special_tokens=False, truncation=False)` gives them (what
    /// AUTOMATIC1111 and ComfyUI tokenize each prompt piece with).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        self.tokens(text)
    }

    /// The prompt's token ids, without bos/eos, untruncated.
    fn tokens(&self, prompt: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for piece in split_on_specials(prompt, &self.specials) {
            match piece {
                Piece::Special(id) => ids.push(id),
                Piece::Text(text) => {
                    let cleaned = clean(text);
                    if cleaned.is_empty() {
                        continue;
                    }
                    let encoding = self
                        .inner
                        .encode(cleaned, false)
                        .map_err(|e| self.encode_error(prompt, e))?;
                    ids.extend_from_slice(encoding.get_ids());
                }
            }
        }
        Ok(ids)
    }

    /// The text of `ids` the way CLIP's tokenizer decodes it: words separated by single spaces.
    fn decode(&self, prompt: &str, ids: &[u32]) -> Result<String> {
        let tokens = ids
            .iter()
            .filter_map(|&id| self.inner.id_to_token(id))
            .collect();
        let text = ByteLevel::default()
            .decode(tokens)
            .map_err(|e| self.encode_error(prompt, e))?;
        Ok(text.replace("</w>", " ").trim().to_string())
    }

    fn encode_error(&self, prompt: &str, error: tokenizers::Error) -> TokenizerError {
        TokenizerError::Encode {
            path: self.dir.clone(),
            prompt: prompt.to_string(),
            message: error.to_string(),
        }
    }
}

/// `tokenizer_config.json` and `special_tokens_map.json`, each optional.
struct Settings {
    config: Option<JsonFile>,
    map: Option<JsonFile>,
}

struct JsonFile {
    path: PathBuf,
    fields: Map<String, Value>,
}

impl Settings {
    fn read(dir: &Path) -> Result<Self> {
        let read = |name: &str| -> Result<Option<JsonFile>> {
            let path = dir.join(name);
            if !path.is_file() {
                return Ok(None);
            }
            let fields = parse_json(&path)?;
            Ok(Some(JsonFile { path, fields }))
        };
        Ok(Self {
            config: read("tokenizer_config.json")?,
            map: read("special_tokens_map.json")?,
        })
    }

    /// A special token's content and the file it came from (`None` for the default).
    fn token(&self, field: &str, default: &str) -> Result<(String, Option<PathBuf>)> {
        // transformers merges special_tokens_map.json over the config, unless the config is a
        // newer one that lists its added tokens itself.
        let map_wins = !self
            .config
            .as_ref()
            .is_some_and(|c| c.fields.contains_key("added_tokens_decoder"));
        let files = if map_wins {
            [&self.map, &self.config]
        } else {
            [&self.config, &self.map]
        };
        for file in files.into_iter().flatten() {
            let Some(value) = file.fields.get(field).filter(|v| !v.is_null()) else {
                continue;
            };
            let content = match value {
                Value::String(s) => Some(s.as_str()),
                Value::Object(o) => o.get("content").and_then(Value::as_str),
                _ => None,
            };
            return match content {
                Some(content) => Ok((content.to_string(), Some(file.path.clone()))),
                None => Err(TokenizerError::Field {
                    path: file.path.clone(),
                    field: field.to_string(),
                    message: format!(
                        "expected a string or an object with a \"content\" string, found {value}"
                    ),
                }),
            };
        }
        Ok((default.to_string(), None))
    }

    /// `model_max_length` from the config: 77 when absent or unset (> 1e6).
    fn max_length(&self) -> Result<usize> {
        let Some(config) = &self.config else {
            return Ok(DEFAULT_MAX_LENGTH);
        };
        let value = match config.fields.get("model_max_length") {
            None | Some(Value::Null) => return Ok(DEFAULT_MAX_LENGTH),
            Some(value) => value,
        };
        match value.as_f64() {
            Some(n) if n > UNSET_MAX_LENGTH => Ok(DEFAULT_MAX_LENGTH),
            // Room for at least bos and eos.
            Some(n) if n >= 2.0 && n.fract() == 0.0 => Ok(n as usize),
            _ => Err(TokenizerError::Field {
                path: config.path.clone(),
                field: "model_max_length".to_string(),
                message: format!("expected a whole number of at least 2, found {value}"),
            }),
        }
    }
}

fn read_text(path: &Path) -> Result<String> {
    if !path.is_file() {
        return Err(TokenizerError::MissingFile {
            path: path.to_path_buf(),
        });
    }
    crate::fs_limits::read_regular_string(path, crate::fs_limits::TEXT_BYTES)
        .map_err(crate::fs_limits::ReadError::into_io)
        .map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    serde_json::from_str(&read_text(path)?).map_err(|source| TokenizerError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn load_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    let load_error = |e: tokenizers::Error| TokenizerError::Load {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut tokenizer = Tokenizer::from_file(path).map_err(load_error)?;
    // encode() pads and truncates itself, after adding bos/eos.
    tokenizer
        .with_padding(None)
        .with_truncation(None)
        .map_err(load_error)?;
    Ok(tokenizer)
}

/// Builds the tokenizer from `vocab.json` and `merges.txt` as transformers' converter does.
fn build_from_vocab(dir: &Path, unk: &str) -> Result<Tokenizer> {
    let vocab_path = dir.join("vocab.json");
    let merges_path = dir.join("merges.txt");
    let vocab: HashMap<String, u32> = parse_json(&vocab_path)?;
    let merges = read_merges(&merges_path)?;
    let load_error = |e: tokenizers::Error| TokenizerError::Load {
        path: merges_path.clone(),
        message: e.to_string(),
    };
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
        .unk_token(unk.to_string())
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".to_string())
        .build()
        .map_err(load_error)?;
    let normalizer = Sequence::new(vec![
        NFC.into(),
        Replace::new(ReplacePattern::Regex(r"\s+".into()), " ")
            .map_err(load_error)?
            .into(),
        Lowercase.into(),
    ]);
    let pre_tokenizer = PreSequence::new(vec![
        Split::new(
            SplitPattern::Regex(WORD_PATTERN.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(load_error)?
        .into(),
        ByteLevel::new(false, true, false).into(),
    ]);
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(normalizer))
        .with_pre_tokenizer(Some(pre_tokenizer))
        .with_decoder(Some(ByteLevel::default()));
    Ok(tokenizer)
}

/// The merges, skipping the `#version` header, capped at [`MAX_MERGES`] as the slow tokenizer is.
fn read_merges(path: &Path) -> Result<Vec<(String, String)>> {
    let text = read_text(path)?;
    let mut merges = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if (index == 0 && line.starts_with("#version")) || line.trim().is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) => merges.push((a.to_string(), b.to_string())),
            _ => {
                return Err(TokenizerError::Merges {
                    path: path.to_path_buf(),
                    line: index + 1,
                    text: line.to_string(),
                })
            }
        }
        if merges.len() == MAX_MERGES {
            break;
        }
    }
    Ok(merges)
}

/// A piece of the raw prompt: a special token or the text between them.
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Special(u32),
    Text(&'a str),
}

/// Splits `text` on the special token strings, longest first at each position (as
/// transformers' added-token trie does before any normalisation).
fn split_on_specials<'a>(text: &'a str, specials: &[(String, u32)]) -> Vec<Piece<'a>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    while pos < text.len() {
        let rest = &text[pos..];
        if let Some((token, id)) = specials
            .iter()
            .find(|(token, _)| rest.starts_with(token.as_str()))
        {
            if start < pos {
                pieces.push(Piece::Text(&text[start..pos]));
            }
            pieces.push(Piece::Special(*id));
            pos += token.len();
            start = pos;
        } else {
            pos += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    if start < text.len() {
        pieces.push(Piece::Text(&text[start..]));
    }
    pieces
}

/// The slow tokenizer's `whitespace_clean(ftfy.fix_text(text)).lower()`.
fn clean(text: &str) -> String {
    ftfy::fix_text(text)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

#[cfg(test)]
mod tests;
