//! The CLIP tokenizer against transformers' slow `CLIPTokenizer` (with ftfy).
//!
//! `tests/fixtures/reference/tokenizer_ids.json` holds, for each hard prompt, the slow
//! tokenizer's ids with `padding="max_length", max_length=77, truncation=True` for the SD1-like
//! model (pad `<|endoftext|>`) and the SD2-like one (pad `!`), plus the SD1 ids untruncated.
//! They come from `tests/fixtures/make_fixtures.py` (`SlowCLIPTokenizer`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use beeswax::tokenizer::ClipTokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    prompt: String,
    sd1: Vec<u32>,
    sd2: Vec<u32>,
    untruncated: Vec<u32>,
}

fn tokenizer(model: &str) -> ClipTokenizer {
    let dir = common::model_dir(model).join("tokenizer");
    ClipTokenizer::from_dir(&dir).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

fn references() -> Vec<Reference> {
    common::json("reference/tokenizer_ids.json")
}

/// Lowercase without whitespace: decoding puts a space after every word and punctuation run.
fn squash(text: &str) -> String {
    text.to_lowercase().split_whitespace().collect()
}

#[test]
fn settings_come_from_the_tokenizer_folders() {
    let sd1 = tokenizer("tiny-sd");
    let sd2 = tokenizer("tiny-sd2");
    assert_eq!((sd1.max_length(), sd1.pad_id()), (77, 49407));
    assert_eq!((sd2.max_length(), sd2.pad_id()), (77, 0));
}

#[test]
fn ids_match_the_slow_tokenizer() {
    let models = [
        ("tiny-sd", tokenizer("tiny-sd")),
        ("tiny-sd2", tokenizer("tiny-sd2")),
    ];
    let mut failures = Vec::new();
    for reference in references() {
        for ((model, tokenizer), expected) in models.iter().zip([&reference.sd1, &reference.sd2]) {
            let encoding = tokenizer.encode(&reference.prompt).expect("encode");
            if encoding.ids != *expected {
                failures.push(format!(
                    "{model}, prompt {:?}\n  expected {expected:?}\n  got      {:?}",
                    reference.prompt, encoding.ids
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `truncated` is set exactly when the untruncated ids (bos and eos included) exceed 77, and
/// holds the end of the prompt. The untruncated ids are SD1's; SD2 tokenizes `!` differently
/// (its pad token), so its truncation is checked on prompts without one.
#[test]
fn truncation_reports_the_dropped_words() {
    let models = [tokenizer("tiny-sd"), tokenizer("tiny-sd2")];
    let mut long_prompts = 0;
    for reference in references() {
        let prompt = &reference.prompt;
        let too_long = reference.untruncated.len() > 77;
        long_prompts += usize::from(too_long);
        for (index, tokenizer) in models.iter().enumerate() {
            if index == 1 && prompt.contains('!') {
                continue;
            }
            let truncated = tokenizer.encode(prompt).expect("encode").truncated;
            let Some(dropped) = truncated else {
                assert!(
                    !too_long,
                    "prompt {prompt:?}: {} ids but nothing reported as truncated",
                    reference.untruncated.len()
                );
                continue;
            };
            assert!(
                too_long,
                "prompt {prompt:?} fits but {dropped:?} is reported as truncated"
            );
            assert!(
                !dropped.is_empty() && squash(prompt).ends_with(&squash(&dropped)),
                "prompt {prompt:?}: {dropped:?} is not its end"
            );
        }
    }
    assert!(
        long_prompts > 0,
        "no reference prompt is long enough to test truncation"
    );
}
