//! A1111 img2img and inpainting, and OpenAI edits with a multipart image.

use common::images::changed_pixels;
use common::server::{multipart, post_multipart};

use super::*;

/// A 64x64 mask: `left` on the left half, `right` on the right half.
fn halves(channels: usize, left: [u8; 4], right: [u8; 4]) -> Vec<u8> {
    make_png(64, 64, channels, |x, _| if x < 32 { left } else { right })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1111_img2img_round_trips_at_the_requested_size() {
    let server = TestServer::start(config()).await;
    // Image to image from a 48x40 picture (a data URL) to 64x64, cropped.
    let init = format!("data:image/png;base64,{}", b64(&picture(48, 40)));
    let response = post(
        &server.at("/sdapi/v1/img2img"),
        json!({"init_images": [init], "prompt": "a red fox", "steps": 4, "seed": 3,
               "denoising_strength": 0.5, "width": 64, "height": 64, "resize_mode": 1,
               "enable_hr": false}),
    )
    .await;
    let body = expect_json(response, 200).await;
    assert_eq!(a1111_image(&body).size(), (64, 64));
    assert_eq!(body["parameters"]["denoising_strength"], 0.5);
    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["denoising_strength"], 0.5);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1111_and_native_inpainting_keep_what_the_mask_keeps() {
    let server = TestServer::start(config()).await;
    let url = server.at("/sdapi/v1/img2img");
    // Inpainting the left half (white in the mask), whole picture, latent noise.
    let init = b64(&picture(64, 64));
    let mask = b64(&halves(3, [255; 4], [0, 0, 0, 255]));
    let request = |extra: Value| {
        let mut r = json!({"init_images": [init], "mask": mask, "prompt": "a red fox",
                           "steps": 4, "seed": 3, "denoising_strength": 1.0,
                           "width": 64, "height": 64, "mask_blur": 0});
        r.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        r
    };
    let body = expect_json(
        post(&url, request(json!({"inpainting_fill": 2}))).await,
        200,
    )
    .await;
    let inpainted = a1111_image(&body).image;
    assert_eq!((inpainted.width, inpainted.height), (64, 64));
    // Outside the mask the picture is pasted back unchanged (ordinary-model inpainting).
    let original = Png::decode(&picture(64, 64)).image;
    let kept = changed_pixels(&inpainted, &original, 1, |x, _| x >= 32);
    assert_eq!(kept, 0, "pixels outside the mask changed");
    assert!(changed_pixels(&inpainted, &original, 1, |x, _| x < 32) > 0);
    // Only masked, with padding and an inverted mask; original content.
    let only_masked = json!({"inpaint_full_res": true, "inpaint_full_res_padding": 4,
                             "inpainting_mask_invert": 1, "inpainting_fill": 1});
    let body = expect_json(post(&url, request(only_masked)).await, 200).await;
    assert_eq!(a1111_image(&body).size(), (64, 64));
    // Latent nothing is refused by name.
    let response = post(&url, request(json!({"inpainting_fill": 3}))).await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("inpainting_fill"));

    // The native jobs API: inpaint with a mask, base64.
    let id = submit(
        &server.url,
        json!({"pipeline": "tiny-sd", "prompt": "a fox", "steps": 4, "seed": 1,
               "init_image": init, "mask": mask, "strength": 0.5, "masked_content": "fill"}),
    )
    .await;
    let job = wait_status(&server.url, &id, "completed").await;
    assert_eq!(job["parameters"]["mode"], "inpaint");
    assert_eq!(job["parameters"]["strength"], 0.5);
    let png = get(&server.at(&format!("/v1/jobs/{id}/images/0"))).await;
    assert_eq!(Png::decode(&png.bytes().await.unwrap()).size(), (64, 64));
    server.stop().await;
}

/// Inpainting input that can only fail is refused before a job is accepted (issue 20,
/// findings 5 and 7): an unbounded padding on the native route, an all-black mask with only the
/// masked area repainted (native and the blocking A1111 route). Nothing is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inpainting_that_cannot_run_is_refused_at_validation() {
    let server = TestServer::start(config()).await;
    let init = b64(&picture(64, 64));
    let half = b64(&halves(3, [255; 4], [0, 0, 0, 255]));
    let black = b64(&halves(3, [0, 0, 0, 255], [0, 0, 0, 255]));
    let native = |mask: &str, padding: Value| {
        json!({"pipeline": "tiny-sd", "prompt": "a fox", "steps": 4, "init_image": init,
               "mask": mask, "inpaint_area": "masked", "inpaint_padding": padding})
    };
    for (what, body, needle) in [
        (
            "padding past the cap",
            native(&half, json!(u64::MAX)),
            "inpaint_padding",
        ),
        (
            "padding 4097",
            native(&half, json!(4097)),
            "inpaint_padding",
        ),
        (
            "all-black mask",
            native(&black, json!(32)),
            "nothing to repaint",
        ),
    ] {
        let response = post(&server.at("/v1/jobs"), body).await;
        let body = expect_json(response, 400).await;
        let message = body["error"].to_string();
        assert!(message.contains(needle), "{what}: {message}");
    }
    let a1111 = json!({"init_images": [init], "mask": black, "prompt": "a fox", "steps": 4,
                       "width": 64, "height": 64, "inpaint_full_res": true});
    let response = post(&server.at("/sdapi/v1/img2img"), a1111).await;
    let body = expect_json(response, 400).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("nothing to repaint"),
        "{body}"
    );
    assert_eq!(server.service.jobs.len(), 0, "nothing was accepted");
    server.stop().await;
}

/// POSTs a multipart body to `/v1/images/edits`.
async fn edit(server: &TestServer, body: Vec<u8>) -> reqwest::Response {
    post_multipart(&server.at("/v1/images/edits"), body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_edits_take_a_raw_multipart_image_and_transparent_mask() {
    let server = TestServer::start(config()).await;
    let image = picture(64, 64);
    // Transparent (repaint) on the left half, opaque (keep) on the right.
    let mask = halves(4, [0, 0, 0, 0], [0, 0, 0, 255]);
    let fields = [
        ("prompt", "a red fox"),
        ("n", "1"),
        ("size", "64x64"),
        ("response_format", "b64_json"),
        ("model", "tiny-sd"),
        ("steps", "3"),
        ("seed", "5"),
    ];
    let body = multipart(&[("image", &image), ("mask", &mask)], &fields);
    let answer = expect_json(edit(&server, body).await, 200).await;
    let edited = Png::decode(&unb64(answer["data"][0]["b64_json"].as_str().unwrap())).image;
    assert_eq!((edited.width, edited.height), (64, 64));
    let original = Png::decode(&image).image;
    let changed = |left: bool| changed_pixels(&edited, &original, 1, |x, _| (x < 32) == left);
    assert_eq!(changed(false), 0, "opaque mask pixels are kept");
    assert!(changed(true) > 0, "transparent mask pixels are repainted");

    // A non-image part is a 400 naming the field.
    let bad = multipart(&[("image", b"not a picture")], &[("prompt", "x")]);
    let response = edit(&server, bad).await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("image"));
    server.stop().await;
}
