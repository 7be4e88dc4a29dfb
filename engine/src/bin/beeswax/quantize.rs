//! `beeswax quantize`: write a safetensors model as a GGUF file (see `beeswax::gguf`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use beeswax::gguf::{
    quantize_file, quantize_unet_folder, Architecture, GgmlType, QuantizeOptions, QUANTIZE_TARGETS,
};
use clap::Args;

/// `beeswax quantize` arguments.
#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// The model: a .safetensors file (a diffusers component such as
    /// transformer/diffusion_pytorch_model.safetensors, or a single-file checkpoint; names
    /// kept), or an SD/SDXL diffusers folder (its UNet, written in the original LDM names).
    pub input: PathBuf,
    /// The GGUF file to write.
    pub output: PathBuf,
    /// Type of the linear layers: f32, f16, bf16, q8_0, q5_0, q5_1, q4_0, q4_1, q4_k, q5_k or
    /// q6_k. Norms, biases, embeddings, small tensors and convolutions keep a float type.
    #[arg(long = "type", value_parser = parse_type)]
    pub ty: GgmlType,
    /// Architecture to record (flux, sd1, sdxl, sd3, ...) when the tensor names do not tell it.
    #[arg(long)]
    pub arch: Option<String>,
    /// Overwrite OUTPUT if it exists.
    #[arg(long)]
    pub force: bool,
}

fn parse_type(s: &str) -> Result<GgmlType, String> {
    match s.parse::<GgmlType>() {
        Ok(ty) if ty.can_quantize() => Ok(ty),
        _ => Err(format!(
            "{s:?} is not a type beeswax writes ({QUANTIZE_TARGETS})"
        )),
    }
}

/// Runs `beeswax quantize`.
pub fn run(args: QuantizeArgs) -> Result<()> {
    if args.output.exists() && !args.force {
        bail!(
            "{} exists; pass --force to overwrite it",
            args.output.display()
        );
    }
    let options = QuantizeOptions {
        target: args.ty,
        architecture: args.arch.as_deref().map(Architecture::from_name),
    };
    let progress = |i: usize, n: usize, t: &beeswax::gguf::PlannedTensor| {
        eprintln!("[{}/{n}] {} {:?} -> {}", i + 1, t.name, t.shape, t.ty);
    };
    let report = if args.input.is_dir() {
        quantize_unet_folder(&args.input, &args.output, &options, progress)?
    } else {
        quantize_file(&args.input, &args.output, &options, progress)?
    };
    let mut counts = BTreeMap::new();
    for (_, ty) in &report.tensors {
        *counts.entry(ty.name()).or_insert(0usize) += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(ty, n)| format!("{ty}: {n}")).collect();
    println!(
        "wrote {} ({} model, {} tensors: {}, {:.1} MiB)",
        args.output.display(),
        report.architecture,
        report.tensors.len(),
        counts.join(", "),
        report.bytes as f64 / (1 << 20) as f64
    );
    if !report.skipped.is_empty() {
        let skipped: Vec<String> = report
            .skipped
            .iter()
            .map(|(name, dtype)| format!("{name} ({dtype})"))
            .collect();
        println!("left out (not floats): {}", skipped.join(", "));
    }
    Ok(())
}
