//! The safetensors and GGUF header readers on mutated files: an error of the reader's type or
//! a file whose every tensor can be read back, never a panic, never a large allocation.

use std::io::Write;

use beeswax::gguf::{GgufError, GgufFile};
use beeswax::weights::{SafetensorsFile, WeightsError};
use proptest::prelude::*;

use super::alloc::bounded;
use super::mutate::{apply, config, edits};

/// What a reader may hold for a file of a few kB: its header, one tensor's bytes, slack.
const BOUND: usize = 8 << 20;

fn write_temp(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

fn seed(rel: &str) -> Vec<u8> {
    std::fs::read(super::fixture(rel)).unwrap()
}

/// Opens `bytes` as safetensors and reads every tensor's bytes.
fn read_safetensors(bytes: &[u8]) -> Result<usize, WeightsError> {
    let f = write_temp(bytes);
    let file = SafetensorsFile::open(f.path())?;
    let mut total = 0;
    for name in file.names() {
        total += file.read_bytes(name)?.len();
    }
    Ok(total)
}

/// Opens `bytes` as GGUF, reads its metadata and every tensor's raw bytes.
fn read_gguf(bytes: &[u8]) -> Result<usize, GgufError> {
    let f = write_temp(bytes);
    let file = GgufFile::open(f.path())?;
    let _ = file.architecture()?;
    for (key, _) in file.metadata() {
        let _ = file.get_str(key);
    }
    let mut total = 0;
    for t in file.tensors() {
        total += file.read_raw(&t.name)?.len();
    }
    Ok(total)
}

#[test]
fn the_seeds_read() {
    assert!(read_safetensors(&seed("gguf/quantize_input.safetensors")).unwrap() > 0);
    assert!(read_gguf(&seed("gguf/types.gguf")).unwrap() > 0);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_safetensors_never_panic(e in edits(6)) {
        let bytes = apply(&seed("gguf/quantize_input.safetensors"), &e);
        // Any outcome but a panic or a large allocation: errors are `WeightsError`s by type.
        let _ = bounded("safetensors", BOUND, || read_safetensors(&bytes));
    }

    #[test]
    fn safetensors_headers_of_any_json_never_panic(
        header in prop::collection::vec(any::<u8>(), 0..256),
        claimed in prop_oneof![Just(None), (0u64..u64::MAX).prop_map(Some)],
    ) {
        let len = claimed.unwrap_or(header.len() as u64);
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(&header);
        let _ = bounded("safetensors header", BOUND, || read_safetensors(&bytes));
    }

    #[test]
    fn safetensors_entries_with_any_shape_and_offsets_never_panic(
        dims in prop::collection::vec(prop_oneof![0u64..8, Just(u64::MAX), Just(1 << 33)], 0..5),
        start in prop_oneof![0u64..64, Just(u64::MAX)],
        end in prop_oneof![0u64..64, Just(u64::MAX)],
        dtype in prop::sample::select(vec!["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "X"]),
    ) {
        let header = serde_json::json!({"t": {"dtype": dtype, "shape": dims, "data_offsets": [start, end]}});
        let header = header.to_string().into_bytes();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&[0u8; 64]);
        let _ = bounded("safetensors entry", BOUND, || read_safetensors(&bytes));
    }

    #[test]
    fn mutated_gguf_never_panics(e in edits(6)) {
        let bytes = apply(&seed("gguf/types.gguf"), &e);
        let _ = bounded("gguf", BOUND, || read_gguf(&bytes));
    }

    #[test]
    fn gguf_of_random_bytes_after_the_magic_never_panics(
        tail in prop::collection::vec(any::<u8>(), 0..512),
        version in 1u32..5,
    ) {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&tail);
        let _ = bounded("gguf header", BOUND, || read_gguf(&bytes));
    }
}
