//! Pictures clients send (issue 20, finding 1): the pixel limit follows the server's
//! `--max-width`/`--max-height` (a 700-byte JPEG claiming 7000x7000 is refused before decoding,
//! saying which limit and how to raise it), and a truncated picture is a 400 naming its field.

use super::*;

/// A small JPEG whose frame header claims `width` x `height` (its data is an 8x8 one's).
fn lying_jpeg(width: u16, height: u16) -> Vec<u8> {
    let picture =
        image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([x as u8 * 30, y as u8 * 30, 9]));
    let mut bytes = std::io::Cursor::new(Vec::new());
    picture
        .write_to(&mut bytes, image::ImageFormat::Jpeg)
        .unwrap();
    let mut bytes = bytes.into_inner();
    let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    bytes[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_bomb_is_refused_from_the_server_limits_and_truncation_is_a_400() {
    let server = TestServer::start(config()).await;
    let bomb = lying_jpeg(7000, 7000);
    assert!(bomb.len() < 1000, "{} bytes", bomb.len());
    let job = |init: &[u8]| {
        json!({"prompt": "a red fox", "steps": 2, "width": 64, "height": 64,
               "init_image": b64(init)})
    };
    let body = expect_json(post(&server.at("/v1/jobs"), job(&bomb)).await, 413).await;
    let error = &body["error"];
    assert_eq!(error["param"], "init_image");
    assert_eq!(error["code"], "image_too_large");
    let message = error["message"].as_str().unwrap();
    for part in ["7000x7000", "2048x2048", "16777216", "--max-width"] {
        assert!(message.contains(part), "{part}: {message}");
    }

    // A truncated PNG, on the A1111 route: 400 naming the field.
    let whole = picture(64, 64);
    let cut = &whole[..whole.len() - 20];
    let response = post(
        &server.at("/sdapi/v1/img2img"),
        json!({"init_images": [b64(cut)], "prompt": "a red fox", "steps": 2,
               "width": 64, "height": 64}),
    )
    .await;
    let body = expect_json(response, 400).await;
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("init_images[0]") && detail.contains("truncated"),
        "{detail}"
    );
    server.stop().await;
}
