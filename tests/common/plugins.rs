//! Plugins made in the test: WAT scheduler plugins whose constructor misbehaves.

/// A WAT scheduler plugin whose `beeswax_scheduler_new` body is `new_body`.
pub fn hostile_wat(abi: u32, new_body: &str) -> Vec<u8> {
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

/// A `[[plugin]]` scheduler entry named `name` for the WASM file at `path` (unpinned), with
/// `[plugin.limits]` lines `limits`.
pub fn scheduler_entry(name: &str, path: &std::path::Path, limits: &str) -> String {
    format!(
        "[[plugin]]\nname = \"{name}\"\nkind = \"wasm\"\npath = {}\nprovides = [\"scheduler\"]\n\
         [plugin.limits]\n{limits}\n",
        super::command::toml_path(path)
    )
}

/// A WAT post-processor plugin that answers every picture with the same `width` x `height`
/// grey RGB picture (a resizing post-processor, as an upscaler is).
pub fn resizing_postprocessor_wat(abi: u32, width: u32, height: u32) -> Vec<u8> {
    let mut image = Vec::new();
    for v in [width, height, 3, 0] {
        image.extend_from_slice(&v.to_le_bytes());
    }
    image.resize(image.len() + (width * height * 3) as usize, 128);
    while image.len() % 8 != 0 {
        image.push(0);
    }
    let data: String = image.iter().map(|b| format!("\\{b:02x}")).collect();
    let text = format!(
        r#"(module
  (memory (export "memory") 4)
  (global $top (mut i32) (i32.const 200000))
  (data (i32.const 64) "{data}")
  (func (export "beeswax_abi_version") (result i32) (i32.const {abi}))
  (func (export "beeswax_capabilities") (result i32) (i32.const 2))
  (func (export "beeswax_alloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $top))
    (global.set $top (i32.and (i32.add (i32.add (global.get $top) (local.get $n)) (i32.const 7)) (i32.const -8)))
    (local.get $p))
  (func (export "beeswax_free") (param i32 i32))
  (func (export "beeswax_postprocess") (param i32 i32 i32 i32) (param $out i32) (result i32)
    (i32.store (local.get $out) (i32.const 64))
    (i32.store offset=4 (local.get $out) (i32.const {len}))
    (i32.const 0)))"#,
        len = image.len()
    );
    wat::parse_str(text).unwrap()
}
