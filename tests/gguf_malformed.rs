//! Malformed GGUF files: every header field a hostile or truncated file could get wrong is an
//! error naming the file and the key or tensor at fault (never a panic or a huge allocation).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use beeswax::gguf::{Architecture, ArchitectureSource, GgufError, GgufFile};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/gguf")
        .join(rel)
}

fn types_file() -> GgufFile {
    GgufFile::open(&fixture("types.gguf")).unwrap()
}

/// A small GGUF file assembled byte by byte, so each field can be made wrong.
#[derive(Default)]
struct Raw {
    version: u32,
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s);
}

impl Raw {
    fn new() -> Self {
        Raw {
            version: 3,
            ..Raw::default()
        }
    }

    fn kv(mut self, key: &str, ty: u32, value: &[u8]) -> Self {
        put_str(&mut self.kv, key.as_bytes());
        self.kv.extend(ty.to_le_bytes());
        self.kv.extend(value);
        self.n_kv += 1;
        self
    }

    /// A tensor info with ggml-order `dims`; `data` is appended at `offset` when given.
    fn tensor(mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        put_str(&mut self.infos, name.as_bytes());
        self.infos.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| self.infos.extend(d.to_le_bytes()));
        self.infos.extend(ty.to_le_bytes());
        self.infos.extend(offset.to_le_bytes());
        self.n_tensors += 1;
        self
    }

    fn data(mut self, bytes: &[u8]) -> Self {
        self.data.extend(bytes);
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        out.extend(&self.infos);
        out.resize(out.len().next_multiple_of(32), 0);
        out.extend(&self.data);
        out
    }

    fn open(&self) -> Result<GgufFile, GgufError> {
        open_bytes(&self.bytes())
    }
}

fn open_bytes(bytes: &[u8]) -> Result<GgufFile, GgufError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, bytes).unwrap();
    GgufFile::open(&path)
}

fn err(raw: Result<GgufFile, GgufError>) -> String {
    raw.unwrap_err().to_string()
}

/// One f32 tensor "t" of 4 values.
fn good() -> Raw {
    Raw::new().tensor("t", &[4], 0, 0).data(&[0u8; 16])
}

#[test]
fn well_formed_hand_made_file_opens() {
    let file = good().kv("general.architecture", 8, &{
        let mut v = Vec::new();
        put_str(&mut v, b"flux");
        v
    });
    let file = file.open().unwrap();
    assert_eq!(file.tensor("t").unwrap().shape, [4]);
    assert_eq!(
        file.expect_architecture(&[Architecture::Flux]).unwrap(),
        Architecture::Flux
    );
    assert_eq!(
        Raw {
            version: 2,
            ..good()
        }
        .open()
        .unwrap()
        .version(),
        2
    );
    // No usable general.architecture: told from the tensor names, as ComfyUI-GGUF does.
    let mut pig = Vec::new();
    put_str(&mut pig, b"pig");
    let named = Raw::new()
        .kv("general.architecture", 8, &pig)
        .tensor(
            "model.diffusion_model.double_blocks.0.img_attn.qkv.weight",
            &[4],
            0,
            0,
        )
        .data(&[0u8; 16]);
    let file = named.open().unwrap();
    let (arch, source) = file.architecture().unwrap().unwrap();
    assert_eq!(
        (arch, source),
        (Architecture::Flux, ArchitectureSource::TensorNames)
    );
    let msg = file
        .expect_architecture(&[Architecture::Sdxl])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("\"flux\"") && msg.contains("told from its tensor names"),
        "{msg}"
    );
}

#[test]
fn bad_magic_and_versions() {
    let mut bytes = good().bytes();
    bytes[0] = b'X';
    assert!(err(open_bytes(&bytes)).contains("not a GGUF file"));
    assert!(err(open_bytes(b"GG")).contains("not a GGUF file"));
    assert!(err(Raw {
        version: 1,
        ..good()
    }
    .open())
    .contains("v1"));
    let big = err(Raw {
        version: 3u32.swap_bytes(),
        ..good()
    }
    .open());
    assert!(big.contains("big-endian"), "{big}");
    assert!(err(Raw {
        version: 7,
        ..good()
    }
    .open())
    .contains("version 7"));
}

#[test]
fn counts_and_lengths_beyond_the_file() {
    let huge = err(Raw {
        n_tensors: u64::MAX,
        ..good()
    }
    .open());
    assert!(
        huge.contains("tensor infos") && huge.contains("truncated"),
        "{huge}"
    );
    let huge = err(Raw {
        n_kv: 1 << 40,
        ..good()
    }
    .open());
    assert!(huge.contains("metadata entries"), "{huge}");
    // A key whose string length runs past the end.
    let mut kv = Vec::new();
    kv.extend(u64::MAX.to_le_bytes());
    let long = err(Raw {
        kv,
        n_kv: 1,
        ..good()
    }
    .open());
    assert!(
        long.contains("string of length 18446744073709551615"),
        "{long}"
    );
    // An array of 2^60 u32.
    let mut array = 4u32.to_le_bytes().to_vec();
    array.extend((1u64 << 60).to_le_bytes());
    let long = err(good().kv("big", 9, &array).open());
    assert!(
        long.contains("metadata \"big\"") && long.contains("array of"),
        "{long}"
    );
    // Unknown value type, bad bool, non-UTF-8 key, duplicate key.
    assert!(err(good().kv("odd", 13, &[]).open()).contains("value type 13"));
    assert!(err(good().kv("flag", 7, &[2]).open()).contains("bool stored as 2"));
    assert!(err(good().kv("\u{0}", 0, &[1]).kv("\u{0}", 0, &[1]).open()).contains("twice"));
    let mut kv = Vec::new();
    put_str(&mut kv, &[0xff, 0xfe]);
    kv.extend(0u32.to_le_bytes());
    kv.push(1);
    assert!(err(Raw {
        kv,
        n_kv: 1,
        ..good()
    }
    .open())
    .contains("UTF-8"));
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = types_file_bytes();
    // gguf-py pads the last tensor to the alignment; cutting the padding is harmless.
    let data_end = types_file()
        .tensors()
        .iter()
        .map(|t| t.offset + t.size)
        .max()
        .unwrap();
    for len in (0..data_end as usize).step_by(5) {
        let result = open_bytes(&bytes[..len]);
        assert!(result.is_err(), "a file cut at {len} bytes opened");
    }
    let last = err(open_bytes(&bytes[..data_end as usize - 1]));
    assert!(
        last.contains("iq4_nl") && last.contains("truncated"),
        "{last}"
    );
    assert!(open_bytes(&bytes[..data_end as usize]).is_ok());
}

fn types_file_bytes() -> Vec<u8> {
    std::fs::read(fixture("types.gguf")).unwrap()
}

#[test]
fn bad_tensor_entries() {
    let t = |dims: &[u64], ty: u32, offset: u64, data: usize| {
        err(Raw::new()
            .tensor("w", dims, ty, offset)
            .data(&vec![0u8; data])
            .open())
    };
    let msg = t(&[4], 0, 8, 64);
    assert!(
        msg.contains("\"w\"") && msg.contains("not a multiple of the alignment"),
        "{msg}"
    );
    let msg = t(&[4], 0, 32, 40);
    assert!(
        msg.contains("\"w\"") && msg.contains("past the end"),
        "{msg}"
    );
    let msg = t(&[4], 99, 0, 16);
    assert!(msg.contains("\"w\"") && msg.contains("type id 99"), "{msg}");
    let msg = t(&[48, 2], 2, 0, 64);
    assert!(
        msg.contains("\"w\"") && msg.contains("Q4_0") && msg.contains("48"),
        "{msg}"
    );
    let msg = t(&[1 << 40, 1 << 40], 0, 0, 16);
    assert!(msg.contains("overflow"), "{msg}");
    let msg = t(&[1; 9], 0, 0, 16);
    assert!(msg.contains("9 dimensions"), "{msg}");
    let msg = err(Raw::new()
        .tensor("a", &[8], 0, 0)
        .tensor("b", &[8], 0, 0)
        .data(&[0; 64])
        .open());
    assert!(msg.contains("overlaps"), "{msg}");
    let msg = err(Raw::new()
        .tensor("a", &[8], 0, 0)
        .tensor("a", &[8], 0, 32)
        .data(&[0; 64])
        .open());
    assert!(msg.contains("\"a\" appears twice"), "{msg}");
}

#[test]
fn bad_alignment_and_original_shapes() {
    let msg = err(good()
        .kv("general.alignment", 4, &48u32.to_le_bytes())
        .open());
    assert!(
        msg.contains("general.alignment") && msg.contains("power of two"),
        "{msg}"
    );
    let msg = err(good()
        .kv("general.alignment", 10, &32u64.to_le_bytes())
        .open());
    assert!(
        msg.contains("general.alignment") && msg.contains("uint64"),
        "{msg}"
    );
    let mut shape = 5u32.to_le_bytes().to_vec();
    shape.extend(2u64.to_le_bytes());
    shape.extend(3i32.to_le_bytes());
    shape.extend(2i32.to_le_bytes());
    let msg = err(good().kv("comfy.gguf.orig_shape.t", 9, &shape).open());
    assert!(
        msg.contains("comfy.gguf.orig_shape.t") && msg.contains("[3, 2]"),
        "{msg}"
    );
}
