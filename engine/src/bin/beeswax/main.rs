//! The `beeswax` command: generate images, list packs, run benchmarks, quantize models.
//!
//! Run with `cargo run --release -- generate --pack tiny-sd --prompt "a red fox" --output fox.png`.

mod args;
mod bench;
mod bench_pipeline;
mod bench_vae;
mod check;
mod fleet;
mod generate;
mod image_input;
mod plugins;
mod progress;
mod prompt;
mod quantize;
mod schedulers;
mod serve;
mod source;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

/// The system allocator, with mapped weight files counted among its allocations, so that
/// weights are used in place from the page cache (see `beeswax::weights::mapping`). A program
/// that links the library with another global allocator still works; it copies the weights.
#[global_allocator]
static ALLOCATOR: beeswax::weights::mapping::Allocator = beeswax::weights::mapping::Allocator;

fn main() -> ExitCode {
    // Keep freed memory mapped so that every op's output buffer does not page-fault (see
    // beeswax::kernels::malloc); a failure only costs speed.
    beeswax::kernels::malloc::tune();
    let cli = Cli::parse();
    if let Err(e) = beeswax::kernels::amx::requested() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Generate(a) => generate::run(&cli.global, *a),
        Command::Packs => source::list_packs(&cli.global),
        Command::Families => source::list_families(&cli.global),
        Command::Inspect { file } => source::inspect(&cli.global, &file),
        // Plugin schedulers are listed like built-ins.
        Command::Schedulers => list_schedulers(&cli.global),
        Command::Bench(b) => bench::run(&cli.global, b),
        Command::Serve(a) => serve::run(&cli.global, a),
        Command::Worker(a) => fleet::run(&cli.global, a),
        Command::Plugins => plugins::list(&cli.global),
        Command::Check => check::run(&cli.global),
        Command::Quantize(a) => quantize::run(a),
        Command::Prompt(a) => prompt::run(&cli.global, a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `beeswax schedulers`: built-ins and the manifests' plugin schedulers alike.
fn list_schedulers(global: &args::Global) -> anyhow::Result<()> {
    let files = source::read_manifests(global)?;
    let folder = files.as_ref().map(|f| f.parse()).transpose()?;
    let (_plugins, extensions) = plugins::load(folder.as_ref())?;
    schedulers::list(&extensions)
}
