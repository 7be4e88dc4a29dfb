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
