//! Host-side conversions between beeswax types and the plugin ABI's byte layouts
//! ([`beeswax_plugin_sdk::wire`]): scheduler configs, candle tensors and RGB images.

use beeswax_plugin_sdk::abi;
use beeswax_plugin_sdk::wire::{
    self, Image, Params, SchedulerInit, Tensor as WireTensor, TensorData,
};
use candle_core::{DType, Device, Tensor};

use crate::image_out::RgbImage;
use crate::schedulers::{
    math, BuildContext, FinalSigmasType, InterpolationType, PredictionType, SchedulerConfig,
    SchedulerError, SchedulerKind, TimestepSpacing, TimestepType,
};

/// The scheduler config a plugin receives for `context.steps` steps of `config`: the fields as
/// codes, `alphas_cumprod` computed by the host (betas, schedule, zero-SNR rescaling), the
/// model kind as [`abi::FLAG_FLOW_MODEL`] and the config as JSON. Errors name the config field
/// at fault.
pub fn scheduler_init(
    plugin: &str,
    config: &SchedulerConfig,
    context: &BuildContext,
    params: &Params,
) -> Result<SchedulerInit, SchedulerError> {
    let steps = context.steps;
    let alphas_cumprod = math::alphas_cumprod(plugin, config)?;
    let code = |ok: bool, bit: u32| if ok { bit } else { 0 };
    let flags = code(config.use_karras_sigmas, abi::FLAG_KARRAS_SIGMAS)
        | code(config.use_exponential_sigmas, abi::FLAG_EXPONENTIAL_SIGMAS)
        | code(config.use_beta_sigmas, abi::FLAG_BETA_SIGMAS)
        | code(config.rescale_betas_zero_snr, abi::FLAG_RESCALE_ZERO_SNR)
        | code(
            config.final_sigmas_type == FinalSigmasType::SigmaMin,
            abi::FLAG_FINAL_SIGMA_MIN,
        )
        | code(
            config.timestep_type == TimestepType::Continuous,
            abi::FLAG_CONTINUOUS_TIMESTEPS,
        )
        | code(
            config.interpolation_type == InterpolationType::LogLinear,
            abi::FLAG_LOG_LINEAR,
        )
        | code(config.sigma_min.is_some(), abi::FLAG_HAS_SIGMA_MIN)
        | code(config.sigma_max.is_some(), abi::FLAG_HAS_SIGMA_MAX)
        | code(context.kind == SchedulerKind::Flow, abi::FLAG_FLOW_MODEL);
    let prediction_type = if config.prediction_type == PredictionType::VPrediction {
        abi::PREDICTION_V
    } else if config.prediction_type == PredictionType::Sample {
        abi::PREDICTION_SAMPLE
    } else {
        abi::PREDICTION_EPSILON
    };
    let timestep_spacing = match config.timestep_spacing {
        None => abi::SPACING_DEFAULT,
        Some(TimestepSpacing::Linspace) => abi::SPACING_LINSPACE,
        Some(TimestepSpacing::Leading) => abi::SPACING_LEADING,
        Some(TimestepSpacing::Trailing) => abi::SPACING_TRAILING,
    };
    let too_big = |what: &str| SchedulerError::Invalid {
        scheduler: plugin.to_string(),
        message: format!("{what} does not fit the plugin ABI (32 bits)"),
    };
    Ok(SchedulerInit {
        steps: u32::try_from(steps).map_err(|_| too_big("steps"))?,
        num_train_timesteps: u32::try_from(alphas_cumprod.len())
            .map_err(|_| too_big("num_train_timesteps"))?,
        prediction_type,
        timestep_spacing,
        steps_offset: u32::try_from(config.steps_offset).map_err(|_| too_big("steps_offset"))?,
        flags,
        sigma_min: config.sigma_min.unwrap_or(0.0),
        sigma_max: config.sigma_max.unwrap_or(0.0),
        alphas_cumprod,
        params: params.clone(),
        config_json: serde_json::to_string(config).unwrap_or_default(),
    })
}

/// The dtype tensors cross the ABI in: f64 if `t` is f64, else f32 (halves are upcast, as the
/// built-in schedulers compute).
pub fn wire_dtype(t: &Tensor) -> DType {
    if t.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Appends `t` (moved to the CPU, cast to `dtype`) to `out` in the ABI tensor layout.
pub fn encode_tensor(t: &Tensor, dtype: DType, out: &mut Vec<u8>) -> candle_core::Result<()> {
    let flat = t.to_device(&Device::Cpu)?.to_dtype(dtype)?.flatten_all()?;
    let data = if dtype == DType::F64 {
        TensorData::F64(flat.to_vec1::<f64>()?)
    } else {
        TensorData::F32(flat.to_vec1::<f32>()?)
    };
    wire::encode_tensor_parts(t.dims(), &data, out).map_err(|e| candle_core::Error::Msg(e.0))
}

/// Decodes a plugin's output tensor, checks it has the shape of `like` and the wire dtype,
/// and returns it in `like`'s dtype and device.
pub fn decode_tensor(bytes: &[u8], like: &Tensor, dtype: DType) -> Result<Tensor, String> {
    let mut tensors = wire::decode_tensors(bytes, 1).map_err(|e| e.0)?;
    let WireTensor { shape, data } = tensors.pop().ok_or("no tensor returned")?;
    if shape != like.dims() {
        return Err(format!(
            "returned a tensor of shape {shape:?}; {:?} was expected",
            like.dims()
        ));
    }
    let t = match (data, dtype) {
        (TensorData::F32(v), DType::F32) => Tensor::from_vec(v, shape, &Device::Cpu),
        (TensorData::F64(v), DType::F64) => Tensor::from_vec(v, shape, &Device::Cpu),
        (data, _) => {
            return Err(format!(
                "returned dtype code {}; {dtype:?} was expected",
                data.dtype()
            ))
        }
    };
    t.and_then(|t| t.to_dtype(like.dtype())?.to_device(like.device()))
        .map_err(|e| e.to_string())
}

/// An RGB image in the ABI layout.
pub fn encode_rgb(image: &RgbImage, out: &mut Vec<u8>) -> Result<(), String> {
    let w = u32::try_from(image.width).map_err(|_| "image too wide")?;
    let h = u32::try_from(image.height).map_err(|_| "image too tall")?;
    // The encoder copies; images are small next to a UNet step.
    Image {
        width: w,
        height: h,
        channels: 3,
        data: image.data.clone(),
    }
    .encode_into(out)
    .map_err(|e| e.0)
}

/// Decodes a post-processor's output for an RGB input, which must be RGB (3 channels) too.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, String> {
    let image = Image::decode(&mut wire::Reader::new(bytes)).map_err(|e| e.0)?;
    if image.channels != 3 {
        return Err(format!(
            "returned an image with {} channels; RGB (3) was expected for RGB input",
            image.channels
        ));
    }
    Ok(RgbImage {
        width: image.width as usize,
        height: image.height as usize,
        data: image.data,
    })
}
