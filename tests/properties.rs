//! Property tests of the readers that take untrusted input (issue 20, item 9): the prompt
//! parsers, the manifest reader, the safetensors and GGUF header readers and the picture
//! decoder. Arbitrary and mutated inputs never panic, never allocate without bound (a
//! counting allocator checks each case's peak) and fail with the library's error types.
//!
//! Case counts are fixed (`CASES` per property, no persistence files, a fixed seed from
//! proptest's deterministic runner), so the time in CI is bounded.

#![allow(unsafe_code)] // the counting allocator below: a GlobalAlloc is unsafe by definition
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

#[path = "properties/alloc.rs"]
mod alloc;
#[path = "properties/manifest.rs"]
mod manifest;
#[path = "properties/mutate.rs"]
mod mutate;
#[path = "properties/picture.rs"]
mod picture;
#[path = "properties/prompt.rs"]
mod prompt;
#[path = "properties/tensor_files.rs"]
mod tensor_files;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

/// A committed fixture.
fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(rel)
}
