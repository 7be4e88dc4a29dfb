//! Prompt syntax over HTTP: the native `prompt_syntax` field and a pipeline's default, A1111's
//! routes always reading A1111's syntax, OpenAI's always plain, the syntax and `TI hashes` in
//! the PNG parameters, and the embeddings listings.

use common::command::toml_path;

use super::*;

/// `[[embedding]]` entries for the fixture embeddings `owlstyle` (one vector) and `foxart`
/// (three), a damaged file `broken`, and a `[[pipeline]]` `tiny-plain` whose prompts are plain.
fn prompt_manifest() -> String {
    let emb = |name: &str| toml_path(&common::fixture(&format!("prompt/embeddings/{name}")));
    format!(
        "[[embedding]]\nname = \"owlstyle\"\npath = {}\n\n[[embedding]]\nname = \"foxart\"\n\
         path = {}\n\n[[embedding]]\nname = \"broken\"\npath = \"broken.safetensors\"\n\n\
         [[pipeline]]\nname = \"tiny-plain\"\npack = \"tiny-sd\"\n\n[pipeline.defaults]\n\
         steps = 3\nprompt_syntax = \"plain\"\n",
        emb("owlstyle.safetensors"),
        emb("foxart.safetensors"),
    )
}

async fn start() -> TestServer {
    TestServer::start_with(
        config(),
        &[
            ("zz-prompts.toml", &prompt_manifest()),
            ("broken.safetensors", "not a safetensors file"),
        ],
    )
    .await
}

/// Runs a native job to the end: its first image, decoded.
async fn native_image(server: &TestServer, body: Value) -> Png {
    let id = submit(&server.url, body).await;
    let done = wait_status(&server.url, &id, "completed").await;
    let url = done["images"][0].as_str().unwrap();
    Png::decode(&get(&server.at(url)).await.bytes().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_syntax_by_field_by_pipeline_and_by_route() {
    let server = start().await;
    let weighted = "a (red:1.6) fox, [[snow]]";
    let job = |pipeline: &str, syntax: Option<&str>| {
        let mut body = json!({"pipeline": pipeline, "prompt": weighted, "steps": 3, "seed": 5});
        if let Some(s) = syntax {
            body["prompt_syntax"] = json!(s);
        }
        body
    };
    // The native default is a1111 (not written); plain is written and draws another picture.
    let a1111 = native_image(&server, job("tiny-sd", None)).await;
    assert!(
        a1111.parameters.starts_with(weighted) && !a1111.parameters.contains("Prompt syntax"),
        "{}",
        a1111.parameters
    );
    let plain = native_image(&server, job("tiny-sd", Some("plain"))).await;
    assert!(plain.parameters.contains("Prompt syntax: plain"));
    assert_ne!(
        plain.image.data, a1111.image.data,
        "weights changed nothing"
    );
    // A pipeline's default applies, the field overrides it.
    let by_pipeline = native_image(&server, job("tiny-plain", None)).await;
    assert!(by_pipeline.parameters.contains("Prompt syntax: plain"));
    let overridden = native_image(&server, job("tiny-plain", Some("comfy"))).await;
    assert!(overridden.parameters.contains("Prompt syntax: comfy"));
    // A1111's route reads A1111's syntax whatever the pipeline says.
    let body = expect_json(
        post(
            &server.at("/sdapi/v1/txt2img"),
            json!({"prompt": weighted, "steps": 3, "seed": 5,
                   "override_settings": {"sd_model_checkpoint": "tiny-plain"}}),
        )
        .await,
        200,
    )
    .await;
    let text = &a1111_image(&body).parameters;
    assert!(!text.contains("Prompt syntax"), "{text}");
    // OpenAI's route reads prompts literally.
    let body = expect_json(
        post(
            &server.at("/v1/images/generations"),
            json!({"model": "tiny-sd", "prompt": weighted, "response_format": "b64_json"}),
        )
        .await,
        200,
    )
    .await;
    let png = Png::decode(&unb64(body["data"][0]["b64_json"].as_str().unwrap()));
    assert!(
        png.parameters.contains("Prompt syntax: plain"),
        "{}",
        png.parameters
    );
    // An unknown syntax is refused naming the field.
    let response = post(&server.at("/v1/jobs"), job("tiny-sd", Some("nope"))).await;
    let body = expect_json(response, 400).await.to_string();
    assert!(
        body.contains("prompt_syntax") && body.contains("a1111, comfy or plain"),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_are_listed_and_hashed_in_the_parameters() {
    let server = start().await;
    let a1111 = get_json(&server.at("/sdapi/v1/embeddings")).await;
    let owl = &a1111["loaded"]["owlstyle"];
    assert_eq!(
        (owl["vectors"].as_u64(), owl["shape"].as_u64()),
        (Some(1), Some(32))
    );
    assert_eq!(a1111["loaded"]["foxart"]["vectors"], 3);
    assert!(owl["step"].is_null() && owl.get("sd_checkpoint").is_some());
    assert!(a1111["skipped"].get("broken").is_some(), "{a1111}");
    let native = get_json(&server.at("/v1/embeddings")).await;
    let list = native["embeddings"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    let owl = list.iter().find(|e| e["name"] == "owlstyle").unwrap();
    let hash = owl["short_hash"].as_str().unwrap().to_string();
    assert_eq!(hash.len(), 12);
    let broken = list.iter().find(|e| e["name"] == "broken").unwrap();
    assert!(broken["error"]
        .as_str()
        .unwrap()
        .contains("broken.safetensors"));
    // A prompt naming an embedding records its hash as A1111 does.
    let png = native_image(
        &server,
        json!({"prompt": "a photo of (owlstyle:1.2) in the snow", "steps": 3, "seed": 1}),
    )
    .await;
    let want = format!("TI hashes: \"owlstyle: {hash}\"");
    assert!(png.parameters.contains(&want), "{}", png.parameters);
    server.stop().await;
}
