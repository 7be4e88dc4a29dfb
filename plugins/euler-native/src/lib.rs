//! euler-native: the Euler sampler (diffusers' `EulerDiscreteScheduler`, no churn) as a
//! beeswax plugin in Rust, on `beeswax-plugin-sdk`.
//!
//! The same source builds as a native library (`cargo build --release -p euler-native` gives
//! `target/release/libeuler_native.so`) and as a WASM module
//! (`cargo build --release -p euler-native --target wasm32-unknown-unknown`). The schedule is
//! computed in f64 from the host's `alphas_cumprod`, and each tensor operation mirrors the
//! built-in `euler` (a multiply then an add in the tensor's dtype), so results agree to
//! rounding. Supported: spacing linspace/leading/trailing, Karras and exponential sigmas,
//! prediction epsilon/v_prediction/sample, final sigma zero/sigma_min. Beta sigmas,
//! log-linear interpolation and continuous timesteps are refused.

use beeswax_plugin_sdk::abi::*;
use beeswax_plugin_sdk::{Error, SchedulerInit, SchedulerPlugin, Tensor, TensorData};

/// The Euler schedule of one job.
pub struct Euler {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    prediction: u32,
}

/// `np.interp(x, arange(n), values)`.
fn interp(x: f64, v: &[f64]) -> f64 {
    let (first, last) = (v[0], v[v.len() - 1]);
    if x.is_nan() {
        return x;
    }
    if x <= 0.0 {
        return first;
    }
    if x >= (v.len() - 1) as f64 {
        return last;
    }
    let j = x.floor() as usize;
    if x == j as f64 {
        return v[j];
    }
    (v[j + 1] - v[j]) * (x - j as f64) + v[j]
}

/// diffusers' `_sigma_to_t`.
fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let low = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

fn timesteps(init: &SchedulerInit, steps: usize) -> Result<Vec<f64>, Error> {
    let n = init.alphas_cumprod.len();
    let t = n as f64;
    Ok(match init.timestep_spacing {
        SPACING_DEFAULT | SPACING_LINSPACE => {
            if steps == 1 {
                vec![0.0]
            } else {
                let step = (t - 1.0) / (steps - 1) as f64;
                let mut v: Vec<f64> = (0..steps).map(|i| i as f64 * step + 0.0).collect();
                v[steps - 1] = t - 1.0;
                v.reverse();
                v
            }
        }
        SPACING_LEADING => {
            let ratio = n / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio + init.steps_offset as usize) as f64)
                .collect()
        }
        SPACING_TRAILING => {
            let step = -(t / steps as f64);
            let delta = (t + step) - t;
            (0..steps)
                .map(|i| if i == 0 { t } else { t + i as f64 * delta })
                .map(|v| v.round_ties_even() - 1.0)
                .collect()
        }
        other => {
            return Err(Error::unsupported(format!(
                "unknown timestep_spacing code {other}"
            )))
        }
    })
}

impl SchedulerPlugin for Euler {
    fn new(init: &SchedulerInit) -> Result<Self, Error> {
        let steps = init.steps as usize;
        let n = init.alphas_cumprod.len();
        if n < 2 || steps == 0 || steps > n {
            return Err(Error::invalid(format!(
                "{steps} steps of {n} training steps: steps must be in 1..=num_train_timesteps"
            )));
        }
        if init.prediction_type > PREDICTION_SAMPLE {
            return Err(Error::unsupported("unknown prediction_type"));
        }
        if init.flag(FLAG_BETA_SIGMAS) || init.flag(FLAG_LOG_LINEAR) {
            return Err(Error::unsupported(
                "use_beta_sigmas and interpolation_type log_linear are not supported",
            ));
        }
        if init.flag(FLAG_CONTINUOUS_TIMESTEPS) && init.prediction_type == PREDICTION_V {
            return Err(Error::unsupported(
                "timestep_type continuous is not supported",
            ));
        }
        let mut alphas = init.alphas_cumprod.clone();
        if init.flag(FLAG_RESCALE_ZERO_SNR) {
            alphas[n - 1] = 2f64.powi(-24);
        }
        let train: Vec<f64> = alphas.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
        let mut ts = timesteps(init, steps)?;
        let mut sigmas: Vec<f64> = ts.iter().map(|&t| interp(t, &train)).collect();
        let (karras, exponential) = (
            init.flag(FLAG_KARRAS_SIGMAS),
            init.flag(FLAG_EXPONENTIAL_SIGMAS),
        );
        if karras && exponential {
            return Err(Error::invalid(
                "use_karras_sigmas and use_exponential_sigmas are both set",
            ));
        }
        if karras || exponential {
            let lo = if init.flag(FLAG_HAS_SIGMA_MIN) {
                init.sigma_min
            } else {
                sigmas[steps - 1]
            };
            let hi = if init.flag(FLAG_HAS_SIGMA_MAX) {
                init.sigma_max
            } else {
                sigmas[0]
            };
            sigmas = if karras {
                let rho = 7.0;
                let (min_r, max_r) = (lo.powf(1.0 / rho), hi.powf(1.0 / rho));
                ramp(steps)
                    .map(|r| (max_r + r * (min_r - max_r)).powf(rho))
                    .collect()
            } else {
                let (a, b) = (hi.ln(), lo.ln());
                let step = if steps == 1 {
                    0.0
                } else {
                    (b - a) / (steps - 1) as f64
                };
                (0..steps)
                    .map(|i| {
                        if i == steps - 1 && steps > 1 {
                            b
                        } else {
                            i as f64 * step + a
                        }
                    })
                    .map(f64::exp)
                    .collect()
            };
            let log_sigmas: Vec<f64> = train.iter().map(|s| s.ln()).collect();
            ts = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect();
        }
        sigmas.push(if init.flag(FLAG_FINAL_SIGMA_MIN) {
            train[0]
        } else {
            0.0
        });
        if let Some((i, s)) = sigmas
            .iter()
            .enumerate()
            .find(|&(i, s)| !(s.is_finite() && (*s > 0.0 || (i == steps && *s == 0.0))))
        {
            return Err(Error::invalid(format!(
                "sigma {s} at step {i} is not a positive number"
            )));
        }
        let max = sigmas.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let init_noise_sigma = if init.timestep_spacing == SPACING_LEADING {
            (max * max + 1.0).sqrt()
        } else {
            max
        };
        Ok(Self {
            timesteps: ts,
            sigmas,
            init_noise_sigma,
            prediction: init.prediction_type,
        })
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: Tensor, index: usize) -> Result<Tensor, Error> {
        let sigma = self.sigma(index)?;
        let m = 1.0 / (sigma * sigma + 1.0).sqrt();
        Ok(map1(sample, |x| x * m, |x| x * m as f32))
    }

    fn step(
        &mut self,
        model_output: Tensor,
        index: usize,
        sample: Tensor,
        _noise: Option<Tensor>,
    ) -> Result<Tensor, Error> {
        let sigma = self.sigma(index)?;
        let sigma_hat = sigma * (0.0 + 1.0);
        let dt = self.sigmas[index + 1] - sigma_hat;
        let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
        let c_in = 1.0 / (sigma * sigma + 1.0);
        let prediction = self.prediction;
        // Written once per float type: each product is rounded before the next operation, as
        // in the built-in's separate tensor ops (`v * m + 0` is candle's affine).
        macro_rules! step {
            ($t:ty, $mo:expr, $s:expr) => {{
                let (hat, inv, dt, c_out, c_in) = (
                    sigma_hat as $t,
                    (1.0 / sigma_hat) as $t,
                    dt as $t,
                    c_out as $t,
                    c_in as $t,
                );
                $mo.iter()
                    .zip($s.iter())
                    .map(|(&m, &s)| {
                        let pred = match prediction {
                            PREDICTION_EPSILON => s - (m * hat + 0.0),
                            PREDICTION_V => (m * c_out + 0.0) + (s * c_in + 0.0),
                            _ => m,
                        };
                        let d = (s - pred) * inv + 0.0;
                        s + (d * dt + 0.0)
                    })
                    .collect()
            }};
        }
        let data = match (&model_output.data, &sample.data) {
            (TensorData::F32(mo), TensorData::F32(s)) if mo.len() == s.len() => {
                TensorData::F32(step!(f32, mo, s))
            }
            (TensorData::F64(mo), TensorData::F64(s)) if mo.len() == s.len() => {
                TensorData::F64(step!(f64, mo, s))
            }
            _ => {
                return Err(Error::invalid(
                    "model output and sample differ in size or dtype",
                ))
            }
        };
        Ok(Tensor {
            shape: sample.shape,
            data,
        })
    }

    fn add_noise(&self, original: Tensor, noise: Tensor, index: usize) -> Result<Tensor, Error> {
        let sigma = self.sigma(index)?;
        let data = match (&original.data, &noise.data) {
            (TensorData::F32(x), TensorData::F32(z)) if x.len() == z.len() => TensorData::F32(
                x.iter()
                    .zip(z)
                    .map(|(&x, &z)| x + (z * sigma as f32 + 0.0))
                    .collect(),
            ),
            (TensorData::F64(x), TensorData::F64(z)) if x.len() == z.len() => TensorData::F64(
                x.iter()
                    .zip(z)
                    .map(|(&x, &z)| x + (z * sigma + 0.0))
                    .collect(),
            ),
            _ => return Err(Error::invalid("original and noise differ in size or dtype")),
        };
        Ok(Tensor {
            shape: original.shape,
            data,
        })
    }
}

impl Euler {
    fn sigma(&self, index: usize) -> Result<f64, Error> {
        if index >= self.timesteps.len() {
            return Err(Error::invalid(format!(
                "step index {index} is out of range; the schedule has {} steps",
                self.timesteps.len()
            )));
        }
        Ok(self.sigmas[index])
    }
}

/// `np.linspace(0, 1, steps)`.
fn ramp(steps: usize) -> impl Iterator<Item = f64> {
    let step = if steps == 1 {
        0.0
    } else {
        1.0 / (steps - 1) as f64
    };
    (0..steps).map(move |i| {
        if i + 1 == steps && steps > 1 {
            1.0
        } else {
            i as f64 * step
        }
    })
}

/// Applies `f64`/`f32` element functions (each a multiply then `+ 0`, like candle's affine).
fn map1(t: Tensor, f64s: impl Fn(f64) -> f64, f32s: impl Fn(f32) -> f32) -> Tensor {
    let data = match t.data {
        TensorData::F32(v) => TensorData::F32(v.into_iter().map(|x| f32s(x) + 0.0).collect()),
        TensorData::F64(v) => TensorData::F64(v.into_iter().map(|x| f64s(x) + 0.0).collect()),
    };
    Tensor {
        shape: t.shape,
        data,
    }
}

beeswax_plugin_sdk::export_plugin! {
    scheduler = Euler;
}
