//! The manifest reader on mutated manifests: every section's reader (packs, pipelines, LoRAs,
//! LoRA sets, embeddings, plugins, families) gives values or `ManifestError`s (naming the file
//! and line), never a panic, never a large allocation. Nothing is loaded: only text is read.

use std::path::Path;

use beeswax::family::Families;
use beeswax::manifest::{
    embeddings, pack::packs_and_problems, pipelines, Document, ManifestError, ManifestFolder,
};
use proptest::prelude::*;

use super::alloc::bounded;
use super::mutate::{apply, config, edits};

const BOUND: usize = 16 << 20;

/// A manifest with one of every section, all valid.
const SEED: &str = r#"[pack]
name = "tiny"
family = "sd1"
description = "a pack"
path = "models/tiny"

[pack.defaults]
steps = 20
guidance = 7.5
scheduler = "euler"
width = 64
height = 64

[[pipeline]]
name = "fast"
pack = "tiny"
scheduler = "ddim"
lora_set = "both"

[pipeline.defaults]
steps = 4

[pipeline.limits]
max_width = 128
max_height = 128
max_steps = 50
max_images = 4

[[lora]]
name = "fox"
path = "fox.safetensors"
weight = 0.8
triggers = ["foxstyle"]

[[lora]]
name = "snow"
path = "snow.safetensors"

[[lora_set]]
name = "both"
loras = [{ name = "fox", weight = 0.5 }, { name = "snow" }]

[[embedding]]
name = "owl"
path = "owl.safetensors"

[[plugin]]
name = "p"
kind = "wasm"
path = "p.wasm"
provides = ["scheduler"]

[plugin.limits]
memory_mib = 64
timeout_ms = 2000

[family]
name = "mine"
description = "a family"
architecture = "sd"
scheduler = "diffusion"
guidance = "classifier-free"
default_size = 512
config = "sd1"
priority = 0

[family.latent]
channels = 4
"#;

/// TOML pieces a mutation may splice in.
const PIECES: &[&str] = &[
    "[[pipeline]]\n",
    "[pack]\n",
    "[[lora]]\n",
    "name = \"x\"\n",
    "= ",
    "\"",
    "'''",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\n",
    "-1",
    "1e999",
    "nan",
    "inf",
    "9223372036854775807",
    "99999999999999999999",
    "true",
    "max_images = 0\n",
    "width = -64\n",
    "loras = [{ name = \"both\" }]\n",
    "\u{0}",
    "é",
    "#",
    ".",
    "[pipeline.limits]\nmax_steps = 18446744073709551615\n",
];

/// Runs every section reader over the folder of one document `text`.
fn read_all(text: &str) -> Result<usize, ManifestError> {
    let path = Path::new("fuzz.toml");
    let document = Document::parse(path, text)?;
    let folder = ManifestFolder::from_documents(Path::new("."), vec![document]);
    let (packs, problems) = packs_and_problems(&folder);
    let mut n = packs.len() + problems.len();
    n += pipelines(&folder, &packs).map_or(0, |p| p.len());
    n += embeddings(&folder).map_or(0, |e| e.len());
    n += beeswax::lora::manifest::catalog(&folder).map_or(0, |c| c.entries.len());
    n += beeswax::plugins::manifest::entries(&folder).0.len();
    let (_, family_problems) = Families::from_manifests_and_problems(&folder);
    n += family_problems.len();
    Ok(n)
}

#[test]
fn the_seed_reads_without_problems() {
    let path = Path::new("fuzz.toml");
    let document = Document::parse(path, SEED).unwrap();
    let folder = ManifestFolder::from_documents(Path::new("."), vec![document]);
    let (packs, problems) = packs_and_problems(&folder);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(pipelines(&folder, &packs).unwrap().len(), 1);
    assert_eq!(
        beeswax::lora::manifest::catalog(&folder)
            .unwrap()
            .sets
            .len(),
        1
    );
    assert_eq!(embeddings(&folder).unwrap().len(), 1);
}

fn splice() -> impl Strategy<Value = Vec<(prop::sample::Index, &'static str)>> {
    prop::collection::vec(
        (any::<prop::sample::Index>(), prop::sample::select(PIECES)),
        1..4,
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_manifests_never_panic(e in edits(4)) {
        let bytes = apply(SEED.as_bytes(), &e);
        let text = String::from_utf8_lossy(&bytes);
        let _ = bounded("manifest", BOUND, || read_all(&text));
    }

    #[test]
    fn spliced_manifests_never_panic(pieces in splice()) {
        let mut text = SEED.to_string();
        for (at, piece) in pieces {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            text.insert_str(i, piece);
        }
        let _ = bounded("manifest", BOUND, || read_all(&text));
    }

    #[test]
    fn errors_name_the_file(e in edits(3)) {
        let bytes = apply(SEED.as_bytes(), &e);
        let text = String::from_utf8_lossy(&bytes);
        if let Err(err) = read_all(&text) {
            prop_assert!(err.to_string().contains("fuzz.toml"), "{}", err);
        }
    }
}
