//! The routes, each with the answers it can give.

use serde_json::{json, Map, Value};

use super::{a1111_error_response, error_response, json_response, Bounds};
use crate::server::gallery::MAX_LIMIT;

/// The answers every route behind the key and site checks can give, in `api`'s error shape.
fn guarded(a1111: bool) -> Vec<(&'static str, Value)> {
    let e = if a1111 {
        a1111_error_response
    } else {
        error_response
    };
    vec![
        ("401", e("missing or wrong API key")),
        (
            "403",
            e("a foreign Origin or Host (see `serve --cors-origin`)"),
        ),
    ]
}

/// The answers of a route taking a body (and queuing a job when `queues`).
fn with_body(a1111: bool, queues: bool) -> Vec<(&'static str, Value)> {
    let e = if a1111 {
        a1111_error_response
    } else {
        error_response
    };
    let mut answers = guarded(a1111);
    answers.push(("400", e("invalid request (the message names the field)")));
    answers.push(("413", e("body over the size limit")));
    answers.push(("415", e("not the body's media type")));
    if queues {
        answers.push(("404", e("unknown model (OpenAI's model_not_found)")));
        answers.push(("429", e("queue full; see Retry-After")));
        answers.push(("503", e("shutting down, or the job was cancelled")));
    }
    answers
}

/// An operation: `summary`, its own `responses`, then `common` ones it does not set.
fn op(summary: &str, responses: Value, common: Vec<(&'static str, Value)>) -> Value {
    let mut responses = match responses {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    for (code, answer) in common {
        responses.entry(code).or_insert(answer);
    }
    json!({"summary": summary, "responses": responses})
}

/// `op` with extra fields (`parameters`, `requestBody`, `security`).
fn with(mut operation: Value, extra: Value) -> Value {
    if let (Some(o), Value::Object(extra)) = (operation.as_object_mut(), extra) {
        o.extend(extra);
    }
    operation
}

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// A 400 for a path parameter that is not UTF-8.
fn bad_path() -> Value {
    error_response("a path parameter that is not UTF-8")
}

/// The operations a queued job's id leads to.
fn job_links() -> Value {
    let id = json!({"id": "$response.body#/id"});
    json!({
        "status": {"operationId": "getJob", "parameters": id},
        "events": {"operationId": "jobEvents", "parameters": id},
        "image": {"operationId": "jobImage", "parameters": {"id": "$response.body#/id", "n": 0}},
        "cancel": {"operationId": "cancelJob", "parameters": id}
    })
}

fn json_body(name: &str) -> Value {
    json!({"requestBody": {"required": true, "content": {"application/json": {"schema": schema(name)}}}})
}

/// A 200 answer with a JSON object.
fn object(description: &str) -> Value {
    ok(json_response(description, json!({"type": "object"})))
}

/// A 200 answer with a JSON array of objects.
fn array(description: &str) -> Value {
    ok(json_response(
        description,
        json!({"type": "array", "items": {"type": "object"}}),
    ))
}

/// `answer` as the 200 one.
fn ok(answer: Value) -> Value {
    json!({"200": answer})
}

/// Every route; the web UI's when `web_ui`.
pub fn all(b: &Bounds, web_ui: bool) -> Value {
    let mut paths = Map::new();
    let mut add = |path: &str, item: Value| {
        paths.insert(path.to_string(), item);
    };
    if web_ui {
        web_pages(&mut add);
    }
    operations(&mut add);
    native(b, &mut add);
    openai(&mut add);
    a1111(&mut add);
    Value::Object(paths)
}

fn web_pages(add: &mut impl FnMut(&str, Value)) {
    let html = json!({"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}});
    add(
        "/",
        json!({"get": with(op("the web UI (unless `serve --no-ui`); it asks for the key itself",
            json!({"200": html, "304": {"description": "not modified (If-None-Match)"}}), vec![]), json!({"security": []}))}),
    );
    add(
        "/ui/{version}/{file}",
        json!({"get": with(op("an asset of the web UI (immutable when `version` is this build's)",
            json!({"200": {"description": "the file (text/javascript, text/css, ...)"},
                "304": {"description": "not modified (If-None-Match)"},
                "400": error_response("a path segment that is not UTF-8"),
                "404": error_response("no such file")}), vec![]),
            json!({"security": [], "parameters": [
                {"name": "version", "in": "path", "required": true, "schema": {"type": "string"}},
                {"name": "file", "in": "path", "required": true, "schema": {"type": "string"}}]}))}),
    );
}

fn operations(add: &mut impl FnMut(&str, Value)) {
    let health = json_response(
        "serving",
        json!({"type": "object", "required": ["status"], "properties": {
            "status": {"enum": ["ok", "shutting_down"]}, "pipelines": {"type": "integer"},
            "models_loaded": {"type": "integer"}, "queue": {"type": "object"}, "running": {"type": "integer"}}}),
    );
    let mut stopping = health.clone();
    stopping["description"] = json!("shutting down");
    add(
        "/health",
        json!({"get": with(op("liveness; 503 while shutting down", json!({"200": health, "503": stopping}), vec![]),
            json!({"security": []}))}),
    );
    add(
        "/metrics",
        json!({"get": op("Prometheus metrics",
            json!({"200": {"description": "text format 0.0.4", "content": {"text/plain": {"schema": {"type": "string"}}}}}),
            guarded(false))}),
    );
    add(
        "/openapi.json",
        json!({"get": op("this document", object("OpenAPI 3.1"), guarded(false))}),
    );
}

fn native(b: &Bounds, add: &mut impl FnMut(&str, Value)) {
    let g = || guarded(false);
    add(
        "/v1/pipelines",
        json!({"get": op("the pipelines and packs served, with defaults and limits; `form` holds what a request that sets nothing gets and the bounds of a form",
        ok(json_response("the pipelines", json!({"type": "object", "required": ["pipelines"], "properties": {"pipelines": {"type": "array", "items": {"type": "object"}}}}))), g())}),
    );
    add(
        "/v1/samplers",
        json!({"get": op("every sampler (name for `scheduler`, label, aliases, summary) and noise schedule, plugins included",
        object("{\"samplers\": [...], \"schedules\": [...]}"), g())}),
    );
    add(
        "/v1/loras",
        json!({"get": op("the LoRAs and LoRA sets a request's `loras` may name, and the allowed weights",
        object("{\"loras\": [...], \"weight_range\": {\"min\", \"max\"}}"), g())}),
    );
    add(
        "/v1/embeddings",
        json!({"get": op("the textual-inversion embeddings prompts may name",
        object("{\"embeddings\": [...]}"), g())}),
    );
    add(
        "/v1/gallery",
        json!({"get": with(op(
        "the finished images this server holds (completed jobs of every API, kept --keep-finished seconds), newest first",
        json!({"200": json_response("a page", json!({"type": "object", "required": ["images", "total"], "properties": {
                "images": {"type": "array", "items": {"type": "object"}}, "next": {"type": ["string", "null"]}, "total": {"type": "integer"}}})),
            "400": error_response("bad limit or cursor")}), g()),
        json!({"parameters": [
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 24}},
            {"name": "before", "in": "query", "schema": {"type": "string"}, "description": "the `next` cursor of the previous page"}]}))}),
    );
    jobs(b, add);
}

/// The jobs endpoints of the native API.
fn jobs(b: &Bounds, add: &mut impl FnMut(&str, Value)) {
    let id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}});
    let g = || guarded(false);
    let mut create = op(
        "queue a job",
        json!({"202": with(json_response("queued; Location is the job's URL", schema("Job")), json!({"links": job_links()}))}),
        with_body(false, true),
    );
    if let Some(r) = create["responses"].as_object_mut() {
        r.remove("404");
    }
    add(
        "/v1/jobs",
        json!({"post": with(create, json_body("JobRequest"))}),
    );
    add(
        "/v1/jobs/{id}",
        json!({
            "get": with(op("job status", json!({"200": json_response("the job", schema("Job")),
                "400": bad_path(), "404": error_response("unknown or expired job")}), g()),
                json!({"operationId": "getJob", "parameters": [id]})),
            "delete": with(op("cancel: a queued job at once, a running one at its next step",
                json!({"200": json_response("cancelled", schema("Job")), "202": json_response("stopping", schema("Job")),
                    "400": bad_path(), "404": error_response("unknown job"),
                    "409": error_response("already finished")}), g()),
                json!({"operationId": "cancelJob", "parameters": [id]}))
        }),
    );
    add(
        "/v1/jobs/{id}/events",
        json!({"get": with(op(
        "server-sent events: queued {position}, started, progress {step, total, preview?}, completed {images, parameters}, failed {error}, cancelled; replayed from the start or after Last-Event-ID",
        json!({"200": {"description": "the events", "content": {"text/event-stream": {"schema": {
                "type": "object", "required": ["event", "data"], "properties": {
                    "id": {"type": "string"},
                    "event": {"enum": ["queued", "started", "progress", "completed", "failed", "cancelled"]},
                    "data": {"type": "string", "contentMediaType": "application/json"}}}}}},
            "400": bad_path(), "404": error_response("unknown job")}), g()),
        json!({"operationId": "jobEvents", "parameters": [id, {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}}]}))}),
    );
    add(
        "/v1/jobs/{id}/images/{n}",
        json!({"get": with(op(
        "image n (from 0) as PNG with an AUTOMATIC1111 `parameters` text chunk",
        json!({"200": {"description": "the image", "content": {"image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}}}},
            "400": bad_path(), "404": error_response("no such image"),
            "409": error_response("job not completed")}), g()),
        json!({"operationId": "jobImage", "parameters": [id, {"name": "n", "in": "path", "required": true,
            "schema": {"type": "integer", "minimum": 0, "maximum": b.max_images}}]}))}),
    );
}

fn openai(add: &mut impl FnMut(&str, Value)) {
    let images = || json_response("the images", schema("OpenAiImages"));
    add(
        "/v1/images/generations",
        json!({"post": with(
        op("OpenAI Images: generate (waits for the job)", json!({"200": images()}), with_body(false, true)),
        json_body("OpenAiGenerations"))}),
    );
    add(
        "/v1/images/edits",
        json!({"post": with(
        op("OpenAI Images: edit a picture, with a mask or its transparent pixels (waits for the job)",
            json!({"200": images()}), with_body(false, true)),
        json!({"requestBody": {"required": true, "content": {"multipart/form-data": {"schema": schema("OpenAiEdits")}}}}))}),
    );
}

fn a1111(add: &mut impl FnMut(&str, Value)) {
    let g = || guarded(true);
    let result = || json_response("the images and parameters", schema("A1111Result"));
    add(
        "/sdapi/v1/txt2img",
        json!({"post": with(
        op("AUTOMATIC1111 txt2img (waits for the job)", json!({"200": result()}), with_body(true, true)),
        json_body("A1111Txt2Img"))}),
    );
    add(
        "/sdapi/v1/img2img",
        json!({"post": with(
        op("AUTOMATIC1111 img2img and inpainting (waits for the job)", json!({"200": result()}), with_body(true, true)),
        json_body("A1111Img2Img"))}),
    );
    add(
        "/sdapi/v1/progress",
        json!({"get": with(
        op("the running job's progress and preview", object("progress, eta_relative, state, current_image"),
            [g(), vec![("400", a1111_error_response("a bad query string"))]].concat()),
        json!({"parameters": [{"name": "skip_current_image", "in": "query", "schema": {"type": "boolean"}}]}))}),
    );
    add(
        "/sdapi/v1/interrupt",
        json!({"post": op("stop the running A1111 jobs at their next step", object("{}"), g())}),
    );
    add(
        "/sdapi/v1/sd-models",
        json!({"get": op("the checkpoints (pipelines)", array("title, model_name, ..."), g())}),
    );
    add(
        "/sdapi/v1/samplers",
        json!({"get": op("the samplers, by A1111 display name", array("name, aliases, options"), g())}),
    );
    add(
        "/sdapi/v1/schedulers",
        json!({"get": op("the noise schedules", array("name, label, aliases"), g())}),
    );
    let mut set = op(
        "select the checkpoint later requests use",
        ok(json_response("set", json!({"type": "null"}))),
        with_body(true, false),
    );
    set["responses"]["400"] = a1111_error_response("unknown checkpoint or bad body");
    add(
        "/sdapi/v1/options",
        json!({
            "get": op("the options beeswax keeps", object("sd_model_checkpoint, ..."), g()),
            "post": with(set, json_body("A1111Options"))
        }),
    );
    add(
        "/sdapi/v1/scripts",
        json!({"get": op("the scripts (none)", object("{\"txt2img\": [], \"img2img\": []}"), g())}),
    );
    add(
        "/sdapi/v1/embeddings",
        json!({"get": op("the textual-inversion embeddings, A1111's shape", object("{\"loaded\": {...}, \"skipped\": {...}}"), g())}),
    );
}
