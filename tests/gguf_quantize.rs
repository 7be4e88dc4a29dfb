//! Writing GGUF files: quantization bit-exact with the `gguf` Python package (legacy types,
//! f16, bf16) and with ggml's reference K-quant encoders, the writer read back by beeswax's
//! reader, `beeswax quantize`'s per-tensor rules and errors, and (ignored, needs Python) the
//! files read back by the `gguf` package. Fixtures: tests/fixtures/make_gguf_fixtures.py.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use beeswax::gguf::{
    quantize, quantize_file, Architecture, Array, GgmlType, GgufFile, GgufWriter, QuantizeOptions,
    QuantizeReport, Value,
};
use candle_core::{DType, Device};
use half::{bf16, f16};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/gguf")
        .join(rel)
}

#[test]
fn quantize_matches_gguf_py_and_ggml_bit_for_bit() {
    let input = candle_core::safetensors::load(fixture("quantize_input.safetensors"), &Device::Cpu)
        .unwrap();
    let x = input["x"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let expected =
        candle_core::safetensors::load(fixture("quantize_expected.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(expected.len(), 11);
    for (name, want) in &expected {
        let ty: GgmlType = name.parse().unwrap();
        let want = want.flatten_all().unwrap().to_vec1::<u8>().unwrap();
        let got = quantize(ty, &x).unwrap();
        assert_eq!(got.len(), want.len(), "{name}: size");
        if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
            let block = i / ty.type_size();
            panic!(
                "{name}: byte {i} (block {block}, byte {} in it) is {:#04x}, the reference has {:#04x}",
                i % ty.type_size(),
                got[i],
                want[i]
            );
        }
    }
}

#[test]
fn writer_output_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.gguf");
    let mut w = GgufWriter::new();
    let meta = [
        ("a.str", Value::String("flux".into())),
        ("a.u64", Value::U64(u64::MAX)),
        ("a.f64", Value::F64(0.1)),
        ("a.bool", Value::Bool(false)),
        ("a.i16", Value::I16(-7)),
        (
            "a.strs",
            Value::Array(Array::String(vec!["x".into(), String::new()])),
        ),
        (
            "a.nested",
            Value::Array(Array::Array(vec![
                Array::I32(vec![1, -2]),
                Array::F32(vec![]),
            ])),
        ),
    ];
    for (k, v) in &meta {
        w.add_metadata(k, v.clone()).unwrap();
    }
    assert!(w.add_metadata("a.str", Value::U8(1)).is_err());
    let values: Vec<f32> = (0..3 * 5 * 256)
        .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
        .collect();
    let types = [
        GgmlType::Q4_K,
        GgmlType::Q5_1,
        GgmlType::BF16,
        GgmlType::F16,
        GgmlType::Q6_K,
    ];
    for (i, ty) in types.iter().enumerate() {
        w.add_tensor(&format!("t{i}"), &[3, 5, 256], *ty).unwrap();
    }
    w.add_tensor("scalar", &[], GgmlType::F32).unwrap();
    assert!(w.add_tensor("bad", &[3, 48], GgmlType::Q4_0).is_err());
    assert!(w.add_tensor("t0", &[256], GgmlType::F32).is_err());
    let file = std::fs::File::create(&path).unwrap();
    w.write(file, |_, t| {
        let n = t.shape.iter().product::<usize>();
        Ok::<_, String>(quantize(t.ty, &values[..n]).unwrap())
    })
    .unwrap();

    let file = GgufFile::open(&path).unwrap();
    assert_eq!((file.version(), file.alignment()), (3, 32));
    for (k, v) in &meta {
        assert_eq!(file.get(k), Some(v), "{k}");
    }
    for (i, ty) in types.iter().enumerate() {
        let info = file.tensor(&format!("t{i}")).unwrap();
        assert_eq!(
            (info.shape.as_slice(), info.ty),
            ([3, 5, 256].as_slice(), *ty)
        );
        let got = file
            .dequantize_as(&info.name, DType::F32, &Device::Cpu)
            .unwrap();
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want =
            beeswax::gguf::dequantize::to_f32(*ty, &quantize(*ty, &values).unwrap()).unwrap();
        assert_eq!(got, want, "t{i} ({ty})");
    }
    assert_eq!(file.tensor("scalar").unwrap().elem_count(), 1);
}

/// Writes a safetensors file of `(name, dtype, shape, bytes)`.
fn write_safetensors(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let entry = serde_json::json!({
            "dtype": dtype, "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]
        });
        header.insert(name.to_string(), entry);
        data.extend(bytes);
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(data);
    std::fs::write(path, out).unwrap();
}

/// Deterministic values of roughly unit scale.
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

fn encode(dtype: &str, v: &[f32]) -> Vec<u8> {
    match dtype {
        "F32" => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        "F64" => v.iter().flat_map(|&x| f64::from(x).to_le_bytes()).collect(),
        "F16" => v
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect(),
        "BF16" => v
            .iter()
            .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
            .collect(),
        other => panic!("{other}"),
    }
}

/// A FLUX-like input: `(name, dtype, shape)` and the expected types for q4_k and q8_0.
const FLUX: [(&str, &str, &[usize], GgmlType, GgmlType); 8] = {
    use GgmlType::*;
    [
        (
            "double_blocks.0.img_attn.qkv.weight",
            "BF16",
            &[96, 64],
            Q5_0,
            Q8_0,
        ),
        (
            "double_blocks.0.img_attn.norm.key_norm.scale",
            "BF16",
            &[64],
            F32,
            F32,
        ),
        (
            "double_blocks.0.img_mlp.0.weight",
            "F32",
            &[128, 320],
            Q5_0,
            Q8_0,
        ),
        (
            "single_blocks.0.linear1.weight",
            "F16",
            &[48, 512],
            Q4_K,
            Q8_0,
        ),
        ("img_in.weight", "F32", &[64, 40], F32, F32),
        ("final_layer.linear.weight", "BF16", &[16, 64], F32, F32),
        ("conv.weight", "F32", &[8, 16, 3, 3], F16, F16),
        ("odd.weight", "F64", &[40, 50], F16, F16),
    ]
};

/// Writes the FLUX-like input (plus an I64 `position_ids`) and returns its f32 values.
fn flux_input(path: &Path) -> Vec<Vec<f32>> {
    let mut tensors = Vec::new();
    let mut all = Vec::new();
    for (i, (name, dtype, shape, _, _)) in FLUX.iter().enumerate() {
        let v = values(shape.iter().product(), i as u32 + 1);
        tensors.push((*name, *dtype, shape.to_vec(), encode(dtype, &v)));
        all.push(v);
    }
    let ids: Vec<u8> = (0..77i64).flat_map(|i| i.to_le_bytes()).collect();
    tensors.push(("position_ids", "I64", vec![1, 77], ids));
    write_safetensors(path, &tensors);
    all
}

fn run(
    input: &Path,
    output: &Path,
    target: GgmlType,
    arch: Option<Architecture>,
) -> Result<QuantizeReport, String> {
    let options = QuantizeOptions {
        target,
        architecture: arch,
    };
    quantize_file(input, output, &options, |_, _, _| {}).map_err(|e| e.to_string())
}

#[test]
fn quantize_file_applies_the_rules_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("flux.safetensors");
    let inputs = flux_input(&input);
    for (target, col) in [(GgmlType::Q4_K, 0), (GgmlType::Q8_0, 1)] {
        let output = dir.path().join(format!("flux-{target}.gguf"));
        let report = run(&input, &output, target, None).unwrap();
        assert_eq!(report.architecture, Architecture::Flux);
        assert_eq!(
            report.skipped,
            [("position_ids".to_string(), "I64".to_string())]
        );
        assert!(!dir.path().join(format!("flux-{target}.gguf.part")).exists());
        let file = GgufFile::open(&output).unwrap();
        assert_eq!(file.get_str("general.architecture").unwrap(), Some("flux"));
        assert_eq!(
            file.get("general.quantization_version"),
            Some(&Value::U32(2))
        );
        assert_eq!(file.tensors().len(), FLUX.len());
        for (i, (name, dtype, shape, q4k, q80)) in FLUX.iter().enumerate() {
            let want_ty = [*q4k, *q80][col];
            let info = file.tensor(name).unwrap();
            assert_eq!(
                (info.ty, info.shape.as_slice()),
                (want_ty, *shape),
                "{name} for {target}"
            );
            assert!(report.tensors.contains(&(name.to_string(), want_ty)));
            let got = file.dequantize_as(name, DType::F32, &Device::Cpu).unwrap();
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // What the input held, as f32, then stored as `want_ty`.
            let stored = decode(dtype, &inputs[i]);
            let want =
                beeswax::gguf::dequantize::to_f32(want_ty, &quantize(want_ty, &stored).unwrap())
                    .unwrap();
            assert_eq!(got, want, "{name} for {target}");
        }
    }
}

/// The values a `dtype` input really holds.
fn decode(dtype: &str, v: &[f32]) -> Vec<f32> {
    match dtype {
        "F16" => v.iter().map(|&x| f16::from_f32(x).to_f32()).collect(),
        "BF16" => v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect(),
        _ => v.to_vec(),
    }
}

#[test]
fn single_file_checkpoints_quantize_only_the_denoiser() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("sd.safetensors");
    let t = |name, shape: &[usize]| {
        let v = values(shape.iter().product(), 9);
        (name, "F32", shape.to_vec(), encode("F32", &v))
    };
    write_safetensors(
        &input,
        &[
            t(
                "model.diffusion_model.input_blocks.0.0.weight",
                &[32, 4, 3, 3],
            ),
            t("model.diffusion_model.out.2.weight", &[4, 32, 3, 3]),
            t(
                "model.diffusion_model.input_blocks.1.1.proj_in.weight",
                &[64, 64],
            ),
            t("first_stage_model.decoder.mid.attn_1.q.weight", &[64, 64]),
        ],
    );
    let output = dir.path().join("sd.gguf");
    let report = run(&input, &output, GgmlType::Q8_0, None).unwrap();
    assert_eq!(report.architecture, Architecture::Sd1);
    let file = GgufFile::open(&output).unwrap();
    let ty = |n: &str| file.tensor(n).unwrap().ty;
    assert_eq!(
        ty("model.diffusion_model.input_blocks.1.1.proj_in.weight"),
        GgmlType::Q8_0
    );
    assert_eq!(ty("model.diffusion_model.out.2.weight"), GgmlType::F16);
    assert_eq!(
        ty("first_stage_model.decoder.mid.attn_1.q.weight"),
        GgmlType::F32
    );
    assert_eq!(
        file.expect_architecture(&[Architecture::Sd1]).unwrap(),
        Architecture::Sd1
    );
}

#[test]
fn quantize_file_architecture_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let unknown = dir.path().join("unknown.safetensors");
    write_safetensors(
        &unknown,
        &[(
            "foo.weight",
            "F32",
            vec![64, 64],
            encode("F32", &values(4096, 3)),
        )],
    );
    let msg = run(&unknown, &out, GgmlType::Q8_0, None).unwrap_err();
    assert!(
        msg.contains("unknown.safetensors") && msg.contains("--arch"),
        "{msg}"
    );
    let report = run(
        &unknown,
        &out,
        GgmlType::Q8_0,
        Some(Architecture::from_name("wan")),
    )
    .unwrap();
    assert_eq!(report.architecture.name(), "wan");
    assert_eq!(
        GgufFile::open(&out)
            .unwrap()
            .get_str("general.architecture")
            .unwrap(),
        Some("wan")
    );

    let flux = dir.path().join("flux.safetensors");
    flux_input(&flux);
    let msg = run(&flux, &out, GgmlType::Q8_0, Some(Architecture::Sdxl)).unwrap_err();
    assert!(msg.contains("flux") && msg.contains("--arch sdxl"), "{msg}");
    let msg = run(&flux, &out, GgmlType::IQ4_NL, None).unwrap_err();
    assert!(msg.contains("IQ4_NL") && msg.contains("q4_k"), "{msg}");
}

#[test]
fn quantize_file_input_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let mut v = values(96 * 64, 5);
    v[100] = f32::NAN;
    let nan = dir.path().join("nan.safetensors");
    write_safetensors(
        &nan,
        &[(
            "double_blocks.0.img_attn.qkv.weight",
            "F32",
            vec![96, 64],
            encode("F32", &v),
        )],
    );
    let msg = run(&nan, &dir.path().join("nan.gguf"), GgmlType::Q8_0, None).unwrap_err();
    assert!(
        msg.contains("double_blocks.0.img_attn.qkv.weight") && msg.contains("NaN"),
        "{msg}"
    );
    assert!(!dir.path().join("nan.gguf").exists() && !dir.path().join("nan.gguf.part").exists());

    let f8 = dir.path().join("f8.safetensors");
    write_safetensors(
        &f8,
        &[(
            "double_blocks.0.img_attn.qkv.weight",
            "F8_E4M3",
            vec![4],
            vec![0; 4],
        )],
    );
    let msg = run(&f8, &out, GgmlType::Q8_0, None).unwrap_err();
    assert!(msg.contains("F8_E4M3") && msg.contains("bf16"), "{msg}");
    std::fs::write(
        dir.path().join("junk.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\xffjunk",
    )
    .unwrap();
    let msg = run(
        &dir.path().join("junk.safetensors"),
        &out,
        GgmlType::Q8_0,
        None,
    )
    .unwrap_err();
    assert!(msg.contains("not a safetensors file"), "{msg}");
}

fn beeswax(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_beeswax"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_quantize() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("flux.safetensors");
    flux_input(&input);
    let output = dir.path().join("flux.gguf");
    let (i, o) = (input.to_str().unwrap(), output.to_str().unwrap());
    let run = beeswax(&["quantize", i, o, "--type", "q8_0"]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("flux model, 8 tensors") && stdout.contains("position_ids (I64)"),
        "{stdout}"
    );
    assert_eq!(GgufFile::open(&output).unwrap().tensors().len(), 8);
    let again = beeswax(&["quantize", i, o, "--type", "q8_0"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let forced = beeswax(&["quantize", i, o, "--type", "Q4_K", "--force"]);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    let file = GgufFile::open(&output).unwrap();
    assert_eq!(
        file.tensor("single_blocks.0.linear1.weight").unwrap().ty,
        GgmlType::Q4_K
    );
    let bad = beeswax(&["quantize", i, o, "--type", "iq4_nl", "--force"]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && stderr.contains("q6_k"), "{stderr}");
}

/// The `gguf` Python package reads files written by `beeswax quantize`, with the same tensors.
#[test]
#[ignore = "needs: network (pip installs the gguf package); scripts/test runs it"]
fn gguf_py_reads_quantized_files() {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/gguf-venv");
    let python = target.join("bin/python");
    if !python.exists() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&target)
            .status()
            .unwrap();
        assert!(made.success(), "python3 -m venv failed");
    }
    let pip = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "gguf", "numpy"])
        .status()
        .unwrap();
    assert!(pip.success(), "pip install gguf numpy failed");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("flux.safetensors");
    flux_input(&input);
    for ty in [
        "q8_0", "q5_0", "q5_1", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k", "f16", "bf16", "f32",
    ] {
        read_back(&python, &input, ty, "flux", dir.path());
    }
    // SD and SDXL UNets from diffusers folders (written in LDM names).
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models");
    for (model, ty, arch) in [
        ("tiny-sd", "q8_0", "sd1"),
        ("tiny-sd", "q4_k", "sd1"),
        ("tiny-sdxl", "q8_0", "sdxl"),
    ] {
        read_back(&python, &models.join(model), ty, arch, dir.path());
    }
}

/// `beeswax quantize input` as `ty`, then `readback.py` compares gguf-py's reading of the file
/// with beeswax's (architecture `arch`).
fn read_back(python: &Path, input: &Path, ty: &str, arch: &str, dir: &Path) {
    let stem = input.file_stem().unwrap().to_string_lossy();
    let output = dir.join(format!("{stem}-{ty}.gguf"));
    let run = beeswax(&[
        "quantize",
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        "--type",
        ty,
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let file = GgufFile::open(&output).unwrap();
    let ours: std::collections::HashMap<String, candle_core::Tensor> = file
        .tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                file.dequantize_as(&t.name, DType::F32, &Device::Cpu)
                    .unwrap(),
            )
        })
        .collect();
    let ours_path = dir.join(format!("{stem}-{ty}.safetensors"));
    candle_core::safetensors::save(&ours, &ours_path).unwrap();
    let check = Command::new(python)
        .arg(fixture("readback.py"))
        .args([&output, &ours_path])
        .arg(arch)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{stem} {ty}: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}
