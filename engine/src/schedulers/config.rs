//! [`SchedulerConfig`]: diffusers' `scheduler_config.json` as data.
//!
//! One struct serves every scheduler, as in diffusers, where `from_config` hands the same file
//! to whichever class is asked for and each class reads the fields it knows. Fields missing from
//! the file take diffusers' defaults. A few defaults differ between diffusers classes (for
//! example `timestep_spacing` is `leading` for `DDIMScheduler` but `linspace` for
//! `EulerDiscreteScheduler`); those fields are `Option`s here, `None` meaning "the scheduler's
//! own diffusers default", so a Stable Diffusion 1.5 config without `timestep_spacing` gives
//! each scheduler the spacing diffusers would give it. Unknown fields (`_diffusers_version`,
//! `skip_prk_steps`, ...) are accepted and ignored.

use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use super::Schedule;

/// diffusers' `scheduler_config.json`: the training noise schedule and sampling options.
///
/// Missing fields take diffusers' defaults (see [`SchedulerConfig::default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// `_class_name`: the diffusers class the file was written for (informational; the
    /// scheduler is picked by name, as diffusers' `from_config` does).
    #[serde(rename = "_class_name", skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Number of diffusion steps the model was trained with (default 1000).
    pub num_train_timesteps: usize,
    /// First beta of the training schedule (default 0.0001).
    pub beta_start: f64,
    /// Last beta of the training schedule (default 0.02).
    pub beta_end: f64,
    /// How betas go from `beta_start` to `beta_end` (default `linear`).
    pub beta_schedule: BetaSchedule,
    /// Explicit betas, one per training step; overrides the three fields above (default none).
    pub trained_betas: Option<Vec<f64>>,
    /// What the model predicts (default `epsilon`).
    pub prediction_type: PredictionType,
    /// How inference timesteps are spread over the training steps; `None` takes the scheduler's
    /// diffusers default (`leading` for DDIM, `linspace` for Euler).
    pub timestep_spacing: Option<TimestepSpacing>,
    /// Added to `leading` timesteps (Stable Diffusion 1.x uses 1; default 0).
    pub steps_offset: usize,
    /// DDIM: whether the step to the end uses alpha_cumprod = 1 (`true`) or the first training
    /// alpha_cumprod (`false`); `None` takes the scheduler's default (`true` for DDIM).
    pub set_alpha_to_one: Option<bool>,
    /// DDIM: whether to clip the predicted clean sample to `±clip_sample_range`; `None` takes
    /// the scheduler's default (`true` for DDIM).
    pub clip_sample: Option<bool>,
    /// DDIM: the clipping bound when `clip_sample` is on (default 1.0).
    pub clip_sample_range: f64,
    /// DDIM: dynamic thresholding (default off). Not supported: pixel-space models only.
    pub thresholding: bool,
    /// Euler: how sigmas are interpolated between training steps (default `linear`).
    pub interpolation_type: InterpolationType,
    /// Euler: use the Karras et al. (2022) noise levels (default off).
    #[serde(deserialize_with = "null_as_default")]
    pub use_karras_sigmas: bool,
    /// Euler: use exponentially spaced noise levels (default off).
    #[serde(deserialize_with = "null_as_default")]
    pub use_exponential_sigmas: bool,
    /// Euler: use beta-distribution spaced noise levels (default off). Not supported yet.
    #[serde(deserialize_with = "null_as_default")]
    pub use_beta_sigmas: bool,
    /// Euler: smallest sigma of the Karras/exponential schedules (default: the schedule's).
    pub sigma_min: Option<f64>,
    /// Euler: largest sigma of the Karras/exponential schedules (default: the schedule's).
    pub sigma_max: Option<f64>,
    /// Rescale betas to zero terminal SNR (Lin et al. 2023; default off).
    pub rescale_betas_zero_snr: bool,
    /// Euler: the noise level after the last step (default `zero`).
    #[serde(deserialize_with = "null_as_default")]
    pub final_sigmas_type: FinalSigmasType,
    /// Euler: discrete training-step timesteps or continuous `0.25·ln(sigma)` ones, the latter
    /// only with `v_prediction` (default `discrete`).
    pub timestep_type: TimestepType,
    /// PNDM: skip the Runge-Kutta warm-up and run PLMS only. Only `true` is supported (Stable
    /// Diffusion's configs say `true`); `None` means `true` here (diffusers' default is `false`).
    pub skip_prk_steps: Option<bool>,
    /// DDPM: the variance of the noise each step adds back; `None` is `fixed_small`.
    pub variance_type: Option<VarianceType>,
    /// UniPC, DEIS: the solver order; `None` takes diffusers' default (2). The DPM++ samplers
    /// take theirs from their names (`dpmpp_2m`: 2, `dpmpp_3m_sde`: 3).
    pub solver_order: Option<usize>,
    /// DPM-Solver, UniPC, DEIS: the flavour of the higher-order update; `None` takes the
    /// scheduler's default (`midpoint`, `bh2`, `logrho`).
    pub solver_type: Option<SolverType>,
    /// DPM-Solver, UniPC, DEIS: use lower-order steps at the end of short (< 15 steps)
    /// schedules; `None` takes the scheduler's default (`true`).
    pub lower_order_final: Option<bool>,
    /// DPM-Solver multistep: use a first-order step for the last step (default off).
    pub euler_at_final: bool,
    /// DPM-Solver: clip the smallest log-SNR (`lambda`) reached (default: no clipping). JSON
    /// cannot hold diffusers' `-inf` default, so leave the field out or set `null` for none.
    #[serde(deserialize_with = "null_as_default")]
    pub lambda_min_clipped: Option<f64>,
    /// UniPC: predict the clean sample (`true`, default) or the noise.
    pub predict_x0: bool,
    /// UniPC: step indices at which the corrector is skipped (default none).
    #[serde(deserialize_with = "null_as_default")]
    pub disable_corrector: Vec<usize>,
    /// LCM, TCD: the step count the model was distilled with (default 50).
    pub original_inference_steps: usize,
    /// LCM, TCD: scale of the timestep in the consistency boundary condition (default 10).
    pub timestep_scaling: f64,
    /// DPM-Solver: `lambda`-uniform steps (Lu et al.). Not supported: refused when `true`.
    #[serde(deserialize_with = "null_as_default")]
    pub use_lu_lambdas: bool,
    /// DPM-Solver: flow-matching sigmas. The plain constructors refuse it; the flow forms
    /// (e.g. [`super::DpmMultistep::flow`]) use them whatever this says.
    #[serde(deserialize_with = "null_as_default")]
    pub use_flow_sigmas: bool,
    /// Flow matching: the static shift `shift·σ / (1 + (shift − 1)·σ)` of the sigmas
    /// (default 1: none).
    pub shift: f64,
    /// Flow matching: shift by `mu`, from the image size, instead of `shift` (default off).
    #[serde(deserialize_with = "null_as_default")]
    pub use_dynamic_shifting: bool,
    /// Flow matching: `mu` at `base_image_seq_len` tokens (default 0.5).
    pub base_shift: Option<f64>,
    /// Flow matching: `mu` at `max_image_seq_len` tokens (default 1.15).
    pub max_shift: Option<f64>,
    /// Flow matching: the token count of `base_shift` (default 256).
    pub base_image_seq_len: usize,
    /// Flow matching: the token count of `max_shift` (default 4096).
    pub max_image_seq_len: usize,
    /// Flow matching: how `mu` shifts the sigmas (default `exponential`).
    #[serde(deserialize_with = "null_as_default")]
    pub time_shift_type: TimeShiftType,
    /// Flow matching: stretch the shifted sigmas to end at this value (default none).
    pub shift_terminal: Option<f64>,
    /// Flow matching: use `1 − σ` as the sigmas (default off).
    #[serde(deserialize_with = "null_as_default")]
    pub invert_sigmas: bool,
    /// Flow Euler: re-noise each step with fresh noise instead of the ODE step (default off).
    #[serde(deserialize_with = "null_as_default")]
    pub stochastic_sampling: bool,
    /// DPM-Solver with flow sigmas: the static shift; `None` (diffusers' default is 1.0)
    /// takes `shift`, so a flow model's own shift applies to every flow sampler.
    pub flow_shift: Option<f64>,
    /// beeswax's noise-schedule choice (`--schedule`), applied on top of the file by
    /// [`Schedule::apply`]; not part of diffusers' file.
    #[serde(skip)]
    pub schedule: Schedule,
}

impl Default for SchedulerConfig {
    /// diffusers' defaults.
    fn default() -> Self {
        Self {
            class_name: None,
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: None,
            steps_offset: 0,
            set_alpha_to_one: None,
            clip_sample: None,
            clip_sample_range: 1.0,
            thresholding: false,
            interpolation_type: InterpolationType::Linear,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            sigma_min: None,
            sigma_max: None,
            rescale_betas_zero_snr: false,
            final_sigmas_type: FinalSigmasType::Zero,
            timestep_type: TimestepType::Discrete,
            skip_prk_steps: None,
            solver_order: None,
            variance_type: None,
            solver_type: None,
            lower_order_final: None,
            euler_at_final: false,
            lambda_min_clipped: None,
            predict_x0: true,
            disable_corrector: Vec::new(),
            original_inference_steps: 50,
            timestep_scaling: 10.0,
            use_lu_lambdas: false,
            use_flow_sigmas: false,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: Some(0.5),
            max_shift: Some(1.15),
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            time_shift_type: TimeShiftType::Exponential,
            shift_terminal: None,
            invert_sigmas: false,
            stochastic_sampling: false,
            flow_shift: None,
            schedule: Schedule::Default,
        }
    }
}

impl SchedulerConfig {
    /// Reads a diffusers `scheduler_config.json`; errors name the file and, for values that
    /// cannot work, the field and value.
    pub fn from_file(path: impl AsRef<Path>) -> crate::Result<Self> {
        let path = path.as_ref();
        let text = crate::fs_limits::read_regular_string(path, crate::fs_limits::TEXT_BYTES)
            .map_err(crate::fs_limits::ReadError::into_io)
            .map_err(|source| crate::Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let config: Self = serde_json::from_str(&text).map_err(|e| crate::Error::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.check().map_err(|message| crate::Error::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Checks the values every scheduler relies on; the message names the field and value.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.num_train_timesteps < 2 {
            return Err(format!(
                "num_train_timesteps {} is too small; it must be at least 2",
                self.num_train_timesteps
            ));
        }
        match &self.trained_betas {
            Some(betas) => {
                if betas.len() != self.num_train_timesteps {
                    return Err(format!(
                        "trained_betas has {} values but num_train_timesteps is {}",
                        betas.len(),
                        self.num_train_timesteps
                    ));
                }
                if let Some((i, b)) = betas
                    .iter()
                    .enumerate()
                    .find(|(_, b)| !(0.0..1.0).contains(*b))
                {
                    return Err(format!("trained_betas[{i}] = {b} is outside [0, 1)"));
                }
            }
            None => {
                for (name, value) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)]
                {
                    if !(0.0..1.0).contains(&value) {
                        return Err(format!("{name} {value} is outside [0, 1)"));
                    }
                }
            }
        }
        if !(self.clip_sample_range.is_finite() && self.clip_sample_range > 0.0) {
            return Err(format!(
                "clip_sample_range {} must be a positive number",
                self.clip_sample_range
            ));
        }
        if !(self.timestep_scaling.is_finite() && self.timestep_scaling > 0.0) {
            return Err(format!(
                "timestep_scaling {} must be a positive number",
                self.timestep_scaling
            ));
        }
        if self.original_inference_steps == 0
            || self.original_inference_steps > self.num_train_timesteps
        {
            return Err(format!(
                "original_inference_steps {} must be between 1 and num_train_timesteps ({})",
                self.original_inference_steps, self.num_train_timesteps
            ));
        }
        if let Some(l) = self.lambda_min_clipped {
            if l.is_nan() {
                return Err("lambda_min_clipped must be a number".to_string());
            }
        }
        for (name, value) in [("sigma_min", self.sigma_min), ("sigma_max", self.sigma_max)] {
            if let Some(v) = value {
                if !(v.is_finite() && v > 0.0) {
                    return Err(format!("{name} {v} must be a positive number"));
                }
            }
        }
        self.check_flow()
    }

    /// Checks the flow-matching fields.
    fn check_flow(&self) -> Result<(), String> {
        for (name, value) in [("shift", Some(self.shift)), ("flow_shift", self.flow_shift)] {
            if let Some(v) = value {
                if !(v.is_finite() && v > 0.0) {
                    return Err(format!("{name} {v} must be a positive number"));
                }
            }
        }
        for (name, value) in [
            ("base_shift", self.base_shift),
            ("max_shift", self.max_shift),
        ] {
            if value.is_some_and(|v| !v.is_finite()) {
                return Err(format!("{name} must be a number"));
            }
        }
        if self.base_image_seq_len >= self.max_image_seq_len {
            return Err(format!(
                "base_image_seq_len {} must be below max_image_seq_len {}",
                self.base_image_seq_len, self.max_image_seq_len
            ));
        }
        if let Some(t) = self.shift_terminal {
            if !(0.0..1.0).contains(&t) {
                return Err(format!("shift_terminal {t} must be in [0, 1)"));
            }
        }
        Ok(())
    }

    /// `base_shift`, diffusers' 0.5 when unset.
    pub fn base_shift(&self) -> f64 {
        self.base_shift.unwrap_or(0.5)
    }

    /// `max_shift`, diffusers' 1.15 when unset.
    pub fn max_shift(&self) -> f64 {
        self.max_shift.unwrap_or(1.15)
    }
}

/// Reads `null` as the type's default (diffusers writes `null` for some optional flags).
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// diffusers' `prediction_type`: what the model's output means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The noise that was added (Stable Diffusion 1.x, SDXL).
    #[default]
    Epsilon,
    /// The velocity `alpha·noise - sigma·sample` (Stable Diffusion 2.x 768).
    VPrediction,
    /// The clean sample itself (`original_sample` is accepted too, as diffusers' Euler does).
    #[serde(alias = "original_sample")]
    Sample,
}

/// diffusers' `beta_schedule`: how the training betas are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// Evenly spaced from `beta_start` to `beta_end`.
    #[default]
    Linear,
    /// Evenly spaced square roots, squared (Stable Diffusion).
    ScaledLinear,
    /// The cosine schedule of Nichol & Dhariwal (2021), betas capped at 0.999.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// diffusers' `timestep_spacing`: how inference timesteps are picked among training steps
/// (table 2 of "Common Diffusion Noise Schedules and Sample Steps are Flawed").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// `0, r, 2r, ...` (`r = T / steps`, floored) plus `steps_offset`; never reaches `T - 1`.
    Leading,
    /// Counting down from `T - 1` in strides of `T / steps`.
    Trailing,
    /// Evenly spaced from `T - 1` to 0 (fractional for Euler, rounded for DDIM).
    Linspace,
}

/// diffusers' `interpolation_type` (Euler): sigmas between training steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterpolationType {
    /// Linear in sigma between neighbouring training steps.
    #[default]
    Linear,
    /// Log-linear from the largest to the smallest sigma. Not supported yet.
    LogLinear,
}

/// diffusers' `final_sigmas_type`: the noise level the last step goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigmasType {
    /// A clean sample (sigma 0).
    #[default]
    Zero,
    /// The smallest training sigma.
    SigmaMin,
}

/// diffusers' `variance_type` (DDPM): the variance of the noise added back at each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    /// The posterior variance (DDPM's default).
    FixedSmall,
    /// The posterior variance, through a log (same values; diffusers' quirk kept).
    FixedSmallLog,
    /// `beta_t`.
    FixedLarge,
    /// `log(beta_t)` (as diffusers computes it).
    FixedLargeLog,
    /// Learned by the model (extra output channels). Not supported.
    Learned,
    /// Learned interpolation (extra output channels). Not supported.
    LearnedRange,
}

/// diffusers' `solver_type`: the flavour of a multistep solver's higher-order update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SolverType {
    /// DPM-Solver: midpoint (default).
    Midpoint,
    /// DPM-Solver: Heun.
    Heun,
    /// UniPC: B(h) = h.
    Bh1,
    /// UniPC: B(h) = e^h - 1 (default).
    Bh2,
    /// DEIS: log-rho (default).
    Logrho,
}

/// diffusers' `time_shift_type`: how flow matching's `mu` shifts the sigmas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeShiftType {
    /// `e^mu / (e^mu + 1/σ − 1)`: the static shift by `e^mu` (FLUX).
    #[default]
    Exponential,
    /// `mu / (mu + 1/σ − 1)`: the static shift by `mu`.
    Linear,
}

/// diffusers' `timestep_type`: what timestep the model is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepType {
    /// Training step numbers (possibly fractional).
    #[default]
    Discrete,
    /// `0.25·ln(sigma)` (EDM-style), used only with `v_prediction`.
    Continuous,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd15_config_parses_with_unknown_fields() {
        let json = r#"{
            "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0",
            "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true,
            "steps_offset": 1, "trained_betas": null, "clip_sample": false,
            "use_karras_sigmas": null
        }"#;
        let config: SchedulerConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.class_name.as_deref(), Some("PNDMScheduler"));
        assert_eq!(config.beta_schedule, BetaSchedule::ScaledLinear);
        assert_eq!(config.steps_offset, 1);
        assert_eq!(config.set_alpha_to_one, Some(false));
        assert_eq!(config.timestep_spacing, None);
        assert!(!config.use_karras_sigmas);
        assert_eq!(config.check(), Ok(()));
    }

    #[test]
    fn enums_use_diffusers_spellings() {
        let config: SchedulerConfig = serde_json::from_str(
            r#"{"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction",
                "timestep_spacing": "trailing", "final_sigmas_type": "sigma_min",
                "timestep_type": "continuous", "interpolation_type": "log_linear"}"#,
        )
        .unwrap();
        assert_eq!(config.beta_schedule, BetaSchedule::SquaredcosCapV2);
        assert_eq!(config.prediction_type, PredictionType::VPrediction);
        assert_eq!(config.timestep_spacing, Some(TimestepSpacing::Trailing));
        assert_eq!(config.final_sigmas_type, FinalSigmasType::SigmaMin);
        assert_eq!(config.timestep_type, TimestepType::Continuous);
        assert_eq!(config.interpolation_type, InterpolationType::LogLinear);
        let sample: PredictionType = serde_json::from_str(r#""original_sample""#).unwrap();
        assert_eq!(sample, PredictionType::Sample);
    }

    #[test]
    fn bad_values_are_named() {
        let err = serde_json::from_str::<SchedulerConfig>(r#"{"beta_schedule": "cosine"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cosine"), "{err}");
        let config = SchedulerConfig {
            trained_betas: Some(vec![0.1; 3]),
            ..Default::default()
        };
        assert!(config.check().unwrap_err().contains("trained_betas"));
    }

    #[test]
    fn flux_configs_parse() {
        let dev: SchedulerConfig = serde_json::from_str(
            r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256,
                "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
                "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": true,
                "shift_terminal": null, "time_shift_type": "exponential",
                "invert_sigmas": false, "stochastic_sampling": false}"#,
        )
        .unwrap();
        assert_eq!(dev.shift, 3.0);
        assert!(dev.use_dynamic_shifting);
        assert_eq!(dev.time_shift_type, TimeShiftType::Exponential);
        assert_eq!(dev.check(), Ok(()));
        let bad = SchedulerConfig {
            shift: 0.0,
            ..Default::default()
        };
        assert!(bad.check().unwrap_err().contains("shift"));
        let bad = SchedulerConfig {
            shift_terminal: Some(1.0),
            ..Default::default()
        };
        assert!(bad.check().unwrap_err().contains("shift_terminal"));
    }

    #[test]
    fn from_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scheduler_config.json");
        std::fs::write(&path, r#"{"prediction_type": "noise"}"#).unwrap();
        let err = SchedulerConfig::from_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("scheduler_config.json") && err.contains("noise"),
            "{err}"
        );
        std::fs::write(&path, r#"{"num_train_timesteps": 1}"#).unwrap();
        let err = SchedulerConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("scheduler_config.json") && err.contains("num_train_timesteps"));
        std::fs::write(&path, r#"{"timestep_spacing": "leading"}"#).unwrap();
        let config = SchedulerConfig::from_file(&path).unwrap();
        assert_eq!(config.timestep_spacing, Some(TimestepSpacing::Leading));
    }
}
