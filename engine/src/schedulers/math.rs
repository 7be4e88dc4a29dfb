//! Schedule math shared by the schedulers: training betas and `alphas_cumprod`, inference
//! timestep spacing, sigmas and their interpolation, and the Karras/exponential noise levels.
//!
//! Everything is scalar `f64` and follows diffusers (which follows numpy and torch) step by
//! step, down to numpy's `linspace`/`arange` arithmetic and round-half-to-even, so that integer
//! timesteps come out identical and fractional ones agree to the last bits. diffusers itself
//! keeps these values in float32; computing them in float64 here is the only intended
//! difference.

use super::special;
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

/// The inference timesteps of the multistep solvers' `set_timesteps` (diffusers'
/// `DPMSolverMultistepScheduler`, `UniPCMultistepScheduler`, `DEISMultistepScheduler`): `steps`
/// whole numbers from the noisiest down. Unlike [`spaced_timesteps`], `linspace` and `leading`
/// space `steps + 1` points and drop the last, and `last` (the training steps left after
/// `lambda_min_clipped`; `num_train_timesteps` without clipping) bounds them.
pub fn solver_timesteps(
    spacing: TimestepSpacing,
    num_train_timesteps: usize,
    last: usize,
    steps: usize,
    steps_offset: usize,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<f64> = numpy_linspace(0.0, last as f64 - 1.0, steps + 1)
                .into_iter()
                .map(f64::round_ties_even)
                .collect();
            v.reverse();
            v.truncate(steps);
            v
        }
        TimestepSpacing::Leading => {
            let ratio = last / (steps + 1);
            (1..=steps)
                .rev()
                .map(|i| (i * ratio + steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = num_train_timesteps as f64 / steps as f64;
            numpy_arange(last as f64, 0.0, -ratio)
                .into_iter()
                .take(steps)
                .map(|v| v.round_ties_even() - 1.0)
                .collect()
        }
    }
}

/// How many training steps `lambda_min_clipped` removes from the low-noise end: diffusers'
/// `searchsorted(flip(lambda_t), lambda_min_clipped)`, with `lambda_t = ln(√ᾱ) - ln(√(1-ᾱ))`.
pub fn clipped_steps(alphas_cumprod: &[f64], lambda_min_clipped: Option<f64>) -> usize {
    let Some(clip) = lambda_min_clipped else {
        return 0;
    };
    alphas_cumprod
        .iter()
        .rev()
        .map(|a| a.sqrt().ln() - (1.0 - a).sqrt().ln())
        .filter(|&l| l < clip)
        .count()
}

/// k-diffusion's polyexponential noise levels (`rho = 1`, log-linear): `n` sigmas from
/// `sigma_max` down to `sigma_min`.
pub fn polyexponential_sigmas(sigma_min: f64, sigma_max: f64, n: usize, rho: f64) -> Vec<f64> {
    let (lo, hi) = (sigma_min.ln(), sigma_max.ln());
    numpy_linspace(1.0, 0.0, n)
        .into_iter()
        .map(|r| (r.powf(rho) * (hi - lo) + lo).exp())
        .collect()
}

/// diffusers' `_convert_to_beta` (`alpha = beta = 0.6`): `n` sigmas from `sigma_max` down to
/// `sigma_min`, spaced by the beta distribution's quantiles ("Beta Sampling is All You Need").
pub fn beta_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    numpy_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|x| sigma_min + special::beta_ppf(1.0 - x, 0.6, 0.6) * (sigma_max - sigma_min))
        .collect()
}

/// ComfyUI's `sgm_uniform`: `steps` timesteps evenly spaced from the last training step to the
/// first over `steps + 1` points (the last dropped), and their sigmas, interpolated log-linearly
/// between training steps as ComfyUI's `ModelSamplingDiscrete.sigma` does.
pub fn sgm_uniform(train_sigmas: &[f64], steps: usize) -> (Vec<f64>, Vec<f64>) {
    let top = (train_sigmas.len() - 1) as f64;
    let log_sigmas: Vec<f64> = train_sigmas.iter().map(|s| s.ln()).collect();
    let mut timesteps = torch_linspace(top, 0.0, steps + 1);
    timesteps.truncate(steps);
    let sigmas = timesteps
        .iter()
        .map(|&t| interp(t, &log_sigmas).exp())
        .collect();
    (timesteps, sigmas)
}

/// ComfyUI's `simple` scheduler: every `len / steps`-th training sigma from the top, with
/// their (whole) training steps as timesteps.
pub fn simple_schedule(train_sigmas: &[f64], steps: usize) -> (Vec<f64>, Vec<f64>) {
    let n = train_sigmas.len();
    let stride = n as f64 / steps as f64;
    let idx: Vec<usize> = (0..steps)
        .map(|x| n - 1 - ((x as f64 * stride) as usize).min(n - 1))
        .collect();
    (
        idx.iter().map(|&i| i as f64).collect(),
        idx.iter().map(|&i| train_sigmas[i]).collect(),
    )
}

/// `∫ f` from `a` to `b` by 8-point Gauss-Legendre: exact for polynomials up to degree 15, so
/// exact (to rounding) for LMS's Lagrange basis polynomials (degree ≤ 3).
pub fn integrate_polynomial(f: impl Fn(f64) -> f64, a: f64, b: f64) -> f64 {
    const NODES: [(f64, f64); 4] = [
        (0.183_434_642_495_649_8, 0.362_683_783_378_362),
        (0.525_532_409_916_329, 0.313_706_645_877_887_3),
        (0.796_666_477_413_626_7, 0.222_381_034_453_374_5),
        (0.960_289_856_497_536_3, 0.101_228_536_290_376_26),
    ];
    let (mid, half) = ((a + b) / 2.0, (b - a) / 2.0);
    NODES
        .iter()
        .map(|&(x, w)| w * (f(mid + half * x) + f(mid - half * x)))
        .sum::<f64>()
        * half
}

/// Solves the small dense system `m · x = v` by Gaussian elimination with partial pivoting
/// (UniPC's order conditions, at most 3×3). `None` when singular.
pub fn solve(mut m: Vec<Vec<f64>>, mut v: Vec<f64>) -> Option<Vec<f64>> {
    let n = v.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))?;
        if m[pivot][col] == 0.0 {
            return None;
        }
        m.swap(col, pivot);
        v.swap(col, pivot);
        for row in col + 1..n {
            let f = m[row][col] / m[col][col];
            let pivot_row = m[col].clone();
            for (a, b) in m[row].iter_mut().zip(&pivot_row).skip(col) {
                *a -= f * b;
            }
            v[row] -= f * v[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| m[row][k] * x[k]).sum();
        x[row] = (v[row] - s) / m[row][row];
    }
    Some(x)
}

/// The timesteps of diffusers' `LCMScheduler` / `TCDScheduler` `set_timesteps` (strength 1):
/// `steps` of the `original_steps` distillation timesteps `k·i - 1` (`k = T / original_steps`),
/// evenly picked from the top. `None` when `steps` exceeds `original_steps`.
pub fn consistency_timesteps(
    train: usize,
    original_steps: usize,
    steps: usize,
) -> Option<Vec<f64>> {
    if steps == 0 || steps > original_steps || original_steps > train {
        return None;
    }
    let k = train / original_steps;
    let origin: Vec<usize> = (1..=original_steps).rev().map(|i| i * k - 1).collect();
    let stride = original_steps as f64 / steps as f64;
    Some(
        (0..steps)
            .map(|i| origin[(i as f64 * stride).floor() as usize] as f64)
            .collect(),
    )
}

/// `(alpha_t, sigma_t)` of the variance-preserving process at noise level `sigma`:
/// `1/√(σ²+1)` and `σ/√(σ²+1)` (diffusers' `_sigma_to_alpha_sigma_t`).
pub fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// The log-SNR `lambda = ln(alpha_t) - ln(sigma_t)` at noise level `sigma`.
pub fn lambda(sigma: f64) -> f64 {
    let (a, s) = alpha_sigma(sigma);
    a.ln() - s.ln()
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
    fn gauss_legendre_is_exact_on_cubics() {
        let got = integrate_polynomial(|x| 3.0 * x * x * x - x + 2.0, -1.5, 4.0);
        let f = |x: f64| 0.75 * x.powi(4) - 0.5 * x * x + 2.0 * x;
        assert!((got - (f(4.0) - f(-1.5))).abs() < 1e-12);
    }

    #[test]
    fn solve_handles_pivoting() {
        let x = solve(vec![vec![0.0, 2.0], vec![1.0, 1.0]], vec![4.0, 3.0]).unwrap();
        assert_eq!(x, vec![1.0, 2.0]);
        assert!(solve(vec![vec![1.0, 2.0], vec![2.0, 4.0]], vec![1.0, 2.0]).is_none());
    }

    #[test]
    fn solver_spacing_matches_diffusers() {
        // DPMSolverMultistepScheduler().set_timesteps(7).timesteps for each spacing.
        let lin = solver_timesteps(TimestepSpacing::Linspace, 1000, 1000, 7, 0);
        assert_eq!(lin, [999.0, 856.0, 714.0, 571.0, 428.0, 285.0, 143.0]);
        let lead = solver_timesteps(TimestepSpacing::Leading, 1000, 1000, 7, 1);
        assert_eq!(lead, [876.0, 751.0, 626.0, 501.0, 376.0, 251.0, 126.0]);
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
