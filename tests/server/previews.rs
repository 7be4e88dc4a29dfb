//! Packs with a tiny autoencoder (TAESD): live previews are its decodings of the latents, at
//! image size, on the native jobs API and AUTOMATIC1111's `/sdapi/v1/progress`; `preview =
//! "latent2rgb"` keeps the family's latent-sized map.

use super::*;
use common::command::{pack_toml, toml_path, TINY_SD_DEFAULTS};

/// tiny-sd packs: `tiny-taesd` decodes with the mini TAESD (previews default to it),
/// `tiny-taesd-preview` keeps its VAE and previews with the TAESD, `tiny-latent2rgb` decodes
/// with the TAESD and previews by the latent map.
fn taesd_packs() -> [(&'static str, String); 3] {
    let taesd = toml_path(&common::fixture("models/taesd-mini"));
    let pack = |name: &str, extra: &str| {
        let text = pack_toml(name, "tiny-sd", TINY_SD_DEFAULTS);
        text.replacen(
            "\n\n[pack.defaults]",
            &format!("\n{extra}\n\n[pack.defaults]"),
            1,
        )
    };
    [
        ("taesd.toml", pack("tiny-taesd", &format!("vae = {taesd}"))),
        (
            "taesd-preview.toml",
            pack("tiny-taesd-preview", &format!("preview_vae = {taesd}")),
        ),
        (
            "latent2rgb.toml",
            pack(
                "tiny-latent2rgb",
                &format!("vae = {taesd}\npreview = \"latent2rgb\""),
            ),
        ),
    ]
}

/// The server with [`taesd_packs`].
async fn taesd_server() -> TestServer {
    let packs = taesd_packs();
    let extra: Vec<(&str, &str)> = packs.iter().map(|(n, t)| (*n, t.as_str())).collect();
    TestServer::start_with(config(), &extra).await
}

/// The previews of a native job's progress events, decoded.
async fn job_previews(server: &TestServer, pipeline: &str) -> (Vec<Png>, Png) {
    let body = json!({"pipeline": pipeline, "prompt": "a red fox", "steps": 4, "seed": 5,
                      "preview_every": 2});
    let id = submit(&server.url, body).await;
    let events = read_events(
        get(&server.at(&format!("/v1/jobs/{id}/events"))).await,
        |_, _| {},
    )
    .await;
    let previews = events
        .iter()
        .filter(|(n, _)| n == "progress")
        .filter_map(|(_, d)| d["preview"].as_str())
        .map(|url| Png::decode(&unb64(url.strip_prefix("data:image/png;base64,").unwrap())))
        .collect();
    let (name, completed) = events.last().unwrap();
    assert_eq!(name, "completed", "{events:?}");
    let image = get(&server.at(completed["images"][0].as_str().unwrap())).await;
    (previews, Png::decode(&image.bytes().await.unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_with_taesd_preview_by_decoding_the_latents() {
    let server = taesd_server().await;
    let (previews, image) = job_previews(&server, "tiny-taesd").await;
    assert_eq!(previews.len(), 2);
    for p in &previews {
        assert_eq!(p.size(), (64, 64), "a TAESD preview is image-sized");
    }
    // The last step's preview decodes the final latents with the pack's TAESD: the image.
    assert_eq!(previews[1].image.data, image.image.data);
    assert_ne!(previews[0].image.data, image.image.data);

    let (previews, image) = job_previews(&server, "tiny-taesd-preview").await;
    assert_eq!(previews[1].size(), (64, 64));
    assert_ne!(
        previews[1].image.data, image.image.data,
        "the image comes from the pack's own VAE, the preview from the TAESD"
    );

    let (previews, _) = job_previews(&server, "tiny-latent2rgb").await;
    assert_eq!(
        previews[1].size(),
        (8, 8),
        "latent2rgb previews are latent-sized"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1111_progress_shows_taesd_previews() {
    let server = taesd_server().await;
    let body = json!({"prompt": "a red fox", "steps": 150, "width": 64, "height": 64,
                      "override_settings": {"sd_model_checkpoint": "tiny-taesd-preview"}});
    let url = server.at("/sdapi/v1/txt2img");
    let running = tokio::spawn(async move { expect_json(post(&url, body).await, 200).await });
    let progress = server.at("/sdapi/v1/progress");
    let current = wait_until("a current_image in A1111 progress", || async {
        let p = get_json(&progress).await;
        p["current_image"].as_str().map(|s| Png::decode(&unb64(s)))
    })
    .await;
    assert_eq!(
        current.size(),
        (64, 64),
        "a TAESD preview, not the latent map"
    );
    running.await.unwrap();
    server.stop().await;
}
