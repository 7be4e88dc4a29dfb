//! The textual-inversion embeddings jobs may name (the manifests' `[[embedding]]` entries and
//! the `--embeddings` folder): `GET /v1/embeddings` (native) and `GET /sdapi/v1/embeddings`
//! (AUTOMATIC1111's shape). Each file is read (and cached) to report its shape; a file that
//! cannot be used (a pickle, a damaged file, a wrong hash) is listed with the reason natively
//! and under `skipped` for A1111 clients.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Map, Value};

use super::service::Service;
use crate::prompt::{Embedding, EmbeddingVectors};

/// Width (A1111's `shape`: the sum of both widths for an SDXL pair) and vector count.
fn shape(embedding: &Embedding) -> (usize, usize) {
    let width = match &embedding.vectors {
        EmbeddingVectors::Single(t) => t.dim(1).unwrap_or(0),
        EmbeddingVectors::Sdxl { clip_l, clip_g } => {
            clip_l.dim(1).unwrap_or(0) + clip_g.dim(1).unwrap_or(0)
        }
    };
    (width, embedding.vector_count())
}

/// Each catalog entry's name, file and either the embedding or why it cannot be used.
fn entries(service: &Service) -> Vec<(String, String, Result<Arc<Embedding>, String>)> {
    let catalog = &service.extensions.embeddings;
    catalog
        .entries()
        .iter()
        .map(|e| {
            let loaded = catalog.load(&e.name).map_err(|err| err.to_string());
            (e.name.clone(), e.path.display().to_string(), loaded)
        })
        .collect()
}

/// `GET /v1/embeddings`: `{"embeddings": [{name, file, vectors, shape, sha256} or {name,
/// file, error}]}`.
pub async fn list(State(service): State<Arc<Service>>) -> Json<Value> {
    let list: Vec<Value> = entries(&service)
        .into_iter()
        .map(|(name, file, loaded)| match loaded {
            Ok(e) => {
                let (width, vectors) = shape(&e);
                json!({
                    "name": name, "file": file, "vectors": vectors, "shape": width,
                    "sha256": e.sha256, "short_hash": e.short_hash(),
                })
            }
            Err(error) => json!({"name": name, "file": file, "error": error}),
        })
        .collect();
    Json(json!({ "embeddings": list }))
}

/// `GET /sdapi/v1/embeddings`: `{"loaded": {name: {step, sd_checkpoint, sd_checkpoint_name,
/// shape, vectors}}, "skipped": {...}}` as AUTOMATIC1111 answers (beeswax's files carry no
/// training step or checkpoint: those are null).
pub async fn a1111(State(service): State<Arc<Service>>) -> Json<Value> {
    let (mut loaded, mut skipped) = (Map::new(), Map::new());
    for (name, _, embedding) in entries(&service) {
        let (width, vectors) = embedding.as_deref().map(shape).unwrap_or((0, 0));
        let info = json!({
            "step": Value::Null, "sd_checkpoint": Value::Null,
            "sd_checkpoint_name": Value::Null,
            "shape": if embedding.is_ok() { json!(width) } else { Value::Null },
            "vectors": vectors,
        });
        if embedding.is_ok() {
            loaded.insert(name, info);
        } else {
            skipped.insert(name, info);
        }
    }
    Json(json!({ "loaded": loaded, "skipped": skipped }))
}
