//! Hostile plugins: endless loops, memory bombs, buffers outside their memory, wrong ABI
//! versions, WASI imports, wrong hashes and traps each fail with their own error, and only
//! the job that met them.

use std::time::{Duration, Instant};

use beeswax::noise::BatchNoise;
use beeswax::plugins::call::Call;
use beeswax::schedulers::Scheduler;
use candle_core::DType;

use common::plugins::{hostile_wat, resizing_postprocessor_wat};

use super::*;

/// Loads a WAT scheduler plugin named `hostile` with the given `[plugin.limits]` lines.
fn hostile_plugin(wasm: &[u8], limits: &str) -> Arc<LoadedPlugin> {
    let dir = Dir::new("hostile");
    let path = dir.create("hostile.wasm", wasm);
    let limits = format!("[plugin.limits]\n{limits}");
    let text = entry("hostile", "wasm", &path, None, "scheduler", &limits);
    Arc::new(load_one(dir.path(), &text).unwrap())
}

/// Asks a hostile plugin for a schedule: the error message.
fn hostile_schedule(wasm: &[u8], limits: &str) -> String {
    let plugin = hostile_plugin(wasm, limits);
    plugin
        .build_scheduler(&tiny_config(), 10)
        .err()
        .expect("the hostile plugin was accepted")
        .to_string()
}

#[test]
fn an_endless_loop_is_stopped_at_its_deadline() {
    let wasm = hostile_wat(0x10000, "(loop $l (br $l)) (i32.const 0)");
    let plugin = hostile_plugin(&wasm, "timeout_ms = 300");
    // The call itself: a timeout, of this plugin, at its configured deadline.
    let start = Instant::now();
    let err = plugin
        .instance()
        .unwrap()
        .call(Call::SchedulerNew(&[]))
        .unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(&err, PluginError::Timeout { plugin, export: "beeswax_scheduler_new", timeout_ms: 300 } if plugin == "hostile"),
        "{err:?}"
    );
    eprintln!("endless loop stopped after {elapsed:?} (deadline 300 ms)");
    // Only a hang fails here: how late the deadline fires depends on the machine's load.
    assert!(
        elapsed < Duration::from_secs(60),
        "stopped only after {elapsed:?}"
    );
    // Through a scheduler job, the message names the plugin and the deadline.
    let err = hostile_schedule(&wasm, "timeout_ms = 300");
    assert!(
        err.contains("plugin hostile") && err.contains("deadline of 300 ms"),
        "{err}"
    );
}

#[test]
fn a_memory_bomb_is_stopped_at_the_cap() {
    let body = "(loop $l (drop (memory.grow (i32.const 16))) (br $l)) (i32.const 0)";
    let err = hostile_schedule(
        &hostile_wat(0x10000, body),
        "memory_mib = 16\ntimeout_ms = 5000",
    );
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
        let err = hostile_schedule(&hostile_wat(0x10000, &body), "");
        assert!(
            err.contains("bad buffer, refused") && err.contains("outside its"),
            "{err}"
        );
    }
}

/// Asserts that loading the plugin `text` describes fails naming both ABI versions, and that
/// `generate` with it in the manifests refuses at startup, before loading a model.
fn refused_for_its_abi(dir: &Dir, text: &str, name: &str) {
    let err = load_one(dir.path(), text).unwrap_err().to_string();
    assert!(
        err.contains("ABI version 2.0") && err.contains("ABI 1.0"),
        "{err}"
    );
    let err = TestCommand::in_repo()
        .arg("--manifests")
        .arg(dir.path())
        .args([
            "generate", "--pack", "tiny-sd", "--prompt", "x", "--steps", "1",
        ])
        .assert_err();
    let refusal = format!("plugin {name}: ABI version 2.0 is not supported");
    assert!(err.contains(&refusal) && err.contains("1.0"), "{err}");
}

#[test]
fn a_wasm_plugin_of_another_abi_version_is_refused_with_both_versions() {
    let dir = Dir::new("abi2-wasm");
    let path = dir.create("abi2.wasm", hostile_wat(0x20000, "(i32.const 3)"));
    let text = entry("abi2", "wasm", &path, None, "scheduler", "");
    refused_for_its_abi(&dir, &text, "abi2");
}

#[test]
#[ignore = "needs: toolchain (clang builds a native library); scripts/test runs it"]
fn a_native_plugin_of_another_abi_version_is_refused_with_both_versions() {
    let dir = Dir::new("abi2-native");
    // Its other exports abort, so only the version may be called.
    let lib = dir.join("libwrong_abi.so");
    let status = Command::new("clang")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(common::fixture("plugins/wrong_abi.c"))
        .status()
        .expect("clang is needed (scripts/test installs clang and lld)");
    assert!(status.success());
    let text = pinned_scheduler("wrong-abi", "native", &lib);
    refused_for_its_abi(&dir, &text, "wrong-abi");
}

#[test]
fn wasi_and_other_imports_are_refused() {
    let wasm = wat::parse_str(
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (func (export "beeswax_abi_version") (result i32) (i32.const 0x10000)))"#,
    )
    .unwrap();
    let dir = Dir::new("wasi");
    let path = dir.create("wasi.wasm", wasm);
    let text = entry("wasi", "wasm", &path, None, "scheduler", "");
    let err = load_one(dir.path(), &text).unwrap_err().to_string();
    assert!(
        err.contains("imports `wasi_snapshot_preview1.fd_write`"),
        "{err}"
    );
}

#[test]
fn a_sha256_mismatch_is_refused_before_loading() {
    let dir = Dir::new("sha");
    let path = dir.create("p.wasm", hostile_wat(0x10000, "(i32.const 3)"));
    let wrong = "ab".repeat(32);
    let text = entry("p", "wasm", &path, Some(&wrong), "scheduler", "");
    let err = load_one(dir.path(), &text).unwrap_err().to_string();
    assert!(
        err.contains("`plugin.sha256` of plugin p does not match"),
        "{err}"
    );
    assert!(err.contains(&wrong) && err.contains(&sha(&path)), "{err}");
}

#[test]
#[ignore = "needs: toolchain (clang + wasm-ld build the trapping plugin); scripts/test runs it"]
fn a_trap_fails_only_its_job() {
    let dir = Dir::new("trap");
    let wasm = dir.join("trap.wasm");
    clang_wasm(&common::fixture("plugins/trap_on_marker.c"), &wasm);
    let text = entry("trappy", "wasm", &wasm, None, "scheduler", "");
    let plugin = Arc::new(load_one(dir.path(), &text).unwrap());
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

    let mut next: Box<dyn Scheduler> = plugin.build_scheduler(&config, 3).unwrap();
    for i in 0..3 {
        let out = next.step(&ones, i, &ones, &mut noise).unwrap();
        let sum = out.sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(sum, 256.0);
    }
}

#[test]
fn a_post_processor_changes_the_size_only_when_its_manifest_declares_it() {
    let dir = Dir::new("resizer");
    let path = dir.create("resizer.wasm", resizing_postprocessor_wat(0x10000, 24, 16));
    let picture = beeswax::image_out::RgbImage {
        width: 12,
        height: 8,
        data: vec![10; 12 * 8 * 3],
    };
    let undeclared = entry("resizer", "wasm", &path, None, "postprocessor", "");
    let err = load_one(dir.path(), &undeclared)
        .unwrap()
        .postprocess(&picture)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("plugin resizer")
            && err.contains("24x16")
            && err.contains("changes_size = true"),
        "{err}"
    );
    let declared = entry(
        "resizer",
        "wasm",
        &path,
        None,
        "postprocessor",
        "changes_size = true",
    );
    let out = load_one(dir.path(), &declared)
        .unwrap()
        .postprocess(&picture)
        .unwrap();
    assert_eq!(
        (out.width, out.height, out.data.len()),
        (24, 16, 24 * 16 * 3)
    );
}
