//! The `beeswax` command: generate images, list packs, run benchmarks.
//!
//! Run with `cargo run --release -- generate --pack tiny-sd --prompt "a red fox" --output fox.png`.

mod args;
mod bench;
mod generate;
mod progress;
mod source;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate::run(&cli.global, a),
        Command::Packs => source::list_packs(&cli.global),
        Command::Bench(b) => bench::run(&cli.global, b),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
