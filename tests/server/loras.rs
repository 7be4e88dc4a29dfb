//! LoRAs over HTTP: by the `loras` field, by A1111's prompt tag and by a pipeline's set, all
//! equal to the library's result; unknown names and weights refused.

use beeswax::extensions::Extensions;
use beeswax::lora::{apply, prepare_job, LoraRequest};
use beeswax::server::Limits;
use common::command::{toml_path, Dir};
use common::jobs::pack_image;
use common::lora::lora_path;

use super::*;

/// The `[[lora]]` entry `fox-style` (the kohya fixture), a `[[lora_set]]` `foxy` of it at 0.8,
/// and a `[[pipeline]]` `tiny-foxy` that applies `foxy`.
fn lora_manifest() -> String {
    format!(
        "[[lora]]\nname = \"fox-style\"\npath = {}\n\n[[lora_set]]\nname = \"foxy\"\n\
         loras = [{{ name = \"fox-style\", weight = 0.8 }}]\n\n[[pipeline]]\n\
         name = \"tiny-foxy\"\npack = \"tiny-sd\"\nlora_set = \"foxy\"\n",
        toml_path(&lora_path("tiny-sd", "kohya.safetensors"))
    )
}

/// A server on the test manifests plus [`lora_manifest`].
async fn start_with_loras() -> TestServer {
    TestServer::start_with(config(), &[("zz-loras.toml", &lora_manifest())]).await
}

/// Runs a native job to the end: its first image, decoded.
async fn native_image(server: &TestServer, body: Value) -> Png {
    let id = submit(&server.url, body).await;
    let done = wait_status(&server.url, &id, "completed").await;
    let url = done["images"][0].as_str().unwrap();
    Png::decode(&get(&server.at(url)).await.bytes().await.unwrap())
}

/// The request every run of the LoRA test makes, on `pipeline`.
fn fox(pipeline: &str) -> Value {
    json!({"pipeline": pipeline, "prompt": "a red fox", "steps": 4, "seed": 3})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loras_by_field_and_a1111_prompt_tag_match_the_library() {
    let server = start_with_loras().await;
    let mut lora_body = fox("tiny-sd");
    lora_body["loras"] = json!([{"name": "fox-style", "weight": 0.8}]);
    let with_lora = native_image(&server, lora_body).await;
    let params = &with_lora.parameters;
    assert!(
        params.starts_with("a red fox <lora:fox-style:0.8>\nSteps: 4"),
        "{params}"
    );

    // The library's result: the same LoRA applied to a freshly loaded model.
    let model = common::model("tiny-sd");
    let request = LoraRequest {
        name: "fox-style".into(),
        weight: Some(0.8),
    };
    let loras = server.service.catalog.loras();
    let job_loras = prepare_job(loras, "a red fox", &[request], false).unwrap();
    let applied = apply(&model, &job_loras.loras).unwrap();
    let defaults = &server.service.catalog.get("tiny-sd").unwrap().defaults;
    let reference = pack_image(&applied.model, defaults, &job_loras.prompt, 4, 3);
    assert_eq!(
        with_lora.image.data, reference,
        "same pixels as the library"
    );

    // AUTOMATIC1111's prompt syntax on /sdapi/v1/txt2img gives the same image.
    let r = post(
        &server.at("/sdapi/v1/txt2img"),
        json!({
            "prompt": "a red fox <lora:fox-style:0.8>", "steps": 4, "seed": 3,
            "width": 64, "height": 64, "cfg_scale": 7.5, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": "tiny-sd"},
        }),
    )
    .await;
    let a1111 = a1111_image(&expect_json(r, 200).await);
    let a1111_params = &a1111.parameters;
    assert!(
        a1111_params.starts_with("a red fox <lora:fox-style:0.8>\n"),
        "{a1111_params}"
    );
    assert_eq!(
        a1111.image, with_lora.image,
        "tag and field give the same image"
    );
    // A pipeline's `lora_set` applies to every job.
    let pipeline_set = native_image(&server, fox("tiny-foxy")).await;
    assert_eq!(
        pipeline_set.image, with_lora.image,
        "the pipeline's lora_set"
    );

    // The next job without LoRAs is the base model's image.
    let base = native_image(&server, fox("tiny-sd")).await;
    assert!(
        base.parameters.starts_with("a red fox\nSteps: 4"),
        "{}",
        base.parameters
    );
    assert_ne!(base.image, with_lora.image, "the LoRA changes the image");
    let reference = pack_image(&model, defaults, "a red fox", 4, 3);
    assert_eq!(base.image.data, reference, "the base model is untouched");
    server.stop().await;
}

/// The error message of a refused request: `error.message`, or A1111's `detail`.
async fn refusal(response: reqwest::Response) -> String {
    let body = expect_json(response, 400).await;
    let message = body["error"]["message"]
        .as_str()
        .or(body["detail"].as_str());
    message.unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_loras_and_bad_weights_are_refused_naming_the_known_ones() {
    let server = start_with_loras().await;
    let jobs = server.at("/v1/jobs");
    let with_loras = |loras: Value| {
        let mut body = fox("tiny-sd");
        body["loras"] = loras;
        body
    };
    let message = refusal(post(&jobs, with_loras(json!([{"name": "no-such-lora"}]))).await).await;
    assert!(
        message.contains("unknown LoRA `no-such-lora`")
            && message.contains("known LoRAs: fox-style"),
        "{message}"
    );
    let tag = json!({"prompt": "a fox <lora:nope:1>", "steps": 2});
    let detail = refusal(post(&server.at("/sdapi/v1/txt2img"), tag).await).await;
    assert!(
        detail.contains("unknown LoRA `nope`") && detail.contains("fox-style"),
        "{detail}"
    );
    let heavy = with_loras(json!([{"name": "fox-style", "weight": 9.0}]));
    let message = refusal(post(&jobs, heavy).await).await;
    assert!(
        message.contains("outside the allowed range -5 to 5"),
        "{message}"
    );
    // A file path on the server is not a catalog name: refused the same way.
    let path = lora_path("tiny-sd", "kohya.safetensors");
    let by_path = with_loras(json!([{ "name": path }]));
    assert_eq!(post(&jobs, by_path).await.status(), 400);
    // ...and the server carries on.
    native_image(&server, fox("tiny-sd")).await;
    server.stop().await;
}

#[test]
fn a_pipeline_naming_a_missing_lora_set_does_not_load() {
    let dir = Dir::new("missing-lora-set");
    let manifests = common::server::tiny_manifests(dir.path());
    dir.create(
        "zz-bad.toml",
        "[[pipeline]]\nname = \"bad\"\npack = \"tiny-sd\"\nlora_set = \"nope\"\n",
    );
    let err = common::manifests::catalog(&manifests, Limits::default(), &Extensions::builtin())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("zz-bad.toml:4: `pipeline.lora_set` of [[pipeline]] `bad`")
            && err.contains("`nope`")
            && err.contains("known: (none)"),
        "{err}"
    );
}
