//! LoRA fixtures (made by `tests/fixtures/make_lora_fixtures.py`).

use std::path::PathBuf;
use std::sync::Arc;

use beeswax::lora::{LoraFile, WeightedLora};

use super::fixture;

/// The LoRA fixture `file` made for the miniature model `model`.
pub fn lora_path(model: &str, file: &str) -> PathBuf {
    fixture(&format!("lora/{model}/{file}"))
}

/// The LoRA fixture `file` of `model`, read, at `weight`; named after its file stem.
pub fn weighted(model: &str, file: &str, weight: f64) -> WeightedLora {
    WeightedLora {
        name: file.trim_end_matches(".safetensors").to_string(),
        file: Arc::new(LoraFile::read(&lora_path(model, file)).unwrap()),
        weight,
    }
}
