//! The refiner hand-off through `pipeline::run` against diffusers' base pipeline with
//! `denoising_end` followed by StableDiffusionXLImg2ImgPipeline with `denoising_start` on the
//! miniature SDXL base and refiner (`reference/refiner`, made by
//! `tests/fixtures/make_refiner_fixtures.py`, and `reference/sdxl/pipelines`' hand-off case):
//! the base's latents at the hand-off and the final latents within 2e-3 of their std, the
//! image within 2/255, progress counted over both models. Then what is not a refiner, and bad
//! switch points.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::ops::ControlFlow;

use beeswax::extensions::Extensions;
use beeswax::family::Model;
use beeswax::image_in::{read_image, Limits};
use beeswax::pipeline::{run, Generated, Job, Refiner, StepProgress};
use candle_core::Tensor;
use common::command::{toml_path, Dir, TestCommand};
use common::compare::assert_close_rel_std;
use common::images::{assert_images_close, Png};
use common::jobs::try_generate;
use common::reference::{load, Case};
use common::{fixture, model, model_dir};

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
        assert_close_rel_std(
            &format!("{} latents", c.name),
            &out.latents,
            &r["latents"],
            LATENTS_TOL,
        );
        assert_images_close(&c.name, &out.images, &r["image"]);
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

/// The hand-off case of `reference/sdxl/pipelines` (Euler, switch 0.8, a negative prompt).
fn euler_case() -> RefinerCase {
    cases()
        .into_iter()
        .find(|c| c.name == "refiner_handoff_euler_64x64")
        .unwrap()
}

/// `beeswax generate` with `euler_case`'s settings and starting noise, in `dir`.
fn generate_case(dir: &Dir, c: &RefinerCase) -> TestCommand {
    let noise = dir.join("noise.safetensors");
    let r = c.tensors();
    let init = HashMap::from([("latents".to_string(), r["init_latents"].clone())]);
    candle_core::safetensors::save(&init, &noise).unwrap();
    let mut cmd = dir.command();
    cmd.args(["generate", "--quiet", "--prompt", &c.prompt])
        .args(["--negative-prompt", c.negative_prompt.as_deref().unwrap()])
        .args(["--steps", &c.steps.to_string()])
        .args(["--guidance", &c.guidance.to_string()])
        .args(["--scheduler", &c.scheduler])
        .args(["--width", &c.width.to_string()])
        .args(["--height", &c.height.to_string()])
        .arg("--init-latents")
        .arg(&noise)
        .args(["--output", "out.png", "--output-latents", "out.safetensors"]);
    cmd
}

/// The latents and PNG `generate_case` wrote match diffusers'; returns the PNG's parameters.
fn check_outputs(dir: &Dir, c: &RefinerCase) -> String {
    let r = c.tensors();
    let latents =
        candle_core::safetensors::load(dir.join("out.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert_close_rel_std(&c.name, &latents["latents"], &r["latents"], LATENTS_TOL);
    let png = Png::read(&dir.join("out.png"));
    assert_images_close(&c.name, &[png.image], &r["image"]);
    png.parameters
}

fn sdxl_packs(dir: &Dir) -> std::path::PathBuf {
    let pack = |name: &str, family: &str, model: &str| {
        format!(
            "[pack]\nname = \"{name}\"\nfamily = \"{family}\"\npath = {}\n",
            toml_path(&model_dir(model))
        )
    };
    dir.manifests(
        "manifests",
        &[
            ("xl.toml", &pack("xl", "sdxl", "tiny-sdxl")),
            (
                "xl-refiner.toml",
                &pack("xl-refiner", "sdxl-refiner", "tiny-sdxl-refiner"),
            ),
            ("sd.toml", &pack("sd", "sd1", "tiny-sd")),
        ],
    )
}

/// `--refiner FOLDER --refiner-switch 0.8` and `--pack xl --refiner PACK` (switch 0.8 by
/// default) reproduce diffusers' hand-off and record the refiner in the PNG's parameters.
#[test]
fn cli_refiner_from_a_folder_and_from_a_pack() {
    let c = euler_case();
    let dir = Dir::new("refiner-cli");
    generate_case(&dir, &c)
        .arg("--model")
        .arg(model_dir("tiny-sdxl"))
        .arg("--refiner")
        .arg(model_dir("tiny-sdxl-refiner"))
        .args(["--refiner-switch", "0.8"])
        .run();
    let parameters = check_outputs(&dir, &c);
    assert!(
        parameters.contains("Refiner: tiny-sdxl-refiner, Refiner switch at: 0.8"),
        "{parameters}"
    );

    let manifests = sdxl_packs(&dir);
    generate_case(&dir, &c)
        .arg("--manifests")
        .arg(&manifests)
        .args(["--pack", "xl", "--refiner", "xl-refiner"])
        .run();
    let parameters = check_outputs(&dir, &c);
    assert!(
        parameters.contains("Model: xl") && parameters.contains("Refiner: xl-refiner,"),
        "{parameters}"
    );
}

/// An unknown refiner pack, a switch outside (0, 1), a refiner of another latent space and a
/// switch without a refiner are errors naming what was wrong.
#[test]
fn cli_refiner_errors() {
    let dir = Dir::new("refiner-cli-errors");
    let manifests = sdxl_packs(&dir);
    let base = |dir: &Dir| {
        let mut cmd = dir.command();
        cmd.arg("--manifests").arg(&manifests).args([
            "generate", "--quiet", "--prompt", "a fox", "--steps", "4", "--pack", "xl",
        ]);
        cmd
    };
    base(&dir)
        .args(["--refiner", "no-such-refiner"])
        .assert_fails_with(&["no-such-refiner", "xl-refiner"]);
    base(&dir)
        .args(["--refiner", "xl-refiner", "--refiner-switch", "1.5"])
        .assert_fails_with(&["--refiner-switch", "not above 0 and below 1"]);
    base(&dir)
        .args(["--refiner-switch", "0.5"])
        .assert_fails_with(&["--refiner"]);
    base(&dir)
        .args(["--refiner", "sd"])
        .assert_fails_with(&["tiny-sd", "cannot refine a sdxl model"]);
    // `beeswax check` names the manifest line of a pipeline's unknown refiner pack.
    let text = "[[pipeline]]\nname = \"fine\"\npack = \"xl\"\nrefiner = \"xl-refinr\"\n";
    dir.create("manifests/fine.toml", text);
    dir.command()
        .arg("--manifests")
        .arg(&manifests)
        .arg("check")
        .assert_fails_with(&[
            "fine.toml:4: `pipeline.refiner` names no known pack `xl-refinr`",
            "available packs:",
        ]);
}

/// The packs and a `[[pipeline]]` with a refiner, for the service (beside its tiny-sd pack).
fn served_manifests() -> Vec<(&'static str, String)> {
    let pack = |name: &str, family: &str, model: &str| {
        format!(
            "[pack]\nname = \"{name}\"\nfamily = \"{family}\"\npath = {}\n",
            toml_path(&model_dir(model))
        )
    };
    vec![
        ("xl.toml", pack("xl", "sdxl", "tiny-sdxl")),
        (
            "xl-refiner.toml",
            pack("xl-refiner", "sdxl-refiner", "tiny-sdxl-refiner"),
        ),
        (
            "refined.toml",
            "[[pipeline]]\nname = \"xl-refined\"\npack = \"xl\"\nscheduler = \"euler\"\n\
             refiner = \"xl-refiner\"\nrefiner_switch_at = 0.6\n\n[pipeline.defaults]\n\
             steps = 6\nguidance = 5.0\nwidth = 64\nheight = 64\n"
                .to_string(),
        ),
    ]
}

/// What the library makes of the served job: the xl pack, Euler, 6 steps at guidance 5,
/// 64x64, `seed`, refined from `switch_at` by the refiner pack (or not).
fn library_image(seed: u64, switch_at: Option<f64>) -> Vec<u8> {
    use beeswax::pipeline::{resolve, JobRequest};
    let base = model("tiny-sdxl");
    let request = JobRequest {
        prompt: "a red fox in the snow".into(),
        negative_prompt: Some("blurry".into()),
        steps: Some(6),
        guidance: Some(5.0),
        width: Some(64),
        height: Some(64),
        sampler: Some("euler".into()),
        seed: Some(seed),
        refiner: switch_at.map(|switch_at| Refiner {
            name: "xl-refiner".into(),
            model: model("tiny-sdxl-refiner"),
            switch_at,
        }),
        ..Default::default()
    };
    let job = resolve(&base, &Default::default(), &common::registry(), request).unwrap();
    try_generate(&base, &job).unwrap().images.remove(0).data
}

/// Native jobs with `refiner`/`refiner_switch_at` and a pipeline's own refiner, and the A1111
/// API's `refiner_checkpoint`/`refiner_switch_at`, give the library's images; progress counts
/// over both models; bad refiner fields are 400s naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn http_refiner_fields() {
    use common::server::{expect_json, get, post, submit, unb64, wait_status, TestServer};
    use serde_json::json;
    let extra = served_manifests();
    let extra: Vec<(&str, &str)> = extra.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let server = TestServer::start_with(beeswax::server::ServerConfig::default(), &extra).await;
    let body = |more: serde_json::Value| {
        let mut b = json!({
            "pipeline": "xl", "prompt": "a red fox in the snow", "negative_prompt": "blurry",
            "steps": 6, "guidance": 5.0, "scheduler": "euler", "width": 64, "height": 64,
            "seed": 11,
        });
        b.as_object_mut()
            .unwrap()
            .extend(more.as_object().unwrap().clone());
        b
    };
    let image = |id: String| {
        let url = server.at(&format!("/v1/jobs/{id}/images/0"));
        async move {
            Png::decode(&get(&url).await.bytes().await.unwrap())
                .image
                .data
        }
    };
    let refined = library_image(11, Some(0.7));
    assert_ne!(
        refined,
        library_image(11, None),
        "the refiner changed nothing"
    );

    // Native fields.
    let id = submit(
        &server.url,
        body(json!({"refiner": "xl-refiner", "refiner_switch_at": 0.7})),
    )
    .await;
    let job = wait_status(&server.url, &id, "completed").await;
    assert_eq!(job["progress"]["step"], 6, "{job}");
    assert_eq!(job["parameters"]["refiner"], "xl-refiner", "{job}");
    assert_eq!(job["parameters"]["refiner_switch_at"], 0.7, "{job}");
    assert!(
        image(id).await == refined,
        "native job differs from the library's"
    );

    // The pipeline's own refiner and switch (0.6), and turned off with "".
    let own = body(json!({"pipeline": "xl-refined"}));
    let id = submit(&server.url, own.clone()).await;
    let job = wait_status(&server.url, &id, "completed").await;
    assert_eq!(job["parameters"]["refiner_switch_at"], 0.6, "{job}");
    assert!(image(id).await == library_image(11, Some(0.6)));
    let mut off = own.clone();
    off["refiner"] = json!("");
    let id = submit(&server.url, off).await;
    let job = wait_status(&server.url, &id, "completed").await;
    assert_eq!(job["parameters"]["refiner"], "", "{job}");
    assert!(image(id).await == library_image(11, None));
    let listed = common::server::get_json(&server.at("/v1/pipelines")).await;
    let pipeline = listed["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "xl-refined")
        .unwrap()
        .clone();
    assert_eq!(pipeline["refiner"], "xl-refiner", "{pipeline}");

    // AUTOMATIC1111: a checkpoint title names the refiner pack.
    let a1111 = json!({
        "prompt": "a red fox in the snow", "negative_prompt": "blurry", "steps": 6,
        "cfg_scale": 5.0, "sampler_name": "Euler", "width": 64, "height": 64, "seed": 11,
        "override_settings": {"sd_model_checkpoint": "xl"},
        "refiner_checkpoint": "xl-refiner.safetensors [0123abcd]", "refiner_switch_at": 0.7,
    });
    let answer = expect_json(
        post(&server.at("/sdapi/v1/txt2img"), a1111.clone()).await,
        200,
    )
    .await;
    let png = Png::decode(&unb64(answer["images"][0].as_str().unwrap()));
    assert!(
        png.image.data == refined,
        "A1111 image differs from the library's"
    );
    assert!(
        png.parameters
            .contains("Refiner: xl-refiner, Refiner switch at: 0.7"),
        "{}",
        png.parameters
    );
    let mut none = a1111.clone();
    none["refiner_checkpoint"] = json!("None");
    let answer = expect_json(post(&server.at("/sdapi/v1/txt2img"), none).await, 200).await;
    let png = Png::decode(&unb64(answer["images"][0].as_str().unwrap()));
    assert!(png.image.data == library_image(11, None));

    // Bad refiner fields.
    for (more, param, needle) in [
        (
            json!({"refiner": "nope"}),
            "refiner",
            "unknown refiner `nope`",
        ),
        (json!({"refiner": "tiny-sd"}), "refiner", "cannot refine"),
        (
            json!({"refiner": "xl-refiner", "refiner_switch_at": 1.0}),
            "refiner_switch_at",
            "above 0 and below 1",
        ),
        (
            json!({"refiner_switch_at": 0.5}),
            "refiner_switch_at",
            "needs a refiner",
        ),
    ] {
        let e = expect_json(post(&server.at("/v1/jobs"), body(more.clone())).await, 400).await;
        assert_eq!(e["error"]["param"], param, "{more}: {e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{more}: {message}");
    }
    let mut bad = a1111;
    bad["refiner_checkpoint"] = json!("nope [0123abcd]");
    let e = expect_json(post(&server.at("/sdapi/v1/txt2img"), bad).await, 400).await;
    let detail = e["detail"].as_str().unwrap();
    assert!(
        detail.contains("refiner_checkpoint") && detail.contains("nope"),
        "{detail}"
    );
    server.stop().await;
}

/// A `[[pipeline]]` whose refiner pack cannot refine its pack stops the catalog, naming the
/// manifest and both packs.
#[test]
fn a_pipeline_refiner_of_another_latent_space_is_refused_at_load() {
    let dir = Dir::new("refiner-catalog");
    let extra = served_manifests();
    let mut files: Vec<(&str, &str)> = extra.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let text = common::command::pack_toml("sd", "tiny-sd", "")
        + "\n[[pipeline]]\nname = \"odd\"\npack = \"xl\"\nrefiner = \"sd\"\n";
    files.push(("odd.toml", &text));
    let manifests = dir.manifests("m", &files);
    let extensions = common::manifests::extensions(&manifests).unwrap();
    let limits = beeswax::server::ServerConfig::default().limits;
    let err = common::manifests::catalog(&manifests, limits, &extensions)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("odd.toml")
            && err.contains("`pipeline.refiner` of [[pipeline]] `odd` names pack `sd`")
            && err.contains("cannot refine a sdxl model"),
        "{err}"
    );
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
