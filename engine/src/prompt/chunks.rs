//! Prompts as chunks of CLIP's context length: token ids with per-token weights and the
//! positions of textual-inversion vectors.
//!
//! * [`a1111_chunks`]: AUTOMATIC1111's `tokenize_line`. The attention parser's segments are
//!   tokenized one by one (no bos/eos, untruncated); tokens fill chunks of 75 (context - 2).
//!   When a chunk is full and a comma lies within the last `comma_backtrack` tokens (20 in
//!   A1111), the tokens after that comma move to the next chunk. `BREAK` ends the chunk (an empty
//!   chunk when nothing precedes it). An embedding's name (matched on token ids, longest first)
//!   becomes as many positions as it has vectors, moved whole to the next chunk when it does not
//!   fit. Each chunk is padded with the end token to 75, then wrapped in start and end tokens;
//!   everything after the first end token becomes the pad token (SD2's OpenCLIP pads with 0).
//! * [`comfy_chunks`]: ComfyUI's `tokenize_with_weights`: each weighted segment is tokenized
//!   whole (split only at `embedding:NAME`); a segment shorter than 8 tokens that does not fit
//!   moves whole to the next chunk, a longer one is split; no comma backtrack; padding with the
//!   tokenizer's pad token.
//! * [`plain_chunks`]: diffusers' literal encoding: one chunk, truncated, no weights.

use std::sync::Arc;

use super::attention::{comfy_token_weights, is_break, parse_prompt_attention};
use super::embeddings::{Embedding, EmbeddingCatalog};
use super::PromptError;
use crate::tokenizer::ClipTokenizer;

/// Where a textual-inversion embedding's vectors go in a chunk.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Index in [`Chunk::ids`] of the first vector.
    pub position: usize,
    /// The embedding; its vectors fill `position..position + vector_count`.
    pub embedding: Arc<Embedding>,
}

/// One encoder call's worth of prompt: exactly the tokenizer's `max_length` ids.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Start token, prompt tokens, end token, pad tokens. Positions an embedding fills hold 0.
    pub ids: Vec<u32>,
    /// One weight per id (1 for start, end and padding).
    pub weights: Vec<f32>,
    /// Textual-inversion vectors to put in place of the token embeddings.
    pub embeddings: Vec<Placement>,
}

impl Chunk {
    /// The chunk of the empty prompt: start, end, then padding (A1111's `empty_chunk`,
    /// ComfyUI's `gen_empty_tokens`).
    pub fn empty(tokenizer: &ClipTokenizer) -> Self {
        finish(tokenizer, Vec::new(), Vec::new(), Vec::new(), Fill::A1111)
    }

    /// Whether any weight differs from 1.
    pub fn is_weighted(&self) -> bool {
        self.weights.iter().any(|&w| w != 1.0)
    }
}

/// A prompt's chunks.
#[derive(Debug, Clone)]
pub struct Chunks {
    /// The chunks, in order (at least one).
    pub chunks: Vec<Chunk>,
    /// The token count a UI shows: A1111's (prompt positions including the padding of every
    /// chunk but the last, as in its `75/150` counter), ComfyUI's prompt tokens, or the tokens
    /// [`plain_chunks`] kept.
    pub token_count: usize,
    /// For [`plain_chunks`]: the words dropped by truncation.
    pub truncated: Option<String>,
}

/// Finds embedding names in token ids (A1111's `EmbeddingDatabase.find_embedding_at_position`).
#[derive(Debug)]
pub struct EmbeddingMatcher<'a> {
    catalog: &'a EmbeddingCatalog,
    /// Each name's token ids, longest first.
    names: Vec<(Vec<u32>, String)>,
}

impl<'a> EmbeddingMatcher<'a> {
    /// Tokenizes every name of `catalog` with `tokenizer`.
    pub fn new(
        catalog: &'a EmbeddingCatalog,
        tokenizer: &ClipTokenizer,
    ) -> Result<Self, PromptError> {
        let mut names = Vec::new();
        for entry in catalog.entries() {
            let ids = tokenizer.token_ids(&entry.name)?;
            if !ids.is_empty() {
                names.push((ids, entry.name.clone()));
            }
        }
        // Stable: equal lengths keep the catalog's order.
        names.sort_by_key(|(ids, _)| std::cmp::Reverse(ids.len()));
        Ok(Self { catalog, names })
    }

    /// The embedding whose name's ids start at `tokens[at]`, and how many ids the name takes.
    fn at(
        &self,
        tokens: &[u32],
        at: usize,
    ) -> Result<Option<(Arc<Embedding>, usize)>, PromptError> {
        for (ids, name) in &self.names {
            if tokens[at..].starts_with(ids) {
                return Ok(Some((self.catalog.load(name)?, ids.len())));
            }
        }
        Ok(None)
    }

    /// The embedding called `name` (ComfyUI's `embedding:NAME`, where NAME may carry the
    /// file's extension).
    fn by_name(&self, name: &str) -> Result<Arc<Embedding>, PromptError> {
        let stem = [".safetensors", ".pt", ".bin"]
            .iter()
            .find_map(|ext| name.strip_suffix(ext))
            .filter(|stem| {
                self.catalog.entry(name).is_none() && self.catalog.entry(stem).is_some()
            });
        self.catalog.load(stem.unwrap_or(name))
    }
}

/// How A1111 chunks a prompt.
#[derive(Debug, Clone, Copy)]
pub struct A1111Chunking {
    /// A1111's `comma_padding_backtrack` (default 20; 0 disables it).
    pub comma_backtrack: usize,
}

impl Default for A1111Chunking {
    fn default() -> Self {
        Self {
            comma_backtrack: 20,
        }
    }
}

/// The chunk under construction (A1111's `PromptChunk` before wrapping).
#[derive(Default)]
struct Building {
    tokens: Vec<u32>,
    weights: Vec<f32>,
    embeddings: Vec<Placement>,
}

/// A1111's chunking state (`tokenize_line`'s locals).
struct A1111Builder<'t> {
    tokenizer: &'t ClipTokenizer,
    length: usize,
    chunks: Vec<Chunk>,
    chunk: Building,
    token_count: usize,
    last_comma: Option<usize>,
}

impl A1111Builder<'_> {
    /// A1111's `next_chunk`: pads and wraps the current chunk and starts an empty one.
    fn next_chunk(&mut self, is_last: bool) {
        self.token_count += if is_last {
            self.chunk.tokens.len()
        } else {
            self.length
        };
        let done = std::mem::take(&mut self.chunk);
        self.last_comma = None;
        self.chunks.push(finish(
            self.tokenizer,
            done.tokens,
            done.weights,
            done.embeddings,
            Fill::A1111,
        ));
    }

    /// Moves the tokens after the last comma to a new chunk when the chunk is full and the
    /// comma is within `backtrack` tokens.
    fn backtrack(&mut self, backtrack: usize) {
        let Some(at) = self.last_comma else {
            return;
        };
        if backtrack == 0 || self.chunk.tokens.len() != self.length || self.length - at > backtrack
        {
            return;
        }
        let split = at + 1;
        let moved = Building {
            tokens: self.chunk.tokens.split_off(split),
            weights: self.chunk.weights.split_off(split),
            // A1111 leaves the moved embeddings' placements behind (their vectors then land on
            // padding); beeswax moves them with their tokens.
            embeddings: take_placements_from(&mut self.chunk.embeddings, split),
        };
        self.next_chunk(false);
        self.chunk = moved;
    }
}

/// AUTOMATIC1111's `tokenize_line` (emphasis "Original"): see the module docs.
pub fn a1111_chunks(
    text: &str,
    tokenizer: &ClipTokenizer,
    matcher: Option<&EmbeddingMatcher>,
    options: A1111Chunking,
) -> Result<Chunks, PromptError> {
    let comma = tokenizer.vocab_id(",</w>");
    let mut b = A1111Builder {
        tokenizer,
        length: tokenizer.max_length() - 2,
        chunks: Vec::new(),
        chunk: Building::default(),
        token_count: 0,
        last_comma: None,
    };
    for segment in parse_prompt_attention(text) {
        if is_break(&segment) {
            b.next_chunk(false);
            continue;
        }
        let weight = segment.1 as f32;
        let tokens = tokenizer.token_ids(&segment.0)?;
        let mut position = 0;
        while position < tokens.len() {
            let token = tokens[position];
            if Some(token) == comma {
                b.last_comma = Some(b.chunk.tokens.len());
            } else {
                b.backtrack(options.comma_backtrack);
            }
            if b.chunk.tokens.len() == b.length {
                b.next_chunk(false);
            }
            let found = match matcher {
                Some(m) => m.at(&tokens, position)?,
                None => None,
            };
            let Some((embedding, name_len)) = found else {
                b.chunk.tokens.push(token);
                b.chunk.weights.push(weight);
                position += 1;
                continue;
            };
            let count = embedding.vector_count();
            if b.chunk.tokens.len() + count > b.length {
                b.next_chunk(false);
            }
            b.chunk.embeddings.push(Placement {
                position: b.chunk.tokens.len(),
                embedding,
            });
            b.chunk.tokens.extend(std::iter::repeat_n(0, count));
            b.chunk.weights.extend(std::iter::repeat_n(weight, count));
            position += name_len;
        }
    }
    if !b.chunk.tokens.is_empty() || b.chunks.is_empty() {
        b.next_chunk(true);
    }
    Ok(Chunks {
        chunks: b.chunks,
        token_count: b.token_count,
        truncated: None,
    })
}

/// The placements at or after `from`, re-based to start at 0.
fn take_placements_from(placements: &mut Vec<Placement>, from: usize) -> Vec<Placement> {
    let (moved, kept): (Vec<_>, Vec<_>) = placements.drain(..).partition(|p| p.position >= from);
    *placements = kept;
    moved
        .into_iter()
        .map(|p| Placement {
            position: p.position - from,
            ..p
        })
        .collect()
}

/// How a chunk is padded.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fill {
    /// A1111: the end token up to the chunk length, wrapped in start/end, then everything
    /// after the first end token becomes the pad token.
    A1111,
    /// ComfyUI and diffusers: start, tokens, end, then the pad token.
    EndThenPad,
}

/// Wraps `tokens` (placements shift by one for the start token) into a full chunk.
fn finish(
    tokenizer: &ClipTokenizer,
    tokens: Vec<u32>,
    weights: Vec<f32>,
    embeddings: Vec<Placement>,
    fill: Fill,
) -> Chunk {
    let total = tokenizer.max_length();
    let (bos, eos, pad) = (tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.pad_id());
    let mut ids = Vec::with_capacity(total);
    ids.push(bos);
    ids.extend_from_slice(&tokens);
    ids.push(eos);
    let mut all_weights = Vec::with_capacity(total);
    all_weights.push(1.0);
    all_weights.extend_from_slice(&weights);
    all_weights.push(1.0);
    all_weights.resize(total, 1.0);
    match fill {
        Fill::A1111 => {
            ids.resize(total, eos);
            if let Some(first_end) = ids.iter().position(|&id| id == eos) {
                for id in &mut ids[first_end + 1..] {
                    *id = pad;
                }
            }
        }
        Fill::EndThenPad => ids.resize(total, pad),
    }
    Chunk {
        ids,
        weights: all_weights,
        embeddings: embeddings
            .into_iter()
            .map(|p| Placement {
                position: p.position + 1,
                ..p
            })
            .collect(),
    }
}

/// A group of ComfyUI tokens: ids (0 for embedding vectors) with one weight, and the embedding
/// when the group is one.
struct Group {
    tokens: Vec<u32>,
    weight: f32,
    embedding: Option<Arc<Embedding>>,
}

/// ComfyUI's `SDTokenizer.tokenize_with_weights`: see the module docs. `embedding:NAME` needs
/// `matcher`; an unknown name is an error (ComfyUI warns and drops the word).
pub fn comfy_chunks(
    text: &str,
    tokenizer: &ClipTokenizer,
    matcher: Option<&EmbeddingMatcher>,
) -> Result<Chunks, PromptError> {
    const MAX_WORD_LENGTH: usize = 8;
    let groups = comfy_groups(text, tokenizer, matcher)?;
    let token_count = groups.iter().map(|g| g.tokens.len()).sum();
    let room = tokenizer.max_length() - 1;
    let mut batches: Vec<Building> = vec![Building::default()];
    for group in groups {
        let is_large = group.tokens.len() >= MAX_WORD_LENGTH;
        let mut offset = 0;
        while offset < group.tokens.len() {
            let batch = batches.last_mut().map_or(0, |b| b.tokens.len()) + 1;
            let left = group.tokens.len() - offset;
            if left + batch > room {
                let remaining = room - batch;
                if is_large {
                    push_group(&mut batches, &group, offset, remaining);
                    offset += remaining;
                }
                batches.push(Building::default());
            } else {
                push_group(&mut batches, &group, offset, left);
                offset += left;
            }
        }
    }
    let chunks = batches
        .into_iter()
        .map(|b| {
            finish(
                tokenizer,
                b.tokens,
                b.weights,
                b.embeddings,
                Fill::EndThenPad,
            )
        })
        .collect();
    Ok(Chunks {
        chunks,
        token_count,
        truncated: None,
    })
}

/// ComfyUI's token groups: each weighted segment's words (split at `embedding:NAME`) and
/// embeddings, in order.
fn comfy_groups(
    text: &str,
    tokenizer: &ClipTokenizer,
    matcher: Option<&EmbeddingMatcher>,
) -> Result<Vec<Group>, PromptError> {
    let mut groups = Vec::new();
    for (segment, weight) in comfy_token_weights(text) {
        for word in split_embedding_words(&segment) {
            let mut word = word.to_string();
            if let (Some(rest), Some(matcher)) = (word.strip_prefix("embedding:"), matcher) {
                let rest = rest.trim_matches('\n');
                let mut words = rest.split_whitespace();
                let name = words.next().unwrap_or_default();
                let leftover: Vec<&str> = words.collect();
                let stripped = name.trim_matches(',');
                let (embedding, extra) = match matcher.by_name(name) {
                    Ok(e) => (e, String::new()),
                    Err(_) if stripped.len() < name.len() => (
                        matcher.by_name(stripped)?,
                        name[stripped.len()..].to_string(),
                    ),
                    Err(e) => return Err(e),
                };
                let count = embedding.vector_count();
                groups.push(Group {
                    tokens: vec![0; count],
                    weight: weight as f32,
                    embedding: Some(embedding),
                });
                word = if extra.is_empty() {
                    leftover.join(" ")
                } else {
                    format!("{extra} {}", leftover.join(" "))
                };
                if word.is_empty() {
                    continue;
                }
            }
            groups.push(Group {
                tokens: tokenizer.token_ids(&word)?,
                weight: weight as f32,
                embedding: None,
            });
        }
    }
    Ok(groups)
}

/// Appends `len` tokens of `group` from `offset` to the last batch.
fn push_group(batches: &mut [Building], group: &Group, offset: usize, len: usize) {
    let Some(batch) = batches.last_mut().filter(|_| len > 0) else {
        return;
    };
    if let Some(embedding) = &group.embedding {
        // A split embedding keeps only its vectors that fit here; ComfyUI places each vector
        // as its own token, so the rest continue the next chunk.
        batch.embeddings.push(Placement {
            position: batch.tokens.len(),
            embedding: Arc::new(slice_embedding(embedding, offset, len)),
        });
    }
    batch
        .tokens
        .extend_from_slice(&group.tokens[offset..offset + len]);
    batch.weights.extend(std::iter::repeat_n(group.weight, len));
}

/// The embedding restricted to vectors `offset..offset + len` (the whole one when it fits).
fn slice_embedding(embedding: &Arc<Embedding>, offset: usize, len: usize) -> Embedding {
    use super::embeddings::EmbeddingVectors;
    let mut part = (**embedding).clone();
    if offset == 0 && len == embedding.vector_count() {
        return part;
    }
    let narrow = |t: &candle_core::Tensor| t.narrow(0, offset, len).unwrap_or_else(|_| t.clone());
    part.vectors = match &embedding.vectors {
        EmbeddingVectors::Single(t) => EmbeddingVectors::Single(narrow(t)),
        EmbeddingVectors::Sdxl { clip_l, clip_g } => EmbeddingVectors::Sdxl {
            clip_l: narrow(clip_l),
            clip_g: narrow(clip_g),
        },
    };
    part
}

/// ComfyUI's `re.split(' embedding:|\nembedding:', text)` with the prefix put back on every
/// piece but the first; empty pieces dropped.
fn split_embedding_words(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    let mut first = true;
    loop {
        let next = [" embedding:", "\nembedding:"]
            .iter()
            .filter_map(|sep| rest.find(sep))
            .min();
        let (piece, after) = match next {
            Some(at) => (&rest[..at], Some(&rest[at + 1..])),
            None => (rest, None),
        };
        let piece = if first {
            piece.to_string()
        } else {
            format!("embedding:{piece}")
        };
        if !piece.is_empty() {
            pieces.push(piece);
        }
        match after {
            Some(after) => {
                rest = &after["embedding:".len()..];
                first = false;
            }
            None => break,
        }
    }
    pieces
}

/// diffusers' literal encoding: `tokenizer(prompt, padding="max_length", truncation=True)`;
/// embedding names (when `matcher` is given) expand to their vectors first.
pub fn plain_chunks(
    text: &str,
    tokenizer: &ClipTokenizer,
    matcher: Option<&EmbeddingMatcher>,
) -> Result<Chunks, PromptError> {
    let room = tokenizer.max_length() - 2;
    let tokens = tokenizer.token_ids(text)?;
    let mut building = Building::default();
    let mut position = 0;
    while position < tokens.len() && building.tokens.len() < room {
        let found = match matcher {
            Some(m) => m.at(&tokens, position)?,
            None => None,
        };
        match found {
            Some((embedding, name_len)) => {
                let count = embedding.vector_count().min(room - building.tokens.len());
                let start = building.tokens.len();
                building.embeddings.push(Placement {
                    position: start,
                    embedding: Arc::new(slice_embedding(&embedding, 0, count)),
                });
                building.tokens.extend(std::iter::repeat_n(0, count));
                position += name_len;
            }
            None => {
                building.tokens.push(tokens[position]);
                position += 1;
            }
        }
    }
    let truncated = if position < tokens.len() {
        tokenizer
            .encode(text)?
            .truncated
            .or_else(|| Some(String::new()))
    } else {
        None
    };
    let total = building.tokens.len();
    let weights = vec![1.0; total];
    let chunk = finish(
        tokenizer,
        building.tokens,
        weights,
        building.embeddings,
        Fill::EndThenPad,
    );
    Ok(Chunks {
        chunks: vec![chunk],
        token_count: total,
        truncated,
    })
}

#[cfg(test)]
#[path = "chunks_tests.rs"]
mod tests;
