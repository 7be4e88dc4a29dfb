//! 16-bit copies of the miniature models, made at test time from the committed f32 fixtures
//! (no extra fixture bytes): a diffusers folder whose weights are `*.fp16.safetensors`
//! variants, as the hub's `variant="fp16"` folders are.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tempfile::TempDir;

/// A copy of the fixture model `name` in a temporary folder, every `<stem>.safetensors`
/// replaced by `<stem>.fp16.safetensors` holding its float tensors in `dtype` (f16 or bf16;
/// other tensors as stored).
pub fn sixteen_bit_copy(name: &str, dtype: DType) -> TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&super::model_dir(name), tmp.path(), dtype);
    tmp
}

fn copy_dir(from: &Path, to: &Path, dtype: DType) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let file_name = path.file_name().unwrap().to_str().unwrap().to_string();
        if path.is_dir() {
            copy_dir(&path, &to.join(&file_name), dtype);
        } else if let Some(stem) = file_name.strip_suffix(".safetensors") {
            let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
            let narrow: std::collections::HashMap<String, Tensor> = tensors
                .into_iter()
                .map(|(k, t)| {
                    let t = match t.dtype() {
                        DType::F32 | DType::F64 => t.to_dtype(dtype).unwrap(),
                        _ => t,
                    };
                    (k, t)
                })
                .collect();
            let out = to.join(format!("{stem}.fp16.safetensors"));
            candle_core::safetensors::save(&narrow, &out).unwrap();
        } else {
            std::fs::copy(&path, to.join(&file_name)).unwrap();
        }
    }
}
