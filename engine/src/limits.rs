//! The one place that says which job values are allowed. The command line (clap's value
//! parsers), the manifests (`[pack.defaults]`, `[[pipeline]]`) and the HTTP service all check
//! against these ranges, so that a value one of them accepts is never refused by another.
//!
//! A leaf module: it imports nothing from the crate. Model-dependent checks (a width that must
//! be a multiple of the VAE's scale factor, a CLIP skip within the text encoder's layers) are
//! made where the model is known, on top of these.

use std::ops::RangeInclusive;

/// Denoising steps.
pub const STEPS: RangeInclusive<usize> = 1..=1000;
/// Classifier-free guidance scale.
pub const GUIDANCE: RangeInclusive<f64> = 0.0..=100.0;
/// Width and height in pixels (also a multiple of [`SIZE_MULTIPLE`], and of the model's
/// VAE scale factor).
pub const SIZE: RangeInclusive<usize> = 8..=8192;
/// Widths and heights are multiples of this (the smallest VAE scale factor of any family).
pub const SIZE_MULTIPLE: usize = 8;
/// Images made in one batch.
pub const BATCH: RangeInclusive<usize> = 1..=64;
/// CLIP skip (1 = the last layer); also at most the text encoder's layer count.
pub const CLIP_SKIP: RangeInclusive<usize> = 1..=48;
/// Mask blur, in pixels (the Gaussian's standard deviation).
pub const MASK_BLUR: RangeInclusive<f64> = 0.0..=256.0;
/// Context pixels around the mask when only the masked region is repainted.
pub const INPAINT_PADDING: RangeInclusive<usize> = 0..=4096;
/// Iterations of one request (AUTOMATIC1111's `n_iter`).
pub const ITERATIONS: RangeInclusive<usize> = 1..=1000;
/// Preview interval in steps.
pub const PREVIEW_EVERY: RangeInclusive<usize> = 1..=1000;
/// Images one request may make in all (batch x iterations, OpenAI's `n`): the range of a
/// pipeline's `max_images`.
pub const IMAGES: RangeInclusive<usize> = 1..=64;
/// Memory cap a WASM plugin's manifest may set, in MiB (wasm32 addresses at most 4 GiB).
pub const PLUGIN_MEMORY_MIB: RangeInclusive<u64> = 1..=4096;
/// Deadline of one WASM plugin call a manifest may set, in milliseconds.
pub const PLUGIN_TIMEOUT_MS: RangeInclusive<u64> = 1..=600_000;
/// Longest prompt in characters (bounds memory; CLIP reads 75-token chunks).
pub const PROMPT_CHARS: usize = 20_000;
/// Deepest bracket nesting the prompt parsers read as syntax; deeper brackets are text. The
/// parsers recurse once per level, so this bounds their stack and memory (a prompt of
/// [`PROMPT_CHARS`] nested brackets overflowed a worker's stack); emphasis 64 levels deep is
/// already 1.1^64 ≈ 450.
pub const PROMPT_NESTING: usize = 64;

/// Whether `strength` is a valid image-to-image strength: above 0 and at most 1.
pub fn strength_ok(strength: f64) -> bool {
    strength > 0.0 && strength <= 1.0
}

/// Whether `switch_at` is a valid refiner switch point: above 0 and below 1.
pub fn switch_at_ok(switch_at: f64) -> bool {
    switch_at > 0.0 && switch_at < 1.0
}

/// Whether `value` is an allowed width or height (before the model's own scale factor).
pub fn size_ok(value: usize) -> bool {
    SIZE.contains(&value) && value % SIZE_MULTIPLE == 0
}

/// "between A and B" for messages.
pub fn describe<T: std::fmt::Display>(range: &RangeInclusive<T>) -> String {
    format!("between {} and {}", range.start(), range.end())
}

/// Input pictures (init images, masks) may have this many times the pixels of the largest
/// output (twice its width and twice its height): AUTOMATIC1111 users send larger pictures to
/// be resized down to the job's size.
pub const PICTURE_HEADROOM: u64 = 4;
/// The headroom stops at 50 megapixels (about 7000 x 7000): decoding costs memory.
pub const PICTURE_PIXELS_CAP: u64 = 50_000_000;

/// The most pixels an input picture may have when outputs are at most `max_width` x
/// `max_height`: [`PICTURE_HEADROOM`] times that, at most [`PICTURE_PIXELS_CAP`], and never
/// less than one output's pixels (a picture of the output's own size always fits).
pub fn picture_pixels(max_width: usize, max_height: usize) -> u64 {
    let output = (max_width as u64).saturating_mul(max_height as u64);
    output
        .saturating_mul(PICTURE_HEADROOM)
        .min(PICTURE_PIXELS_CAP)
        .max(output)
}
