//! What the fleet offers, as the workers' heartbeats describe it (see
//! [`super::roster::Heartbeat::described`]), and the checks an API node without models can
//! make of a request against it: a pipeline some live worker serves, sizes, steps and image
//! counts within its limits, a sampler a worker knows. The worker that runs the job still
//! validates it fully against its loaded model.

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::config::Limits;
use super::errors::ApiError;
use super::jobs::Summary;
use super::request::{FieldNames, GenerateRequest};
use super::store::StoredRequest;
use crate::defaults;
use crate::image_in::Mask;
use crate::image_out::RgbImage;
use crate::pipeline::random_seed;

/// The pipelines the live workers describe (`/v1/pipelines` entries) and the sampler names
/// they accept.
#[derive(Debug, Clone, Default)]
pub struct Offer {
    /// One `/v1/pipelines` entry per pipeline served.
    pub pipelines: Vec<Value>,
    /// Sampler names, aliases and display names any worker accepts.
    pub samplers: Vec<String>,
}

impl Offer {
    /// The entry of pipeline `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        (self.pipelines.iter()).find(|p| p.get("name").and_then(Value::as_str) == Some(name))
    }

    /// The names of the pipelines served, comma-separated (`none` when there are none).
    pub fn names(&self) -> String {
        let names: Vec<&str> = (self.pipelines.iter())
            .filter_map(|p| p.get("name").and_then(Value::as_str))
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    }

    /// Checks `req` against what the fleet offers; returns the pipeline's entry. A pipeline
    /// no live worker serves is 404 naming it; values over its limits, sizes that are not a
    /// multiple of its autoencoder's scale, and sampler names no worker knows are 400. The
    /// node's own `limits` apply too (workers announce theirs, often unlimited).
    pub fn check(
        &self,
        req: &GenerateRequest,
        names: &FieldNames,
        limits: &Limits,
    ) -> Result<&Value, ApiError> {
        let pipeline = match &req.pipeline {
            Some(name) => self.get(name).ok_or_else(|| self.not_served(name, names))?,
            None => self.pipelines.first().ok_or_else(|| {
                let mut e = ApiError::invalid(
                    names.pipeline,
                    "pipeline_not_served",
                    "no worker of the fleet serves any pipeline yet: start a `beeswax worker` \
                     (workers announce themselves every 5 s)",
                );
                e.status = StatusCode::NOT_FOUND;
                e
            })?,
        };
        let limit = |key: &str, own: usize| {
            let own = own as u64;
            Some(pipeline["limits"][key].as_u64().map_or(own, |l| l.min(own)))
        };
        checked(
            req.steps,
            "steps",
            limit("max_steps", limits.max_steps),
            None,
        )?;
        let multiple = pipeline["form"]["size_multiple"].as_u64();
        let width = limit("max_width", limits.max_width);
        checked(req.width, names.width, width, multiple)?;
        let height = limit("max_height", limits.max_height);
        checked(req.height, names.height, height, multiple)?;
        let images = (req.batch.unwrap_or(1).max(1)).saturating_mul(req.iterations.unwrap_or(1));
        let most = limit("max_images", limits.max_images);
        checked(Some(images), "images (batch × n_iter)", most, None)?;
        if let Some(sampler) = &req.scheduler {
            self.check_sampler(sampler, names)?;
        }
        Ok(pipeline)
    }

    /// What a model-less API node publishes and shows of `req` once [`Offer::check`]ed: the
    /// request with its seed fixed, a summary whose unset values are the pipeline's resolved
    /// defaults as its workers announce them (the `form` of `/v1/pipelines`), and an image
    /// job's picture and mask (which the worker checks against its model).
    pub fn describe_job(
        &self,
        req: &GenerateRequest,
        names: &FieldNames,
        limits: &Limits,
    ) -> Result<DescribedJob, ApiError> {
        let entry = self.check(req, names, limits)?;
        let name = entry["name"].as_str().unwrap_or_default().to_string();
        let form = &entry["form"];
        let mut request = StoredRequest::of(req, &name);
        let seed = match req.seed {
            Some(s) if s >= 0 => s as u64,
            _ => random_seed(),
        };
        request.seed = i64::try_from(seed).ok();
        let or =
            |asked: Option<i64>, key: &str| asked.map(Value::from).unwrap_or(form[key].clone());
        let batch = req.batch.unwrap_or(1).max(1) as u64;
        let iterations = req.iterations.unwrap_or(1).max(1) as u64;
        let images = batch * iterations;
        let seeds: Vec<u64> = (0..images).map(|i| seed.wrapping_add(i)).collect();
        let steps = or(req.steps, "steps");
        let (mode, strength, pictures) = pictures(req, names)?;
        // An image job without a size takes its picture's, rounded down to the size multiple
        // (as the worker's model does), unless only the masked region is repainted.
        let multiple = form["size_multiple"].as_u64().unwrap_or(8).max(1) as usize;
        let from_picture = |side: fn(&RgbImage) -> usize| {
            let image = req.image.as_ref()?;
            let masked_only = (image.mask.as_ref()).is_some_and(|m| m.only_masked.is_some());
            let v = side(&image.picture);
            (!masked_only).then(|| json!((v / multiple * multiple).max(multiple)))
        };
        let size = |asked: Option<i64>, key: &str, side: fn(&RgbImage) -> usize| {
            (asked.map(Value::from))
                .or_else(|| from_picture(side))
                .unwrap_or(form[key].clone())
        };
        let parameters = json!({
            "pipeline": name,
            "pack": entry["pack"],
            "prompt": req.prompt,
            "negative_prompt": (req.negative_prompt.clone())
                .map(Value::from)
                .unwrap_or(form["negative_prompt"].clone()),
            "steps": steps,
            "guidance": req.guidance.map(Value::from).unwrap_or(form["guidance"].clone()),
            "width": size(req.width, "width", |p| p.width),
            "height": size(req.height, "height", |p| p.height),
            "seed": seed,
            "seeds": seeds,
            "batch": batch,
            "iterations": iterations,
            "scheduler": (req.scheduler.clone())
                .map(Value::from)
                .unwrap_or(form["scheduler"].clone()),
            "schedule": req.schedule.clone().map(Value::from).unwrap_or(form["schedule"].clone()),
            "clip_skip": or(req.clip_skip, "clip_skip"),
            "mode": mode,
            "strength": strength,
            "refiner": req.refiner.clone().map(Value::from).unwrap_or(entry["refiner"].clone()),
            "loras": req.loras,
            "pre_processors": req.pre_processors,
            "post_processors": entry["post_processors"],
        });
        let image_parameters = (seeds.iter())
            .map(|s| {
                let mut p = parameters.clone();
                if let Some(map) = p.as_object_mut() {
                    map.remove("seeds");
                    map.insert("seed".into(), json!(s));
                }
                p
            })
            .collect();
        let total_steps = (steps.as_u64().unwrap_or(0) * iterations) as usize;
        Ok(DescribedJob {
            summary: Summary {
                pipeline: name,
                parameters,
                image_parameters,
            },
            request,
            total_steps,
            pictures,
        })
    }

    fn not_served(&self, name: &str, names: &FieldNames) -> ApiError {
        let mut e = ApiError::invalid(
            names.pipeline,
            "pipeline_not_served",
            format!(
                "no worker of the fleet serves {} `{name}` (served now: {}): start a worker \
                 whose manifests load it, or pick a served one",
                names.pipeline,
                self.names()
            ),
        );
        e.status = StatusCode::NOT_FOUND;
        e
    }

    /// A sampler name (optionally followed by a schedule, `DPM++ 2M Karras`) some worker knows;
    /// any when the workers announce none (older workers).
    fn check_sampler(&self, sampler: &str, names: &FieldNames) -> Result<(), ApiError> {
        let sampler = sampler.trim();
        let known = self.samplers.is_empty()
            || self.samplers.iter().any(|n| {
                let head = sampler.get(..n.len());
                head.is_some_and(|h| h.eq_ignore_ascii_case(n))
                    && (sampler.len() == n.len() || sampler[n.len()..].starts_with(' '))
            });
        if known {
            return Ok(());
        }
        Err(ApiError::invalid(
            names.scheduler,
            "unknown_scheduler",
            format!(
                "{}: unknown sampler `{sampler}`: the fleet's workers know {}",
                names.scheduler,
                self.samplers.join(", ")
            ),
        ))
    }
}

/// A job a model-less API node accepted ([`Offer::describe_job`]).
#[derive(Debug, Clone)]
pub struct DescribedJob {
    /// What the routes show of it.
    pub summary: Summary,
    /// What the worker runs (validated again there against the loaded model).
    pub request: StoredRequest,
    /// Steps in all (iterations included), as far as the API node can tell.
    pub total_steps: usize,
    /// An image job's picture and mask, for the inputs store.
    pub pictures: Option<Pictures>,
}

/// An image job's picture and (for inpainting) mask, as the client sent them.
#[derive(Debug, Clone)]
pub struct Pictures {
    /// The picture.
    pub picture: RgbImage,
    /// The mask (1 = repaint).
    pub mask: Option<Mask>,
}

/// The mode (`txt2img`, `img2img`, `inpaint`), strength and pictures of `req`; the strength
/// must be above 0 and at most 1.
fn pictures(
    req: &GenerateRequest,
    names: &FieldNames,
) -> Result<(&'static str, Option<f64>, Option<Pictures>), ApiError> {
    let Some(image) = &req.image else {
        return Ok(("txt2img", None, None));
    };
    let strength = image.strength.unwrap_or(defaults::STRENGTH);
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(ApiError::invalid(
            names.strength,
            "out_of_range",
            format!(
                "{} {strength} must be above 0 and at most 1 (the share of the schedule that \
                 repaints the picture)",
                names.strength
            ),
        ));
    }
    let mask = image.mask.as_ref().map(|m| m.mask.clone());
    let mode = if mask.is_some() { "inpaint" } else { "img2img" };
    let picture = image.picture.clone();
    Ok((mode, Some(strength), Some(Pictures { picture, mask })))
}

/// `value` (when given) is at least 1, at most `limit` and a multiple of `multiple`.
fn checked(
    value: Option<i64>,
    name: &str,
    limit: Option<u64>,
    multiple: Option<u64>,
) -> Result<(), ApiError> {
    let Some(v) = value else { return Ok(()) };
    if v < 1 {
        return Err(ApiError::invalid(
            name,
            "out_of_range",
            format!("{name} must be at least 1 (got {v})"),
        ));
    }
    let v = v as u64;
    if let Some(limit) = limit.filter(|l| v > *l) {
        return Err(ApiError::invalid(
            name,
            "over_limit",
            format!("{name} {v} is over this pipeline's limit of {limit}; ask for at most {limit}"),
        ));
    }
    if let Some(f) = multiple.filter(|f| *f > 1 && v % f != 0) {
        return Err(ApiError::invalid(
            name,
            "not_multiple",
            format!(
                "{name} {v} is not a multiple of {f}: use e.g. {}",
                v / f * f + f
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::NATIVE;
    use serde_json::json;

    const LIMITS: Limits = Limits {
        max_width: 2048,
        max_height: 2048,
        max_steps: 150,
        max_images: 8,
    };

    fn offer() -> Offer {
        Offer {
            pipelines: vec![json!({
                "name": "tiny-sd",
                "limits": {"max_width": 96, "max_height": 64, "max_steps": 20, "max_images": 4},
                "form": {"size_multiple": 8},
            })],
            samplers: vec!["euler".into(), "dpmpp_2m".into(), "DPM++ 2M".into()],
        }
    }

    fn request(f: impl FnOnce(&mut GenerateRequest)) -> GenerateRequest {
        let mut req = GenerateRequest {
            pipeline: Some("tiny-sd".into()),
            prompt: "a bee".into(),
            ..GenerateRequest::default()
        };
        f(&mut req);
        req
    }

    fn refused(req: GenerateRequest) -> ApiError {
        offer().check(&req, &NATIVE, &LIMITS).unwrap_err()
    }

    #[test]
    fn accepts_requests_within_the_offer() {
        let ok = request(|r| {
            r.width = Some(96);
            r.height = Some(40);
            r.steps = Some(20);
            r.batch = Some(2);
            r.iterations = Some(2);
            r.scheduler = Some("dpm++ 2m karras".into());
        });
        assert_eq!(
            offer().check(&ok, &NATIVE, &LIMITS).unwrap()["name"],
            "tiny-sd"
        );
        let default = request(|r| r.pipeline = None);
        assert!(offer().check(&default, &NATIVE, &LIMITS).is_ok());
    }

    #[test]
    fn describes_jobs_with_the_announced_defaults() {
        let mut o = offer();
        o.pipelines[0]["pack"] = json!("tiny");
        o.pipelines[0]["form"] = json!({"size_multiple": 8, "steps": 9, "width": 64,
            "height": 48, "guidance": 7.5, "scheduler": "euler", "schedule": "default"});
        let job = o
            .describe_job(
                &request(|r| {
                    r.seed = Some(5);
                    r.batch = Some(2);
                    r.steps = Some(4);
                }),
                &NATIVE,
                &LIMITS,
            )
            .unwrap();
        let p = &job.summary.parameters;
        assert_eq!(
            (p["steps"].as_u64(), p["width"].as_u64()),
            (Some(4), Some(64))
        );
        assert_eq!(p["seeds"], json!([5, 6]));
        assert_eq!(job.summary.image_parameters[1]["seed"], 6);
        assert_eq!((job.request.seed, job.total_steps), (Some(5), 4));
        let random = o.describe_job(&request(|_| {}), &NATIVE, &LIMITS).unwrap();
        assert!(random.request.seed.is_some_and(|s| s >= 0));
        assert_eq!(random.total_steps, 9);
    }

    #[test]
    fn refuses_what_no_worker_serves_or_allows() {
        let e = refused(request(|r| r.pipeline = Some("big-xl".into())));
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert!(e.message.contains("`big-xl`") && e.message.contains("tiny-sd"));
        let e = refused(request(|r| r.width = Some(128)));
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "over_limit"));
        assert_eq!(
            refused(request(|r| r.height = Some(41))).code,
            "not_multiple"
        );
        assert_eq!(refused(request(|r| r.steps = Some(21))).code, "over_limit");
        assert_eq!(refused(request(|r| r.steps = Some(0))).code, "out_of_range");
        let e = refused(request(|r| r.batch = Some(5)));
        assert_eq!(e.code, "over_limit");
        let mut unlimited = offer();
        unlimited.pipelines[0]["limits"] = json!({"max_width": u64::MAX});
        let wide = request(|r| r.width = Some(4096));
        let e = unlimited.check(&wide, &NATIVE, &LIMITS).unwrap_err();
        assert!(e.message.contains("limit of 2048"), "{}", e.message);
        let e = refused(request(|r| r.scheduler = Some("eulerx".into())));
        assert_eq!(e.code, "unknown_scheduler");
        assert!(e.message.contains("eulerx"), "{}", e.message);
        let empty = Offer::default();
        let none = empty.check(&request(|r| r.pipeline = None), &NATIVE, &LIMITS);
        assert_eq!(none.unwrap_err().status, StatusCode::NOT_FOUND);
    }
}
