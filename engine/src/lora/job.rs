//! The LoRAs of one job, gathered the same way by the CLI and the HTTP service: tags in the
//! prompt first (AUTOMATIC1111 syntax), then those asked for by flag or field.

use super::catalog::{LoraCatalog, LoraRequest, ResolvedLora};
use super::merge::WeightedLora;
use super::prompt::{extract_lora_tags, lora_tag};
use crate::Result;

/// A job's prompt and LoRAs.
#[derive(Debug, Clone)]
pub struct JobLoras {
    /// The prompt to encode: tags removed as AUTOMATIC1111 removes them.
    pub prompt: String,
    /// The prompt to record in PNG parameters: as given (tags included), with a tag appended
    /// for each LoRA asked for outside the prompt, so the text reproduces the job.
    pub recorded_prompt: String,
    /// The LoRA files with their final weights.
    pub loras: Vec<WeightedLora>,
    /// Notes for the user: LoRAs with trigger words the prompt does not contain.
    pub notes: Vec<String>,
}

/// Parses the tags out of `prompt`, adds `requested`, resolves them through `catalog` (file
/// paths only if `allow_files`) and reads the files (cached by the catalog).
pub fn prepare_job(
    catalog: &LoraCatalog,
    prompt: &str,
    requested: &[LoraRequest],
    allow_files: bool,
) -> Result<JobLoras> {
    let (text, mut requests) = extract_lora_tags(prompt)?;
    let mut recorded = prompt.to_string();
    for r in requested {
        let resolved = catalog.resolve(std::slice::from_ref(r), allow_files)?;
        // A file path is recorded by its stem, the name AUTOMATIC1111 knows LoRAs by.
        let name = match resolved.as_slice() {
            [one] if catalog.entry(&r.name).is_none() && catalog.set(&r.name).is_none() => {
                one.name.clone()
            }
            _ => r.name.clone(),
        };
        let weight = r
            .weight
            .unwrap_or_else(|| catalog.entry(&r.name).map_or(1.0, |e| e.weight));
        if !recorded.is_empty() {
            recorded.push(' ');
        }
        recorded.push_str(&lora_tag(&name, weight));
        requests.push(r.clone());
    }
    let resolved = catalog.resolve(&requests, allow_files)?;
    let notes = trigger_notes(&resolved, &text);
    Ok(JobLoras {
        prompt: text,
        recorded_prompt: recorded,
        loras: catalog.load(&resolved)?,
        notes,
    })
}

fn trigger_notes(resolved: &[ResolvedLora], prompt: &str) -> Vec<String> {
    let lower = prompt.to_lowercase();
    resolved
        .iter()
        .filter(|r| {
            !r.triggers.is_empty() && !r.triggers.iter().any(|t| lower.contains(&t.to_lowercase()))
        })
        .map(|r| {
            format!(
                "LoRA `{}` was trained with the trigger words {}; the prompt has none of them",
                r.name,
                r.triggers.join(", ")
            )
        })
        .collect()
}
