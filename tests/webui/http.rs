//! HTTP tests (no browser): the page and its assets (caching, gzip, size), `--no-ui`, the
//! page public behind `--api-key`, the samplers, LoRAs and pipeline forms, gallery paging.

use super::*;

/// The asset URLs the page names (`/ui/VERSION/FILE`).
fn asset_urls(page: &str) -> Vec<String> {
    let mut urls: Vec<String> = page
        .split('"')
        .filter(|s| s.starts_with("/ui/"))
        .map(str::to_string)
        .collect();
    urls.sort();
    urls.dedup();
    urls
}

#[tokio::test]
async fn page_and_assets_are_cached_compressed_and_small() {
    let server = Server::start(&[]);
    let r = client().get(server.at("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("connect-src 'self'"));
    assert!(h.get("content-encoding").is_none(), "no gzip unless asked");
    let etag = h["etag"].to_str().unwrap().to_string();
    let page = r.text().await.unwrap();
    assert!(page.contains("<title>beeswax</title>"));

    let r = client()
        .get(server.at("/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert!(r.bytes().await.unwrap().is_empty());

    let r = client()
        .get(server.at("/"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.headers()["vary"], "Accept-Encoding");
    let gz = r.bytes().await.unwrap();
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, page);

    // Every asset the page and its modules name: immutable, gzipped, under 300 KB in all.
    let mut urls = asset_urls(&page);
    let version = urls[0].split('/').nth(2).unwrap().to_string();
    for module in ["api.js", "form.js", "picture.js", "jobs.js", "gallery.js"] {
        urls.push(format!("/ui/{version}/{module}"));
    }
    let (mut raw, mut zipped) = (page.len(), gz.len());
    for url in &urls {
        let r = client().get(server.at(url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        assert_eq!(
            r.headers()["cache-control"],
            "public, max-age=31536000, immutable",
            "{url}"
        );
        raw += r.bytes().await.unwrap().len();
        let r = client()
            .get(server.at(url))
            .header("accept-encoding", "gzip, br")
            .send()
            .await
            .unwrap();
        zipped += r.bytes().await.unwrap().len();
    }
    println!(
        "web UI: {} files, {raw} bytes, {zipped} gzipped",
        urls.len() + 1
    );
    assert!(raw < 300 * 1024, "the web UI is {raw} bytes");
    assert!(zipped < raw / 2, "gzip: {zipped} of {raw} bytes");

    // Every module a script imports is served.
    for url in urls.iter().filter(|u| u.ends_with(".js")) {
        let text = client()
            .get(server.at(url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for import in text.lines().filter_map(|l| l.split("from './").nth(1)) {
            let name = import.split('\'').next().unwrap();
            assert!(
                urls.iter().any(|u| u.ends_with(&format!("/{name}"))),
                "{url} imports {name}"
            );
        }
    }

    // Another build's version: served, but revalidated; an unknown file: a JSON 404.
    let r = client()
        .get(server.at("/ui/0000/main.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cache-control"], "no-cache");
    let r = client()
        .get(server.at(&format!("/ui/{version}/nope.js")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "unknown_asset");
}

#[tokio::test]
async fn no_ui_leaves_only_the_apis() {
    let server = Server::start(&["--no-ui"]);
    for path in ["/", "/ui/x/main.js"] {
        let r = client().get(server.at(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let r = client()
        .get(server.at("/v1/pipelines"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn with_a_key_the_page_is_public_and_the_api_is_not() {
    let server = Server::start(&["--api-key", "s3cret"]);
    let page = client()
        .get(server.at("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for url in asset_urls(&page) {
        let r = client().get(server.at(&url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
    }
    for path in ["/v1/gallery", "/v1/samplers", "/v1/loras", "/v1/pipelines"] {
        let r = client().get(server.at(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = client()
            .get(server.at(path))
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn samplers_loras_and_pipeline_forms_come_from_the_server() {
    let server = Server::start(&[]);
    let s = get_json(&server.at("/v1/samplers")).await;
    let euler = s["samplers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "euler_a")
        .unwrap();
    assert_eq!(euler["label"], "Euler a");
    assert!(s["samplers"].as_array().unwrap().len() >= 18);
    assert!(s["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["name"] == "karras" && x["label"] == "Karras"));

    let l = get_json(&server.at("/v1/loras")).await;
    assert_eq!(
        l["loras"],
        json!([{"name": "fox-style", "kind": "lora", "weight": 0.8,
                "triggers": ["foxstyle"], "description": null}])
    );
    assert_eq!(l["weight_range"], json!({"min": -5.0, "max": 5.0}));
    assert!(!l.to_string().contains("safetensors"), "no server paths");

    let p = get_json(&server.at("/v1/pipelines")).await;
    let form = &p["pipelines"][0]["form"];
    // tiny-sd: UNet sample_size 8 × VAE factor 8; steps and sampler from the pack.
    assert_eq!(form["native_width"], 64);
    assert_eq!(form["width"], 64);
    assert_eq!(form["size_multiple"], 8);
    assert_eq!(form["steps"], 20);
    assert_eq!(form["scheduler"], "euler");
    assert_eq!(form["schedule"], "default");
    assert_eq!(form["guidance"], 7.5);
    assert_eq!(form["negative_prompt"], "blurry");
    assert!(form["max_clip_skip"].as_u64().unwrap() >= 1);

    let api = get_json(&server.at("/openapi.json")).await;
    for path in ["/v1/gallery", "/v1/samplers", "/v1/loras", "/"] {
        assert!(api["paths"][path].is_object(), "{path} in /openapi.json");
    }
}

/// The `parameters` text chunk of a PNG.
fn png_text(png: &[u8]) -> String {
    let reader = png::Decoder::new(std::io::Cursor::new(png))
        .read_info()
        .unwrap();
    let info = reader.info();
    info.uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .map(|t| t.text.clone())
        .or_else(|| {
            info.utf8_text
                .iter()
                .find(|t| t.keyword == "parameters")
                .map(|t| t.get_text().unwrap())
        })
        .unwrap()
}

#[tokio::test]
async fn gallery_pages_newest_first_and_its_parameters_give_the_image_again() {
    let server = Server::start(&[]);
    let mut ids = Vec::new();
    for (prompt, batch) in [("one", 1), ("two", 2), ("three", 1)] {
        let body = json!({"prompt": prompt, "steps": 3, "batch": batch, "seed": 40,
            "scheduler": "dpmpp_2m", "schedule": "karras",
            "loras": [{"name": "fox-style", "weight": 0.5}]});
        let id = post_job(&server, body).await;
        assert_eq!(wait_done(&server, &id).await["status"], "completed");
        ids.push(id);
    }
    // Pages of 2, followed by cursor: every image once, newest job first, batch in order.
    let mut seen = Vec::new();
    let mut url = server.at("/v1/gallery?limit=2");
    loop {
        let page = get_json(&url).await;
        assert_eq!(page["total"], 4);
        let images = page["images"].as_array().unwrap();
        assert!(images.len() <= 2);
        seen.extend(images.iter().cloned());
        match page["next"].as_str() {
            Some(next) => url = server.at(&format!("/v1/gallery?limit=2&before={next}")),
            None => break,
        }
    }
    let order: Vec<(String, u64)> = seen
        .iter()
        .map(|i| {
            (
                i["job"].as_str().unwrap().to_string(),
                i["index"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        vec![
            (ids[2].clone(), 0),
            (ids[1].clone(), 0),
            (ids[1].clone(), 1),
            (ids[0].clone(), 0)
        ]
    );
    let second = &seen[2];
    assert_eq!(second["parameters"]["seed"], 41, "its own seed");
    assert_eq!(second["parameters"]["scheduler"], "dpmpp_2m");
    assert_eq!(second["parameters"]["schedule"], "karras");
    assert_eq!(
        (second["width"].clone(), second["height"].clone()),
        (json!(64), json!(64))
    );

    // The infotext is the PNG's chunk; the parameters, posted again, give the same PNG.
    let png = client()
        .get(server.at(second["url"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(second["infotext"].as_str().unwrap(), png_text(&png));
    let p = &second["parameters"];
    let mut body = json!({"batch": 1});
    for k in [
        "pipeline",
        "prompt",
        "negative_prompt",
        "steps",
        "guidance",
        "width",
        "height",
        "seed",
        "scheduler",
        "schedule",
        "clip_skip",
        "loras",
    ] {
        body[k] = p[k].clone();
    }
    let again = post_job(&server, body).await;
    wait_done(&server, &again).await;
    let png2 = client()
        .get(server.at(&format!("/v1/jobs/{again}/images/0")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(png, png2, "reusing the parameters gives the same image");

    for bad in ["limit=0", "limit=x", "before=nonsense"] {
        let r = client()
            .get(server.at(&format!("/v1/gallery?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["param"], bad.split('=').next().unwrap());
    }
}
