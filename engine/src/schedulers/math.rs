//! Schedule math shared by the schedulers: training betas and `alphas_cumprod`, inference
//! timestep spacing, sigmas and their interpolation, and the Karras/exponential noise levels.
//!
//! Everything is scalar `f64` and follows diffusers (which follows numpy and torch) step by
//! step, down to numpy's `linspace`/`arange` arithmetic and round-half-to-even, so that integer
//! timesteps come out identical and fractional ones agree to the last bits. diffusers itself
//! keeps these values in float32; computing them in float64 here is the only intended
//! difference.

use super::{SchedulerConfig, SchedulerError, TimestepSpacing};
use crate::schedulers::BetaSchedule;

/// A [`SchedulerError::Invalid`] for `scheduler`.
pub(crate) fn invalid(scheduler: &str, message: impl Into<String>) -> SchedulerError {
    SchedulerError::Invalid {
        scheduler: scheduler.to_string(),
        message: message.into(),
    }
}

/// Checks a step count against the config: `1..=num_train_timesteps` steps are allowed.
pub fn check_steps(
    scheduler: &str,
    config: &SchedulerConfig,
    steps: usize,
) -> Result<(), SchedulerError> {
    let max = config.num_train_timesteps;
    if steps == 0 || steps > max {
        return Err(invalid(
            scheduler,
            format!("{steps} steps asked for; the number of steps must be between 1 and {max} (num_train_timesteps)"),
        ));
    }
    Ok(())
}

/// The training betas the config describes (`trained_betas`, or `beta_schedule` from
/// `beta_start` to `beta_end`), before any zero-SNR rescaling.
pub fn betas(config: &SchedulerConfig) -> Vec<f64> {
    let n = config.num_train_timesteps;
    if let Some(trained) = &config.trained_betas {
        return trained.clone();
    }
    match config.beta_schedule {
        BetaSchedule::Linear => torch_linspace(config.beta_start, config.beta_end, n),
        BetaSchedule::ScaledLinear => {
            torch_linspace(config.beta_start.sqrt(), config.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect()
        }
        BetaSchedule::SquaredcosCapV2 => betas_for_cosine_alpha_bar(n, 0.999),
    }
}

/// diffusers' `betas_for_alpha_bar` with the cosine `alpha_bar` of Nichol & Dhariwal (2021).
pub fn betas_for_cosine_alpha_bar(n: usize, max_beta: f64) -> Vec<f64> {
    let alpha_bar = |t: f64| {
        let c = ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos();
        c * c
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta)
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023, algorithm 1): betas whose last
/// `alphas_cumprod` is exactly 0 and first unchanged.
pub fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let mut sqrt_bar: Vec<f64> = cumprod(betas.iter().map(|b| 1.0 - b))
        .into_iter()
        .map(f64::sqrt)
        .collect();
    let (Some(&first), Some(&last)) = (sqrt_bar.first(), sqrt_bar.last()) else {
        return Vec::new();
    };
    let scale = first / (first - last);
    for v in &mut sqrt_bar {
        *v -= last;
        *v *= scale;
    }
    let bar: Vec<f64> = sqrt_bar.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    out.extend(bar.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}

/// The cumulative products of `1 - beta` over the training steps, after checking the config
/// and applying `rescale_betas_zero_snr`. Errors name the field at fault.
pub fn alphas_cumprod(
    scheduler: &str,
    config: &SchedulerConfig,
) -> Result<Vec<f64>, SchedulerError> {
    config.check().map_err(|m| invalid(scheduler, m))?;
    let mut betas = betas(config);
    if config.rescale_betas_zero_snr {
        betas = rescale_zero_terminal_snr(&betas);
    }
    Ok(cumprod(betas.iter().map(|b| 1.0 - b)))
}

fn cumprod(values: impl Iterator<Item = f64>) -> Vec<f64> {
    values
        .scan(1.0, |acc, v| {
            *acc *= v;
            Some(*acc)
        })
        .collect()
}

/// `torch.linspace(start, end, n)`: the first half counts up from `start`, the second half down
/// from `end`, as torch's CPU kernel does.
pub fn torch_linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f64
            } else {
                end - step * (n - 1 - i) as f64
            }
        })
        .collect()
}

/// `np.linspace(start, stop, n)` (endpoint included): `i·step + start`, last value `stop`.
pub fn numpy_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut out: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    out[n - 1] = stop;
    out
}

/// `np.arange(start, stop, step)` for floats: `ceil((stop - start) / step)` values
/// `start + i·delta`, with numpy's `delta = (start + step) - start`.
pub fn numpy_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if !(len.is_finite() && len > 0.0) {
        return Vec::new();
    }
    let delta = (start + step) - start;
    (0..len as usize)
        .map(|i| {
            if i == 0 {
                start
            } else {
                start + i as f64 * delta
            }
        })
        .collect()
}

/// The inference timesteps of diffusers' `set_timesteps` for `spacing`, from the noisiest
/// down, `steps` of them (`steps >= 1`).
///
/// `leading` and `trailing` give whole numbers; `linspace` gives numpy's unrounded values
/// (Euler uses them as they are, DDIM rounds them half to even). `steps_offset` only applies to
/// `leading`, as in diffusers.
///
/// One deliberate difference: for a few step counts (61, 103, 121, ... of 1000) numpy's
/// `arange(T, 0, -T/steps)` behind `trailing` yields one value too many, so diffusers runs an
/// extra step at timestep -1. Here `trailing` always gives exactly `steps` timesteps; the ones
/// it gives equal diffusers' first `steps`.
pub fn spaced_timesteps(
    spacing: TimestepSpacing,
    num_train_timesteps: usize,
    steps: usize,
    steps_offset: usize,
) -> Vec<f64> {
    let t = num_train_timesteps as f64;
    match spacing {
        TimestepSpacing::Linspace => {
            let mut v = numpy_linspace(0.0, t - 1.0, steps);
            v.reverse();
            v
        }
        TimestepSpacing::Leading => {
            let ratio = num_train_timesteps / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio + steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => numpy_arange(t, 0.0, -(t / steps as f64))
            .into_iter()
            .take(steps)
            .map(|v| v.round_ties_even() - 1.0)
            .collect(),
    }
}

/// Noise level `sqrt((1 - ᾱ) / ᾱ)` of each training step, lowest timestep first.
pub fn sigmas_from_alphas_cumprod(alphas_cumprod: &[f64]) -> Vec<f64> {
    alphas_cumprod
        .iter()
        .map(|a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// `np.interp(x, arange(len(values)), values)`: linear interpolation at a fractional training
/// step, clamped to the first and last values outside the range.
pub fn interp(x: f64, values: &[f64]) -> f64 {
    let (Some(&first), Some(&last)) = (values.first(), values.last()) else {
        return f64::NAN;
    };
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return first;
    }
    let top = (values.len() - 1) as f64;
    if x >= top {
        return last;
    }
    let j = x.floor() as usize;
    if x == j as f64 {
        return values[j];
    }
    let slope = values[j + 1] - values[j];
    slope * (x - j as f64) + values[j]
}

/// diffusers' `_sigma_to_t`: the fractional training step whose (log-linearly interpolated)
/// sigma is `sigma`, given the training steps' `log_sigmas` (ascending).
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    if log_sigmas.len() < 2 {
        return 0.0;
    }
    let log_sigma = sigma.max(1e-10).ln();
    let low = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let high = low + 1;
    let (lo, hi) = (log_sigmas[low], log_sigmas[high]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * high as f64
}

/// The noise levels of Karras et al. (2022), `rho = 7`: `n` sigmas from `sigma_max` down to
/// `sigma_min`, denser near `sigma_min`.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    numpy_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect()
}

/// `n` sigmas from `sigma_max` down to `sigma_min`, evenly spaced in log sigma.
pub fn exponential_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    numpy_linspace(sigma_max.ln(), sigma_min.ln(), n)
        .into_iter()
        .map(f64::exp)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestep_spacings_match_diffusers() {
        let leading = spaced_timesteps(TimestepSpacing::Leading, 1000, 7, 1);
        assert_eq!(leading, [853.0, 711.0, 569.0, 427.0, 285.0, 143.0, 1.0]);
        let trailing = spaced_timesteps(TimestepSpacing::Trailing, 1000, 7, 1);
        assert_eq!(trailing, [999.0, 856.0, 713.0, 570.0, 428.0, 285.0, 142.0]);
        let linspace = spaced_timesteps(TimestepSpacing::Linspace, 1000, 7, 1);
        assert_eq!(linspace, [999.0, 832.5, 666.0, 499.5, 333.0, 166.5, 0.0]);
        // numpy rounds half to even: 62.5 -> 62, 187.5 -> 188.
        let trailing16 = spaced_timesteps(TimestepSpacing::Trailing, 1000, 16, 0);
        assert_eq!(&trailing16[13..], &[187.0, 124.0, 61.0]);
    }

    #[test]
    fn trailing_gives_exactly_the_steps_asked_for() {
        // np.arange(1000, 0, -1000/61) has 62 values; diffusers then runs 62 steps.
        for steps in [61, 103, 121, 1000] {
            let t = spaced_timesteps(TimestepSpacing::Trailing, 1000, steps, 0);
            assert_eq!(t.len(), steps);
            assert!(
                t.iter().all(|&v| (0.0..1000.0).contains(&v)),
                "{steps}: {t:?}"
            );
        }
    }

    #[test]
    fn zero_snr_rescale_ends_at_zero() {
        let config = SchedulerConfig {
            rescale_betas_zero_snr: true,
            ..Default::default()
        };
        let plain = alphas_cumprod("test", &SchedulerConfig::default()).unwrap();
        let ac = alphas_cumprod("test", &config).unwrap();
        assert_eq!(ac[999], 0.0);
        assert!((ac[0] - plain[0]).abs() < 1e-12);
    }

    #[test]
    fn interp_and_sigma_to_t_invert_each_other() {
        let ac = alphas_cumprod("test", &SchedulerConfig::default()).unwrap();
        let sigmas = sigmas_from_alphas_cumprod(&ac);
        let log_sigmas: Vec<f64> = sigmas.iter().map(|s| s.ln()).collect();
        for t in [0.0, 3.0, 500.0, 998.0, 999.0] {
            let back = sigma_to_t(interp(t, &sigmas), &log_sigmas);
            assert!((back - t).abs() < 1e-9, "{t} -> {back}");
        }
        assert_eq!(interp(-1.0, &sigmas), sigmas[0]);
        assert_eq!(interp(1000.0, &sigmas), sigmas[999]);
    }

    #[test]
    fn step_counts_are_checked() {
        let config = SchedulerConfig::default();
        assert!(check_steps("x", &config, 1).is_ok());
        assert!(check_steps("x", &config, 1000).is_ok());
        let err = check_steps("x", &config, 0).unwrap_err().to_string();
        assert!(err.contains("between 1 and 1000"), "{err}");
        assert!(check_steps("x", &config, 1001).is_err());
    }
}
