//! Scheduler names, aliases and errors, and the `beeswax` CLI with every sampler: unknown or
//! impossible names and combinations are refused early with a way out, every listed name
//! generates with the tiny-sd pack. Numerical parity with diffusers is in `schedulers.rs`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use beeswax::schedulers::{self, SchedulerConfig, SchedulerError};
use common::command::{pack_toml, Dir, TestCommand};
use common::images::Png;

#[test]
fn unknown_name_lists_the_valid_ones() {
    let err = common::registry()
        .build_named("eulr", None, &SchedulerConfig::default(), 20)
        .err()
        .unwrap();
    assert!(matches!(err, SchedulerError::Unknown { .. }), "{err:?}");
    let message = err.to_string();
    for word in ["eulr", "ddim", "euler", "DDIM", "Euler"] {
        assert!(message.contains(word), "{message:?} lacks {word}");
    }
}

#[test]
fn step_counts_outside_the_training_range_are_refused() {
    let config = SchedulerConfig::default();
    for name in ["ddim", "euler"] {
        for steps in [0, 1001] {
            let err = common::registry()
                .build_named(name, None, &config, steps)
                .err()
                .unwrap();
            assert!(matches!(err, SchedulerError::Invalid { .. }), "{err:?}");
            let message = err.to_string();
            assert!(
                message.contains(name) && message.contains("between 1 and 1000"),
                "{message}"
            );
        }
        assert_eq!(
            common::registry()
                .build_named(name, None, &config, 1000)
                .unwrap()
                .timesteps()
                .len(),
            1000
        );
    }
}

#[test]
fn names_and_aliases_resolve_in_any_case() {
    let registry = common::registry();
    let names: Vec<(&str, Vec<&str>)> = registry
        .entries()
        .iter()
        .map(|e| {
            (
                e.name.as_str(),
                e.aliases.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert!(names.contains(&("ddim", vec!["DDIM"])));
    assert!(names.contains(&("euler", vec!["Euler"])));
    let config = SchedulerConfig::default();
    for name in ["ddim", "DDIM", "ddIM", "euler", "Euler", "EULER"] {
        assert_eq!(
            common::registry()
                .build_named(name, None, &config, 4)
                .unwrap()
                .timesteps()
                .len(),
            4
        );
    }
    // Same config, different default spacing: DDIM leading, Euler linspace (as in diffusers).
    let ddim = common::registry()
        .build_named("DDIM", None, &config, 4)
        .unwrap();
    let euler = common::registry()
        .build_named("Euler", None, &config, 4)
        .unwrap();
    assert_eq!(ddim.timesteps(), &[750.0, 500.0, 250.0, 0.0]);
    assert_eq!(euler.timesteps(), &[999.0, 666.0, 333.0, 0.0]);
}

/// Combinations that cannot work are refused when the scheduler is built (before any model
/// runs), with a message naming the sampler, the value and a way out.
#[test]
fn impossible_combinations_are_refused_with_a_way_out() {
    let config = SchedulerConfig::default();
    let refuse = |name: &str, schedule: Option<&str>, steps: usize, words: &[&str]| {
        let err = common::registry()
            .build_named(name, schedule, &config, steps)
            .err()
            .unwrap_or_else(|| panic!("{name} {schedule:?} {steps} was accepted"))
            .to_string();
        for w in words {
            assert!(err.contains(w), "{name} {schedule:?}: {err:?} lacks {w:?}");
        }
    };
    refuse("ddim", Some("karras"), 20, &["ddim", "karras", "dpmpp_2m"]);
    refuse("PLMS", Some("sgm_uniform"), 20, &["pndm", "sgm_uniform"]);
    refuse(
        "lcm",
        None,
        51,
        &["original_inference_steps (50)", "fewer steps"],
    );
    refuse("tcd", Some("trailing"), 4, &["tcd", "trailing"]);
    refuse(
        "DPM++ 2S a",
        Some("leading"),
        10,
        &["dpmpp_2s_a", "leading"],
    );
    refuse(
        "DPM++ 2M Karras",
        Some("exponential"),
        10,
        &["karras", "exponential"],
    );
    refuse(
        "dpmpp_2m",
        Some("karas"),
        10,
        &["karas", "did you mean \"karras\""],
    );
    refuse(
        "Euler aa",
        None,
        10,
        &["Euler aa", "did you mean", "euler_a"],
    );
    refuse("ddim", Some("zero_snr"), 10, &["v_prediction"]);
    // What does work: every sampler with its default schedule, and every schedule with a
    // k-diffusion sampler, at one step and at few steps.
    for entry in common::registry().entries() {
        let name = entry.name.as_str();
        for steps in [1, 2, 5] {
            let s = common::registry()
                .build_named(name, None, &config, steps)
                .unwrap();
            assert!(s.timesteps().len() >= steps, "{name} {steps}");
        }
    }
    for info in schedulers::SCHEDULES {
        for sampler in ["euler", "dpmpp_2m", "heun", "unipc"] {
            let v = SchedulerConfig {
                prediction_type: schedulers::PredictionType::VPrediction,
                ..Default::default()
            };
            common::registry()
                .build_named(sampler, Some(info.name), &v, 7)
                .unwrap_or_else(|e| panic!("{sampler} + {}: {e}", info.name));
        }
    }
}

/// `"DPM++ 2M Karras"` is `dpmpp_2m` with the Karras schedule: the same schedule as the flag.
#[test]
fn a1111_combined_names_equal_sampler_plus_schedule() {
    let config = SchedulerConfig::default();
    let combined = common::registry()
        .build_named("DPM++ 2M Karras", None, &config, 9)
        .unwrap();
    let split = common::registry()
        .build_named("dpmpp_2m", Some("Karras"), &config, 9)
        .unwrap();
    let flag = common::registry()
        .build_named(
            "dpmpp_2m",
            None,
            &SchedulerConfig {
                use_karras_sigmas: true,
                ..Default::default()
            },
            9,
        )
        .unwrap();
    assert_eq!(combined.timesteps(), split.timesteps());
    assert_eq!(combined.timesteps(), flag.timesteps());
    let registry = common::registry();
    let (entry, schedule) = registry.resolve("euler_ancestral simple").unwrap();
    assert_eq!(
        (entry.name.as_str(), schedule),
        ("euler_a", Some(schedulers::Schedule::Simple))
    );
}

/// `beeswax generate --pack tiny-sd --prompt "a red fox" --steps 3 --guidance 1 --seed 3
/// --quiet --output <out>`, from the repository root (where `manifests/` is).
fn generate_tiny(out: &std::path::Path) -> TestCommand {
    let mut cmd = TestCommand::in_repo();
    cmd.args([
        "generate",
        "--pack",
        "tiny-sd",
        "--prompt",
        "a red fox",
        "--steps",
        "3",
    ])
    .args(["--guidance", "1", "--seed", "3", "--quiet", "--output"])
    .arg(out);
    cmd
}

/// The names `beeswax schedulers` lists: (samplers with their aliases, schedules).
fn listed_names() -> (Vec<String>, Vec<String>) {
    let text = TestCommand::in_repo().arg("schedulers").stdout();
    let (mut samplers, mut schedules) = (Vec::new(), Vec::new());
    let mut section = "";
    for line in text.lines() {
        if let Some(header) = line.strip_prefix("# ") {
            section = header.split_whitespace().next().unwrap_or_default();
            continue;
        }
        let mut columns = line.split('\t');
        let names: Vec<String> = std::iter::once(columns.next().unwrap_or_default())
            .chain(columns.next().unwrap_or_default().split(", "))
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect();
        match section {
            "samplers" => samplers.extend(names),
            "schedules" => schedules.extend(names),
            other => panic!("line outside a section ({other:?}): {line}"),
        }
    }
    (samplers, schedules)
}

/// Every name `beeswax schedulers` prints (canonical names and aliases, samplers and
/// schedules) works with `beeswax generate --pack tiny-sd`, and A1111's combined names too.
#[test]
fn every_listed_name_generates_with_tiny_sd() {
    let (samplers, schedules) = listed_names();
    assert!(samplers.len() >= 2 * 18, "{samplers:?}");
    assert!(schedules.len() >= 11, "{schedules:?}");
    let dir = Dir::new("every-sampler");
    let output = dir.join("out.png");
    for name in &samplers {
        generate_tiny(&output).args(["--scheduler", name]).run();
    }
    for name in &schedules {
        generate_tiny(&output)
            .args(["--scheduler", "euler", "--schedule", name])
            .run();
    }
    generate_tiny(&output)
        .args(["--scheduler", "DPM++ 2M Karras"])
        .run();
    generate_tiny(&output)
        .args(["--scheduler", "DPM++ SDE Karras"])
        .run();
    generate_tiny(&output)
        .args(["--scheduler", "dpmpp_2m", "--schedule", "karras"])
        .run();
    let parameters = Png::read(&output).parameters;
    assert!(
        parameters.contains("Sampler: DPM++ 2M Karras"),
        "{parameters}"
    );
}

/// Unknown names and impossible combinations fail before any model runs, naming the valid
/// names and the nearest one.
#[test]
fn generate_refuses_bad_scheduler_names_early() {
    for (args, words) in [
        (
            &["--scheduler", "DPM++ 2N"][..],
            &["DPM++ 2N", "did you mean", "DPM++ 2M"][..],
        ),
        (
            &["--schedule", "karas"][..],
            &["karas", "did you mean \"karras\""][..],
        ),
        (
            &["--scheduler", "ddim", "--schedule", "karras"][..],
            &["ddim", "karras"][..],
        ),
        (
            &["--scheduler", "lcm", "--steps", "60"][..],
            &["original_inference_steps"][..],
        ),
    ] {
        let err = TestCommand::in_repo()
            .args(["generate", "--pack", "tiny-sd", "--prompt", "x", "--quiet"])
            .args(args)
            .assert_fails_with(words);
        assert!(!err.contains("step 1/"), "{args:?}: a model ran: {err}");
    }
}

/// A pack may set a default `schedule`; a misspelt one is refused when the manifest is read.
#[test]
fn pack_default_schedule_is_used_and_checked() {
    let dir = Dir::new("pack-schedule");
    let manifest = |schedule: &str| {
        let defaults = format!(
            "scheduler = \"dpmpp_2m\"\nschedule = \"{schedule}\"\nsteps = 3\nwidth = 64\nheight = 64\n"
        );
        pack_toml("tiny", "tiny-sd", &defaults)
    };
    let output = dir.join("out.png");
    let generate = || {
        let mut cmd = dir.command();
        cmd.arg("generate")
            .arg("--manifests")
            .arg(dir.path())
            .args([
                "--pack", "tiny", "--prompt", "a fox", "--seed", "1", "--quiet",
            ])
            .arg("--output")
            .arg(&output);
        cmd
    };
    dir.create("tiny.toml", manifest("karras"));
    generate().run();
    let parameters = Png::read(&output).parameters;
    assert!(
        parameters.contains("Sampler: DPM++ 2M Karras"),
        "{parameters}"
    );

    dir.create("tiny.toml", manifest("karas"));
    generate().assert_fails_with(&[
        "tiny.toml",
        "pack.defaults.schedule",
        "karas",
        "did you mean \"karras\"",
    ]);
}
