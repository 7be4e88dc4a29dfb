//! Browser tests of the page itself: the API key prompt, the phone layout and labels.

use super::*;

#[tokio::test]
#[ignore = "needs: browser (chromium + chromedriver)"]
async fn the_page_asks_for_the_api_key_once_and_keeps_it_for_the_tab() {
    let _one = ONE_BROWSER.lock().await;
    let server = Server::start(&["--api-key", "s3cret"]);
    let browser = Browser::start(1280, 900).await;
    browser.goto(&server.at("/")).await;
    browser
        .wait_for(
            "the key dialog",
            "return document.getElementById('key-dialog').open",
            LONG,
        )
        .await;
    browser.fill("#key-input", "wrong").await;
    browser.click("#key-form button[type=submit]").await;
    browser
        .wait_for(
            "the refusal",
            "const e = document.getElementById('key-error'); return document.getElementById('key-dialog').open && !e.hidden && e.textContent.includes('not valid')",
            LONG,
        )
        .await;
    browser.fill("#key-input", "s3cret").await;
    browser.click("#key-form button[type=submit]").await;
    browser
        .wait_for(
            "the page with the key",
            "return !document.getElementById('key-dialog').open && document.body.dataset.ready === 'true' && document.querySelectorAll('#pipeline option').length === 1",
            LONG,
        )
        .await;
    set_prompt(&browser, "behind a key", 4).await;
    browser.click("#generate").await;
    let id = newest_job(&browser, 1).await;
    wait_card(&browser, &id, "completed").await;
    browser
        .wait_for(
            "the image, fetched with the key",
            &format!("const i = document.querySelector('#gallery li[data-key=\"{id}/0\"] img'); return i && i.complete && i.naturalWidth === 64"),
            LONG,
        )
        .await;
    // A reload in the same tab: no dialog, the job is still listed.
    browser.goto(&server.at("/")).await;
    open(&browser, &server).await;
    let state = browser
        .eval(
            &format!("return [document.getElementById('key-dialog').open, !!document.querySelector('.job[data-job-id=\"{id}\"]')]"),
            json!([]),
        )
        .await;
    assert_eq!(state, json!([false, true]));
    // The two refused requests are logged by Chromium as failed loads; nothing else.
    browser
        .assert_clean_console(&["status of 401 (Unauthorized)"])
        .await;
}

#[tokio::test]
#[ignore = "needs: browser (chromium + chromedriver)"]
async fn phone_width_fits_without_horizontal_scrolling_and_every_input_has_a_label() {
    let _one = ONE_BROWSER.lock().await;
    let server = Server::start(&[]);
    let browser = Browser::start(800, 900).await;
    // Headless windows are at least 500 px wide: emulate the phone's viewport instead.
    browser
        .cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
        )
        .await;
    open(&browser, &server).await;
    let width = browser.eval("return window.innerWidth", json!([])).await;
    assert_eq!(width, 390, "the viewport is a phone's");
    let fits = "return document.documentElement.scrollWidth <= window.innerWidth && document.body.scrollWidth <= window.innerWidth";
    assert_eq!(browser.eval(fits, json!([])).await, true);
    // Everything unfolded: LoRA row, picture tools with the mask, advanced fields.
    browser.click("#lora-add").await;
    browser.click("#picture-section > summary").await;
    browser.click("#advanced > summary").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wide.png");
    std::fs::write(&file, gradient_png(256, 96)).unwrap();
    browser
        .type_into("#init-file", file.to_str().unwrap())
        .await;
    browser
        .click("input[name=\"picture-mode\"][value=\"inpaint\"]")
        .await;
    assert_eq!(browser.eval(fits, json!([])).await, true, "unfolded form");
    let unlabelled = browser
        .eval(
            "return [...document.querySelectorAll('input, select, textarea')].filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby')).map(e => e.id || e.outerHTML)",
            json!([]),
        )
        .await;
    assert_eq!(unlabelled, json!([]), "inputs without a label");
    browser.click("#picture-remove").await;
    // The picture set the size to its own; back to the pack's.
    browser.fill("#width", "64").await;
    browser.fill("#height", "64").await;
    browser.eval(RECORDER, json!([])).await;
    set_prompt(&browser, "a fox on a phone", 240).await;
    browser.fill("#preview_every", "4").await;
    browser.click("#generate").await;
    let id = newest_job(&browser, 1).await;
    browser
        .wait_for(
            "a preview",
            &format!("const c = window.__log.cards['{id}']; return c && c.runningPreviews > 0"),
            LONG,
        )
        .await;
    browser
        .eval(
            &format!("document.querySelector('.job[data-job-id=\"{id}\"]').scrollIntoView()"),
            json!([]),
        )
        .await;
    browser.screenshot(&screenshot("phone-running.png")).await;
    wait_card(&browser, &id, "completed").await;
    // Thumbnails load as they scroll into view; on a phone the gallery is below the queue.
    browser
        .eval(
            "document.getElementById('gallery-panel').scrollIntoView()",
            json!([]),
        )
        .await;
    browser
        .wait_for(
            "the gallery image",
            &format!("const i = document.querySelector('#gallery li[data-key=\"{id}/0\"] img'); return i && i.complete && i.naturalWidth === 64"),
            LONG,
        )
        .await;
    browser
        .eval(
            "document.getElementById('jobs-panel').scrollIntoView()",
            json!([]),
        )
        .await;
    browser.screenshot(&screenshot("phone-finished.png")).await;
    assert_eq!(browser.eval(fits, json!([])).await, true, "with jobs");
    browser
        .click(&format!("#gallery li[data-key=\"{id}/0\"] button"))
        .await;
    browser
        .wait_for(
            "the lightbox",
            "return document.getElementById('lb-img').naturalWidth > 0",
            LONG,
        )
        .await;
    assert_eq!(browser.eval(fits, json!([])).await, true, "lightbox");
    browser.screenshot(&screenshot("phone-lightbox.png")).await;
    browser.assert_clean_console(&[]).await;
}
