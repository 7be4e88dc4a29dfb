//! The request and response schemas, with this server's limits.

use serde_json::{json, Value};

use super::Bounds;
use crate::limits;

/// Every schema under `components/schemas`.
pub fn all(b: &Bounds) -> Value {
    json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["message", "type", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": "string"}
                }
            }}
        },
        "A1111Error": {
            "type": "object",
            "required": ["error", "detail"],
            "properties": {
                "error": {"type": "string"}, "detail": {"type": "string"},
                "body": {"type": "string"}, "errors": {"type": "string"}
            }
        },
        "JobRequest": job_request(b),
        "Job": job(),
        "OpenAiGenerations": openai_generations(b),
        "OpenAiEdits": openai_edits(b),
        "OpenAiImages": {
            "type": "object",
            "required": ["created", "data"],
            "properties": {
                "created": {"type": "integer"},
                "data": {"type": "array", "items": {"type": "object", "properties": {
                    "url": {"type": "string"}, "b64_json": {"type": "string"}}}},
                "output_format": {"const": "png"},
                "size": {"type": "string"}
            }
        },
        "A1111Txt2Img": a1111_txt2img(b, false),
        "A1111Img2Img": a1111_txt2img(b, true),
        "A1111Result": {
            "type": "object",
            "required": ["images", "parameters", "info"],
            "properties": {
                "images": {"type": "array", "items": {"type": "string", "description": "base64 PNG"}},
                "parameters": {"type": "object"},
                "info": {"type": "string", "description": "JSON text: seeds, infotexts, ..."}
            }
        },
        "A1111Options": {
            "type": "object",
            "properties": {
                "sd_model_checkpoint": {"type": "string", "description": format!(
                    "a checkpoint title from /sdapi/v1/sd-models (`name`, `name.safetensors` or `name [hash]`){}",
                    names_note(&b.pipelines))},
                "CLIP_stop_at_last_layers": {"type": "integer", "minimum": 1, "maximum": *limits::CLIP_SKIP.end()}
            }
        }
    })
}

fn names_note(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!(": {}", names.join(", "))
    }
}

/// A width or height schema.
fn side(max: usize, multiple: usize, what: &str) -> Value {
    json!({"type": "integer", "minimum": multiple, "maximum": max, "multipleOf": multiple,
        "description": format!("{what} in pixels: a multiple of {multiple}, at most {max} (a pipeline may allow less: see GET /v1/pipelines)")})
}

fn steps(b: &Bounds) -> Value {
    json!({"type": "integer", "minimum": 1, "maximum": b.max_steps})
}

fn guidance() -> Value {
    json!({"type": "number", "minimum": limits::GUIDANCE.start(), "maximum": limits::GUIDANCE.end()})
}

fn prompt() -> Value {
    json!({"type": "string", "maxLength": limits::PROMPT_CHARS})
}

/// A base64 picture field; `example` (a valid picture) lets clients and fuzzers reach the
/// image-to-image code.
fn picture(what: &str, example: &Option<String>) -> Value {
    let mut schema = json!({"type": "string", "description": format!("{what}: a base64 PNG, JPEG or WebP (a data-URL prefix is allowed) within the body size limit")});
    if let Some(png) = example {
        schema["examples"] = json!([png]);
    }
    schema
}

/// A base64 PNG at the largest size up to 64x64 this server accepts: a gradient, so that it
/// also works as a mask (half of it repaints).
fn example_png(b: &Bounds) -> Option<String> {
    use base64::Engine;
    let m = b.size_multiple.max(1);
    let side = |max: usize| (max.min(64) / m * m).max(m);
    let (width, height) = (side(b.max_width), side(b.max_height));
    let data = (0..height)
        .flat_map(|y| (0..width).map(move |x| (x, y)))
        .flat_map(|(x, y)| {
            let v = (x * 255 / width.max(1)) as u8;
            [v, (y * 255 / height.max(1)) as u8, v]
        })
        .collect();
    let image = crate::image_out::RgbImage {
        width,
        height,
        data,
    };
    let png = crate::image_out::encode_png(&image, "").ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(png))
}

fn job_request(b: &Bounds) -> Value {
    let png = example_png(b);
    json!({
        "type": "object",
        "required": ["prompt"],
        "additionalProperties": false,
        "properties": {
            "pipeline": Bounds::one_of(&b.pipelines, "a name from GET /v1/pipelines (default: the first)"),
            "prompt": prompt(),
            "negative_prompt": prompt(),
            "steps": steps(b),
            "guidance": guidance(),
            "true_cfg": {"type": "number", "description": "true CFG scale on FLUX (a negative pass with the negative prompt)"},
            "width": side(b.max_width, b.size_multiple, "width"),
            "height": side(b.max_height, b.size_multiple, "height"),
            "seed": {"type": "integer", "description": "negative or absent: random"},
            "batch": {"type": "integer", "minimum": 1, "maximum": b.max_images},
            "scheduler": Bounds::one_of(&b.samplers, "a scheduler name or alias (A1111 names work)"),
            "schedule": Bounds::one_of(&b.schedules, "a noise schedule"),
            "clip_skip": {"type": "integer", "minimum": 1, "maximum": *limits::CLIP_SKIP.end()},
            "prompt_syntax": {"enum": ["a1111", "comfy", "plain"]},
            "pad_prompts": {"type": "boolean"},
            "preview_every": {"type": "integer", "minimum": 1, "maximum": *limits::PREVIEW_EVERY.end(), "description": "send a preview with every Nth progress event"},
            "loras": loras(b),
            "init_image": picture("image to image", &png),
            "mask": picture("inpainting: the mask, white or opaque = repaint (needs init_image)", &png),
            "strength": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "description": "how much is repainted (default 0.75)"},
            "resize": {"enum": ["stretch", "crop", "fill"], "description": "how init_image is fitted to width x height"},
            "mask_blur": {"type": "number", "minimum": limits::MASK_BLUR.start(), "maximum": limits::MASK_BLUR.end(), "description": "mask blur in pixels (default 4)"},
            "inpaint_area": {"enum": ["whole", "masked"]},
            "inpaint_padding": {"type": "integer", "minimum": 0, "maximum": *limits::INPAINT_PADDING.end(), "description": "context pixels around the mask with inpaint_area masked (default 32)"},
            "masked_content": {"enum": ["original", "fill", "latent-noise"]},
            "pre_processors": Bounds::list_of(&b.pre_processors, "pre-processors (plugin names) run on init_image and mask, after the pipeline's own"),
            "refiner": refiner(b),
            "refiner_switch_at": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "description": "share of the schedule the base model runs before the refiner takes over (default: the pipeline's, else 0.8); needs a refiner"}
        }
    })
}

/// `loras`: names from the catalog with allowed weights.
fn loras(b: &Bounds) -> Value {
    let description =
        "LoRAs by [[lora]]/[[lora_set]] name, after any <lora:NAME:WEIGHT> tags in the prompt";
    if b.loras.is_empty() {
        return Bounds::list_of(&[], description);
    }
    json!({"type": "array", "description": description,
        "items": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
            "name": {"enum": b.loras},
            "weight": {"type": "number", "minimum": b.lora_weights.0, "maximum": b.lora_weights.1}}}})
}

/// `refiner`: a pipeline name, or "" for none.
fn refiner(b: &Bounds) -> Value {
    let mut names = vec![String::new()];
    names.extend(b.pipelines.iter().cloned());
    json!({"type": "string", "enum": names, "description": "a pack (or pipeline) from GET /v1/pipelines whose model finishes the denoising from refiner_switch_at on (default: the pipeline's `refiner`; \"\": none)"})
}

/// A prompt that must hold some text (OpenAI's routes).
fn required_prompt() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": limits::PROMPT_CHARS, "pattern": "\\S"})
}

fn job() -> Value {
    json!({
        "type": "object",
        "required": ["id", "status"],
        "properties": {
            "id": {"type": "string"},
            "pipeline": {"type": "string"},
            "status": {"enum": ["queued", "running", "completed", "failed", "cancelled"]},
            "position": {"type": ["integer", "null"]},
            "progress": {"type": "object", "properties": {"step": {"type": "integer"}, "total": {"type": "integer"}}},
            "created_at": {"type": "integer"},
            "started_at": {"type": ["integer", "null"]},
            "finished_at": {"type": ["integer", "null"]},
            "images": {"type": "array", "items": {"type": "string"}},
            "parameters": {"type": "object"},
            "warnings": {"type": "array", "items": {"type": "string"}},
            "error": {"type": ["string", "null"]},
            "urls": {"type": "object"}
        }
    })
}

/// OpenAI's `size`: `WIDTHxHEIGHT` or `auto`.
fn size(b: &Bounds) -> Value {
    json!({"type": "string", "pattern": "^(auto|[1-9][0-9]{0,4}x[1-9][0-9]{0,4})$",
        "description": format!("`WIDTHxHEIGHT` in pixels (multiples of {}, at most {}x{}) or `auto`", b.size_multiple, b.max_width, b.max_height)})
}

fn openai_generations(b: &Bounds) -> Value {
    json!({
        "type": "object",
        "required": ["prompt"],
        "properties": {
            "prompt": required_prompt(),
            "model": Bounds::one_of(&b.pipelines, "a pipeline name (unknown: 404 model_not_found)"),
            "n": {"type": "integer", "minimum": 1, "maximum": b.max_images},
            "size": size(b),
            "response_format": {"enum": ["url", "b64_json"]},
            "output_format": {"const": "png"},
            "negative_prompt": prompt(),
            "steps": steps(b),
            "guidance": guidance(),
            "seed": {"type": "integer"},
            "scheduler": Bounds::one_of(&b.samplers, "a scheduler name or alias"),
            "schedule": Bounds::one_of(&b.schedules, "a noise schedule")
        }
    })
}

fn openai_edits(b: &Bounds) -> Value {
    json!({
        "type": "object",
        "required": ["image", "prompt"],
        "properties": {
            "image": {"type": "string", "contentMediaType": "application/octet-stream", "description": "the picture to edit: PNG, JPEG or WebP; transparent pixels are repainted when no mask is sent"},
            "mask": {"type": "string", "contentMediaType": "application/octet-stream", "description": "transparent = repaint, the picture's size"},
            "prompt": required_prompt(),
            "model": Bounds::one_of(&b.pipelines, "a pipeline name"),
            "n": {"type": "integer", "minimum": 1, "maximum": b.max_images},
            "size": size(b),
            "response_format": {"enum": ["url", "b64_json"]},
            "negative_prompt": prompt(),
            "steps": steps(b),
            "guidance": guidance(),
            "seed": {"type": "integer"},
            "strength": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "scheduler": Bounds::one_of(&b.samplers, "a scheduler name or alias"),
            "schedule": Bounds::one_of(&b.schedules, "a noise schedule")
        }
    })
}

/// AUTOMATIC1111's txt2img (or img2img) body; unknown fields are ignored, as A1111 does.
fn a1111_txt2img(b: &Bounds, img2img: bool) -> Value {
    let mut properties = json!({
        "prompt": prompt(),
        "negative_prompt": prompt(),
        "steps": steps(b),
        "cfg_scale": guidance(),
        "width": side(b.max_width, b.size_multiple, "width"),
        "height": side(b.max_height, b.size_multiple, "height"),
        "seed": {"type": "integer", "description": "-1: random"},
        "sampler_name": Bounds::one_of(&b.samplers, "a sampler name (A1111's display names work)"),
        "sampler_index": Bounds::one_of(&b.samplers, "older clients' name for sampler_name"),
        "scheduler": {"type": "string", "description": format!("`automatic` or a schedule: {}", b.schedules.join(", "))},
        "batch_size": {"type": "integer", "minimum": 1, "maximum": b.max_images},
        "n_iter": {"type": "integer", "minimum": 1, "maximum": b.max_images, "description": format!("iterations; batch_size × n_iter at most {}", b.max_images)},
        "clip_skip": {"type": "integer", "minimum": 1, "maximum": *limits::CLIP_SKIP.end()},
        "override_settings": {"$ref": "#/components/schemas/A1111Options"},
        "send_images": {"type": "boolean"},
        "refiner_checkpoint": {"type": "string", "description": "a checkpoint title; `None` or \"\": no refiner"},
        "refiner_switch_at": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
    });
    let mut required = vec![];
    if img2img {
        let png = example_png(b);
        required.push("init_images");
        if let Some(p) = properties.as_object_mut() {
            for (k, v) in [
                (
                    "init_images",
                    json!({"type": "array", "minItems": 1, "maxItems": 1, "items": picture("the picture", &png)}),
                ),
                ("mask", picture("inpainting mask, white = repaint", &png)),
                (
                    "denoising_strength",
                    json!({"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
                ),
                (
                    "inpainting_fill",
                    json!({"type": "integer", "minimum": 0, "maximum": 3, "description": "0 fill, 1 original, 2 latent noise, 3 latent nothing"}),
                ),
                (
                    "inpaint_full_res",
                    json!({"type": ["boolean", "integer"], "enum": [true, false, 0, 1]}),
                ),
                (
                    "inpaint_full_res_padding",
                    json!({"type": "integer", "minimum": 0, "maximum": *limits::INPAINT_PADDING.end()}),
                ),
                (
                    "mask_blur",
                    json!({"type": "integer", "minimum": 0, "maximum": *limits::MASK_BLUR.end() as i64}),
                ),
                (
                    "inpainting_mask_invert",
                    json!({"type": ["boolean", "integer"], "enum": [true, false, 0, 1]}),
                ),
                (
                    "resize_mode",
                    json!({"type": "integer", "minimum": 0, "maximum": 2, "description": "0 just resize, 1 crop and resize, 2 resize and fill"}),
                ),
            ] {
                p.insert(k.to_string(), v);
            }
        }
    }
    json!({"type": "object", "required": required, "properties": properties})
}
