//! LoRAs over HTTP, A1111 img2img and inpainting, and OpenAI edits with a multipart image.

use super::*;

/// A server on the test manifests plus a `[[lora]]` entry `fox-style` (the kohya fixture), a
/// `[[lora_set]]` `foxy` of it at 0.8, and a `[[pipeline]]` `tiny-foxy` that applies `foxy`.
async fn start_with_loras() -> TestServer {
    let turn = Turn::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let m = manifests(dir.path());
    let lora = fixture("lora/tiny-sd/kohya.safetensors");
    std::fs::write(
        m.join("zz-loras.toml"),
        format!(
            "[[lora]]\nname = \"fox-style\"\npath = \"{}\"\n\n[[lora_set]]\nname = \"foxy\"\n\
             loras = [{{ name = \"fox-style\", weight = 0.8 }}]\n\n[[pipeline]]\n\
             name = \"tiny-foxy\"\npack = \"tiny-sd\"\nlora_set = \"foxy\"\n",
            lora.display().to_string().replace('\\', "/")
        ),
    )
    .unwrap();
    let extensions = Extensions::builtin();
    let catalog = load_catalog(&m, config().limits, &extensions).unwrap();
    let service = Service::start(catalog, extensions, config()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, service.clone(), async {
        let _ = rx.await;
    }));
    TestServer {
        url,
        service,
        stop: Some(stop),
        task,
        _dir: dir,
        _turn: turn,
    }
}

/// Runs a native job to the end: its first image's (pixels, `parameters`).
async fn native_image(server: &TestServer, body: Value) -> (Vec<u8>, String) {
    let response = post(&server.at("/v1/jobs"), body).await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = wait_status(server, &id, "completed").await;
    let url = done["images"][0].as_str().unwrap();
    let png = client()
        .get(server.at(url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let (_, _, pixels, params) = decode_png(&png);
    (pixels, params)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loras_by_field_and_a1111_prompt_tag_match_the_library() {
    let server = start_with_loras().await;
    let fox = json!([{"name": "fox-style", "weight": 0.8}]);
    let base_body = json!({"pipeline": "tiny-sd", "prompt": "a red fox", "steps": 4, "seed": 3});
    let mut lora_body = base_body.clone();
    lora_body["loras"] = fox;
    let (with_lora, params) = native_image(&server, lora_body).await;
    assert!(
        params.starts_with("a red fox <lora:fox-style:0.8>\nSteps: 4"),
        "{params}"
    );

    // The library's result: the same LoRA applied to a freshly loaded model.
    let model = common::model("tiny-sd");
    let jl = beeswax::lora::prepare_job(
        server.service.catalog.loras(),
        "a red fox",
        &[beeswax::lora::LoraRequest {
            name: "fox-style".into(),
            weight: Some(0.8),
        }],
        false,
    )
    .unwrap();
    let applied = beeswax::lora::apply(&model, &jl.loras).unwrap();
    let pack = server.service.catalog.get("tiny-sd").unwrap();
    let job = resolve(
        &applied.model,
        &pack.defaults,
        &common::registry(),
        JobRequest {
            prompt: jl.prompt.clone(),
            steps: Some(4),
            seed: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    let reference = common::run(&applied.model, &job);
    assert_eq!(
        with_lora, reference.images[0].data,
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
    assert_eq!(r.status(), 200);
    let r: Value = r.json().await.unwrap();
    let png = base64::engine::general_purpose::STANDARD
        .decode(r["images"][0].as_str().unwrap())
        .unwrap();
    let (_, _, a1111, a1111_params) = decode_png(&png);
    assert!(
        a1111_params.starts_with("a red fox <lora:fox-style:0.8>\n"),
        "{a1111_params}"
    );
    assert_eq!(a1111, with_lora, "tag and field give the same image");
    // A pipeline's `lora_set` applies to every job.
    let mut foxy = base_body.clone();
    foxy["pipeline"] = json!("tiny-foxy");
    let (pipeline_set, _) = native_image(&server, foxy).await;
    assert_eq!(pipeline_set, with_lora, "the pipeline's lora_set");

    // Unknown names are a 400 listing the known ones, by field or by tag; so is a bad weight.
    let mut unknown = base_body.clone();
    unknown["loras"] = json!([{"name": "no-such-lora"}]);
    let r = post(&server.at("/v1/jobs"), unknown).await;
    assert_eq!(r.status(), 400);
    let message = r.json::<Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("unknown LoRA `no-such-lora`")
            && message.contains("known LoRAs: fox-style"),
        "{message}"
    );
    let r = post(
        &server.at("/sdapi/v1/txt2img"),
        json!({"prompt": "a fox <lora:nope:1>", "steps": 2}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let detail = r.json::<Value>().await.unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.contains("unknown LoRA `nope`") && detail.contains("fox-style"),
        "{detail}"
    );
    let mut heavy = base_body.clone();
    heavy["loras"] = json!([{"name": "fox-style", "weight": 9.0}]);
    let r = post(&server.at("/v1/jobs"), heavy).await;
    assert_eq!(r.status(), 400);
    let message = r.json::<Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("outside the allowed range -5 to 5"),
        "{message}"
    );
    // A file path on the server is not a catalog name: refused the same way.
    let mut path = base_body.clone();
    path["loras"] = json!([{"name": fixture("lora/tiny-sd/kohya.safetensors")}]);
    assert_eq!(post(&server.at("/v1/jobs"), path).await.status(), 400);

    // The server still serves, and the next job without LoRAs is the base image.
    let (base, params) = native_image(&server, base_body).await;
    assert!(params.starts_with("a red fox\nSteps: 4"), "{params}");
    assert_ne!(base, with_lora, "the LoRA changes the image");
    let job = resolve(
        &model,
        &pack.defaults,
        &common::registry(),
        JobRequest {
            prompt: "a red fox".into(),
            steps: Some(4),
            seed: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    let reference = common::run(&model, &job);
    assert_eq!(
        base, reference.images[0].data,
        "the base model is untouched"
    );
    server.stop().await;

    // A pipeline naming a LoRA set the manifests lack does not load, naming the file, line and
    // field, the set and the known ones.
    let dir = tempfile::tempdir().unwrap();
    let m = manifests(dir.path());
    std::fs::write(
        m.join("zz-bad.toml"),
        "[[pipeline]]\nname = \"bad\"\npack = \"tiny-sd\"\nlora_set = \"nope\"\n",
    )
    .unwrap();
    let err = load_catalog(&m, Limits::default(), &Extensions::builtin())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("zz-bad.toml:4: `pipeline.lora_set` of [[pipeline]] `bad`")
            && err.contains("`nope`")
            && err.contains("known: (none)"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1111_img2img_and_inpaint_round_trips_at_the_requested_size() {
    let server = TestServer::start(config()).await;
    let url = server.at("/sdapi/v1/img2img");
    // Image to image from a 48x40 picture (a data URL) to 64x64, cropped.
    let init = format!("data:image/png;base64,{}", b64(&picture(48, 40)));
    let response = post(
        &url,
        json!({"init_images": [init], "prompt": "a red fox", "steps": 4, "seed": 3,
               "denoising_strength": 0.5, "width": 64, "height": 64, "resize_mode": 1,
               "enable_hr": false}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let (w, h, img2img, _) = a1111_image(&body);
    assert_eq!((w, h), (64, 64));
    assert_eq!(body["parameters"]["denoising_strength"], 0.5);
    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["denoising_strength"], 0.5);

    // Inpainting the left half (white in the mask), whole picture, latent noise.
    let init = b64(&picture(64, 64));
    let mask = b64(&make_png(64, 64, 3, |x, _| {
        if x < 32 {
            [255; 4]
        } else {
            [0, 0, 0, 255]
        }
    }));
    let request = |extra: Value| {
        let mut r = json!({"init_images": [init], "mask": mask, "prompt": "a red fox",
                           "steps": 4, "seed": 3, "denoising_strength": 1.0,
                           "width": 64, "height": 64, "mask_blur": 0});
        r.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        r
    };
    let response = post(&url, request(json!({"inpainting_fill": 2}))).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let (w, h, inpainted, _) = a1111_image(&body);
    assert_eq!((w, h), (64, 64));
    assert_ne!(inpainted, img2img);
    // Outside the mask the picture is pasted back unchanged (ordinary-model inpainting).
    let (_, _, original, _) = decode_png(&picture(64, 64));
    for y in 0..64 {
        for x in 32..64 {
            for c in 0..3 {
                let i = (y * 64 + x) * 3 + c;
                let d = (inpainted[i] as i32 - original[i] as i32).abs();
                assert!(d <= 1, "pixel ({x}, {y}) changed by {d}");
            }
        }
    }
    // Only masked, with padding and an inverted mask; original content.
    let response = post(
        &url,
        request(
            json!({"inpaint_full_res": true, "inpaint_full_res_padding": 4,
                       "inpainting_mask_invert": 1, "inpainting_fill": 1}),
        ),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(a1111_image(&body).0, 64);
    // Latent nothing is refused by name.
    let response = post(&url, request(json!({"inpainting_fill": 3}))).await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("inpainting_fill"));

    // The native jobs API: inpaint with a mask, base64.
    let response = post(
        &server.at("/v1/jobs"),
        json!({"pipeline": "tiny-sd", "prompt": "a fox", "steps": 4, "seed": 1,
               "init_image": init, "mask": mask, "strength": 0.5, "masked_content": "fill"}),
    )
    .await;
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let job = wait_status(&server, &id, "completed").await;
    assert_eq!(job["parameters"]["mode"], "inpaint");
    assert_eq!(job["parameters"]["strength"], 0.5);
    let png = client()
        .get(server.at(&format!("/v1/jobs/{id}/images/0")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(decode_png(&png).0, 64);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_edits_take_a_raw_multipart_image_and_transparent_mask() {
    let server = TestServer::start(config()).await;
    let image = picture(64, 64);
    // Transparent (repaint) on the left half, opaque (keep) on the right.
    let mask = make_png(64, 64, 4, |x, _| {
        if x < 32 {
            [0, 0, 0, 0]
        } else {
            [0, 0, 0, 255]
        }
    });
    let boundary = "beeswax-test-boundary";
    let mut body = Vec::new();
    let mut file = |name: &str, bytes: &[u8]| {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                 filename=\"{name}.png\"\r\nContent-Type: image/png\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    };
    file("image", &image);
    file("mask", &mask);
    for (name, value) in [
        ("prompt", "a red fox"),
        ("n", "1"),
        ("size", "64x64"),
        ("response_format", "b64_json"),
        ("model", "tiny-sd"),
        ("steps", "3"),
        ("seed", "5"),
    ] {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let response = client()
        .post(server.at("/v1/images/edits"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    let png = base64::engine::general_purpose::STANDARD
        .decode(answer["data"][0]["b64_json"].as_str().unwrap())
        .unwrap();
    let (w, h, edited, _) = decode_png(&png);
    assert_eq!((w, h), (64, 64));
    let (_, _, original, _) = decode_png(&image);
    let changed = |xs: std::ops::Range<usize>| {
        (0..64usize)
            .flat_map(|y| xs.clone().map(move |x| (y * 64 + x) * 3))
            .filter(|&i| (0..3).any(|c| (edited[i + c] as i32 - original[i + c] as i32).abs() > 1))
            .count()
    };
    assert_eq!(changed(32..64), 0, "opaque mask pixels are kept");
    assert!(changed(0..32) > 0, "transparent mask pixels are repainted");

    // A non-image part is a 400 naming the field.
    let bad = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n\r\nnot a picture\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nx\r\n--{boundary}--\r\n"
    );
    let response = client()
        .post(server.at("/v1/images/edits"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(bad)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("image"));
    server.stop().await;
}
