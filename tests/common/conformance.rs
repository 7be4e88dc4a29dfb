//! The conformance table (`scripts/conformance`, docs/conformance.md): every whole-pipeline
//! parity comparison ([`super::images::assert_conforms`]) records what it measured here as one
//! row before it asserts, when `BEESWAX_CONFORMANCE` names the Markdown file to write. The
//! rows gather in `<file>.rows.jsonl` (one JSON object a line, appended by every test binary
//! of the run); after each row the table is written again from all of them, sorted, so the
//! file is whole whichever test ran last. Without the variable nothing is written.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The environment variable naming the Markdown file to write.
pub const ENV_VAR: &str = "BEESWAX_CONFORMANCE";

/// What a parity run is: one row's identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Run {
    /// `txt2img`, `img2img`, `inpaint`, ...
    pub pipeline: String,
    /// The model family (`sd1`, `sd2`, `sdxl`, `flux`...).
    pub family: String,
    /// The sampler.
    pub sampler: String,
    /// The LoRAs applied (`file@weight`, comma separated), or empty.
    pub lora: String,
    /// The reference case (fixture file), naming the row.
    pub case: String,
}

impl Run {
    /// A reference case of `reference.rs` run on a model of `family`.
    pub fn of_case(case: &super::reference::Case, family: &str) -> Self {
        let lora: Vec<String> = (case.loras.iter())
            .map(|(file, weight)| format!("{file}@{weight}"))
            .collect();
        Self {
            pipeline: case.kind.clone().unwrap_or_else(|| "txt2img".into()),
            family: family.to_string(),
            sampler: case.scheduler.clone(),
            lora: lora.join(", "),
            case: case.name(),
        }
    }
}

/// What a parity run measured against its reference, and the tolerances it is held to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    /// Largest pixel difference over the run's images, in 1/255.
    pub image_max: f32,
    /// Mean pixel difference over the run's images, in 1/255.
    pub image_mean: f32,
    /// The image tolerance (largest difference), in 1/255.
    pub image_tol: f32,
    /// Largest latents difference in units of the reference latents' std, if compared.
    pub latents: Option<f32>,
    /// The latents tolerance, in units of std.
    pub latents_tol: Option<f32>,
}

impl Measured {
    /// Whether the run is within its tolerances.
    pub fn pass(&self) -> bool {
        let latents_ok = match (self.latents, self.latents_tol) {
            (Some(d), Some(t)) => d <= t,
            _ => true,
        };
        self.image_max <= self.image_tol && latents_ok
    }
}

#[derive(Serialize, Deserialize)]
struct Row {
    run: Run,
    measured: Measured,
}

static WRITING: Mutex<()> = Mutex::new(());

/// Adds the row of `run` to the table named by [`ENV_VAR`], if any.
pub fn record(run: &Run, measured: &Measured) {
    let Some(out) = std::env::var_os(ENV_VAR).map(PathBuf::from) else {
        return;
    };
    let _guard = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    let rows_path = rows_file(&out);
    let line = serde_json::to_string(&Row {
        run: run.clone(),
        measured: measured.clone(),
    })
    .unwrap();
    let mut rows = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&rows_path)
        .unwrap_or_else(|e| panic!("{}: {e}", rows_path.display()));
    writeln!(rows, "{line}").unwrap();
    drop(rows);
    let text = std::fs::read_to_string(&rows_path).unwrap();
    let mut rows: Vec<Row> = (text.lines())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    rows.sort_by(|a, b| a.run.cmp(&b.run));
    std::fs::write(&out, table(&rows)).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
}

/// Where the rows of table `out` gather.
pub fn rows_file(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".rows.jsonl");
    PathBuf::from(name)
}

fn table(rows: &[Row]) -> String {
    let failed = rows.iter().filter(|r| !r.measured.pass()).count();
    let mut s = String::from(
        "# Conformance with diffusers\n\n\
         Every whole-pipeline parity fixture (`tests/fixtures/make_*.py`: the reference's \
         starting noise, final latents and images, saved from diffusers on miniature models) \
         run by beeswax and compared. Image differences are in 1/255 over every pixel and \
         channel of the run's images; the latents difference is the largest one in units of \
         the reference latents' standard deviation. Regenerate with `scripts/conformance`.\n\n",
    );
    s.push_str(&format!(
        "{} runs, {} passed, {} failed.\n\n",
        rows.len(),
        rows.len() - failed,
        failed
    ));
    s.push_str(
        "| pipeline | family | sampler | LoRA | case | image max (/255) | image mean (/255) \
         | latents max (× std) | tolerance | result |\n\
         |---|---|---|---|---|---:|---:|---:|---|---|\n",
    );
    for Row { run, measured: m } in rows {
        let latents = m.latents.map_or("—".to_string(), |d| format!("{d:.2e}"));
        let tolerance = match m.latents_tol {
            Some(t) => format!("{}/255, {t:.0e} × std", m.image_tol),
            None => format!("{}/255", m.image_tol),
        };
        let lora = if run.lora.is_empty() {
            "—"
        } else {
            &run.lora
        };
        s.push_str(&format!(
            "| {} | {} | {} | {lora} | `{}` | {:.2} | {:.4} | {latents} | {tolerance} | {} |\n",
            run.pipeline,
            run.family,
            run.sampler,
            run.case,
            m.image_max,
            m.image_mean,
            if m.pass() { "pass" } else { "**FAIL**" }
        ));
    }
    s
}
