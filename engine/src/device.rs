//! Device and dtype selection for `--device` and `--dtype`.
//!
//! `cpu` always works; `cuda[:N]` and `metal` need beeswax built with the `cuda` or `metal`
//! cargo feature. Without `--device`, the best compiled-in accelerator is used if one is
//! present, else the CPU.

use candle_core::{DType, Device};

use crate::{Error, Result};

/// Parses `cpu`, `cuda`, `cuda:N` or `metal` (case-insensitive) and opens the device.
pub fn parse_device(spec: &str) -> Result<Device> {
    let lower = spec.trim().to_ascii_lowercase();
    let allowed = "one of cpu, cuda, cuda:N (N a GPU index), metal";
    let open = |r: candle_core::Result<Device>| {
        r.map_err(|e| {
            Error::invalid(
                "--device",
                spec,
                format!("{e} (is beeswax built with that feature?)"),
            )
        })
    };
    match lower.as_str() {
        "cpu" => Ok(Device::Cpu),
        "metal" => open(Device::new_metal(0)),
        "cuda" => open(Device::new_cuda(0)),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => open(Device::new_cuda(n)),
            _ => Err(Error::invalid("--device", spec, allowed)),
        },
    }
}

/// The best compiled-in device: CUDA 0 or Metal if available, else the CPU.
pub fn default_device() -> Device {
    if candle_core::utils::cuda_is_available() {
        if let Ok(d) = Device::new_cuda(0) {
            return d;
        }
    }
    if candle_core::utils::metal_is_available() {
        if let Ok(d) = Device::new_metal(0) {
            return d;
        }
    }
    Device::Cpu
}

/// Parses `f32`, `f16` or `bf16`.
pub fn parse_dtype(spec: &str) -> Result<DType> {
    match spec.trim().to_ascii_lowercase().as_str() {
        "f32" | "fp32" | "float32" => Ok(DType::F32),
        "f16" | "fp16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        _ => Err(Error::invalid("--dtype", spec, "one of f32, f16, bf16")),
    }
}

/// A short name for a device, for logs and PNG parameters.
pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_rejects_others() {
        assert!(parse_device("CPU").unwrap().is_cpu());
        let err = parse_device("tpu").unwrap_err().to_string();
        assert!(
            err.contains("--device") && err.contains("tpu") && err.contains("cuda:N"),
            "{err}"
        );
        let err = parse_device("cuda:x").unwrap_err().to_string();
        assert!(err.contains("cuda:x"), "{err}");
    }

    #[test]
    fn parses_dtypes() {
        assert_eq!(parse_dtype("bf16").unwrap(), DType::BF16);
        let err = parse_dtype("f64").unwrap_err().to_string();
        assert!(err.contains("f32, f16, bf16"), "{err}");
    }
}
