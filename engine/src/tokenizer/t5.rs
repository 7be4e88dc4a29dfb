//! T5's SentencePiece (Unigram) tokenizer, as FLUX's `tokenizer_2/` folder holds it: a
//! `tokenizer.json`, a SentencePiece `spiece.model`, or both.
//!
//! Both file kinds build the same pipeline, the one transformers' `T5TokenizerFast` builds
//! (transformers 5 rebuilds it even from a `tokenizer.json`, keeping only the vocabulary, the
//! normalization table and the added tokens): SentencePiece's precompiled normalization
//! (`precompiled_charsmap`, when the model has one), a split on whitespace, `▁` before every
//! word (Metaspace, `prepend_scheme = always`), Unigram over the pieces; special tokens
//! (`<pad>`, `</s>`, `<unk>`, `<extra_id_N>`) are matched whole in the raw text first.
//! [`T5Tokenizer::encode`] then appends `</s>`, truncates and pads with `<pad>` as
//! `tokenizer(prompt, padding="max_length", max_length=n, truncation=True)` does.
//!
//! transformers 4 ran a `tokenizer.json`'s own pipeline instead (for FLUX's files: a
//! collapse of repeated spaces and Metaspace without the whitespace split), which adds a
//! stray `▁` for trailing spaces; transformers 5, which beeswax follows, matches SentencePiece
//! there.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{json, Map, Value};
use tokenizers::Tokenizer;

use super::spiece::{PieceType, SpModel};
use super::{Encoding, TokenizerError};

type Result<T> = std::result::Result<T, TokenizerError>;

/// T5's end-of-sequence token, appended to every prompt.
const EOS: &str = "</s>";
/// T5's padding token.
const PAD: &str = "<pad>";
/// The sentinel tokens `<extra_id_N>` T5 adds after the pieces, when the config does not list
/// its added tokens (transformers' `extra_ids` default).
const DEFAULT_EXTRA_IDS: u64 = 100;

/// T5's tokenizer, loaded from a `tokenizer_2/` folder.
#[derive(Debug, Clone)]
pub struct T5Tokenizer {
    path: PathBuf,
    inner: Tokenizer,
    eos_id: u32,
    pad_id: u32,
}

impl T5Tokenizer {
    /// Loads from a folder: `tokenizer.json` if present, else `spiece.model` (with
    /// `tokenizer_config.json`'s added tokens or `extra_ids`, when present).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(TokenizerError::MissingDir {
                path: dir.to_path_buf(),
            });
        }
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_tokenizer_json(&json);
        }
        let spiece = dir.join("spiece.model");
        if spiece.is_file() {
            return Self::from_spiece(&spiece);
        }
        Err(TokenizerError::MissingFile { path: spiece })
    }

    /// Loads the vocabulary, normalization table and added tokens of a `tokenizer.json` whose
    /// model is Unigram.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        let file: Map<String, Value> = super::parse_json(path)?;
        let model = file.get("model").cloned().unwrap_or(Value::Null);
        if model.get("type").and_then(Value::as_str) != Some("Unigram") {
            return Err(field(
                path,
                "model.type",
                "a T5 tokenizer must be a Unigram model",
            ));
        }
        let charsmap = file
            .get("normalizer")
            .and_then(find_charsmap)
            .map(str::to_string);
        let mut added = match file.get("added_tokens") {
            Some(Value::Array(tokens)) => tokens.clone(),
            _ => Vec::new(),
        };
        added.sort_by_key(|t| t["id"].as_u64());
        Self::build(path, model, charsmap, added)
    }

    /// Loads a SentencePiece `spiece.model` (Unigram). The added tokens come from the
    /// folder's `tokenizer_config.json`: its `added_tokens_decoder` when it lists them, else
    /// `extra_ids` sentinels `<extra_id_0>`..., numbered down from the last id as T5 does
    /// (default 100); the model's control and user-defined pieces are added tokens too.
    pub fn from_spiece(path: &Path) -> Result<Self> {
        let bytes = crate::fs_limits::read_regular(path, crate::fs_limits::TEXT_BYTES)
            .map_err(crate::fs_limits::ReadError::into_io)
            .map_err(|source| TokenizerError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let sp = SpModel::parse(&bytes).map_err(|message| TokenizerError::Load {
            path: path.to_path_buf(),
            message,
        })?;
        if sp.model_type != 1 {
            return Err(field(
                path,
                "trainer_spec.model_type",
                &format!(
                    "{} is not Unigram (1); T5 tokenizers are Unigram",
                    sp.model_type
                ),
            ));
        }
        if sp.unk_id >= sp.pieces.len() {
            return Err(field(path, "trainer_spec.unk_id", "is not a piece"));
        }
        let vocab: Vec<Value> = sp
            .pieces
            .iter()
            .map(|p| json!([p.piece, p.score as f64]))
            .collect();
        let model = json!({"type": "Unigram", "unk_id": sp.unk_id, "vocab": vocab,
                           "byte_fallback": false});
        let charsmap = sp
            .precompiled_charsmap
            .as_ref()
            .map(|c| base64::engine::general_purpose::STANDARD.encode(c));
        let config = path.with_file_name("tokenizer_config.json");
        let added = added_tokens(&sp, &config)?;
        Self::build(path, model, charsmap, added)
    }

    /// The T5 pipeline around `model` (a `tokenizer.json` Unigram model section) with the
    /// `added` tokens (`tokenizer.json` entries, sorted by id).
    fn build(
        path: &Path,
        model: Value,
        charsmap: Option<String>,
        added: Vec<Value>,
    ) -> Result<Self> {
        let metaspace = json!({"replacement": "▁", "prepend_scheme": "always", "split": true});
        let mut meta_pre = metaspace.clone();
        meta_pre["type"] = json!("Metaspace");
        let mut meta_dec = metaspace;
        meta_dec["type"] = json!("Metaspace");
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": charsmap.map(|c| json!({"type": "Precompiled", "precompiled_charsmap": c})),
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "WhitespaceSplit"}, meta_pre]},
            "post_processor": null,
            "decoder": meta_dec,
            "model": model,
        });
        let inner: Tokenizer = spec.to_string().parse().map_err(|e| TokenizerError::Load {
            path: path.to_path_buf(),
            message: format!("cannot build the T5 tokenizer: {e}"),
        })?;
        for token in &added {
            let content = token["content"].as_str().unwrap_or_default();
            let placed = inner.token_to_id(content).map(u64::from);
            if placed != token["id"].as_u64() {
                return Err(field(
                    path,
                    "added_tokens",
                    &format!(
                        "token {content:?} is listed with id {} but lands at {placed:?}; the \
                         added tokens must follow the vocabulary without gaps",
                        token["id"]
                    ),
                ));
            }
        }
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| field(path, "vocab", &format!("has no {token} token")))
        };
        Ok(Self {
            eos_id: id(EOS)?,
            pad_id: id(PAD)?,
            path: path.to_path_buf(),
            inner,
        })
    }

    /// Tokenizes one prompt to exactly `max_length` ids: the tokens, `</s>`, then `<pad>`s;
    /// when too long, the first `max_length - 1` tokens and `</s>`, with the dropped text in
    /// [`Encoding::truncated`] (as FluxPipeline's warning shows it).
    pub fn encode(&self, prompt: &str, max_length: usize) -> Result<Encoding> {
        if max_length == 0 {
            return Err(TokenizerError::Encode {
                path: self.path.clone(),
                prompt: prompt.to_string(),
                message: "max_length is 0; it must leave room for </s>".into(),
            });
        }
        let tokens = self.tokens(prompt)?;
        let room = max_length - 1;
        let truncated = match tokens.get(room..) {
            Some(dropped) if !dropped.is_empty() => Some(
                self.inner
                    .decode(dropped, false)
                    .map_err(|e| self.encode_error(prompt, e))?,
            ),
            _ => None,
        };
        let mut ids: Vec<u32> = tokens.into_iter().take(room).collect();
        ids.push(self.eos_id);
        ids.resize(max_length, self.pad_id);
        Ok(Encoding { ids, truncated })
    }

    /// The prompt's ids without `</s>`, untruncated.
    pub fn tokens(&self, prompt: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(prompt, false)
            .map_err(|e| self.encode_error(prompt, e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The id of `</s>`.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The id padding fills with (`<pad>`, 0 for T5).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Ids in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn encode_error(&self, prompt: &str, error: tokenizers::Error) -> TokenizerError {
        TokenizerError::Encode {
            path: self.path.clone(),
            prompt: prompt.to_string(),
            message: error.to_string(),
        }
    }
}

fn field(path: &Path, field: &str, message: &str) -> TokenizerError {
    TokenizerError::Field {
        path: path.to_path_buf(),
        field: field.to_string(),
        message: message.to_string(),
    }
}

/// The base64 `precompiled_charsmap` of a `Precompiled` normalizer, alone or in a sequence.
fn find_charsmap(normalizer: &Value) -> Option<&str> {
    match normalizer.get("type").and_then(Value::as_str) {
        Some("Precompiled") => normalizer.get("precompiled_charsmap")?.as_str(),
        Some("Sequence") => normalizer
            .get("normalizers")?
            .as_array()?
            .iter()
            .find_map(find_charsmap),
        _ => None,
    }
}

/// `tokenizer.json`-style added tokens for a SentencePiece model (see
/// [`T5Tokenizer::from_spiece`]).
fn added_tokens(sp: &SpModel, config_path: &Path) -> Result<Vec<Value>> {
    let token = |id: usize, content: &str, special: bool| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": special})
    };
    let config: Map<String, Value> = if config_path.is_file() {
        super::parse_json(config_path)?
    } else {
        Map::new()
    };
    if let Some(Value::Object(listed)) = config.get("added_tokens_decoder") {
        let mut tokens = Vec::new();
        for (id, entry) in listed {
            let id: usize = id.parse().map_err(|_| {
                field(
                    config_path,
                    "added_tokens_decoder",
                    &format!("key {id:?} is not an id"),
                )
            })?;
            let content = entry
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    field(
                        config_path,
                        "added_tokens_decoder",
                        &format!("entry {id} has no content"),
                    )
                })?;
            let special = entry
                .get("special")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            tokens.push(token(id, content, special));
        }
        tokens.sort_by_key(|t| t["id"].as_u64());
        return Ok(tokens);
    }
    let mut tokens: Vec<Value> = sp
        .pieces
        .iter()
        .enumerate()
        .filter_map(|(id, p)| match p.kind {
            PieceType::Control | PieceType::Unknown => Some(token(id, &p.piece, true)),
            PieceType::UserDefined => Some(token(id, &p.piece, false)),
            _ => None,
        })
        .collect();
    let extra = match config.get("extra_ids") {
        None | Some(Value::Null) => DEFAULT_EXTRA_IDS,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| field(config_path, "extra_ids", &format!("{v} is not a count")))?,
    } as usize;
    let n = sp.pieces.len();
    for i in 0..extra {
        tokens.push(token(n + extra - 1 - i, &format!("<extra_id_{i}>"), true));
    }
    tokens.sort_by_key(|t| t["id"].as_u64());
    Ok(tokens)
}
