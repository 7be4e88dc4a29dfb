//! A one-line progress bar on stderr: step, total and steps per second.

use std::io::Write;
use std::ops::ControlFlow;

use beeswax::pipeline::StepProgress;

/// Returns the per-step callback; silent when `quiet`.
pub fn bar(quiet: bool) -> impl FnMut(StepProgress) -> ControlFlow<()> {
    move |p: StepProgress| {
        if !quiet {
            let rate = p.step as f64 / p.elapsed.as_secs_f64().max(1e-9);
            let width = 30;
            let filled = width * p.step / p.total.max(1);
            eprint!(
                "\r[{}{}] step {}/{} {:.2} steps/s",
                "#".repeat(filled),
                " ".repeat(width - filled),
                p.step,
                p.total,
                rate
            );
            if p.step == p.total {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        }
        ControlFlow::Continue(())
    }
}
