//! `beeswax prompt "TEXT" --pack P`: how a prompt is read, for debugging: its `AND`
//! sub-prompts, which text each step uses (prompt editing, alternation), each text's chunks of
//! tokens with their weights and embeddings, and warnings for a prompt that does not parse as
//! written (A1111 is lenient: it is used anyway).

use anyhow::{Context, Result};
use beeswax::extensions::Extensions;
use beeswax::prompt::describe::{describe, warnings};
use beeswax::prompt::{PlanOptions, PromptPlan, PromptSyntax};
use beeswax::tokenizer::ClipTokenizer;
use clap::Args;

use crate::args::{Global, ModelChoice};
use crate::source;

#[derive(Debug, Args)]
pub struct PromptArgs {
    /// The prompt, as it would be given to `generate --prompt`.
    pub text: String,
    #[command(flatten)]
    pub model: ModelChoice,
    /// Sampling steps the edits and alternations are scheduled over [default: the pack's,
    /// else 20].
    #[arg(long)]
    pub steps: Option<usize>,
    /// a1111, comfy or plain [default: the pack's, else a1111].
    #[arg(long)]
    pub prompt_syntax: Option<PromptSyntax>,
    /// Read the text as a negative prompt (A1111 reads AND and `:weight` only in the prompt).
    #[arg(long)]
    pub negative: bool,
    /// A folder of textual-inversion embeddings, besides the manifests' [[embedding]] entries.
    #[arg(long, value_name = "DIR")]
    pub embeddings: Option<std::path::PathBuf>,
}

pub fn run(global: &Global, a: PromptArgs) -> Result<()> {
    let files = source::read_manifests(global)?;
    let folder = files.as_ref().map(|f| f.parse()).transpose()?;
    let source::ModelSource {
        plan,
        name,
        defaults,
    } = source::model_dir(global, folder.as_ref(), &a.model)?;
    let dir = plan.source;
    // The first CLIP tokenizer: `tokenizer`, or `tokenizer_2` for a model with only the
    // second encoder (the SDXL refiner), which plans the prompt the same way.
    let tokenizer_dir = ["tokenizer", "tokenizer_2"]
        .iter()
        .map(|t| dir.join(t))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| dir.join("tokenizer"));
    let tokenizer = ClipTokenizer::from_dir(&tokenizer_dir)
        .with_context(|| format!("reading the tokenizer of {name}"))?;
    let mut extensions = Extensions::builtin();
    let manifests = match &folder {
        Some(folder) => beeswax::manifest::embeddings(folder)?,
        None => Vec::new(),
    };
    extensions.set_embeddings(&manifests, a.embeddings.as_deref(), global.allow_download)?;
    let syntax = a
        .prompt_syntax
        .or(defaults.prompt_syntax)
        .unwrap_or_default();
    let steps = a
        .steps
        .or(defaults.steps)
        .unwrap_or(beeswax::defaults::STEPS)
        .max(1);
    let options = PlanOptions {
        negative: a.negative,
        ..PlanOptions::new(syntax, steps)
    };
    let plan = PromptPlan::new(&a.text, &options, &tokenizer, Some(&extensions.embeddings))?;
    print!("{}", describe(&plan, &tokenizer, steps));
    for embedding in plan.embeddings() {
        println!(
            "embedding {}: {} vector(s), {} ({})",
            embedding.name,
            embedding.vector_count(),
            embedding.short_hash(),
            embedding.path.display()
        );
    }
    for warning in warnings(&a.text, syntax) {
        eprintln!("warning: {warning}");
    }
    Ok(())
}
