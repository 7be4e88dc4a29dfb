//! The document covers the router: every route `http::router` declares is documented with its
//! methods, and nothing else is.

use std::collections::BTreeSet;

use super::{paths, schemas, Bounds};

/// The router's source: the routes are read from it, so a new route without docs fails here.
const ROUTER: &str = include_str!("../http.rs");

/// `(path, method)` of every `.route("PATH", get(..).post(..))` in the router's source.
fn routed() -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for chunk in ROUTER.split(".route(\"").skip(1) {
        let (path, rest) = chunk.split_once('"').unwrap();
        // The method router runs to the call's closing parenthesis.
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .unwrap()
            .0;
        let methods = &rest[..end];
        for m in ["get", "post", "put", "delete", "patch", "head", "options"] {
            let call = format!("{m}(");
            let starts = methods.match_indices(&call).any(|(i, _)| {
                i == 0
                    || !methods.as_bytes()[i - 1].is_ascii_alphanumeric()
                        && methods.as_bytes()[i - 1] != b'_'
            });
            if starts {
                found.insert((path.to_string(), m.to_string()));
            }
        }
    }
    found
}

fn bounds() -> Bounds {
    Bounds {
        max_width: 96,
        max_height: 64,
        max_steps: 3,
        max_images: 2,
        size_multiple: 8,
        max_body_bytes: 1 << 20,
        pipelines: vec!["tiny-sd".into()],
        samplers: vec!["euler".into(), "Euler".into()],
        schedules: vec!["karras".into()],
        loras: vec!["fox".into()],
        pre_processors: vec![],
        lora_weights: (-2.0, 2.0),
    }
}

fn documented(web_ui: bool) -> BTreeSet<(String, String)> {
    let doc = paths::all(&bounds(), web_ui);
    let mut found = BTreeSet::new();
    for (path, item) in doc.as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            found.insert((path.clone(), method.clone()));
        }
    }
    found
}

#[test]
fn the_source_scan_finds_the_routes() {
    let routes = routed();
    assert!(routes.contains(&("/v1/jobs/{id}".into(), "get".into())));
    assert!(routes.contains(&("/v1/jobs/{id}".into(), "delete".into())));
    assert!(routes.contains(&("/sdapi/v1/options".into(), "post".into())));
    assert!(routes.len() > 25, "{routes:?}");
}

#[test]
fn every_route_is_documented_and_nothing_else() {
    let (routes, docs) = (routed(), documented(true));
    let missing: Vec<_> = routes.difference(&docs).collect();
    let extra: Vec<_> = docs.difference(&routes).collect();
    assert!(
        missing.is_empty(),
        "routes missing from /openapi.json: {missing:?}"
    );
    assert!(extra.is_empty(), "documented but not routed: {extra:?}");
}

#[test]
fn without_the_web_ui_its_pages_are_not_documented() {
    let docs = documented(false);
    assert!(!docs.iter().any(|(p, _)| p == "/" || p.starts_with("/ui/")));
    assert!(docs.contains(&("/health".into(), "get".into())));
}

#[test]
fn limits_come_from_the_bounds() {
    let s = schemas::all(&bounds());
    let job = &s["JobRequest"]["properties"];
    assert_eq!(job["width"]["maximum"], 96);
    assert_eq!(job["height"]["maximum"], 64);
    assert_eq!(job["steps"]["maximum"], 3);
    assert_eq!(job["batch"]["maximum"], 2);
    assert_eq!(job["pipeline"]["enum"][0], "tiny-sd");
    assert_eq!(job["scheduler"]["enum"][1], "Euler");
    assert_eq!(
        job["loras"]["items"]["properties"]["weight"]["maximum"],
        2.0
    );
    assert_eq!(
        job["loras"]["items"]["properties"]["name"]["enum"][0],
        "fox"
    );
    assert_eq!(job["pre_processors"]["maxItems"], 0);
    assert_eq!(job["refiner"]["enum"][1], "tiny-sd");
    let a = &s["A1111Txt2Img"]["properties"];
    assert_eq!(a["batch_size"]["maximum"], 2);
    assert_eq!(s["OpenAiGenerations"]["properties"]["n"]["maximum"], 2);
}

#[test]
fn every_reference_resolves() {
    let b = bounds();
    let schemas = schemas::all(&b);
    let text = format!("{} {}", paths::all(&b, true), schemas);
    for chunk in text.split("#/components/schemas/").skip(1) {
        let name: String = chunk.chars().take_while(|c| c.is_alphanumeric()).collect();
        assert!(schemas.get(&name).is_some(), "no schema {name}");
    }
}
