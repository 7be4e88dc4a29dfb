//! A one-line progress bar on stderr: step, total and steps per second.

use std::io::Write;
use std::ops::ControlFlow;

use beeswax::pipeline::StepProgress;

/// Returns the per-step callback; silent when `quiet`.
pub fn bar(quiet: bool) -> impl FnMut(StepProgress) -> ControlFlow<()> {
    move |p: StepProgress| {
        if !quiet {
            let secs = p.elapsed.as_secs_f64().max(1e-9);
            let rate = p.step as f64 / secs;
            // Slow steps read better as seconds per step, as A1111's "s/it" (a FLUX step on a
            // CPU takes minutes: "0.00 steps/s" says nothing).
            let speed = if rate >= 1.0 || p.step == 0 {
                format!("{rate:.2} steps/s")
            } else {
                format!("{:.1} s/step", secs / p.step as f64)
            };
            let width = 30;
            let filled = width * p.step / p.total.max(1);
            eprint!(
                "\r[{}{}] step {}/{} {}",
                "#".repeat(filled),
                " ".repeat(width - filled),
                p.step,
                p.total,
                speed
            );
            if p.step == p.total {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        }
        ControlFlow::Continue(())
    }
}
