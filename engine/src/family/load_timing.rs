//! How long each component takes to load, reported as `tracing` events so that callers who
//! care (`beeswax bench pipeline`, a server's logs with `RUST_LOG=beeswax::load=debug`)
//! collect them and the loaders stay free of timing plumbing.

use std::time::Instant;

/// The `tracing` target of the load events.
pub const LOAD_TARGET: &str = "beeswax::load";

/// Runs `load` and reports its wall time as a debug event of target [`LOAD_TARGET`] with the
/// fields `component` (e.g. `unet`, `text_encoder`, `vae`, `tokenizer`) and `seconds`.
pub fn timed_load<T, E>(component: &str, load: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let start = Instant::now();
    let out = load();
    tracing::debug!(
        target: LOAD_TARGET,
        component,
        seconds = start.elapsed().as_secs_f64(),
        "component loaded"
    );
    out
}
