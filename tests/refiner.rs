//! The refiner hand-off through `pipeline::run` against diffusers' base pipeline with
//! `denoising_end` followed by StableDiffusionXLImg2ImgPipeline with `denoising_start` on the
//! miniature SDXL base and refiner (`reference/refiner`, made by
//! `tests/fixtures/make_refiner_fixtures.py`, and `reference/sdxl/pipelines`' hand-off case):
//! the base's latents at the hand-off and the final latents within 2e-3 of their std, the
//! image within 2/255, progress counted over both models. Then inpainting, where the switch
//! falls, what is not a refiner and bad switch points; the CLI, HTTP and manifest tests are in
//! `refiner/interfaces.rs`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::ops::ControlFlow;

use beeswax::extensions::Extensions;
use beeswax::family::Model;
use beeswax::image_in::{read_image, Limits};
use beeswax::pipeline::{run, Generated, Job, Refiner, StepProgress};
use candle_core::Tensor;
use common::compare::assert_close_rel_std;
use common::conformance::Run;
use common::images::{assert_conforms, pixels};
use common::jobs::try_generate;
use common::reference::{load, Case};
use common::{fixture, model};

#[path = "refiner/interfaces.rs"]
mod interfaces;

/// Latents tolerance, relative to the reference's std.
const LATENTS_TOL: f32 = 2e-3;

/// A hand-off reference case (the fields these tests use).
#[derive(Debug, serde::Deserialize)]
struct RefinerCase {
    name: String,
    kind: String,
    file: String,
    prompt: String,
    negative_prompt: Option<String>,
    width: usize,
    height: usize,
    steps: usize,
    guidance: f64,
    scheduler: String,
    strength: Option<f64>,
    switch: f64,
    base_timesteps: Vec<f64>,
    refiner_timesteps: Vec<f64>,
    #[serde(skip)]
    dir: String,
}

fn cases_in(dir: &str) -> Vec<RefinerCase> {
    let text = std::fs::read_to_string(fixture(&format!("{dir}/cases.json"))).unwrap();
    // Python's json writes DPM++'s `lambda_min_clipped` as -Infinity, which JSON has not.
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&text.replace("-Infinity", "null")).unwrap();
    all.into_iter()
        .filter(|c| c.get("switch").is_some())
        .map(|c| RefinerCase {
            dir: dir.to_string(),
            ..serde_json::from_value(c).unwrap()
        })
        .collect()
}

fn cases() -> Vec<RefinerCase> {
    let mut all = cases_in("reference/refiner");
    all.extend(cases_in("reference/sdxl/pipelines"));
    all
}

impl RefinerCase {
    fn tensors(&self) -> HashMap<String, Tensor> {
        load(&format!("{}/{}", self.dir, self.file))
    }

    /// The job of this case on the refiner `refiner`.
    fn job(&self, r: &HashMap<String, Tensor>, refiner: &Model) -> Job {
        let mut c = Case::new(
            &self.prompt,
            &self.scheduler,
            self.steps,
            self.width,
            self.height,
        );
        c.guidance = self.guidance;
        c.negative_prompt = self.negative_prompt.clone().unwrap_or_default();
        c.strength = self.strength;
        let mut job = match self.kind.as_str() {
            "img2img" => {
                let path = fixture("reference/sdxl/pipelines/init.png");
                let picture = read_image(&path, "init", &Limits::default()).unwrap().rgb;
                c.image_job(&picture, Some(&r["noise"]))
            }
            _ => c.text_job(Some(&r["init_latents"])),
        };
        job.refiner = Some(Refiner {
            name: "tiny-sdxl-refiner".into(),
            model: refiner.clone(),
            switch_at: self.switch,
        });
        job
    }
}

/// Runs `job`, recording every step's number, total and latents.
fn run_recording(base: &Model, job: &Job) -> (Generated, Vec<StepProgress>) {
    let mut steps = Vec::new();
    let out = run(base, job, &Extensions::builtin(), &mut |p| {
        steps.push(p);
        ControlFlow::Continue(())
    })
    .unwrap();
    (out, steps)
}

/// Text to image (Euler at 0.8 with a negative prompt; DPM++ 2M Karras at 0.5 without one,
/// non-square) and image to image (strength 0.8, then the switch at 0.7).
#[test]
fn refiner_handoff_matches_diffusers() {
    let (base, refiner) = (model("tiny-sdxl"), model("tiny-sdxl-refiner"));
    assert_eq!(refiner.family.name, "sdxl-refiner");
    let all = cases();
    assert!(
        all.len() >= 3,
        "{:?}",
        all.iter().map(|c| &c.name).collect::<Vec<_>>()
    );
    for c in &all {
        let r = c.tensors();
        let (out, steps) = run_recording(&base, &c.job(&r, &refiner));
        let (base_steps, refiner_steps) = (c.base_timesteps.len(), c.refiner_timesteps.len());
        let total = base_steps + refiner_steps;
        let numbers: Vec<usize> = steps.iter().map(|p| p.step).collect();
        assert_eq!(numbers, (1..=total).collect::<Vec<_>>(), "{}", c.name);
        assert!(steps.iter().all(|p| p.total == total), "{}", c.name);
        assert_close_rel_std(
            &format!("{} hand-off latents", c.name),
            &steps[base_steps - 1].latents,
            &r["handoff_latents"],
            LATENTS_TOL,
        );
        let run = Run {
            pipeline: format!("{} + refiner at {}", c.kind, c.switch),
            family: format!("{} + {}", base.family.name, refiner.family.name),
            sampler: c.scheduler.clone(),
            lora: String::new(),
            case: format!("{}/{}", c.dir, c.file),
        };
        let images: Vec<Tensor> = out.images.iter().map(pixels).collect();
        let latents = Some((&out.latents, &r["latents"], LATENTS_TOL));
        assert_conforms(&run, latents, &images, &r["image"]);
    }
}

/// Without the refiner the same job ends elsewhere: the hand-off is not a no-op.
#[test]
fn the_refiner_changes_the_result() {
    let (base, refiner) = (model("tiny-sdxl"), model("tiny-sdxl-refiner"));
    let c = &cases()[0];
    let r = c.tensors();
    let mut job = c.job(&r, &refiner);
    job.refiner = None;
    let alone = try_generate(&base, &job).unwrap();
    let (max, std) = common::max_diff_and_std(&alone.latents, &r["latents"]);
    assert!(max > 0.05 * std, "{}: {max} vs std {std}", c.name);
}

fn error(base: &Model, job: &Job) -> String {
    try_generate(base, job).unwrap_err().to_string()
}

/// A switch outside (0, 1), a model of another latent space and an inpainting model are
/// refused before any tensor work, naming the value or the file and what was expected.
#[test]
fn what_is_not_a_refiner_is_refused() {
    let (base, refiner) = (model("tiny-sdxl"), model("tiny-sdxl-refiner"));
    let c = &cases()[0];
    let r = c.tensors();
    for bad in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
        let mut job = c.job(&r, &refiner);
        job.refiner.as_mut().unwrap().switch_at = bad;
        let err = error(&base, &job);
        assert!(
            err.contains("refiner switch") && err.contains("above 0 and below 1"),
            "{bad}: {err}"
        );
    }
    // SD 1.x latents are scaled otherwise: not the same latent space.
    let sd = model("tiny-sd");
    let mut job = c.job(&r, &sd);
    job.refiner.as_mut().unwrap().switch_at = 0.8;
    let err = error(&base, &job);
    assert!(
        err.contains("tiny-sd") && err.contains("cannot refine a sdxl model"),
        "{err}"
    );
    // An inpainting denoiser needs a mask and a masked picture, not a refiner's input.
    let inpaint = model("tiny-sdxl-inpaint");
    let job = c.job(&r, &inpaint);
    let err = error(&base, &job);
    assert!(
        err.contains("tiny-sdxl-inpaint") && err.contains("inpainting model"),
        "{err}"
    );
    // A FLUX model is of another kind of schedule and latent space.
    let flux = model("tiny-flux-schnell");
    let err = error(&base, &c.job(&r, &flux));
    assert!(err.contains("tiny-flux-schnell"), "{err}");
}

/// Inpainting: the refiner continues with the known region blended back (on an ordinary base,
/// and after a 9-channel inpainting base); steps count over both models, the refiner changes
/// the masked region and the picture outside the mask is kept.
#[test]
fn inpainting_hands_off_to_the_refiner() {
    use beeswax::image_in::{mask_from_picture, AlphaMask};
    let refiner = model("tiny-sdxl-refiner");
    let picture = read_image(
        &fixture("reference/sdxl/pipelines/init.png"),
        "init",
        &Limits::default(),
    )
    .unwrap()
    .rgb;
    let mask = read_image(
        &fixture("reference/sdxl/pipelines/mask.png"),
        "mask",
        &Limits::default(),
    )
    .unwrap();
    let mask = mask_from_picture(&mask, AlphaMask::OpaqueRepaints);
    let mut c = Case::new("a red fox in the snow", "Euler", 8, 96, 64);
    c.guidance = 5.0;
    c.strength = Some(1.0);
    for base in ["tiny-sdxl", "tiny-sdxl-inpaint"] {
        let base = model(base);
        let mut job = c.inpaint_job(&picture, &mask, None);
        let alone = try_generate(&base, &job).unwrap();
        job.refiner = Some(Refiner {
            name: "tiny-sdxl-refiner".into(),
            model: refiner.clone(),
            switch_at: 0.5,
        });
        let (out, steps) = run_recording(&base, &job);
        let numbers: Vec<usize> = steps.iter().map(|p| p.step).collect();
        assert_eq!(numbers, (1..=8).collect::<Vec<_>>());
        let (max, std) = common::max_diff_and_std(&out.latents, &alone.latents);
        assert!(
            max > 0.05 * std,
            "the refiner changed nothing: {max} vs {std}"
        );
        let (got, want) = (&out.images[0], &picture);
        let mut kept = 0;
        for (i, m) in mask.data.iter().enumerate() {
            if *m == 0.0 && got.data[i * 3..i * 3 + 3] == want.data[i * 3..i * 3 + 3] {
                kept += 1;
            }
        }
        let outside = mask.data.iter().filter(|m| **m == 0.0).count();
        assert!(kept * 10 > outside * 9, "only {kept} of {outside} kept");
    }
}

/// Where the hand-off falls: diffusers 0.42.1's `denoising_end` / `denoising_start` slicing of
/// tiny-sdxl's schedule (leading, 10 steps) for Euler and the second-order Heun (whose refiner
/// takes one timestep more when it would start between a step's two halves), as that script
/// computes them; a switch that leaves the refiner nothing is a warning, not an error.
#[test]
fn the_switch_point_slices_the_schedule_as_diffusers() {
    use beeswax::pipeline::{build_scheduler, handoff, Handoff};
    let base = model("tiny-sdxl");
    let expected = [
        ("Euler", 0.8, 8, 8),
        ("Euler", 0.5, 5, 5),
        ("Euler", 0.999, 10, 10),
        ("Heun", 0.8, 15, 14),
        ("Heun", 0.5, 9, 8),
    ];
    for (sampler, switch, base_end, refiner_start) in expected {
        let job = Case::new("a fox", sampler, 10, 64, 64).text_job(None);
        let scheduler = build_scheduler(&base, &job, &common::registry()).unwrap();
        let at = handoff(scheduler.as_ref(), 1000, 0, switch);
        let want = Handoff {
            base_end,
            refiner_start,
        };
        assert_eq!(at, want, "{sampler} at {switch}");
    }
    // Image to image starting past the switch: the base runs nothing, the refiner the rest.
    let job = Case::new("a fox", "Euler", 10, 64, 64).text_job(None);
    let scheduler = build_scheduler(&base, &job, &common::registry()).unwrap();
    let at = handoff(scheduler.as_ref(), 1000, 9, 0.5);
    assert_eq!(
        at,
        Handoff {
            base_end: 9,
            refiner_start: 9
        }
    );

    let refiner = model("tiny-sdxl-refiner");
    let mut job = Case::new("a fox", "Euler", 4, 64, 64).text_job(None);
    job.refiner = Some(Refiner {
        name: "r".into(),
        model: refiner,
        switch_at: 0.9999,
    });
    let out = try_generate(&base, &job).unwrap();
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("the refiner ran no step")),
        "{:?}",
        out.warnings
    );
}
