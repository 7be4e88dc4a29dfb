//! The built-in schedulers as rows: names (AUTOMATIC1111's and ComfyUI's as aliases), a
//! summary, the diffusers class each follows, its constructor and its flow-matching form where
//! it has one. [`super::Registry::with_builtins`] turns the rows into entries.

use super::{
    Ddim, Ddpm, Deis, Dpm2, DpmMultistep, DpmSde, DpmSinglestep, DpmVariant, Euler, EulerAncestral,
    FlowEuler, FlowHeun, Heun, Lcm, Lms, Pndm, Scheduler, SchedulerConfig, SchedulerError, Tcd,
    UniPc,
};

/// A built-in scheduler's constructor for diffusion models.
pub(super) type BuiltinFn =
    fn(&SchedulerConfig, usize) -> Result<Box<dyn Scheduler>, SchedulerError>;

/// A built-in scheduler's flow-matching form: config, steps and the image's shift `mu`
/// ([`super::calculate_shift`]).
pub(super) type FlowFn =
    fn(&SchedulerConfig, usize, Option<f64>) -> Result<Box<dyn Scheduler>, SchedulerError>;

/// A built-in row: names, summary, the diffusers class it follows, constructor, and the
/// flow-matching form if the sampler has one.
pub(super) struct Builtin {
    pub(super) name: &'static str,
    pub(super) aliases: &'static [&'static str],
    pub(super) summary: &'static str,
    pub(super) class: Option<&'static str>,
    pub(super) build: BuiltinFn,
    pub(super) flow: Option<FlowFn>,
}

/// The built-in schedulers, in listing order. Aliases: AUTOMATIC1111's display name first (it
/// goes into PNG parameters), then ComfyUI's sampler name where it differs from the canonical.
pub(super) const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "ddim",
        aliases: &["DDIM"],
        summary: "DDIM, deterministic (diffusers DDIMScheduler)",
        class: Some("DDIMScheduler"),
        build: |config, steps| Ok(Box::new(Ddim::new(config, steps)?)),
        flow: None,
    },
    Builtin {
        name: "ddpm",
        aliases: &["DDPM"],
        summary: "DDPM, ancestral (diffusers DDPMScheduler)",
        class: Some("DDPMScheduler"),
        build: |config, steps| Ok(Box::new(Ddpm::new(config, steps)?)),
        flow: None,
    },
    Builtin {
        name: "pndm",
        aliases: &["PLMS", "PNDM"],
        summary: "PLMS: PNDM without the Runge-Kutta warm-up, steps + 1 calls (diffusers PNDMScheduler, skip_prk_steps)",
        class: None,
        build: |config, steps| Ok(Box::new(Pndm::new(config, steps)?)),
        flow: None,
    },
    Builtin {
        name: "lms",
        aliases: &["LMS"],
        summary: "linear multistep, order 4 (diffusers LMSDiscreteScheduler)",
        class: Some("LMSDiscreteScheduler"),
        build: |config, steps| Ok(Box::new(Lms::new(config, steps)?)),
        flow: None,
    },
    Builtin {
        name: "euler",
        aliases: &["Euler"],
        summary: "Euler (diffusers EulerDiscreteScheduler; on flow models FlowMatchEulerDiscreteScheduler)",
        class: Some("EulerDiscreteScheduler"),
        build: |config, steps| Ok(Box::new(Euler::new(config, steps)?)),
        flow: Some(|config, steps, mu| Ok(Box::new(FlowEuler::new(config, steps, mu)?))),
    },
    Builtin {
        name: "euler_a",
        aliases: &["Euler a", "euler_ancestral"],
        summary: "Euler ancestral (diffusers EulerAncestralDiscreteScheduler)",
        class: Some("EulerAncestralDiscreteScheduler"),
        build: |config, steps| Ok(Box::new(EulerAncestral::new(config, steps)?)),
        flow: None,
    },
    Builtin {
        name: "heun",
        aliases: &["Heun"],
        summary: "Heun, 2·steps - 1 calls (diffusers HeunDiscreteScheduler; on flow models FlowMatchHeunDiscreteScheduler)",
        class: Some("HeunDiscreteScheduler"),
        build: |config, steps| Ok(Box::new(Heun::new(config, steps)?)),
        flow: Some(|config, steps, mu| Ok(Box::new(FlowHeun::new(config, steps, mu)?))),
    },
    Builtin {
        name: "dpm2",
        aliases: &["DPM2", "dpm_2"],
        summary: "DPM2, 2·steps - 1 calls (diffusers KDPM2DiscreteScheduler)",
        class: Some("KDPM2DiscreteScheduler"),
        build: |config, steps| Ok(Box::new(Dpm2::new(config, steps)?)),
        flow: None,
    },
    Builtin {
        name: "dpm2_a",
        aliases: &["DPM2 a", "dpm_2_ancestral"],
        summary: "DPM2 ancestral, 2·steps - 1 calls (diffusers KDPM2AncestralDiscreteScheduler)",
        class: Some("KDPM2AncestralDiscreteScheduler"),
        build: |config, steps| Ok(Box::new(Dpm2::ancestral(config, steps)?)),
        flow: None,
    },
    Builtin {
        name: "dpmpp_2m",
        aliases: &["DPM++ 2M"],
        summary: "DPM-Solver++ 2M (diffusers DPMSolverMultistepScheduler, dpmsolver++, order 2; flow sigmas on flow models)",
        class: Some("DPMSolverMultistepScheduler"),
        build: |config, steps| Ok(Box::new(DpmMultistep::new(config, steps, DpmVariant::TwoM)?)),
        flow: Some(|config, steps, mu| {
            Ok(Box::new(DpmMultistep::flow(config, steps, DpmVariant::TwoM, mu)?))
        }),
    },
    Builtin {
        name: "dpmpp_2m_sde",
        aliases: &["DPM++ 2M SDE"],
        summary: "DPM-Solver++ 2M SDE (diffusers DPMSolverMultistepScheduler, sde-dpmsolver++, order 2)",
        class: None,
        build: |config, steps| Ok(Box::new(DpmMultistep::new(config, steps, DpmVariant::TwoMSde)?)),
        flow: None,
    },
    Builtin {
        name: "dpmpp_sde",
        aliases: &["DPM++ SDE"],
        summary: "DPM-Solver++ SDE, 2·steps - 1 calls (diffusers DPMSolverSDEScheduler)",
        class: Some("DPMSolverSDEScheduler"),
        build: |config, steps| Ok(Box::new(DpmSde::new(config, steps)?)),
        flow: None,
    },
    Builtin {
        name: "dpmpp_2s_a",
        aliases: &["DPM++ 2S a", "dpmpp_2s_ancestral"],
        summary: "DPM-Solver++ 2S with noise (diffusers DPMSolverSinglestepScheduler, sde-dpmsolver++, order 2)",
        class: None,
        build: |config, steps| Ok(Box::new(DpmSinglestep::new(config, steps)?)),
        flow: None,
    },
    Builtin {
        name: "dpmpp_3m_sde",
        aliases: &["DPM++ 3M SDE"],
        summary: "DPM-Solver++ 3M SDE (diffusers DPMSolverMultistepScheduler, sde-dpmsolver++, order 3)",
        class: None,
        build: |config, steps| Ok(Box::new(DpmMultistep::new(config, steps, DpmVariant::ThreeMSde)?)),
        flow: None,
    },
    Builtin {
        name: "unipc",
        aliases: &["UniPC", "uni_pc"],
        summary: "UniPC predictor-corrector (diffusers UniPCMultistepScheduler)",
        class: Some("UniPCMultistepScheduler"),
        build: |config, steps| Ok(Box::new(UniPc::new(config, steps)?)),
        flow: None,
    },
    Builtin {
        name: "deis",
        aliases: &["DEIS"],
        summary: "DEIS log-rho multistep (diffusers DEISMultistepScheduler)",
        class: Some("DEISMultistepScheduler"),
        build: |config, steps| Ok(Box::new(Deis::new(config, steps)?)),
        flow: None,
    },
    Builtin {
        name: "lcm",
        aliases: &["LCM"],
        summary: "latent consistency, for LCM models (diffusers LCMScheduler)",
        class: Some("LCMScheduler"),
        build: |config, steps| Ok(Box::new(Lcm::new(config, steps)?)),
        flow: None,
    },
    Builtin {
        name: "tcd",
        aliases: &["TCD"],
        summary: "trajectory consistency, gamma 0.3, for TCD models (diffusers TCDScheduler)",
        class: Some("TCDScheduler"),
        build: |config, steps| Ok(Box::new(Tcd::new(config, steps)?)),
        flow: None,
    },
];
