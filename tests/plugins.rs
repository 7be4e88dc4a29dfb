//! Plugins (issue 5): the example plugins against the built-in Euler, hostile plugins, the
//! `check` command and the per-step overhead benchmark.
//!
//! Plugins are built here: the C ones with clang (wasm32, no libc; native for the wrong-ABI
//! library), euler-native with cargo into its own target folder, hostile WAT with `wat`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use beeswax::manifest::{ManifestError, ManifestFiles};
use beeswax::noise::BatchNoise;
use beeswax::plugins::{self, LoadedPlugin, PluginEntry, PluginError};
use beeswax::schedulers::{Scheduler, SchedulerConfig};
use candle_core::{DType, Device, Tensor};

fn root() -> PathBuf {
    common::root()
}

fn beeswax(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_beeswax"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Builds a C plugin to wasm32 with the flags of plugins/*/build.sh.
fn clang_wasm(src: &Path, out: &Path) {
    let status = Command::new("clang")
        .args(["--target=wasm32", "-O2", "-ffreestanding", "-nostdlib"])
        .args([
            "-Wl,--no-entry",
            "-Wl,--export-dynamic",
            "-Wl,--strip-all",
            "-I",
        ])
        .arg(root().join("plugin-sdk/include"))
        .arg("-o")
        .arg(out)
        .arg(src)
        .status()
        .expect("clang is needed (scripts/test installs clang and lld)");
    assert!(status.success(), "clang failed on {}", src.display());
}

/// Builds euler-native (release) into its own target folder and returns the library.
fn build_euler_native() -> PathBuf {
    let target = root().join("target/plugin-tests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "euler-native",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(root())
        .status()
        .unwrap();
    assert!(status.success(), "cargo build -p euler-native failed");
    let name = format!(
        "{}euler_native{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    target.join("release").join(name)
}

fn sha(path: &Path) -> String {
    plugins::sha256_hex(&std::fs::read(path).unwrap())
}

/// A `[[plugin]]` table.
fn entry(
    name: &str,
    kind: &str,
    path: &Path,
    sha256: Option<&str>,
    provides: &str,
    extra: &str,
) -> String {
    let hash = sha256
        .map(|h| format!("sha256 = \"{h}\"\n"))
        .unwrap_or_default();
    format!(
        "[[plugin]]\nname = \"{name}\"\nkind = \"{kind}\"\npath = \"{}\"\n{hash}provides = [\"{provides}\"]\n{extra}\n",
        path.display()
    )
}

/// Writes `text` as `dir/plugins.toml` and loads its single plugin.
fn load_one(dir: &Path, text: &str) -> Result<LoadedPlugin, PluginError> {
    let file = dir.join("plugins.toml");
    std::fs::write(&file, text).unwrap();
    let (entries, problems) = plugins::manifest::parse(&file, text);
    assert!(problems.is_empty(), "{problems:?}");
    LoadedPlugin::load(&entries[0])
}

/// The `[[plugin]]` entries of the committed manifests, and their problems.
fn committed_entries() -> (Vec<PluginEntry>, Vec<ManifestError>) {
    let files = ManifestFiles::read(&root().join("manifests")).unwrap();
    plugins::manifest::entries(&files.parse().unwrap())
}

fn tiny_config() -> SchedulerConfig {
    SchedulerConfig::from_file(common::fixture(
        "models/tiny-sd/scheduler/scheduler_config.json",
    ))
    .unwrap()
}

// ---- the example schedulers against the built-in Euler ----------------------------------

fn latents(path: &Path) -> Tensor {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()["latents"].clone()
}

#[test]
fn euler_plugins_match_the_builtin_on_both_models() {
    let tmp = tempfile::tempdir().unwrap();
    let wasm = tmp.path().join("euler-from-source.wasm");
    clang_wasm(&root().join("plugins/euler-wasm/euler.c"), &wasm);
    let native = build_euler_native();
    let manifests = tmp.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let text = entry(
        "euler-wasm",
        "wasm",
        &wasm,
        Some(&sha(&wasm)),
        "scheduler",
        "",
    ) + &entry(
        "euler-native",
        "native",
        &native,
        Some(&sha(&native)),
        "scheduler",
        "",
    );
    std::fs::write(manifests.join("plugins.toml"), text).unwrap();
    let committed = root().join("manifests");

    for model in common::MODELS {
        let model_dir = common::fixture(&format!("models/{model}"));
        let run = |scheduler: &str, manifests: &Path| {
            let out = tmp.path().join(format!(
                "{model}-{scheduler}-{}.safetensors",
                manifests.iter().count()
            ));
            let o = beeswax(&[
                "--manifests",
                manifests.to_str().unwrap(),
                "generate",
                "--model",
                model_dir.to_str().unwrap(),
                "--prompt",
                "a lighthouse at dusk",
                "--steps",
                "6",
                "--seed",
                "11",
                "--batch",
                "2",
                "--scheduler",
                scheduler,
                "--quiet",
                "--output",
                tmp.path().join("x.png").to_str().unwrap(),
                "--output-latents",
                out.to_str().unwrap(),
            ]);
            assert!(o.status.success(), "{model} {scheduler}: {}", stderr(&o));
            latents(&out)
        };
        let want = run("euler", &manifests);
        let scale = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        for (scheduler, dir) in [
            ("euler-wasm", &manifests),
            ("euler-native", &manifests),
            ("euler-wasm", &committed),
        ] {
            let got = run(scheduler, dir);
            let diff = (&got - &want).unwrap().abs().unwrap().max_all().unwrap();
            let rel = diff.to_scalar::<f32>().unwrap() / scale;
            eprintln!(
                "{model} {scheduler} ({}): max relative difference {rel:.2e}",
                dir.display()
            );
            assert!(
                rel <= 1e-5,
                "{model} {scheduler}: relative difference {rel:.3e} > 1e-5"
            );
        }
    }
}

#[test]
fn plugin_schedulers_are_listed_like_builtins() {
    let o = beeswax(&["--manifests", "manifests", "schedulers"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.lines()
            .any(|l| l.starts_with("euler_wasm") && l.contains("euler-wasm")),
        "{out}"
    );
    let o = beeswax(&["--manifests", "manifests", "plugins"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.contains("euler-wasm\twasm\tABI 1.0"), "{out}");
    assert!(out.contains("postprocessor (--post sharpen-wasm)"), "{out}");
    assert!(out.contains("euler-native\tnative\tdisabled"), "{out}");
}

// ---- hostile plugins ------------------------------------------------------------------------

/// A WAT scheduler plugin whose `beeswax_scheduler_new` body is `new_body`.
fn hostile_wat(abi: u32, new_body: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
  (memory (export "memory") 1)
  (global $top (mut i32) (i32.const 1024))
  (func (export "beeswax_abi_version") (result i32) (i32.const {abi}))
  (func (export "beeswax_capabilities") (result i32) (i32.const 1))
  (func (export "beeswax_alloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $top))
    (global.set $top (i32.and (i32.add (i32.add (global.get $top) (local.get $n)) (i32.const 7)) (i32.const -8)))
    (local.get $p))
  (func (export "beeswax_free") (param i32 i32))
  (func (export "beeswax_scheduler_new") (param $cfg i32) (param $len i32) (param $out i32) (result i32)
    {new_body})
  (func (export "beeswax_scheduler_scale") (param i64 i32 i32 i32 i32) (result i32) (i32.const 3))
  (func (export "beeswax_scheduler_step") (param i64 i32 i32 i32 i32) (result i32) (i32.const 3))
  (func (export "beeswax_scheduler_add_noise") (param i64 i32 i32 i32 i32) (result i32) (i32.const 3))
  (func (export "beeswax_scheduler_drop") (param i64)))"#
    );
    wat::parse_str(text).unwrap()
}

/// Loads a WAT plugin with the given limits and asks it for a schedule.
fn hostile_schedule(wasm: &[u8], limits: &str) -> (Result<Box<dyn Scheduler>, String>, Duration) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("hostile.wasm");
    std::fs::write(&path, wasm).unwrap();
    let text = entry(
        "hostile",
        "wasm",
        &path,
        None,
        "scheduler",
        &format!("[plugin.limits]\n{limits}"),
    );
    let plugin = Arc::new(load_one(tmp.path(), &text).unwrap());
    let start = Instant::now();
    let result = plugin
        .build_scheduler(&tiny_config(), 10)
        .map_err(|e| e.to_string());
    (result, start.elapsed())
}

#[test]
fn an_endless_loop_is_stopped_at_its_deadline() {
    let wasm = hostile_wat(0x10000, "(loop $l (br $l)) (i32.const 0)");
    let (result, elapsed) = hostile_schedule(&wasm, "timeout_ms = 300");
    let err = result.err().unwrap();
    assert!(
        err.contains("plugin hostile") && err.contains("deadline of 300 ms"),
        "{err}"
    );
    eprintln!("endless loop stopped after {elapsed:?} (deadline 300 ms)");
    assert!(
        elapsed < Duration::from_millis(1300),
        "stopped only after {elapsed:?}"
    );
}

#[test]
fn a_memory_bomb_is_stopped_at_the_cap() {
    let body = "(loop $l (drop (memory.grow (i32.const 16))) (br $l)) (i32.const 0)";
    let (result, _) = hostile_schedule(
        &hostile_wat(0x10000, body),
        "memory_mib = 16\ntimeout_ms = 5000",
    );
    let err = result.err().unwrap();
    assert!(err.contains("memory cap of 16 MiB"), "{err}");
}

#[test]
fn buffers_outside_plugin_memory_are_refused() {
    for (ptr, len) in [(0x7fff_0000u32, 64u32), (65_000, 1000), (0xffff_fff0, 0x20)] {
        let body = format!(
            "(i32.store (local.get $out) (i32.const {ptr})) \
             (i32.store offset=4 (local.get $out) (i32.const {len})) (i32.const 0)",
            ptr = ptr as i32,
            len = len as i32
        );
        let (result, _) = hostile_schedule(&hostile_wat(0x10000, &body), "");
        let err = result.err().unwrap();
        assert!(
            err.contains("bad buffer, refused") && err.contains("outside its"),
            "{err}"
        );
    }
}

#[test]
fn wrong_abi_versions_are_refused_with_both_versions() {
    let tmp = tempfile::tempdir().unwrap();
    // WASM
    let path = tmp.path().join("abi2.wasm");
    std::fs::write(&path, hostile_wat(0x20000, "(i32.const 3)")).unwrap();
    let err = load_one(
        tmp.path(),
        &entry("abi2", "wasm", &path, None, "scheduler", ""),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("ABI version 2.0") && err.contains("ABI 1.0"),
        "{err}"
    );
    // native, built here; its other exports abort, so only the version may be called
    let lib = tmp.path().join("libwrong_abi.so");
    let status = Command::new("clang")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(common::fixture("plugins/wrong_abi.c"))
        .status()
        .unwrap();
    assert!(status.success());
    let text = entry(
        "wrong-abi",
        "native",
        &lib,
        Some(&sha(&lib)),
        "scheduler",
        "",
    );
    let err = load_one(tmp.path(), &text).unwrap_err().to_string();
    assert!(
        err.contains("ABI version 2.0") && err.contains("ABI 1.0"),
        "{err}"
    );
    // at startup: generate refuses before loading the model
    let o = beeswax(&[
        "--manifests",
        tmp.path().to_str().unwrap(),
        "generate",
        "--pack",
        "tiny-sd",
        "--prompt",
        "x",
        "--steps",
        "1",
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("plugin wrong-abi: ABI version 2.0 is not supported") && err.contains("1.0"),
        "{err}"
    );
}

#[test]
fn wasi_and_other_imports_are_refused() {
    let wasm = wat::parse_str(
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (func (export "beeswax_abi_version") (result i32) (i32.const 0x10000)))"#,
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("wasi.wasm");
    std::fs::write(&path, wasm).unwrap();
    let err = load_one(
        tmp.path(),
        &entry("wasi", "wasm", &path, None, "scheduler", ""),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("imports `wasi_snapshot_preview1.fd_write`"),
        "{err}"
    );
}

#[test]
fn a_sha256_mismatch_is_refused_before_loading() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("p.wasm");
    std::fs::write(&path, hostile_wat(0x10000, "(i32.const 3)")).unwrap();
    let wrong = "ab".repeat(32);
    let err = load_one(
        tmp.path(),
        &entry("p", "wasm", &path, Some(&wrong), "scheduler", ""),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`plugin.sha256` of plugin p does not match"),
        "{err}"
    );
    assert!(err.contains(&wrong) && err.contains(&sha(&path)), "{err}");
}

#[test]
fn a_trap_fails_only_its_job() {
    let tmp = tempfile::tempdir().unwrap();
    let wasm = tmp.path().join("trap.wasm");
    clang_wasm(&common::fixture("plugins/trap_on_marker.c"), &wasm);
    let plugin = Arc::new(
        load_one(
            tmp.path(),
            &entry("trappy", "wasm", &wasm, None, "scheduler", ""),
        )
        .unwrap(),
    );
    let config = tiny_config();
    let mut noise = BatchNoise::new(0, 1);
    let ones = Tensor::ones((1, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let marked = (&ones * 42.0).unwrap();

    let mut job = plugin.build_scheduler(&config, 3).unwrap();
    job.step(&ones, 0, &ones, &mut noise).unwrap();
    let err = job
        .step(&ones, 1, &marked, &mut noise)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("plugin trappy") && err.contains("trapped"),
        "{err}"
    );
    let err = job
        .step(&ones, 2, &ones, &mut noise)
        .unwrap_err()
        .to_string();
    assert!(err.contains("stopped after an earlier failure"), "{err}");
    drop(job);

    let mut next = plugin.build_scheduler(&config, 3).unwrap();
    for i in 0..3 {
        let out = next.step(&ones, i, &ones, &mut noise).unwrap();
        let sum = out.sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(sum, 256.0);
    }
}

// ---- the post-processor -------------------------------------------------------------------

#[test]
fn sharpen_postprocessor_sharpens_and_keeps_flat_images() {
    let (found, problems) = committed_entries();
    assert!(problems.is_empty(), "{problems:?}");
    let sharpen = found.iter().find(|e| e.name == "sharpen-wasm").unwrap();
    let plugin = LoadedPlugin::load(sharpen).unwrap();
    let (w, h) = (16, 12);
    let edge = beeswax::image_out::RgbImage {
        width: w,
        height: h,
        data: (0..w * h * 3)
            .map(|i| if (i / 3) % w < w / 2 { 60 } else { 180 })
            .collect(),
    };
    let out = plugin.postprocess(&edge).unwrap();
    assert_eq!((out.width, out.height, out.data.len()), (w, h, w * h * 3));
    // the edge gets steeper: darker on the dark side, brighter on the bright side
    let at = |img: &beeswax::image_out::RgbImage, x: usize| img.data[(5 * w + x) * 3] as i32;
    assert!(
        at(&out, w / 2 - 1) < 60 && at(&out, w / 2) > 180,
        "{:?}",
        &out.data[..48]
    );
    let flat = beeswax::image_out::RgbImage {
        width: w,
        height: h,
        data: vec![90; w * h * 3],
    };
    assert_eq!(plugin.postprocess(&flat).unwrap(), flat);

    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a.png"), tmp.path().join("b.png"));
    for (path, post) in [(&a, None), (&b, Some("sharpen-wasm"))] {
        let mut args = vec![
            "generate",
            "--pack",
            "tiny-sd",
            "--prompt",
            "a cat",
            "--steps",
            "2",
            "--seed",
            "5",
            "--quiet",
            "--output",
            path.to_str().unwrap(),
        ];
        if let Some(p) = post {
            args.extend(["--post", p]);
        }
        let o = beeswax(&args);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let o = beeswax(&[
        "generate", "--pack", "tiny-sd", "--prompt", "x", "--post", "nope",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("post-processor nope: is not registered")
            && stderr(&o).contains("registered: sharpen-wasm"),
        "{}",
        stderr(&o)
    );
}

// ---- beeswax check --------------------------------------------------------------------------

#[test]
fn check_passes_on_the_committed_manifests() {
    let o = beeswax(&["--manifests", "manifests", "check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ok:"));
}

#[test]
fn check_lists_wrong_hashes_and_missing_files() {
    let tmp = tempfile::tempdir().unwrap();
    let wasm = root().join("plugins/euler-wasm/euler-wasm.wasm");
    let text = entry(
        "bad-hash",
        "wasm",
        &wasm,
        Some(&"0".repeat(64)),
        "scheduler",
        "",
    ) + &entry(
        "gone",
        "wasm",
        &tmp.path().join("missing.wasm"),
        None,
        "postprocessor",
        "",
    );
    let manifest = tmp.path().join("broken.toml");
    std::fs::write(&manifest, text).unwrap();
    let o = beeswax(&["--manifests", tmp.path().to_str().unwrap(), "check"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let file = manifest.display().to_string();
    assert!(
        err.contains(&format!(
            "{file}:5: `plugin.sha256` of plugin bad-hash does not match"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:11: `plugin.path` of plugin gone"))
            && err.contains("missing.wasm"),
        "{err}"
    );
    assert!(err.contains("2 problem(s) found"), "{err}");
}

// ---- benchmark --------------------------------------------------------------------------------

/// Per-step overhead of the plugin Eulers over the built-in on 64x64 latents, batch 2
/// (scale_model_input + step per step; the UNet is not run). Prints a table; results must also
/// equal the built-in's. Run: `cargo test --release -p beeswax --test plugins bench -- --nocapture`.
#[test]
fn bench_per_step_overhead() {
    let config = tiny_config();
    let steps = 20;
    let (found, _) = committed_entries();
    let wasm = Arc::new(
        LoadedPlugin::load(found.iter().find(|e| e.name == "euler-wasm").unwrap()).unwrap(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let lib = build_euler_native();
    let native = Arc::new(
        load_one(
            tmp.path(),
            &entry(
                "euler-native",
                "native",
                &lib,
                Some(&sha(&lib)),
                "scheduler",
                "",
            ),
        )
        .unwrap(),
    );
    let n = 2 * 4 * 64 * 64;
    let sample0 = Tensor::from_vec(
        (0..n)
            .map(|i| (i as f32 * 0.37).sin() * 10.0)
            .collect::<Vec<_>>(),
        (2, 4, 64, 64),
        &Device::Cpu,
    )
    .unwrap();
    let eps = Tensor::from_vec(
        (0..n).map(|i| (i as f32 * 0.11).cos()).collect::<Vec<_>>(),
        (2, 4, 64, 64),
        &Device::Cpu,
    )
    .unwrap();
    let run = |make: &dyn Fn() -> Box<dyn Scheduler>| -> (Duration, Tensor) {
        let mut best = Duration::MAX;
        let mut last = sample0.clone();
        for _ in 0..5 {
            let mut s = make();
            let mut noise = BatchNoise::new(0, 2);
            let mut x = sample0.clone();
            let start = Instant::now();
            for i in 0..steps {
                let scaled = s.scale_model_input(&x, i).unwrap();
                let out = ((&eps * 0.9).unwrap() + (&scaled * 0.01).unwrap()).unwrap();
                x = s.step(&out, i, &x, &mut noise).unwrap();
            }
            best = best.min(start.elapsed());
            last = x;
        }
        (best / steps as u32, last)
    };
    let (builtin, want) = run(&|| {
        common::registry()
            .build_named("euler", None, &config, steps)
            .unwrap()
    });
    eprintln!(
        "per-step time, 64x64 latents, batch 2 ([2, 4, 64, 64] f32), best of 5 x {steps} steps:"
    );
    eprintln!(
        "  euler (built-in): {:>8.1} us",
        builtin.as_secs_f64() * 1e6
    );
    for (name, plugin) in [("euler-wasm", &wasm), ("euler-native", &native)] {
        let (t, got) = run(&|| plugin.build_scheduler(&config, steps).unwrap());
        eprintln!(
            "  {name:<16}: {:>8.1} us  (overhead {:+.1} us/step)",
            t.as_secs_f64() * 1e6,
            (t.as_secs_f64() - builtin.as_secs_f64()) * 1e6
        );
        let diff = (&got - &want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{name} differs from the built-in");
    }
}

/// Reads a PNG as 8-bit rows of `channels` bytes per pixel.
fn png_bytes(path: &Path) -> (usize, usize, Vec<u8>) {
    let image = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (
        image.width() as usize,
        image.height() as usize,
        image.to_rgb8().into_raw(),
    )
}

#[test]
fn the_mask_grow_preprocessor_widens_what_inpainting_repaints() {
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = root().join("tests/fixtures/reference/img2img");
    let (init, mask) = (fixtures.join("init.png"), fixtures.join("mask.png"));
    let manifests = root().join("manifests");
    let run = |name: &str, pre: &[&str]| {
        let out = tmp.path().join(name);
        let mut args = vec![
            "--manifests",
            manifests.to_str().unwrap(),
            "generate",
            "--pack",
            "tiny-sd",
            "--prompt",
            "a fox",
            "--steps",
            "3",
            "--strength",
            "1.0",
            "--mask-blur",
            "0",
            "--seed",
            "3",
            "--quiet",
            "--init-image",
            init.to_str().unwrap(),
            "--mask",
            mask.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(pre);
        let o = beeswax(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        png_bytes(&out).2
    };
    let plain = run("plain.png", &[]);
    let grown = run("grown.png", &["--pre", "mask-grow-wasm"]);
    let (w, h, picture) = png_bytes(&init);
    let (_, _, mask) = png_bytes(&mask);
    let masked = |x: usize, y: usize| mask[(y * w + x) * 3] > 127;
    // The manifest grows the mask by 8 pixels: a square dilation.
    let near = |x: usize, y: usize| {
        (y.saturating_sub(8)..(y + 9).min(h))
            .any(|yy| (x.saturating_sub(8)..(x + 9).min(w)).any(|xx| masked(xx, yy)))
    };
    let changed = |out: &[u8], x: usize, y: usize| {
        (0..3)
            .map(|c| out[(y * w + x) * 3 + c].abs_diff(picture[(y * w + x) * 3 + c]))
            .max()
            .unwrap()
    };
    let mut repainted_margin = 0;
    for y in 0..h {
        for x in 0..w {
            if !masked(x, y) {
                assert!(
                    changed(&plain, x, y) <= 1,
                    "without --pre, ({x}, {y}) outside the mask changed"
                );
            }
            if !near(x, y) {
                assert!(
                    changed(&grown, x, y) <= 1,
                    "({x}, {y}) beyond the grown mask changed"
                );
            } else if !masked(x, y) && changed(&grown, x, y) > 8 {
                repainted_margin += 1;
            }
        }
    }
    assert!(
        repainted_margin > 20,
        "the grown margin was not repainted ({repainted_margin} pixels)"
    );
}
