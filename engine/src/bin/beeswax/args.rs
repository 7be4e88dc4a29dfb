//! Command-line arguments. The `///` lines are the `--help` text.

use std::path::PathBuf;

use beeswax::limits;
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
#[derive(Debug, Clone, Args)]
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
    /// Dtype weight matrices and convolution filters are held in on CPU with f32 compute:
    /// f32, f16 or bf16 (16-bit weights are widened inside the kernels, half the memory)
    /// [default: the file's own 16-bit type where it has one, else f32].
    #[arg(long, global = true)]
    pub weights_dtype: Option<String>,
    /// Single files: configs and tokenizers from this diffusers folder instead of the
    /// family's bundled ones (diffusers' `from_single_file(config=...)`); with a GGUF file
    /// or a FLUX transformer file (BFL/ComfyUI layout): the diffusers folder the other
    /// components (text encoders, VAE, configs) come from.
    #[arg(long, global = true)]
    pub model_config: Option<PathBuf>,
    /// Single files: the model family instead of the detected one (`beeswax families`).
    #[arg(long, global = true)]
    pub family: Option<String>,
    /// Single files: what the denoiser predicts, `epsilon` or `v` (SD 2.x files cannot tell)
    /// [default: the family's, else guessed from the weights and logged].
    #[arg(long, global = true, value_parser = ["epsilon", "v"])]
    pub prediction: Option<String>,
    /// A VAE replacing the model's (folder or single file): an AutoencoderKL file (safetensors,
    /// diffusers or original names), or a tiny autoencoder (TAESD/TAESDXL/TAEF1: a diffusers
    /// AutoencoderTiny folder or file, or the original `taesd_decoder.safetensors`, with its
    /// `taesd_encoder.safetensors` beside it for img2img); `taesd`: the family's tiny
    /// autoencoder, from beside the model or the Hugging Face cache (`./taesd` for a folder
    /// so named).
    #[arg(long, global = true)]
    pub vae: Option<PathBuf>,
    /// T5 tokens per prompt on FLUX [default: the family's: 512 dev, 256 schnell]; longer
    /// prompts are cut with a warning.
    #[arg(long, global = true, value_parser = |s: &str| whole(s, &(1..=4096)))]
    pub max_sequence_length: Option<u32>,
    /// Hold less in memory: FLUX's T5 encoder is read for each prompt encoding and freed
    /// after (slower per job, about 9.5 GB less for T5-XXL in bf16).
    #[arg(long, global = true)]
    pub low_memory: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate images from a prompt.
    Generate(Box<GenerateArgs>),
    /// List the model packs the manifests declare.
    Packs,
    /// List the model families (shipped, and those the manifests declare), in detection order.
    Families,
    /// Describe a single-file checkpoint: detected family and rule, dtypes, components found,
    /// keys left unused; or a GGUF file: architecture, denoiser prefix, tensor types.
    Inspect {
        /// The checkpoint (.safetensors) or GGUF file.
        file: PathBuf,
    },
    /// List every scheduler (sampler) and noise schedule with its aliases.
    Schedulers,
    /// Time the UNet or a whole pipeline.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Serve the pipelines over HTTP (native jobs API, OpenAI and AUTOMATIC1111 compatible).
    Serve(crate::serve::ServeArgs),
    /// Run the manifests' pipelines for a fleet: pull jobs from NATS JetStream (`--nats URL`),
    /// as published by `beeswax serve --nats URL`.
    Worker(crate::fleet::WorkerArgs),
    /// List the plugins the manifests enable and what they provide.
    Plugins,
    /// Validate every manifest and plugin (syntax, paths, hashes, ABI, capabilities); exits
    /// non-zero listing every problem.
    Check,
    /// Write a safetensors model as a GGUF file with quantized linear layers.
    Quantize(crate::quantize::QuantizeArgs),
    /// Show how a prompt is read: sub-prompts, the text of each step, chunks, tokens,
    /// weights, embeddings, and warnings.
    Prompt(crate::prompt::PromptArgs),
}

/// Which model to use: a diffusers folder or a pack.
#[derive(Debug, Args, Clone)]
#[group(required = true, multiple = false)]
pub struct ModelChoice {
    /// A model folder in the diffusers layout (model_index.json, unet/, vae/, ...), or a
    /// single-file checkpoint (.safetensors, original layout; family detected from its keys;
    /// a FLUX transformer file takes --model-config), or a GGUF denoiser with --model-config.
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
    /// Denoising steps, 1 to 1000 [default: the pack's, else 20].
    #[arg(long, value_parser = |s: &str| whole(s, &limits::STEPS))]
    pub steps: Option<u32>,
    /// Classifier-free guidance scale (AUTOMATIC1111's CFG scale), 0 to 100 [default: the
    /// pack's, else 7.5].
    #[arg(long, visible_alias = "cfg-scale", value_parser = parse_guidance)]
    pub guidance: Option<f64>,
    /// True classifier-free guidance on FLUX (diffusers' true_cfg_scale): above 1 and with a
    /// --negative-prompt, a negative pass runs beside the positive one (twice the time);
    /// --guidance still feeds FLUX-dev's guidance embedding.
    #[arg(long, value_parser = parse_guidance)]
    pub true_cfg: Option<f64>,
    /// SDXL size conditioning: the training image's size WxH (diffusers' `original_size`)
    /// [default: the image size].
    #[arg(long, value_parser = parse_size)]
    pub original_size: Option<(usize, usize)>,
    /// SDXL size conditioning: the crop's top-left corner Y,X in pixels (diffusers'
    /// `crops_coords_top_left`) [default: 0,0].
    #[arg(long, value_parser = parse_top_left)]
    pub crop_top_left: Option<(usize, usize)>,
    /// SDXL size conditioning: the size asked for WxH (diffusers' `target_size`) [default:
    /// the image size].
    #[arg(long, value_parser = parse_size)]
    pub target_size: Option<(usize, usize)>,
    /// Width in pixels, a multiple of the VAE scale factor [default: an --init-image's,
    /// else the pack's, else the model's].
    #[arg(long, value_parser = |s: &str| whole(s, &limits::SIZE))]
    pub width: Option<u32>,
    /// Height in pixels, a multiple of the VAE scale factor [default: an --init-image's,
    /// else the pack's, else the model's].
    #[arg(long, value_parser = |s: &str| whole(s, &limits::SIZE))]
    pub height: Option<u32>,
    /// Scheduler (sampler), by name or AUTOMATIC1111/ComfyUI alias, case-insensitive (e.g.
    /// euler, "Euler a", "DPM++ 2M Karras"); `beeswax schedulers` lists them.
    #[arg(long, visible_alias = "sampler")]
    pub scheduler: Option<String>,
    /// Noise schedule (e.g. karras, exponential, sgm_uniform, trailing) [default: the pack's,
    /// else the one the scheduler name implies, else the sampler's own].
    #[arg(long)]
    pub schedule: Option<String>,
    /// Seed of the first image (image i of a batch uses seed + i) [default: random].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of images.
    #[arg(long, default_value_t = 1, value_parser = |s: &str| whole(s, &limits::BATCH))]
    pub batch: u32,
    /// CLIP skip as in AUTOMATIC1111: 1 uses the last text-encoder layer, 2 the one before.
    #[arg(long, value_parser = |s: &str| whole(s, &limits::CLIP_SKIP))]
    pub clip_skip: Option<u32>,
    /// How prompts are read: a1111 (AUTOMATIC1111's weights `(x:1.2)`, long prompts, BREAK,
    /// `[a:b:when]` editing, `[a|b]`, AND), comfy (ComfyUI's weights) or plain (diffusers'
    /// literal 77 tokens) [default: the pack's, else a1111].
    #[arg(long)]
    pub prompt_syntax: Option<beeswax::prompt::PromptSyntax>,
    /// Pad the prompt and the negative prompt with empty chunks to the same length (one
    /// denoiser call per step; A1111's "pad prompt/negative prompt", ComfyUI's behaviour).
    #[arg(long)]
    pub pad_prompts: bool,
    /// A folder of textual-inversion embeddings (.safetensors; the file name is the name used
    /// in prompts), besides the manifests' [[embedding]] entries.
    #[arg(long, value_name = "DIR")]
    pub embeddings: Option<PathBuf>,
    /// Starting noise instead of the seed: a safetensors file with one tensor `latents`,
    /// standard normal, shaped [batch, latent channels, height/f, width/f].
    #[arg(long)]
    pub init_latents: Option<PathBuf>,
    /// Image-to-image: start from this picture (PNG, JPEG or WebP) instead of noise; its size
    /// (rounded down to the VAE scale factor) is the default --width/--height.
    #[arg(long, conflicts_with = "init_latents")]
    pub init_image: Option<PathBuf>,
    /// How much of the picture to repaint, above 0 and at most 1: the first (1 - S) of the
    /// steps are skipped and the picture is noised to where the rest begin [default: 0.75].
    #[arg(
        long,
        visible_alias = "denoising-strength",
        requires = "init_image",
        value_parser = parse_strength
    )]
    pub strength: Option<f64>,
    /// A refiner that finishes the denoising from --refiner-switch on (diffusers'
    /// denoising_end/denoising_start): a pack name, a diffusers folder or a single-file
    /// checkpoint of the base's latent space (e.g. SDXL's refiner for an SDXL base).
    #[arg(long, value_name = "PACK_OR_FILE")]
    pub refiner: Option<String>,
    /// The share of the schedule the base runs before the refiner takes over, above 0 and
    /// below 1 [default: 0.8].
    #[arg(long, requires = "refiner", value_parser = parse_switch)]
    pub refiner_switch: Option<f64>,
    /// A single-file --refiner's configs and tokenizers from this diffusers folder (as
    /// --model-config for --model) instead of its family's bundled ones.
    #[arg(long, value_name = "DIR", requires = "refiner")]
    pub refiner_config: Option<PathBuf>,
    /// How a picture of another size is fitted to --width/--height: stretch (AUTOMATIC1111's
    /// "Just resize", the default), crop (cover and cut) or fill (fit and extend the edges).
    #[arg(long, requires = "init_image")]
    pub resize: Option<beeswax::image_in::ResizeMode>,
    /// Inpainting: a mask picture, white = repaint (grayscale, or the alpha channel when it
    /// has a transparent part: opaque = repaint). Same size as --init-image, or same shape.
    #[arg(long, requires = "init_image")]
    pub mask: Option<PathBuf>,
    /// Gaussian blur of the mask's edge in pixels (its pasted-back seam) [default: 4].
    #[arg(long, requires = "init_image", value_parser = parse_blur)]
    pub mask_blur: Option<f32>,
    /// What to repaint: whole (the picture fitted to --width/--height) or masked (only the
    /// mask's region plus --inpaint-padding, at --width/--height, pasted back) [default: whole].
    #[arg(long, requires = "init_image", value_parser = ["whole", "masked"])]
    pub inpaint_area: Option<String>,
    /// Pixels of context around the mask with --inpaint-area masked [default: 32].
    #[arg(long, requires = "init_image", value_parser = |s: &str| whole(s, &limits::INPAINT_PADDING).map(|v| v as usize))]
    pub inpaint_padding: Option<usize>,
    /// What the masked region starts from: original, fill (colours from around it) or
    /// latent-noise [default: original; fill with --outpaint].
    #[arg(long, requires = "init_image")]
    pub masked_content: Option<beeswax::pipeline::MaskedContent>,
    /// Outpainting: extend the canvas by left,right,top,bottom pixels and repaint the border.
    #[arg(
        long,
        requires = "init_image",
        conflicts_with = "mask",
        value_name = "L,R,T,B"
    )]
    pub outpaint: Option<beeswax::image_in::Outpaint>,
    /// The standard-normal noise added to the picture's latents: a safetensors file with one
    /// tensor `noise` [batch, latent channels, height/f, width/f] (for comparing with diffusers).
    #[arg(long, requires = "init_image")]
    pub init_noise: Option<PathBuf>,
    /// Encode the picture with a sample of the VAE's latent distribution (seeded) instead of
    /// its mean.
    #[arg(long, requires = "init_image")]
    pub sample_posterior: bool,
    /// A LoRA to apply: a [[lora]] or [[lora_set]] name from the manifests, or a .safetensors
    /// file, with an optional weight (default: the manifest's, else 1; negative inverts it).
    /// Repeatable. Prompt tags <lora:NAME:WEIGHT> work too (AUTOMATIC1111 syntax).
    #[arg(
        long = "lora",
        value_name = "NAME_OR_FILE[:WEIGHT]",
        allow_hyphen_values = true
    )]
    pub loras: Vec<String>,
    /// Allowed LoRA weights, MIN:MAX.
    #[arg(
        long,
        value_name = "MIN:MAX",
        default_value = "-5:5",
        allow_hyphen_values = true
    )]
    pub lora_weight_range: beeswax::lora::WeightRange,
    /// Output PNG; with --batch above 1, NAME-1.png, NAME-2.png, ... [default: beeswax-SEED.png].
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Also write the final latents (before VAE scaling and decoding) as tensor `latents`.
    #[arg(long)]
    pub output_latents: Option<PathBuf>,
    /// Post-process each image with this plugin before writing it (repeatable, applied in
    /// order), e.g. `--post sharpen-wasm`; see `beeswax plugins`.
    #[arg(long = "post", value_name = "PLUGIN")]
    pub post: Vec<String>,
    /// Pre-process the --init-image and its mask with this plugin before the job (repeatable,
    /// applied in order); see `beeswax plugins`.
    #[arg(long = "pre", value_name = "PLUGIN", requires = "init_image")]
    pub pre: Vec<String>,
    /// No progress bar or notes; errors and warnings still go to stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Decode the image in blended tiles to bound memory (automatic above 768 pixels a side).
    #[arg(long)]
    pub vae_tiling: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time one UNet forward with random weights for a diffusers UNet config.
    Unet(BenchUnetArgs),
    /// Time a whole generation with per-stage times and peak memory.
    Pipeline(BenchPipelineArgs),
    /// Time one VAE decode at a given size (random or given weights) with peak memory.
    Vae(BenchVaeArgs),
    /// Time one scheduler step of every built-in sampler next to one UNet step.
    Scheduler(BenchSchedulerArgs),
}

#[derive(Debug, Args)]
pub struct BenchSchedulerArgs {
    /// A diffusers `unet/config.json` for the UNet step timed alongside [default: none, only
    /// scheduler steps are timed].
    #[arg(long)]
    pub unet_config: Option<PathBuf>,
    /// Latent width and height (64 = a 512x512 image).
    #[arg(long, default_value_t = 64)]
    pub latent_size: usize,
    /// Batch size of the latents (2 = one image with classifier-free guidance for the UNet).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Steps per scheduler run.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub steps: u32,
    /// Timed UNet iterations after one warm-up.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub iters: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchVaeArgs {
    /// A diffusers `vae/config.json` to build with random weights.
    #[arg(long, conflicts_with_all = ["model", "tiny"], required_unless_present_any = ["model", "tiny"])]
    pub config: Option<PathBuf>,
    /// A model folder in the diffusers layout whose `vae/` (config and weights) is timed.
    #[arg(long, conflicts_with = "tiny")]
    pub model: Option<PathBuf>,
    /// A tiny autoencoder (TAESD: a diffusers `AutoencoderTiny` folder or file) whose decoder
    /// is timed.
    #[arg(long)]
    pub tiny: Option<PathBuf>,
    /// Image width (latents are width / 8).
    #[arg(long, default_value_t = 512)]
    pub width: usize,
    /// Image height (latents are height / 8).
    #[arg(long, default_value_t = 512)]
    pub height: usize,
    /// Decode in blended tiles (as `--vae-tiling`); without it, the whole image at once.
    #[arg(long)]
    pub tiling: bool,
    /// Timed iterations after one warm-up.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub iters: u32,
    /// Print one JSON line {"min_s": ..., "median_s": ..., "peak_rss_mb": ...}.
    #[arg(long)]
    pub json: bool,
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
    /// Time the call a job with guidance makes instead: the batch's latents twice, against two
    /// texts (an input of twice `--batch`), whose part before the first cross-attention the
    /// UNet runs once.
    #[arg(long)]
    pub guidance_pair: bool,
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
    /// Measure the cold job, as `beeswax generate` runs it: from this process's start
    /// (binary loading included) through loading each component, the job and writing the PNG.
    /// Without it the job is timed on the loaded model.
    #[arg(long)]
    pub cold: bool,
    /// Runs of the job on the loaded model; the fastest is reported (2: the second run, warm
    /// caches and allocator, as a server's jobs after its first).
    #[arg(long, default_value_t = 1, conflicts_with = "cold",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Where the PNG is written [default: beeswax-bench.png in the system's temp folder].
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A whole number in `range` (from [`beeswax::limits`]).
fn whole(s: &str, range: &std::ops::RangeInclusive<usize>) -> Result<u32, String> {
    let v: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    if range.contains(&v) {
        u32::try_from(v).map_err(|_| format!("{v} is too large"))
    } else {
        Err(format!("{v} is not {}", limits::describe(range)))
    }
}

/// `WxH` in pixels, each in 1..=16384.
fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?} is not WIDTHxHEIGHT (e.g. 1024x1024)"))?;
    Ok((
        whole(w.trim(), &(1..=16384))? as usize,
        whole(h.trim(), &(1..=16384))? as usize,
    ))
}

/// `Y,X` in pixels (top, left), each in 0..=16384.
fn parse_top_left(s: &str) -> Result<(usize, usize), String> {
    let (y, x) = s
        .split_once(',')
        .ok_or_else(|| format!("{s:?} is not TOP,LEFT in pixels (e.g. 0,0)"))?;
    Ok((
        whole(y.trim(), &(0..=16384))? as usize,
        whole(x.trim(), &(0..=16384))? as usize,
    ))
}

fn parse_guidance(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if limits::GUIDANCE.contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{v} is not {}",
            limits::describe(&limits::GUIDANCE)
        ))
    }
}

fn parse_strength(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if limits::strength_ok(v) {
        Ok(v)
    } else {
        Err(format!("{v} is not above 0 and at most 1"))
    }
}

fn parse_switch(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if limits::switch_at_ok(v) {
        Ok(v)
    } else {
        Err(format!("{v} is not above 0 and below 1"))
    }
}

fn parse_blur(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if limits::MASK_BLUR.contains(&(v as f64)) {
        Ok(v)
    } else {
        Err(format!(
            "{v} is not {} pixels",
            limits::describe(&limits::MASK_BLUR)
        ))
    }
}
