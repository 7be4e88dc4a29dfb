//! Reading GGUF files: dequantization bit-exact with the `gguf` Python package for every type
//! beeswax decodes, metadata and tensor infos, the errors for unsupported types and other
//! architectures, and the model-facing side (VarBuilder, quantized linear layers). Malformed
//! files: tests/gguf_malformed.rs. Fixtures: tests/fixtures/make_gguf_fixtures.py.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use beeswax::gguf::{Architecture, GgmlType, GgufError, GgufFile, GgufWeights, GgufWriter, Value};
use beeswax::models::linear::Linear;
use candle_core::{DType, Device, Module, Tensor};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/gguf")
        .join(rel)
}

fn types_file() -> GgufFile {
    GgufFile::open(&fixture("types.gguf")).unwrap()
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("types_expected.safetensors"), &Device::Cpu).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    let v = t
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    v.into_iter().map(f32::to_bits).collect()
}

#[test]
fn dequantize_matches_gguf_py_bit_for_bit() {
    let file = types_file();
    let expected = expected();
    let mut types_seen = Vec::new();
    for (name, want) in &expected {
        let got = file.dequantize(name, &Device::Cpu).unwrap();
        assert_eq!(got.dims(), want.dims(), "{name}: shape");
        let ty = file.tensor(name).unwrap().ty;
        let kept = match ty {
            GgmlType::F16 => DType::F16,
            GgmlType::BF16 => DType::BF16,
            _ => DType::F32,
        };
        assert_eq!(got.dtype(), kept, "{name}: dtype");
        let (got, want) = (bits(&got), bits(want));
        if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
            panic!(
                "{name} ({ty}): element {i} is {} (bits {:#x}), gguf-py gives {} ({:#x})",
                f32::from_bits(got[i]),
                got[i],
                f32::from_bits(want[i]),
                want[i]
            );
        }
        types_seen.push(ty);
    }
    for name in beeswax::gguf::DEQUANTIZABLE.split(", ") {
        let ty: GgmlType = name.parse().unwrap();
        assert!(types_seen.contains(&ty), "no fixture tensor of type {ty}");
    }
}

#[test]
fn metadata_and_tensor_infos() {
    let file = types_file();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.get_str("general.architecture").unwrap(), Some("sdxl"));
    assert_eq!(file.get("test.u8"), Some(&Value::U8(200)));
    assert_eq!(file.get("test.i8"), Some(&Value::I8(-100)));
    assert_eq!(file.get("test.u16"), Some(&Value::U16(60000)));
    assert_eq!(file.get("test.i16"), Some(&Value::I16(-30000)));
    assert_eq!(file.get("test.u32"), Some(&Value::U32(4_000_000_000)));
    assert_eq!(file.get("test.i32"), Some(&Value::I32(-2_000_000_000)));
    assert_eq!(file.get("test.u64"), Some(&Value::U64((1 << 63) + 5)));
    assert_eq!(file.get("test.i64"), Some(&Value::I64(-(1 << 62))));
    assert_eq!(file.get("test.f32"), Some(&Value::F32(1.5)));
    assert_eq!(file.get("test.f64"), Some(&Value::F64(-2.25)));
    assert_eq!(file.get("test.bool"), Some(&Value::Bool(true)));
    let strings = file.get("test.strings").unwrap().as_array().unwrap();
    assert_eq!(strings.as_strs().unwrap(), ["a", "", "ünïcode"]);
    let nested = file.get("test.nested").unwrap().as_array().unwrap();
    assert_eq!(nested.len(), 2);
    assert!(file
        .get_str("test.u8")
        .unwrap_err()
        .to_string()
        .contains("test.u8"));

    let q5_1 = file.tensor("q5_1").unwrap();
    assert_eq!(
        (q5_1.shape.as_slice(), q5_1.ty),
        ([2, 2, 2, 32].as_slice(), GgmlType::Q5_1)
    );
    let reshaped = file.tensor("reshaped").unwrap();
    assert_eq!(reshaped.shape, [16, 48]);
    assert_eq!(reshaped.stored_shape, [3, 256]);
    assert_eq!(file.tensor("iq4_nl").unwrap().ty, GgmlType::IQ4_NL);
    let raw = file.read_raw("q8_0").unwrap();
    assert_eq!(raw.len(), 3 * 160 / 32 * 34);
    assert!(file.tensors().iter().all(|t| t.offset % 64 == 0));
}

#[test]
fn unsupported_type_is_an_error_naming_tensor_and_type() {
    let err = types_file().dequantize("iq4_nl", &Device::Cpu).unwrap_err();
    assert!(matches!(err, GgufError::UnsupportedType { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("\"iq4_nl\"") && msg.contains("IQ4_NL"),
        "{msg}"
    );
    assert!(msg.contains("types.gguf"), "{msg}");
    let err = types_file().dequantize("nope", &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("no tensor \"nope\""), "{err}");
}

#[test]
fn another_architecture_is_a_clear_error() {
    let file = types_file();
    assert_eq!(
        file.expect_architecture(&[Architecture::Sd1, Architecture::Sdxl])
            .unwrap(),
        Architecture::Sdxl
    );
    let msg = file
        .expect_architecture(&[Architecture::Flux])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("\"sdxl\"") && msg.contains("general.architecture") && msg.contains("flux"),
        "{msg}"
    );
    let msg = GgufWeights::open(
        &fixture("types.gguf"),
        &[Architecture::Flux, Architecture::Sd3],
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("flux or sd3"), "{msg}");
}

/// Deterministic activations in [-1, 1).
fn activations(n: usize) -> Vec<f32> {
    let mut s = 0x2545_f491_u32;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn quantized_matmul_matches_dequantize_then_matmul() {
    let file = Arc::new(types_file());
    let weights = GgufWeights::new(file.clone(), &[]).unwrap();
    let dev = Device::Cpu;
    let names = [
        "q8_0",
        "q4_0",
        "q5_0",
        "q4_k",
        "q5_k_random",
        "q2_k_random",
        "q3_k_random",
        "q6_k",
        "q4_1_random",
        "q5_1_random",
    ];
    for name in names {
        let info = file.tensor(name).unwrap();
        let (out_dim, in_dim) = (info.shape[0], info.shape[1]);
        let qmm = weights
            .qmatmul(name, out_dim, in_dim, &dev)
            .unwrap()
            .unwrap();
        let x = Tensor::from_vec(activations(2 * 3 * in_dim), (2, 3, in_dim), &dev).unwrap();
        let got = qmm.forward(&x).unwrap();
        let w = file.dequantize(name, &dev).unwrap();
        let want = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        // candle quantizes the activations to 8 bits per block: measured up to 0.6 %.
        let diff = relative_diff(&got, &want);
        assert!(diff <= 1e-2, "{name}: relative difference {diff}");
    }
    // Q8_K has no candle matmul, floats are dense: both fall back to the dense path.
    assert!(weights
        .qmatmul("q8_k_random", 3, 256, &dev)
        .unwrap()
        .is_none());
    assert!(weights.qmatmul("f16", 4, 9, &dev).unwrap().is_none());
    // Rows not on block boundaries (ComfyUI-GGUF's reshaped 16x48 stored as 3x256 Q4_K).
    assert!(weights.qmatmul("reshaped", 16, 48, &dev).unwrap().is_none());
    let msg = weights
        .qmatmul("q8_0", 160, 3, &dev)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("\"q8_0\"") && msg.contains("[160, 3]"),
        "{msg}"
    );
}

/// Writes a small denoiser with the sd.cpp prefix (and a VAE tensor that is not part of it);
/// returns the linear weight and bias.
fn write_unet(path: &std::path::Path) -> (Vec<f32>, Vec<f32>) {
    let (w, bias) = (activations(24 * 64), activations(24));
    let tensors = [
        (
            "model.diffusion_model.proj.weight",
            vec![24, 64],
            GgmlType::Q8_0,
            &w,
        ),
        (
            "model.diffusion_model.proj.bias",
            vec![24],
            GgmlType::F32,
            &bias,
        ),
        (
            "model.diffusion_model.conv.weight",
            vec![24, 64, 1, 1],
            GgmlType::F16,
            &w,
        ),
        ("first_stage_model.x", vec![24], GgmlType::F32, &bias),
    ];
    let mut writer = GgufWriter::new();
    for (name, shape, ty, _) in &tensors {
        writer.add_tensor(name, shape, *ty).unwrap();
    }
    let file = std::fs::File::create(path).unwrap();
    writer
        .write(file, |i, t| {
            Ok::<_, String>(beeswax::gguf::quantize(t.ty, tensors[i].3).unwrap())
        })
        .unwrap();
    (w, bias)
}

/// The largest difference, relative to the largest magnitude of `want`.
fn relative_diff(got: &Tensor, want: &Tensor) -> f32 {
    let max = |t: Tensor| {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    max((got - want).unwrap()) / max(want.clone())
}

#[test]
fn linear_layers_load_quantized_or_dense() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unet.gguf");
    write_unet(&path);
    let weights = GgufWeights::open(&path, &[]).unwrap();
    let vb = weights.var_builder(DType::F32, &Device::Cpu);
    let quantized = Linear::load(vb.pp("proj"), 64, 24, true, Some(&weights)).unwrap();
    assert!(quantized.is_quantized());
    assert_eq!(quantized.out_dim().unwrap(), 24);
    let dense = Linear::load(vb.pp("proj"), 64, 24, true, None).unwrap();
    assert!(!dense.is_quantized());
    // A 1x1 convolution stored [24, 64, 1, 1] serves a linear layer, dense (F16 is a float).
    let conv = Linear::load(vb.pp("conv"), 64, 24, false, Some(&weights)).unwrap();
    assert!(!conv.is_quantized());
    let x = Tensor::from_vec(activations(5 * 64), (5, 64), &Device::Cpu).unwrap();
    let (q, d) = (quantized.forward(&x).unwrap(), dense.forward(&x).unwrap());
    let diff = relative_diff(&q, &d);
    assert!(diff <= 1e-2, "relative difference {diff}");
    let r = Tensor::ones((5, 24), DType::F32, &Device::Cpu).unwrap();
    let with_r = quantized.forward_add(&x, Some(&r)).unwrap();
    assert_eq!(bits(&with_r), bits(&(&q + &r).unwrap()));
}

#[test]
fn denoiser_prefix_and_renames() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unet.gguf");
    let (_, bias) = write_unet(&path);
    let weights = GgufWeights::open(&path, &[]).unwrap();
    assert_eq!(weights.prefix(), Some("model.diffusion_model."));
    assert_eq!(weights.names(), ["proj.weight", "proj.bias", "conv.weight"]);
    let vb = weights.var_builder(DType::F32, &Device::Cpu);
    assert!(vb.contains_tensor("proj.bias") && !vb.contains_tensor("x"));
    assert!(vb.get((24, 64, 2), "proj.weight").is_err());
    let missing = vb.get(24, "first_stage_model.x").unwrap_err().to_string();
    assert!(missing.contains("first_stage_model.x"), "{missing}");
    // A rename maps the model's names to the file's.
    let renamed = weights.with_rename(|n| n.replace("linear.", "proj."));
    let vb = renamed.var_builder(DType::F32, &Device::Cpu);
    let want = Tensor::new(bias, &Device::Cpu).unwrap();
    assert_eq!(bits(&vb.get(24, "linear.bias").unwrap()), bits(&want));
    let err = renamed.qmatmul("nothing.weight", 1, 1, &Device::Cpu);
    let msg = err.unwrap_err().to_string();
    assert!(
        msg.contains("model.diffusion_model.nothing.weight"),
        "{msg}"
    );
}

#[test]
fn var_builder_serves_dequantized_tensors() {
    let weights = GgufWeights::open(&fixture("types.gguf"), &[Architecture::Sdxl]).unwrap();
    let vb = weights.var_builder(DType::F32, &Device::Cpu);
    let want = &expected()["q4_k"];
    assert_eq!(bits(&vb.get((3, 512), "q4_k").unwrap()), bits(want));
    assert_eq!(bits(&vb.get((3, 512, 1, 1), "q4_k").unwrap()), bits(want));
    assert_eq!(
        bits(&vb.get((16, 48), "reshaped").unwrap()),
        bits(&expected()["reshaped"])
    );
    let f16 = weights
        .var_builder(DType::F16, &Device::Cpu)
        .get((4, 9), "f16")
        .unwrap();
    assert_eq!(f16.dtype(), DType::F16);
    let msg = vb.get((512, 3), "q4_k").unwrap_err().to_string();
    assert!(msg.contains("q4_k"), "{msg}");
    let msg = vb.get((2, 64), "iq4_nl").unwrap_err().to_string();
    assert!(msg.contains("IQ4_NL"), "{msg}");
}
