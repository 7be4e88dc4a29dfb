//! The traits a Rust plugin implements: one per extension point.

use alloc::string::String;

use crate::abi;
use crate::wire::{Image, Params, SchedulerInit, Tensor};

/// A plugin error: an ABI status code and a message for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// One of the `abi::STATUS_*` codes other than OK.
    pub status: i32,
    /// What went wrong, in words.
    pub message: String,
}

impl Error {
    /// Bad input ([`abi::STATUS_INVALID_INPUT`]).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: abi::STATUS_INVALID_INPUT,
            message: message.into(),
        }
    }

    /// An unsupported option ([`abi::STATUS_UNSUPPORTED`]).
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self {
            status: abi::STATUS_UNSUPPORTED,
            message: message.into(),
        }
    }

    /// An internal failure ([`abi::STATUS_INTERNAL`]).
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: abi::STATUS_INTERNAL,
            message: message.into(),
        }
    }
}

impl From<crate::wire::DecodeError> for Error {
    fn from(e: crate::wire::DecodeError) -> Self {
        Self::invalid(e.0)
    }
}

/// A scheduler: the same interface as beeswax's built-in ones.
///
/// The host builds one value per generation job with [`SchedulerPlugin::new`], asks for the
/// timesteps once, then calls `scale_model_input` and `step` once per step index, in order.
/// Tensors arrive as f32 or f64 (the host upcasts half precision to f32, as the built-ins do)
/// and the result must have the shape and dtype of `sample`.
pub trait SchedulerPlugin: Sized + 'static {
    /// A schedule of `init.steps` steps for the model's config.
    fn new(init: &SchedulerInit) -> Result<Self, Error>;

    /// The model timesteps, one per step, in running order.
    fn timesteps(&self) -> &[f64];

    /// The standard deviation to scale unit starting noise by.
    fn init_noise_sigma(&self) -> f64;

    /// Whether `step` needs fresh standard-normal noise (stochastic samplers).
    fn wants_noise(&self) -> bool {
        false
    }

    /// Scales the model input at step `index`.
    fn scale_model_input(&self, sample: Tensor, index: usize) -> Result<Tensor, Error>;

    /// The sample at the next noise level; `noise` is given when [`Self::wants_noise`].
    fn step(
        &mut self,
        model_output: Tensor,
        index: usize,
        sample: Tensor,
        noise: Option<Tensor>,
    ) -> Result<Tensor, Error>;

    /// Noises clean latents to the level at which step `index` starts.
    fn add_noise(&self, original: Tensor, noise: Tensor, index: usize) -> Result<Tensor, Error>;
}

/// An image post-processor: RGB(A) image in, image out, with the manifest's parameters.
pub trait PostProcessor {
    /// Processes one generated image.
    fn process(params: &Params, image: Image) -> Result<Image, Error>;
}

/// An image pre-processor for image-to-image and inpainting: image and mask in and out.
pub trait PreProcessor {
    /// Processes an input image and its mask (1 channel; 255 = repaint).
    fn process(params: &Params, image: Image, mask: Image) -> Result<(Image, Image), Error>;
}
