//! Browser tests of pictures: an inpainting mask painted in the page and outpainting; the
//! gallery's lightbox, arrow keys, reuse of parameters and send to inpaint.

use super::*;

/// Captures the bodies the page posts to /v1/jobs.
const CAPTURE_POSTS: &str = r#"
window.__posts = [];
const real = window.fetch;
window.fetch = (url, init) => {
  if (String(url).endsWith('/v1/jobs') && init && init.method === 'POST') window.__posts.push(JSON.parse(init.body));
  return real(url, init);
};
"#;

/// The gray level of mask pixel (x, y) of the last posted job (async script).
const MASK_PIXELS: &str = r#"
const [points, done] = [arguments[0], arguments[arguments.length - 1]];
const img = new Image();
img.onload = () => {
  const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
  const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(0, 0, img.width, img.height).data;
  done({size: [img.width, img.height], values: points.map(([x, y]) => data[(y * img.width + x) * 4])});
};
img.src = window.__posts[window.__posts.length - 1].mask;
"#;

#[tokio::test]
#[ignore = "needs: browser (chromium + chromedriver)"]
async fn a_painted_mask_is_sent_with_the_inpainting_job() {
    let _one = ONE_BROWSER.lock().await;
    let server = Server::start(&[]);
    let browser = Browser::start(1280, 1000).await;
    open(&browser, &server).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("start.png");
    std::fs::write(&file, gradient_png(96, 64)).unwrap();
    browser.click("#picture-section > summary").await;
    browser
        .type_into("#init-file", file.to_str().unwrap())
        .await;
    browser
        .wait_for(
            "the picture",
            "return !document.getElementById('picture-tools').hidden && document.getElementById('width').value === '96'",
            LONG,
        )
        .await;
    browser
        .click("input[name=\"picture-mode\"][value=\"inpaint\"]")
        .await;
    browser.fill("#mask_blur", "0").await;
    // A horizontal stroke across the left half of the picture, in its middle row.
    let css_width = browser
        .eval(
            "return document.getElementById('mask-canvas').getBoundingClientRect().width",
            json!([]),
        )
        .await
        .as_f64()
        .unwrap();
    let (from, to) = (-(css_width * 0.4) as i64, -(css_width * 0.1) as i64);
    browser
        .drag("#mask-canvas", &[(from, 0), ((from + to) / 2, 0), (to, 0)])
        .await;
    browser.eval(CAPTURE_POSTS, json!([])).await;
    set_prompt(&browser, "a fox in the hole", 6).await;
    browser.click("#generate").await;
    let id = newest_job(&browser, 1).await;
    let posted = browser.eval("return window.__posts[0]", json!([])).await;
    assert!(posted["init_image"]
        .as_str()
        .unwrap()
        .starts_with("data:image/png;base64,"));
    assert_eq!(posted["mask_blur"], 0);
    assert_eq!(
        (posted["width"].clone(), posted["height"].clone()),
        (json!(96), json!(64))
    );
    // In picture pixels: the stroke runs from x ≈ 10 to 38 on row 32.
    let mask = browser
        .cmd(
            "POST",
            "/execute/async",
            json!({"script": MASK_PIXELS, "args": [[[20, 32], [30, 32], [80, 32], [20, 2], [90, 60]]]}),
        )
        .await;
    assert_eq!(mask["size"], json!([96, 64]));
    assert_eq!(
        mask["values"],
        json!([255, 255, 0, 0, 0]),
        "white under the stroke only"
    );
    wait_card(&browser, &id, "completed").await;
    let job = get_json(&server.at(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(job["parameters"]["mode"], "inpaint");

    // Outpainting: 32 px more on the right, the new border painted into the mask.
    browser.fill("#out-right", "32").await;
    browser.click("#outpaint-apply").await;
    browser
        .wait_for(
            "the wider canvas",
            "return document.getElementById('width').value === '128'",
            LONG,
        )
        .await;
    browser.click("#generate").await;
    let id = newest_job(&browser, 2).await;
    let mask = browser
        .cmd(
            "POST",
            "/execute/async",
            json!({"script": MASK_PIXELS, "args": [[[120, 10], [100, 60], [20, 32], [60, 5]]]}),
        )
        .await;
    assert_eq!(mask["size"], json!([128, 64]));
    assert_eq!(mask["values"], json!([255, 255, 255, 0]));
    let posted = browser.eval("return window.__posts[1]", json!([])).await;
    assert_eq!(posted["masked_content"], "fill");
    wait_card(&browser, &id, "completed").await;
    let job = get_json(&server.at(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(job["parameters"]["width"], 128);
    browser.assert_clean_console(&[]).await;
}

#[tokio::test]
#[ignore = "needs: browser (chromium + chromedriver)"]
async fn gallery_images_open_large_and_their_parameters_fill_the_form() {
    let _one = ONE_BROWSER.lock().await;
    let server = Server::start(&[]);
    let browser = Browser::start(1600, 1000).await;
    open(&browser, &server).await;
    set_prompt(&browser, "reuse me", 7).await;
    browser.fill("#guidance", "5").await;
    browser.fill("#seed", "1234").await;
    browser.fill("#batch", "2").await;
    browser
        .eval(
            "document.getElementById('scheduler').value = 'dpmpp_2m'; document.getElementById('schedule').value = 'karras';",
            json!([]),
        )
        .await;
    browser.click("#lora-add").await;
    browser.fill(".lora-weight", "0.5").await;
    browser.click("#generate").await;
    let id = newest_job(&browser, 1).await;
    wait_card(&browser, &id, "completed").await;
    browser
        .wait_for(
            "two gallery images",
            "return document.querySelectorAll('#gallery li').length === 2",
            LONG,
        )
        .await;
    // Change everything, then take it back from the first image.
    set_prompt(&browser, "something else", 20).await;
    browser.fill("#seed", "-1").await;
    browser.fill("#guidance", "9").await;
    browser.click(".lora-row button").await;
    browser
        .click(&format!("#gallery li[data-key=\"{id}/0\"] button"))
        .await;
    browser
        .wait_for(
            "the lightbox",
            "return document.getElementById('lightbox').open && document.getElementById('lb-img').naturalWidth > 0",
            LONG,
        )
        .await;
    let info = browser
        .eval(
            "return document.getElementById('lb-info').textContent",
            json!([]),
        )
        .await;
    let info = info.as_str().unwrap();
    assert!(info.starts_with("reuse me <lora:fox-style:0.5>"), "{info}");
    assert!(
        info.contains("Seed: 1234") && info.contains("Steps: 7"),
        "{info}"
    );
    // Arrow keys move between images.
    browser.press("\u{E014}").await;
    browser
        .wait_for(
            "the second image",
            "return document.getElementById('lb-info').textContent.includes('Seed: 1235')",
            LONG,
        )
        .await;
    browser.press("\u{E012}").await;
    browser
        .wait_for(
            "the first image again",
            "return document.getElementById('lb-info').textContent.includes('Seed: 1234')",
            LONG,
        )
        .await;
    browser.click("#lb-copy-params").await;
    browser
        .wait_for(
            "a copy note",
            "return document.getElementById('lb-note').textContent.includes('op')",
            LONG,
        )
        .await;
    browser.click("#lb-reuse").await;
    let form = browser
        .eval(
            "const v = (id) => document.getElementById(id).value; return {prompt: v('prompt'), seed: v('seed'), steps: v('steps'), guidance: v('guidance'), scheduler: v('scheduler'), schedule: v('schedule'), width: v('width'), loras: [...document.querySelectorAll('.lora-row')].map(r => [r.querySelector('select').value, r.querySelector('input').value]), open: document.getElementById('lightbox').open}",
            json!([]),
        )
        .await;
    assert_eq!(
        form,
        json!({"prompt": "reuse me", "seed": "1234", "steps": "7", "guidance": "5",
               "scheduler": "dpmpp_2m", "schedule": "karras", "width": "64",
               "loras": [["fox-style", "0.5"]], "open": false})
    );
    // "Send to inpaint" loads the image as the starting picture.
    browser
        .click(&format!("#gallery li[data-key=\"{id}/1\"] button"))
        .await;
    browser.click("#lb-inpaint").await;
    browser
        .wait_for(
            "the picture from the gallery",
            "return !document.getElementById('picture-tools').hidden && document.getElementById('mode-badge').textContent === 'inpaint' && document.getElementById('picture-canvas').width === 64",
            LONG,
        )
        .await;
    browser.assert_clean_console(&[]).await;
}
