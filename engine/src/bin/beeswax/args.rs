//! Command-line arguments. The `///` lines are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// beeswax: Stable Diffusion inference on Candle.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Folder of model pack manifests (*.toml).
    #[arg(
        long,
        global = true,
        env = "BEESWAX_MANIFESTS",
        default_value = "manifests"
    )]
    pub manifests: PathBuf,
    /// Fetch hub models missing from the Hugging Face cache (offline otherwise).
    #[arg(long, global = true)]
    pub allow_download: bool,
    /// Device: cpu, cuda, cuda:N or metal [default: the best compiled-in device].
    #[arg(long, global = true)]
    pub device: Option<String>,
    /// Compute dtype: f32, f16 or bf16 [default: f32 on CPU, f16 on GPUs].
    #[arg(long, global = true)]
    pub dtype: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate images from a prompt.
    Generate(GenerateArgs),
    /// List the model packs the manifests declare.
    Packs,
    /// Time the UNet or a whole pipeline.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// Which model to use: a diffusers folder or a pack.
#[derive(Debug, Args, Clone)]
#[group(required = true, multiple = false)]
pub struct ModelChoice {
    /// A model folder in the diffusers layout (model_index.json, unet/, vae/, ...).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A model pack declared in the manifests folder.
    #[arg(long)]
    pub pack: Option<String>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelChoice,
    /// What to draw.
    #[arg(long)]
    pub prompt: String,
    /// What to steer away from [default: the pack's, else empty].
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Denoising steps [default: the pack's, else 20].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub steps: Option<u32>,
    /// Classifier-free guidance scale, 0 to 100 [default: the pack's, else 7.5].
    #[arg(long, value_parser = parse_guidance)]
    pub guidance: Option<f64>,
    /// Width in pixels, a multiple of the VAE scale factor [default: the pack's, else the model's].
    #[arg(long, value_parser = clap::value_parser!(u32).range(8..=8192))]
    pub width: Option<u32>,
    /// Height in pixels, a multiple of the VAE scale factor [default: the pack's, else the model's].
    #[arg(long, value_parser = clap::value_parser!(u32).range(8..=8192))]
    pub height: Option<u32>,
    /// Scheduler, by name or AUTOMATIC1111 alias, case-insensitive (e.g. euler, DDIM).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Seed of the first image (image i of a batch uses seed + i) [default: random].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of images.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub batch: u32,
    /// CLIP skip as in AUTOMATIC1111: 1 uses the last text-encoder layer, 2 the one before.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=48))]
    pub clip_skip: Option<u32>,
    /// Starting noise instead of the seed: a safetensors file with one tensor `latents`,
    /// standard normal, shaped [batch, latent channels, height/f, width/f].
    #[arg(long)]
    pub init_latents: Option<PathBuf>,
    /// Output PNG; with --batch above 1, NAME-1.png, NAME-2.png, ... [default: beeswax-SEED.png].
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Also write the final latents (before VAE scaling and decoding) as tensor `latents`.
    #[arg(long)]
    pub output_latents: Option<PathBuf>,
    /// No progress bar or notes; errors and warnings still go to stderr.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time one UNet forward with random weights for a diffusers UNet config.
    Unet(BenchUnetArgs),
    /// Time a whole generation with per-stage times and peak memory.
    Pipeline(BenchPipelineArgs),
}

#[derive(Debug, Args)]
pub struct BenchUnetArgs {
    /// A diffusers `unet/config.json`.
    #[arg(long)]
    pub config: PathBuf,
    /// Image width (latents are width / 8).
    #[arg(long, default_value_t = 512)]
    pub width: usize,
    /// Image height (latents are height / 8).
    #[arg(long, default_value_t = 512)]
    pub height: usize,
    /// Batch size of the UNet input.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Timed iterations after one warm-up.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub iters: u32,
    /// Print one JSON line {"min_s": ..., "median_s": ...}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchPipelineArgs {
    #[command(flatten)]
    pub model: ModelChoice,
    /// Prompt to generate.
    #[arg(long, default_value = "a red fox in the snow")]
    pub prompt: String,
    /// Steps [default: the pack's, else 20].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Width [default: the pack's, else the model's].
    #[arg(long)]
    pub width: Option<usize>,
    /// Height [default: the pack's, else the model's].
    #[arg(long)]
    pub height: Option<usize>,
    /// Scheduler [default: the pack's, else the model's].
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Guidance [default: the pack's, else 7.5].
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_guidance(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not in 0..=100"))
    }
}
