//! The refiner through the interfaces: `beeswax generate --refiner`, the native and A1111
//! HTTP fields, `[[pipeline]] refiner` in the catalog and `beeswax check`.

use std::collections::HashMap;

use beeswax::pipeline::Refiner;

use super::{cases, RefinerCase, LATENTS_TOL};
use crate::common::command::{toml_path, Dir, TestCommand};
use crate::common::compare::assert_close_rel_std;
use crate::common::images::{assert_images_close, Png};
use crate::common::jobs::try_generate;
use crate::common::{model, model_dir, registry};

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

/// `--model FILE --refiner FILE --refiner-config DIR`: both single files (f16, computed in f32)
/// load as their families and hand off; the image is close to the folders' run (the weights
/// differ by their f16 rounding only).
#[test]
fn cli_single_file_refiner() {
    let c = euler_case();
    let dir = Dir::new("refiner-cli-single");
    let single = |name: &str| crate::common::fixture(&format!("single/{name}.f16.safetensors"));
    generate_case(&dir, &c)
        .arg("--model")
        .arg(single("tiny-sdxl"))
        .arg("--model-config")
        .arg(model_dir("tiny-sdxl"))
        .arg("--refiner")
        .arg(single("tiny-sdxl-refiner"))
        .arg("--refiner-config")
        .arg(model_dir("tiny-sdxl-refiner"))
        .run();
    let png = Png::read(&dir.join("out.png"));
    assert!(
        png.parameters
            .contains("Refiner: tiny-sdxl-refiner.f16, Refiner switch at: 0.8"),
        "{}",
        png.parameters
    );
    let r = c.tensors();
    let latents =
        candle_core::safetensors::load(dir.join("out.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert_close_rel_std(&c.name, &latents["latents"], &r["latents"], 0.05);
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
    let job = resolve(&base, &Default::default(), &registry(), request).unwrap();
    try_generate(&base, &job).unwrap().images.remove(0).data
}

/// Native jobs with `refiner`/`refiner_switch_at` and a pipeline's own refiner, and the A1111
/// API's `refiner_checkpoint`/`refiner_switch_at`, give the library's images; progress counts
/// over both models; bad refiner fields are 400s naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn http_refiner_fields() {
    use crate::common::server::{expect_json, get, post, submit, unb64, wait_status, TestServer};
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
    let listed = crate::common::server::get_json(&server.at("/v1/pipelines")).await;
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
    let text = crate::common::command::pack_toml("sd", "tiny-sd", "")
        + "\n[[pipeline]]\nname = \"odd\"\npack = \"xl\"\nrefiner = \"sd\"\n";
    files.push(("odd.toml", &text));
    let manifests = dir.manifests("m", &files);
    let extensions = crate::common::manifests::extensions(&manifests).unwrap();
    let limits = beeswax::server::ServerConfig::default().limits;
    let err = crate::common::manifests::catalog(&manifests, limits, &extensions)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("odd.toml")
            && err.contains("`pipeline.refiner` of [[pipeline]] `odd` names pack `sd`")
            && err.contains("cannot refine a sdxl model"),
        "{err}"
    );
}
