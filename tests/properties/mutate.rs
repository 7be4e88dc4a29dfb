//! Mutations of valid inputs: overwritten bytes, inserted bytes, truncation. Starting from a
//! valid file reaches the deep parts of a reader, which random bytes never do.

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence};

/// Cases per property: fixed, so CI time is bounded.
pub const CASES: u32 = 256;

/// The runner configuration every property uses.
pub fn config() -> Config {
    Config {
        cases: CASES,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Overwrite the byte at the index.
    Set(Index, u8),
    /// Insert a byte before the index.
    Insert(Index, u8),
    /// Flip one bit of the byte at the index.
    Flip(Index, u8),
    /// Keep only the bytes before the index.
    Truncate(Index),
    /// Write a little-endian u64 (a length, an offset, a count) at the index.
    Word(Index, u64),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Edit::Flip(i, b)),
        1 => any::<Index>().prop_map(Edit::Truncate),
        2 => (any::<Index>(), prop_oneof![Just(u64::MAX), Just(1 << 40), Just(u32::MAX as u64), 0u64..4096])
            .prop_map(|(i, w)| Edit::Word(i, w)),
    ]
}

/// Up to `n` edits.
pub fn edits(n: usize) -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(edit(), 1..=n)
}

/// `bytes` with `edits` applied in order.
pub fn apply(bytes: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for e in edits {
        if out.is_empty() {
            break;
        }
        match e {
            Edit::Set(i, b) => {
                let i = i.index(out.len());
                out[i] = *b;
            }
            Edit::Insert(i, b) => {
                let i = i.index(out.len());
                out.insert(i, *b);
            }
            Edit::Flip(i, bit) => {
                let i = i.index(out.len());
                out[i] ^= 1 << bit;
            }
            Edit::Truncate(i) => {
                let i = i.index(out.len());
                out.truncate(i);
            }
            Edit::Word(i, w) => {
                let i = i.index(out.len());
                let bytes = w.to_le_bytes();
                let end = (i + 8).min(out.len());
                out[i..end].copy_from_slice(&bytes[..end - i]);
            }
        }
    }
    out
}
