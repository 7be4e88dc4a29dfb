//! Chunking rules on the tiny-sd tokenizer (CLIP's full vocabulary): the token ids of whole
//! prompts are checked against the Python reference in `tests/prompt_syntax.rs`.

use super::*;
use crate::prompt::embeddings::EmbeddingEntry;

fn tokenizer(model: &str) -> ClipTokenizer {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(model)
        .join("tokenizer");
    ClipTokenizer::from_dir(&dir).unwrap()
}

/// The prompt tokens of a chunk (between start and the first end token).
fn body(chunk: &Chunk, tok: &ClipTokenizer) -> Vec<u32> {
    let end = chunk.ids[1..]
        .iter()
        .position(|&id| id == tok.eos_id())
        .unwrap()
        + 1;
    chunk.ids[1..end].to_vec()
}

#[test]
fn short_and_empty_prompts_are_one_chunk() {
    let tok = tokenizer("tiny-sd");
    let chunks = a1111_chunks("", &tok, None, A1111Chunking::default()).unwrap();
    assert_eq!(chunks.chunks.len(), 1);
    assert_eq!(chunks.chunks[0].ids, Chunk::empty(&tok).ids);
    let chunks = a1111_chunks("a (fox:1.5)", &tok, None, A1111Chunking::default()).unwrap();
    let c = &chunks.chunks[0];
    assert_eq!(c.ids.len(), 77);
    assert_eq!(body(c, &tok), tok.token_ids("a fox").unwrap());
    assert_eq!(&c.weights[..4], &[1.0, 1.0, 1.5, 1.0]);
    assert_eq!(chunks.token_count, 2);
}

#[test]
fn break_starts_a_chunk_even_at_the_start() {
    let tok = tokenizer("tiny-sd");
    let chunks = a1111_chunks("BREAK fox", &tok, None, A1111Chunking::default()).unwrap();
    assert_eq!(chunks.chunks.len(), 2);
    assert_eq!(chunks.chunks[0].ids, Chunk::empty(&tok).ids);
    let chunks = a1111_chunks("a BREAK BREAK b", &tok, None, A1111Chunking::default()).unwrap();
    assert_eq!(chunks.chunks.len(), 3);
    assert_eq!(chunks.token_count, 151);
}

#[test]
fn comma_backtrack_moves_the_tail_to_the_next_chunk() {
    let tok = tokenizer("tiny-sd");
    // 70 words, a comma (token 71), then 10 words: the chunk fills at 75 with the comma 5 tokens
    // back, so the 4 words after it move on.
    let prompt = format!("{}, {}", ["fox"; 70].join(" "), ["owl"; 10].join(" "));
    let chunks = a1111_chunks(&prompt, &tok, None, A1111Chunking::default()).unwrap();
    assert_eq!(chunks.chunks.len(), 2);
    assert_eq!(body(&chunks.chunks[0], &tok).len(), 71);
    assert_eq!(body(&chunks.chunks[1], &tok).len(), 10);
    let none = A1111Chunking { comma_backtrack: 0 };
    let chunks = a1111_chunks(&prompt, &tok, None, none).unwrap();
    assert_eq!(body(&chunks.chunks[0], &tok).len(), 75);
    // A comma further back than 20 tokens does not move anything.
    let prompt = format!("{}, {}", ["fox"; 50].join(" "), ["owl"; 40].join(" "));
    let chunks = a1111_chunks(&prompt, &tok, None, A1111Chunking::default()).unwrap();
    assert_eq!(body(&chunks.chunks[0], &tok).len(), 75);
}

#[test]
fn sd2_pads_after_the_end_token() {
    let tok = tokenizer("tiny-sd2");
    let chunks = a1111_chunks("a fox", &tok, None, A1111Chunking::default()).unwrap();
    let ids = &chunks.chunks[0].ids;
    assert_eq!(ids[3], tok.eos_id());
    assert!(ids[4..].iter().all(|&id| id == tok.pad_id()));
    assert_eq!(ids, &tok.encode("a fox").unwrap().ids);
}

#[test]
fn comfy_moves_short_segments_whole_and_splits_long_ones() {
    let tok = tokenizer("tiny-sd");
    // 72 tokens, then a weighted 5-token segment: it does not fit in 75 and moves whole.
    let prompt = format!("{} (a b c d e:1.2)", ["fox"; 72].join(" "));
    let chunks = comfy_chunks(&prompt, &tok, None).unwrap();
    assert_eq!(chunks.chunks.len(), 2);
    assert_eq!(body(&chunks.chunks[0], &tok).len(), 72);
    assert_eq!(body(&chunks.chunks[1], &tok).len(), 5);
    assert_eq!(chunks.chunks[1].weights[1], 1.2);
    // A long unweighted segment is split at 75.
    let prompt = ["fox"; 80].join(" ");
    let chunks = comfy_chunks(&prompt, &tok, None).unwrap();
    assert_eq!(body(&chunks.chunks[0], &tok).len(), 75);
    assert_eq!(body(&chunks.chunks[1], &tok).len(), 5);
    // Square brackets are text.
    let chunks = comfy_chunks("[fox]", &tok, None).unwrap();
    assert_eq!(
        body(&chunks.chunks[0], &tok),
        tok.token_ids("[fox]").unwrap()
    );
}

#[test]
fn embeddings_expand_to_their_vectors() {
    let tok = tokenizer("tiny-sd");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("owlstyle.safetensors");
    let t = candle_core::Tensor::zeros((3, 32), candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("emb_params".to_string(), t)]),
        &path,
    )
    .unwrap();
    let catalog = EmbeddingCatalog::from_entries(vec![EmbeddingEntry {
        name: "owlstyle".into(),
        path,
        sha256: None,
    }])
    .unwrap();
    let matcher = EmbeddingMatcher::new(&catalog, &tok).unwrap();
    let chunks = a1111_chunks(
        "a (owlstyle:1.2) fox",
        &tok,
        Some(&matcher),
        A1111Chunking::default(),
    )
    .unwrap();
    let c = &chunks.chunks[0];
    let a = tok.token_ids("a").unwrap()[0];
    let fox = tok.token_ids("fox").unwrap()[0];
    assert_eq!(&c.ids[..7], &[tok.bos_id(), a, 0, 0, 0, fox, tok.eos_id()]);
    assert_eq!(&c.weights[2..5], &[1.2, 1.2, 1.2]);
    assert_eq!((c.embeddings.len(), c.embeddings[0].position), (1, 2));
    let plain = plain_chunks("a owlstyle fox", &tok, Some(&matcher)).unwrap();
    assert_eq!(&plain.chunks[0].ids[..7], &c.ids[..7]);
    let comfy = comfy_chunks("a embedding:owlstyle.safetensors fox", &tok, Some(&matcher)).unwrap();
    assert_eq!(&comfy.chunks[0].ids[..7], &c.ids[..7]);
    assert!(comfy_chunks("embedding:nosuch", &tok, Some(&matcher)).is_err());
    // Without the catalog the name is ordinary words.
    let words = a1111_chunks("owlstyle", &tok, None, A1111Chunking::default()).unwrap();
    assert_eq!(
        body(&words.chunks[0], &tok),
        tok.token_ids("owlstyle").unwrap()
    );
}

#[test]
fn splits_embedding_words_like_comfyui() {
    assert_eq!(
        split_embedding_words("a embedding:x b\nembedding:y"),
        ["a", "embedding:x b", "embedding:y"]
    );
    assert_eq!(split_embedding_words("embedding:x"), ["embedding:x"]);
    assert_eq!(split_embedding_words(" embedding:x"), ["embedding:x"]);
}
