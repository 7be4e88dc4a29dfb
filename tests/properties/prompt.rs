//! The prompt parsers (A1111 scheduling and emphasis, ComfyUI weights, `<lora:...>` tags) on
//! arbitrary prompts built from their syntax's characters: no panic, bounded memory, and the
//! schedule's shape holds (sorted ends, the last one at `steps`).

use beeswax::lora::extract_lora_tags;
use beeswax::prompt::attention::{attention_warnings, comfy_token_weights, parse_prompt_attention};
use beeswax::prompt::schedule::{entry_at_step, schedules, split_and};
use proptest::prelude::*;

use super::alloc::bounded;
use super::mutate::config;

/// What parsing a prompt of at most a few hundred characters may hold at once.
const BOUND: usize = 32 << 20;

/// A prompt made of syntax pieces and text.
fn prompt() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "(",
        ")",
        "[",
        "]",
        ":",
        "|",
        "\\",
        "\\(",
        " AND ",
        "AND",
        " BREAK ",
        ":0.5",
        ":1e9",
        ":-3",
        ":1.2.3",
        "0.25",
        "7",
        "1e400",
        " ",
        ",",
        "a",
        "cat",
        "é",
        "\n",
        "<lora:",
        ">",
        "<lora:x:1>",
        "<lora:a:b:c>",
        "embedding:",
        "{",
        "}",
        "::",
        ":]",
        "[:",
        "|]",
        "NaN",
    ]);
    prop::collection::vec(piece, 0..80).prop_map(|v| v.concat())
}

/// Runs every parser on `p` with `steps` steps and checks the schedule's shape.
fn parse_all(p: &str, steps: usize) {
    let schedule = schedules(p, steps);
    assert!(!schedule.is_empty(), "no schedule for {p:?}");
    assert_eq!(schedule.last().unwrap().0, steps, "{p:?}: {schedule:?}");
    assert!(
        schedule.windows(2).all(|w| w[0].0 < w[1].0),
        "{p:?}: {schedule:?}"
    );
    for step in [0, steps / 2, steps] {
        assert!(entry_at_step(&schedule, step) < schedule.len());
    }
    for (_, text) in &schedule {
        for (part, weight) in split_and(text) {
            let _ = parse_prompt_attention(&part);
            assert!(
                !weight.is_nan() || part.contains("NaN"),
                "{part:?}: {weight}"
            );
        }
    }
    let _ = attention_warnings(p);
    let _ = comfy_token_weights(p);
    let _ = extract_lora_tags(p);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn syntax_soup_parses_without_panic(p in prompt(), steps in 1usize..=150) {
        bounded("prompt", BOUND, || parse_all(&p, steps));
    }

    #[test]
    fn any_text_parses_without_panic(p in "\\PC{0,200}", steps in 1usize..=150) {
        bounded("prompt", BOUND, || parse_all(&p, steps));
    }
}

/// Nesting as deep as the server's prompt limit allows, on a thread with the stack a worker
/// (or an async runtime thread) has: the parsers must not recurse once per bracket.
#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    let depth = beeswax::limits::PROMPT_CHARS / 2;
    let prompts = [
        format!("{}x{}", "(".repeat(depth), ")".repeat(depth)),
        format!("{}x{}", "[".repeat(depth), "]".repeat(depth)),
        format!("{}x", "[a:".repeat(depth)),
        "(".repeat(depth * 2),
        format!("{}x:0.5{}", "[(".repeat(depth / 2), ")]".repeat(depth / 2)),
    ];
    for p in prompts {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || parse_all(&p, 20))
            .unwrap()
            .join()
            .unwrap();
    }
}
