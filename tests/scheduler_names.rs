//! Scheduler names, aliases and errors, and the `beeswax` CLI with every sampler: unknown or
//! impossible names and combinations are refused early with a way out, every listed name
//! generates with the tiny-sd pack. Numerical parity with diffusers is in `schedulers.rs`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use beeswax::schedulers::{self, SchedulerConfig, SchedulerError};
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

/// Runs the `beeswax` binary from the repository root (where `manifests/` is).
fn beeswax_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_beeswax"))
        .args(args)
        .current_dir(common::root())
        .output()
        .unwrap()
}

/// Every name `beeswax schedulers` prints (canonical names and aliases, samplers and
/// schedules) works with `beeswax generate --pack tiny-sd`, and A1111's combined names too.
#[test]
fn every_listed_name_generates_with_tiny_sd() {
    let listing = beeswax_cli(&["schedulers"]);
    assert!(listing.status.success());
    let text = String::from_utf8(listing.stdout).unwrap();
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
    assert!(samplers.len() >= 2 * 18, "{samplers:?}");
    assert!(schedules.len() >= 11, "{schedules:?}");
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.png");
    let output = output.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--pack",
            "tiny-sd",
            "--prompt",
            "a red fox",
            "--steps",
            "3",
            "--guidance",
            "1",
            "--seed",
            "3",
            "--quiet",
            "--output",
            output,
        ];
        args.extend_from_slice(extra);
        let out = beeswax_cli(&args);
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for name in &samplers {
        run(&["--scheduler", name]);
    }
    for name in &schedules {
        run(&["--scheduler", "euler", "--schedule", name]);
    }
    run(&["--scheduler", "DPM++ 2M Karras"]);
    run(&["--scheduler", "DPM++ SDE Karras"]);
    run(&["--scheduler", "dpmpp_2m", "--schedule", "karras"]);
    let png = std::fs::read(output).unwrap();
    let needle = b"Sampler: DPM++ 2M Karras";
    assert!(png.windows(needle.len()).any(|w| w == needle));
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
        let mut all = vec!["generate", "--pack", "tiny-sd", "--prompt", "x", "--quiet"];
        all.extend_from_slice(args);
        let out = beeswax_cli(&all);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        for w in words {
            assert!(err.contains(w), "{args:?}: {err} lacks {w:?}");
        }
        assert!(!err.contains("step 1/"), "{args:?}: a model ran: {err}");
    }
}

/// A pack may set a default `schedule`; a misspelt one is refused when the manifest is read.
#[test]
fn pack_default_schedule_is_used_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::fixture("models/tiny-sd");
    let manifest = |schedule: &str| {
        format!(
            "[pack]\nname = \"tiny\"\nfamily = \"sd1\"\npath = {:?}\n\n[pack.defaults]\n\
             scheduler = \"dpmpp_2m\"\nschedule = \"{schedule}\"\nsteps = 3\nwidth = 64\n\
             height = 64\n",
            model.to_str().unwrap()
        )
    };
    std::fs::write(dir.path().join("tiny.toml"), manifest("karras")).unwrap();
    let output = dir.path().join("out.png");
    let manifests = dir.path().to_str().unwrap();
    let args = [
        "generate",
        "--manifests",
        manifests,
        "--pack",
        "tiny",
        "--prompt",
        "a fox",
        "--seed",
        "1",
        "--quiet",
        "--output",
        output.to_str().unwrap(),
    ];
    let out = beeswax_cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&output).unwrap();
    let needle = b"Sampler: DPM++ 2M Karras";
    assert!(png.windows(needle.len()).any(|w| w == needle));

    std::fs::write(dir.path().join("tiny.toml"), manifest("karas")).unwrap();
    let out = beeswax_cli(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for word in [
        "tiny.toml",
        "pack.defaults.schedule",
        "karas",
        "did you mean \"karras\"",
    ] {
        assert!(err.contains(word), "{err} lacks {word}");
    }
}
