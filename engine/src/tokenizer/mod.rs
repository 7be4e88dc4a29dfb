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
    std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
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
mod tests {
    use super::*;

    fn fixture_dir(model: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/models")
            .join(model)
            .join("tokenizer")
    }

    /// A tokenizer folder with the given files, in a fresh temporary directory.
    fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).expect("write file");
        }
        dir
    }

    const VOCAB: &str = r#"{"a": 0, "b": 1, "a</w>": 2, "b</w>": 3, "ab</w>": 4, "<|startoftext|>": 5, "<|endoftext|>": 6}"#;
    const MERGES: &str = "#version: 0.2\na b</w>\n";

    #[test]
    fn missing_folder_names_it() {
        let error = ClipTokenizer::from_dir(Path::new("/no/such/tokenizer")).unwrap_err();
        assert!(error.to_string().contains("/no/such/tokenizer"), "{error}");
    }

    #[test]
    fn missing_vocab_names_the_expected_path() {
        let dir = folder(&[("merges.txt", MERGES)]);
        let error = ClipTokenizer::from_dir(dir.path()).unwrap_err();
        let expected = dir.path().join("vocab.json");
        assert!(
            matches!(&error, TokenizerError::MissingFile { path } if *path == expected),
            "{error}"
        );
        assert!(
            error.to_string().contains(&expected.display().to_string()),
            "{error}"
        );
    }

    #[test]
    fn missing_merges_names_the_expected_path() {
        let dir = folder(&[("vocab.json", VOCAB)]);
        let error = ClipTokenizer::from_dir(dir.path()).unwrap_err();
        assert!(error.to_string().contains("merges.txt"), "{error}");
    }

    #[test]
    fn malformed_vocab_names_the_file_and_line() {
        let dir = folder(&[
            ("vocab.json", "{\n\"a\": 0,\n\"b\": oops}"),
            ("merges.txt", MERGES),
        ]);
        let error = ClipTokenizer::from_dir(dir.path()).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("vocab.json") && message.contains("line 3"),
            "{message}"
        );
    }

    #[test]
    fn malformed_merges_names_the_line() {
        let dir = folder(&[
            ("vocab.json", VOCAB),
            ("merges.txt", "#version: 0.2\na b</w>\nabc\n"),
        ]);
        let message = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains("merges.txt") && message.contains("line 3"),
            "{message}"
        );
    }

    #[test]
    fn unknown_pad_token_names_the_file_and_field() {
        let config = r#"{"pad_token": {"content": "<pad>"}}"#;
        let dir = folder(&[
            ("vocab.json", VOCAB),
            ("merges.txt", MERGES),
            ("tokenizer_config.json", config),
        ]);
        let message = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains("tokenizer_config.json") && message.contains("pad_token"),
            "{message}"
        );
        assert!(message.contains("<pad>"), "{message}");
    }

    #[test]
    fn bad_max_length_names_the_field() {
        let config = r#"{"model_max_length": "long"}"#;
        let dir = folder(&[
            ("vocab.json", VOCAB),
            ("merges.txt", MERGES),
            ("tokenizer_config.json", config),
        ]);
        let message = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains("model_max_length") && message.contains("long"),
            "{message}"
        );
    }

    #[test]
    fn settings_defaults_and_overrides() {
        let dir = folder(&[("vocab.json", VOCAB), ("merges.txt", MERGES)]);
        let tokenizer = ClipTokenizer::from_dir(dir.path()).expect("tokenizer");
        assert_eq!((tokenizer.max_length(), tokenizer.pad_id()), (77, 6));

        let config = r#"{"model_max_length": 1e30, "pad_token": "b"}"#;
        let map = r#"{"pad_token": {"content": "a", "lstrip": false}}"#;
        let files = [
            ("vocab.json", VOCAB),
            ("merges.txt", MERGES),
            ("tokenizer_config.json", config),
        ];
        let dir = folder(&files);
        let tokenizer = ClipTokenizer::from_dir(dir.path()).expect("tokenizer");
        assert_eq!((tokenizer.max_length(), tokenizer.pad_id()), (77, 1));
        std::fs::write(dir.path().join("special_tokens_map.json"), map).expect("write");
        let tokenizer = ClipTokenizer::from_dir(dir.path()).expect("tokenizer");
        assert_eq!(tokenizer.pad_id(), 0);
        // A config listing its added tokens is not overridden by the map.
        let config = r#"{"pad_token": "b", "added_tokens_decoder": {}}"#;
        std::fs::write(dir.path().join("tokenizer_config.json"), config).expect("write");
        let tokenizer = ClipTokenizer::from_dir(dir.path()).expect("tokenizer");
        assert_eq!(tokenizer.pad_id(), 1);
    }

    #[test]
    fn encodes_pads_and_truncates() {
        let config = r#"{"model_max_length": 5}"#;
        let dir = folder(&[
            ("vocab.json", VOCAB),
            ("merges.txt", MERGES),
            ("tokenizer_config.json", config),
        ]);
        let tokenizer = ClipTokenizer::from_dir(dir.path()).expect("tokenizer");
        let short = tokenizer.encode(" AB ").expect("encode");
        assert_eq!(
            short,
            Encoding {
                ids: vec![5, 4, 6, 6, 6],
                truncated: None
            }
        );
        let long = tokenizer.encode("ab a b ab").expect("encode");
        assert_eq!(long.ids, vec![5, 4, 2, 3, 6]);
        assert_eq!(long.truncated.as_deref(), Some("ab"));
    }

    #[test]
    fn splits_on_special_tokens_first() {
        let specials = [("<|endoftext|>".to_string(), 7), ("!".to_string(), 0)];
        let pieces = split_on_specials("hi!<|endoftext|>é", &specials);
        assert_eq!(
            pieces,
            [
                Piece::Text("hi"),
                Piece::Special(0),
                Piece::Special(7),
                Piece::Text("é")
            ]
        );
    }

    #[test]
    fn fixes_text_like_ftfy() {
        let cases = [
            (
                "salt &amp; pepper &lt;3 &quot;hi&quot; &#x41;&#66;",
                "salt & pepper <3 \"hi\" AB",
            ),
            ("<b> &amp;\n&amp;", "<b> &amp;\n&amp;"),
            ("cafÃ© naÃ¯ve Â© â€œqâ€\u{9d}", "café naïve © \"q\""),
            ("ﬁne ＡＢＣ １２ ｶ “q” it’s", "fine ABC 12 カ \"q\" it's"),
            ("e\u{301} a\r\nb\u{1b}[31mred\u{1b}[0m\u{7}", "é a\nbred"),
            ("x\u{85}y \u{93}q\u{94}", "x…y \"q\""),
            ("voilÃ le Ã la", "voilà le à la"),
            (
                "&eacute; &EACUTE; &SZLIG; &nosuch; &#xd800; &#1;",
                "é É SS &nosuch; \u{fffd} ",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(ftfy::fix_text(input), expected, "fix_text({input:?})");
        }
        assert_eq!(clean("  Tabs\tAND\n  Spaces  "), "tabs and spaces");
    }

    /// A `tokenizer.json` (here saved from the vocab.json build) gives the same ids.
    #[test]
    fn loads_tokenizer_json() {
        let source = fixture_dir("tiny-sd2");
        let built = ClipTokenizer::from_dir(&source).expect("tokenizer");
        let dir = tempfile::tempdir().expect("temp dir");
        built
            .inner
            .save(dir.path().join("tokenizer.json"), false)
            .expect("save");
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            std::fs::copy(source.join(name), dir.path().join(name)).expect("copy");
        }
        let loaded = ClipTokenizer::from_dir(dir.path()).expect("tokenizer.json");
        for prompt in [
            "a red fox!",
            "Tom's ＡＢＣ café, 1024x768 <|endoftext|>",
            "🦊🔥 fox",
        ] {
            assert_eq!(
                loaded.encode(prompt).expect("encode"),
                built.encode(prompt).expect("encode")
            );
        }
    }
}
