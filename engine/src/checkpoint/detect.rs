//! Which family a single file belongs to: each family's `[[family.detect]]` rules (keys that
//! must or must not exist, shapes with wildcards), tried in the families' priority order. The
//! first family whose rules all hold decides, and the rules are reported; a file no family
//! claims is an error listing every family's first failing rule and the closest family.

use std::sync::Arc;

use crate::family::{Dim, Families, Family, KeyRule};
use crate::weights::SafetensorsFile;
use crate::{Error, Result};

/// The family a file was recognised as, and why.
#[derive(Debug, Clone)]
pub struct Detection {
    /// The family.
    pub family: Arc<Family>,
    /// The rules that held, for logs and `beeswax inspect`.
    pub rule: String,
}

/// ComfyUI's prefix before a diffusion model's keys in its checkpoints.
const COMFY_DENOISER: &str = "model.diffusion_model.";

/// Whether `rule` holds for `file`; `Err` says what the file has instead. A rule key written
/// without a component prefix (a FLUX transformer's BFL key) also matches under ComfyUI's
/// `model.diffusion_model.` (its transformer files and all-in-one checkpoints).
pub fn check_rule(rule: &KeyRule, file: &SafetensorsFile) -> std::result::Result<(), String> {
    let info = file.info(&rule.key).or_else(|| {
        (!rule.key.starts_with(COMFY_DENOISER))
            .then(|| file.info(&format!("{COMFY_DENOISER}{}", rule.key)))
            .flatten()
    });
    match (info, rule.present) {
        (None, true) => Err(format!("has no tensor `{}`", rule.key)),
        (Some(_), false) => Err(format!("has tensor `{}`, which it must not have", rule.key)),
        (None, false) => Ok(()),
        (Some(info), true) => match &rule.shape {
            Some(shape) if !shape_matches(shape, &info.shape) => Err(format!(
                "has `{}` of shape {:?}, not {}",
                rule.key,
                info.shape,
                describe(shape)
            )),
            _ => Ok(()),
        },
    }
}

fn shape_matches(want: &[Dim], got: &[usize]) -> bool {
    want.len() == got.len()
        && want.iter().zip(got).all(|(w, g)| match w {
            Dim::Any => true,
            Dim::Is(n) => n == g,
        })
}

fn describe(shape: &[Dim]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|d| match d {
            Dim::Any => "*".to_string(),
            Dim::Is(n) => n.to_string(),
        })
        .collect();
    format!("[{}]", dims.join(", "))
}

fn describe_rule(rule: &KeyRule) -> String {
    match (&rule.shape, rule.present) {
        (_, false) => format!("no `{}`", rule.key),
        (Some(shape), true) => format!("`{}` {}", rule.key, describe(shape)),
        (None, true) => format!("`{}`", rule.key),
    }
}

/// How many of `family`'s rules hold, and the first that fails.
fn score(family: &Family, file: &SafetensorsFile) -> (usize, Option<String>) {
    let mut held = 0;
    let mut failed = None;
    for rule in &family.detect {
        match check_rule(rule, file) {
            Ok(()) => held += 1,
            Err(why) if failed.is_none() => failed = Some(why),
            Err(_) => {}
        }
    }
    (held, failed)
}

/// Whether every rule of `family` holds for `file` (a family without rules never does).
pub fn matches(family: &Family, file: &SafetensorsFile) -> std::result::Result<String, String> {
    if family.detect.is_empty() {
        return Err("has no detection rules (chosen by name only)".into());
    }
    match score(family, file).1 {
        None => Ok(family
            .detect
            .iter()
            .map(describe_rule)
            .collect::<Vec<_>>()
            .join(", ")),
        Some(why) => Err(why),
    }
}

/// The family of `file`: `declared` when given (its rules must hold, unless it has none), else
/// the first family, by priority, whose rules hold.
pub fn detect(
    file: &SafetensorsFile,
    families: &Families,
    declared: Option<&str>,
) -> Result<Detection> {
    let path = file.path().to_path_buf();
    if let Some(name) = declared {
        let family = families.named(name)?;
        if family.detect.is_empty() {
            return Ok(Detection {
                family,
                rule: "declared".into(),
            });
        }
        return match matches(&family, file) {
            Ok(rule) => Ok(Detection {
                family,
                rule: format!("declared, and {rule}"),
            }),
            Err(why) => Err(Error::Config {
                path,
                message: format!("declared family `{name}` does not match the file: it {why}"),
            }),
        };
    }
    for family in families.iter() {
        if let Ok(rule) = matches(family, file) {
            return Ok(Detection {
                family: family.clone(),
                rule,
            });
        }
    }
    let tried: Vec<String> = families
        .iter()
        .filter(|f| !f.detect.is_empty())
        .map(|f| format!("{}: {}", f.name, score(f, file).1.unwrap_or_default()))
        .collect();
    let closest = families
        .iter()
        .filter(|f| !f.detect.is_empty())
        .max_by_key(|f| score(f, file).0)
        .map(|f| {
            let (held, _) = score(f, file);
            format!("{} ({held} of {} rules hold)", f.name, f.detect.len())
        })
        .unwrap_or_default();
    Err(Error::Config {
        path,
        message: format!(
            "no known family matches this file; rules tried: {}; closest: {closest}. If it is \
             a variant, declare it with a family manifest (manifests/families/NAME.toml) or \
             pass --family NAME",
            tried.join("; ")
        ),
    })
}
