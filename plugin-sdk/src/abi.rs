//! ABI constants shared by plugins and the host: version, status codes, capabilities, flags.
//!
//! Every number here is part of ABI version 1 and mirrors `include/beeswax_plugin.h`.

/// Major ABI version: a host refuses a plugin whose major differs from its own.
pub const ABI_MAJOR: u16 = 1;
/// Minor ABI version: a host accepts plugins with a minor up to its own.
pub const ABI_MINOR: u16 = 0;
/// The value `beeswax_abi_version()` returns: `major << 16 | minor`.
pub const ABI_VERSION: u32 = ((ABI_MAJOR as u32) << 16) | ABI_MINOR as u32;

/// Splits an encoded version into (major, minor).
pub const fn split_version(version: u32) -> (u16, u16) {
    ((version >> 16) as u16, (version & 0xffff) as u16)
}

/// Status codes returned by the fallible exports. On anything but [`STATUS_OK`] the output
/// buffer holds a UTF-8 message (possibly empty).
pub const STATUS_OK: i32 = 0;
/// The input was malformed or out of range (a host bug or a wrong manifest parameter).
pub const STATUS_INVALID_INPUT: i32 = 1;
/// The plugin does not support this configuration (e.g. an option it does not implement).
pub const STATUS_UNSUPPORTED: i32 = 2;
/// The plugin failed internally (the Rust SDK reports a caught panic this way).
pub const STATUS_INTERNAL: i32 = 3;
/// The plugin could not allocate memory.
pub const STATUS_OUT_OF_MEMORY: i32 = 4;

/// Capability bit: the plugin exports the `beeswax_scheduler_*` functions.
pub const CAP_SCHEDULER: u32 = 1;
/// Capability bit: the plugin exports `beeswax_postprocess`.
pub const CAP_POSTPROCESSOR: u32 = 2;
/// Capability bit: the plugin exports `beeswax_preprocess`.
pub const CAP_PREPROCESSOR: u32 = 4;

/// Tensor dtype code: little-endian IEEE 754 binary32.
pub const DTYPE_F32: u32 = 0;
/// Tensor dtype code: little-endian IEEE 754 binary64.
pub const DTYPE_F64: u32 = 1;
/// Largest tensor rank the ABI carries.
pub const MAX_RANK: usize = 8;

/// `prediction_type` codes of the scheduler config.
pub const PREDICTION_EPSILON: u32 = 0;
/// `v_prediction`.
pub const PREDICTION_V: u32 = 1;
/// `sample`.
pub const PREDICTION_SAMPLE: u32 = 2;

/// `timestep_spacing` codes: absent from the model's config (use the scheduler's default).
pub const SPACING_DEFAULT: u32 = 0;
/// `linspace`.
pub const SPACING_LINSPACE: u32 = 1;
/// `leading`.
pub const SPACING_LEADING: u32 = 2;
/// `trailing`.
pub const SPACING_TRAILING: u32 = 3;

/// Scheduler config flag: `use_karras_sigmas`.
pub const FLAG_KARRAS_SIGMAS: u32 = 1;
/// `use_exponential_sigmas`.
pub const FLAG_EXPONENTIAL_SIGMAS: u32 = 1 << 1;
/// `use_beta_sigmas`.
pub const FLAG_BETA_SIGMAS: u32 = 1 << 2;
/// `rescale_betas_zero_snr` (already applied to `alphas_cumprod`).
pub const FLAG_RESCALE_ZERO_SNR: u32 = 1 << 3;
/// `final_sigmas_type = "sigma_min"` (else `"zero"`).
pub const FLAG_FINAL_SIGMA_MIN: u32 = 1 << 4;
/// `timestep_type = "continuous"` (else `"discrete"`).
pub const FLAG_CONTINUOUS_TIMESTEPS: u32 = 1 << 5;
/// `interpolation_type = "log_linear"` (else `"linear"`).
pub const FLAG_LOG_LINEAR: u32 = 1 << 6;
/// `sigma_min` is set (its value is in the config).
pub const FLAG_HAS_SIGMA_MIN: u32 = 1 << 7;
/// `sigma_max` is set.
pub const FLAG_HAS_SIGMA_MAX: u32 = 1 << 8;
/// The model is a flow-matching one (FLUX): sigmas run from 1 to 0, a sample is
/// `σ·noise + (1 − σ)·x0`, the model predicts the velocity `noise − x0`, and the flow fields
/// (`shift`, `use_dynamic_shifting`, ...) are in the config JSON. Hosts before this flag
/// never set it; a scheduler that only knows diffusion models may refuse such a config.
pub const FLAG_FLOW_MODEL: u32 = 1 << 9;

/// Schedule flag: `step` wants a standard-normal noise tensor as its third input.
pub const SCHEDULE_WANTS_NOISE: u32 = 1;

/// Parameter kind: a number (f64).
pub const PARAM_NUMBER: u32 = 0;
/// Parameter kind: a UTF-8 string.
pub const PARAM_STRING: u32 = 1;

/// A byte buffer in the plugin's memory, allocated with the plugin's `beeswax_alloc`; the
/// host frees it with `beeswax_free(ptr, len)` after reading it. Matches `beeswax_buf` in C
/// (`{ uint8_t *ptr; size_t len; }`: 8 bytes on wasm32, 16 on 64-bit native).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    /// First byte (may be null when `len` is 0).
    pub ptr: *mut u8,
    /// Length in bytes.
    pub len: usize,
}

/// Names of the exports, as the host looks them up.
pub mod exports {
    /// `uint32_t beeswax_abi_version(void)`: called first, before anything else.
    pub const ABI_VERSION: &str = "beeswax_abi_version";
    /// `uint32_t beeswax_capabilities(void)`: [`super::CAP_SCHEDULER`] | ...
    pub const CAPABILITIES: &str = "beeswax_capabilities";
    /// `uint8_t *beeswax_alloc(size_t len)`: 8-byte aligned, null on failure.
    pub const ALLOC: &str = "beeswax_alloc";
    /// `void beeswax_free(uint8_t *ptr, size_t len)`.
    pub const FREE: &str = "beeswax_free";
    /// `int32_t beeswax_scheduler_new(const uint8_t *cfg, size_t len, beeswax_buf *out)`.
    pub const SCHEDULER_NEW: &str = "beeswax_scheduler_new";
    /// `int32_t beeswax_scheduler_scale(uint64_t h, uint32_t i, const uint8_t *in, size_t len, beeswax_buf *out)`.
    pub const SCHEDULER_SCALE: &str = "beeswax_scheduler_scale";
    /// `int32_t beeswax_scheduler_step(uint64_t h, uint32_t i, const uint8_t *in, size_t len, beeswax_buf *out)`.
    pub const SCHEDULER_STEP: &str = "beeswax_scheduler_step";
    /// `int32_t beeswax_scheduler_add_noise(uint64_t h, uint32_t i, const uint8_t *in, size_t len, beeswax_buf *out)`.
    pub const SCHEDULER_ADD_NOISE: &str = "beeswax_scheduler_add_noise";
    /// `void beeswax_scheduler_drop(uint64_t h)`.
    pub const SCHEDULER_DROP: &str = "beeswax_scheduler_drop";
    /// `int32_t beeswax_postprocess(const uint8_t *params, size_t plen, const uint8_t *img, size_t ilen, beeswax_buf *out)`.
    pub const POSTPROCESS: &str = "beeswax_postprocess";
    /// `int32_t beeswax_preprocess(const uint8_t *params, size_t plen, const uint8_t *in, size_t ilen, beeswax_buf *out)`.
    pub const PREPROCESS: &str = "beeswax_preprocess";
    /// The one import a WASM plugin may use: module `beeswax`, name `log`,
    /// `void log(int32_t level, const uint8_t *msg, size_t len)`.
    pub const LOG_MODULE: &str = "beeswax";
    /// See [`LOG_MODULE`].
    pub const LOG_NAME: &str = "log";
}
