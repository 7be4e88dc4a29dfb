//! Image-to-image and inpainting jobs over NATS: their picture and mask travel through the
//! `BEESWAX_INPUTS` object store (a picture past NATS's 1 MB payload limit), the worker runs them
//! as the embedded server does, and the inputs are deleted once the job has finished.

use common::images::{changed_pixels, make_png};
use common::server::{b64, wait_until, ServeProcess};
use futures_util::StreamExt;

use super::*;

/// A 640x640 picture of noise: about 1.2 MB as PNG, more than one NATS message may carry.
pub(super) fn noise() -> Vec<u8> {
    make_png(640, 640, 3, |x, y| {
        let h =
            (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)).wrapping_mul(2_246_822_519);
        [(h >> 8) as u8, (h >> 16) as u8, (h >> 24) as u8, 255]
    })
}

/// A 640x640 mask, white (repaint) on the left half.
pub(super) fn left_half() -> Vec<u8> {
    make_png(
        640,
        640,
        3,
        |x, _| if x < 320 { [255; 4] } else { [0, 0, 0, 255] },
    )
}

/// Runs the native job `body` on the server at `base` and returns its first image.
pub(super) async fn image_of(base: &str, body: Value) -> Png {
    let id = submit(base, body).await;
    wait_status(base, &id, "completed").await;
    let png = get(&format!("{base}/v1/jobs/{id}/images/0")).await;
    assert_eq!(png.status(), 200);
    Png::decode(&png.bytes().await.unwrap())
}

/// Runs a native img2img and an inpainting job of the picture `init` (base64) on the servers at
/// `fleet` and `embedded` and asserts the same pixels; returns the img2img body.
pub(super) async fn image_jobs_match_embedded(fleet: &str, embedded: &str, init: &str) -> Value {
    let img2img = json!({"pipeline": "tiny-sd", "prompt": "a fox", "steps": 3, "seed": 5,
                         "init_image": init, "strength": 0.6, "width": 64, "height": 64});
    let mut inpaint = img2img.clone();
    inpaint["mask"] = b64(&left_half()).into();
    inpaint["masked_content"] = "fill".into();
    for (what, body) in [("img2img", img2img.clone()), ("inpaint", inpaint)] {
        let remote = image_of(fleet, body.clone()).await;
        let local = image_of(embedded, body).await;
        assert_eq!(remote.size(), (64, 64), "{what}");
        let differ = changed_pixels(&remote.image, &local.image, 1, |_, _| true);
        assert_eq!(
            differ, 0,
            "{what}: {differ} pixels differ from embedded mode"
        );
        assert!(
            remote.parameters.contains("Denoising strength: 0.6"),
            "{what}: {}",
            remote.parameters
        );
    }
    img2img
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_jobs_run_on_a_worker_as_in_embedded_mode_and_their_inputs_go_afterwards() {
    let picture = noise();
    assert!(picture.len() > 1 << 20, "{} bytes", picture.len());
    let nats = NatsServer::start();
    let api = api_node(&nats, &[]);
    let _worker = worker(&nats, &[]);
    let embedded = ServeProcess::start(&[]);
    let init = b64(&picture);
    image_jobs_match_embedded(&api.url, &embedded.url, &init).await;
    // AUTOMATIC1111's blocking img2img through the API node.
    let r = post(
        &api.at("/sdapi/v1/img2img"),
        json!({"init_images": [init], "prompt": "a red fox", "steps": 3, "seed": 3,
               "denoising_strength": 0.5, "width": 64, "height": 64}),
    )
    .await;
    let body = expect_json(r, 200).await;
    assert_eq!(body["parameters"]["denoising_strength"], 0.5);
    // Every input picture and mask goes from the object store (right after the final record).
    let js = jetstream(&nats).await;
    let inputs = js.get_object_store("BEESWAX_INPUTS").await.unwrap();
    wait_until("the inputs deleted", || async {
        let mut listed = inputs.list().await.unwrap();
        let mut left = Vec::new();
        while let Some(object) = listed.next().await {
            left.push(object.unwrap().name);
        }
        left.is_empty().then_some(())
    })
    .await;
}
