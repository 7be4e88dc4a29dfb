//! An API node without models (`beeswax serve --nats URL`, no manifests folder): it lists and
//! checks jobs against what the fleet's workers announce in their heartbeats.

use serde_json::{json, Value};

use super::common::images::{make_png, Png};
use super::common::nats::{model_less_api_node, worker, NatsServer};
use super::common::server::{
    b64, expect_json, get, get_json, multipart, post, post_multipart, submit, unb64, wait_status,
    wait_until, ServeProcess,
};
use super::images::{image_jobs_match_embedded, noise};
use super::job;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_node_without_models_serves_what_the_workers_announce() {
    let nats = NatsServer::start();
    let _worker = worker(&nats, &[]);
    let api = model_less_api_node(&nats, &[]);
    // Workers announce themselves every 5 s: the node lists their pipelines once heard.
    let list = wait_until("the API node lists the workers' pipelines", || async {
        let body = get_json(&api.at("/v1/pipelines")).await;
        let list = body["pipelines"].as_array()?.clone();
        (list.len() == 2).then_some(list)
    })
    .await;
    let names: Vec<&str> = list.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["tiny-fast", "tiny-sd"], "{list:?}");
    assert!(
        list[1]["form"]["size_multiple"].as_u64().is_some(),
        "{list:?}"
    );
    let models = get_json(&api.at("/sdapi/v1/sd-models")).await;
    let titles: Vec<&str> = (models.as_array().unwrap().iter())
        .filter_map(|m| m["title"].as_str())
        .collect();
    assert_eq!(titles, ["tiny-fast", "tiny-sd"], "{models}");

    // Native: the job completes on the worker; its image is served by the API node.
    let id = submit(&api.url, job("a bee", 3)).await;
    let done = wait_status(&api.url, &id, "completed").await;
    assert_eq!(done["parameters"]["steps"], 3, "{done}");
    let png = get(&api.at(&format!("/v1/jobs/{id}/images/0"))).await;
    assert_eq!(png.status(), 200);
    let png = Png::decode(&png.bytes().await.unwrap());
    assert_eq!((png.image.width, png.image.height), (64, 64));
    assert!(png.parameters.contains("Seed: 7"), "{}", png.parameters);
    // OpenAI, blocking.
    let r = post(
        &api.at("/v1/images/generations"),
        json!({"model": "tiny-sd", "prompt": "a bee", "steps": 2, "size": "64x64",
               "response_format": "b64_json"}),
    )
    .await;
    let body = expect_json(r, 200).await;
    let png = Png::decode(&unb64(body["data"][0]["b64_json"].as_str().unwrap()));
    assert_eq!(png.image.width, 64);
    // AUTOMATIC1111, blocking, on the checkpoint selected through the options.
    let r = post(
        &api.at("/sdapi/v1/options"),
        json!({"sd_model_checkpoint": "tiny-sd"}),
    )
    .await;
    expect_json(r, 200).await;
    let r = post(
        &api.at("/sdapi/v1/options"),
        json!({"sd_model_checkpoint": "big-xl"}),
    )
    .await;
    let e = expect_json(r, 400).await;
    assert!(e["detail"].as_str().unwrap().contains("tiny-sd"), "{e}");
    let r = post(
        &api.at("/sdapi/v1/txt2img"),
        json!({"prompt": "a bee", "steps": 2, "seed": 9, "width": 64, "height": 64}),
    )
    .await;
    let body = expect_json(r, 200).await;
    assert_eq!(body["images"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["parameters"]["seed"], 9, "{body}");
    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["sd_model_name"], "tiny-sd", "{info}");

    // A pipeline no worker serves: 404 naming it, on every API.
    let unknown = json!({"pipeline": "big-xl", "prompt": "a bee"});
    let e = expect_json(post(&api.at("/v1/jobs"), unknown).await, 404).await;
    let message = e["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("`big-xl`") && message.contains("no worker"),
        "{e}"
    );
    let r = post(
        &api.at("/v1/images/generations"),
        json!({"model": "big-xl", "prompt": "a bee"}),
    )
    .await;
    let e = expect_json(r, 404).await;
    assert_eq!(e["error"]["code"], "model_not_found", "{e}");
    // Bad requests are refused by the API node itself (400), never published.
    for (bad, code) in [
        (json!({"scheduler": "no-such-sampler"}), "unknown_scheduler"),
        (json!({"width": 4096}), "over_limit"),
        (json!({"steps": 0}), "out_of_range"),
    ] {
        let mut body = job("a bee", 2);
        for (k, v) in bad.as_object().unwrap() {
            body[k] = v.clone();
        }
        let e: Value = expect_json(post(&api.at("/v1/jobs"), body).await, 400).await;
        assert_eq!(e["error"]["code"], code, "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_node_without_models_takes_image_jobs_on_every_api() {
    let nats = NatsServer::start();
    let _worker = worker(&nats, &[]);
    let api = model_less_api_node(&nats, &[]);
    let embedded = ServeProcess::start(&[]);
    wait_until("the API node hears a worker", || async {
        let body = get_json(&api.at("/v1/pipelines")).await;
        (!body["pipelines"].as_array()?.is_empty()).then_some(())
    })
    .await;
    // Native img2img and inpainting: the picture (640x640, sent as it came: the worker
    // resizes it) gives the embedded server's pixels.
    let init = b64(&noise());
    let img2img = image_jobs_match_embedded(&api.url, &embedded.url, &init).await;
    // The job shows its mode and strength; without a size it takes the picture's.
    let mut no_size = img2img.clone();
    no_size.as_object_mut().unwrap().remove("width");
    no_size.as_object_mut().unwrap().remove("height");
    no_size["init_image"] = b64(&make_png(72, 40, 3, |_, _| [90, 140, 200, 255])).into();
    let id = submit(&api.url, no_size).await;
    let done = wait_status(&api.url, &id, "completed").await;
    let p = &done["parameters"];
    assert_eq!(
        (&p["mode"], &p["strength"]),
        (&json!("img2img"), &json!(0.6)),
        "{done}"
    );
    assert_eq!(
        (&p["width"], &p["height"]),
        (&json!(72), &json!(40)),
        "{done}"
    );
    let png = get(&api.at(&format!("/v1/jobs/{id}/images/0"))).await;
    assert_eq!(Png::decode(&png.bytes().await.unwrap()).size(), (72, 40));
    // AUTOMATIC1111's blocking img2img.
    let r = post(
        &api.at("/sdapi/v1/img2img"),
        json!({"init_images": [init], "prompt": "a red fox", "steps": 3, "seed": 3,
               "denoising_strength": 0.5, "width": 64, "height": 64}),
    )
    .await;
    let body = expect_json(r, 200).await;
    assert_eq!(body["parameters"]["denoising_strength"], 0.5, "{body}");
    let png = Png::decode(&unb64(body["images"][0].as_str().unwrap()));
    assert_eq!(png.size(), (64, 64));
    // OpenAI's edits, with a mask.
    let fields = [
        ("prompt", "a red fox"),
        ("size", "64x64"),
        ("response_format", "b64_json"),
        ("model", "tiny-sd"),
        ("steps", "3"),
    ];
    let picture = noise();
    // Transparent (repaint) on the left half.
    let mask = make_png(
        640,
        640,
        4,
        |x, _| {
            if x < 320 {
                [0; 4]
            } else {
                [0, 0, 0, 255]
            }
        },
    );
    let body = multipart(&[("image", &picture), ("mask", &mask)], &fields);
    let r = post_multipart(&api.at("/v1/images/edits"), body).await;
    let answer = expect_json(r, 200).await;
    let png = Png::decode(&unb64(answer["data"][0]["b64_json"].as_str().unwrap()));
    assert_eq!(png.size(), (64, 64));
    // A strength out of range is refused by the node itself.
    let mut bad = img2img;
    bad["strength"] = json!(1.5);
    let e = expect_json(post(&api.at("/v1/jobs"), bad).await, 400).await;
    assert_eq!(e["error"]["code"], "out_of_range", "{e}");
}
