//! A1111's `get_learned_conditioning_prompt_schedules` doctests and edge cases. Expected values
//! were printed by A1111's grammar with lark 1.1.2 (the version A1111 pins); none of these
//! prompts is ambiguous (every hash seed gives the same result).

use super::*;

fn s(list: &[(usize, &str)]) -> Schedule {
    list.iter().map(|(e, t)| (*e, t.to_string())).collect()
}

#[test]
fn schedules_match_a1111() {
    type Case<'a> = (&'a str, usize, &'a [(usize, &'a str)]);
    let cases: &[Case] = &[
        ("test", 10, &[(10, "test")]),
        ("test", 3, &[(3, "test")]),
        ("test", 1, &[(1, "test")]),
        ("a [b:3]", 10, &[(3, "a "), (10, "a b")]),
        ("a [b:3]", 3, &[(3, "a ")]),
        ("a [b:3]", 1, &[(1, "a ")]),
        ("a [b: 3]", 10, &[(3, "a "), (10, "a b")]),
        ("a [b: 3]", 3, &[(3, "a ")]),
        ("a [b: 3]", 1, &[(1, "a ")]),
        ("a [[[b]]:2]", 10, &[(2, "a "), (10, "a [[b]]")]),
        ("a [[[b]]:2]", 3, &[(2, "a "), (3, "a [[b]]")]),
        ("a [[[b]]:2]", 1, &[(1, "a ")]),
        ("[(a:2):3]", 10, &[(3, ""), (10, "(a:2)")]),
        ("[(a:2):3]", 3, &[(3, "")]),
        ("[(a:2):3]", 1, &[(1, "")]),
        ("a [b : c : 1] d", 10, &[(1, "a b  d"), (10, "a  c  d")]),
        ("a [b : c : 1] d", 3, &[(1, "a b  d"), (3, "a  c  d")]),
        ("a [b : c : 1] d", 1, &[(1, "a b  d")]),
        ("a[b:[c:d:2]:1]e", 10, &[(1, "abe"), (2, "ace"), (10, "ade")]),
        ("a[b:[c:d:2]:1]e", 3, &[(1, "abe"), (2, "ace"), (3, "ade")]),
        ("a[b:[c:d:2]:1]e", 1, &[(1, "abe")]),
        ("a [unbalanced", 10, &[(10, "a [unbalanced")]),
        ("a [unbalanced", 3, &[(3, "a [unbalanced")]),
        ("a [unbalanced", 1, &[(1, "a [unbalanced")]),
        ("a [b:.5] c", 10, &[(5, "a  c"), (10, "a b c")]),
        ("a [b:.5] c", 3, &[(1, "a  c"), (3, "a b c")]),
        ("a [b:.5] c", 1, &[(1, "a b c")]),
        ("((a][:b:c [d:3]", 10, &[(3, "((a][:b:c "), (10, "((a][:b:c d")]),
        ("((a][:b:c [d:3]", 3, &[(3, "((a][:b:c ")]),
        ("((a][:b:c [d:3]", 1, &[(1, "((a][:b:c ")]),
        ("[a|(b:1.1)]", 10, &[(1, "a"), (2, "(b:1.1)"), (3, "a"), (4, "(b:1.1)"), (5, "a"), (6, "(b:1.1)"), (7, "a"), (8, "(b:1.1)"), (9, "a"), (10, "(b:1.1)")]),
        ("[a|(b:1.1)]", 3, &[(1, "a"), (2, "(b:1.1)"), (3, "a")]),
        ("[a|(b:1.1)]", 1, &[(1, "a")]),
        ("[fe|]male", 10, &[(1, "female"), (2, "male"), (3, "female"), (4, "male"), (5, "female"), (6, "male"), (7, "female"), (8, "male"), (9, "female"), (10, "male")]),
        ("[fe|]male", 3, &[(1, "female"), (2, "male"), (3, "female")]),
        ("[fe|]male", 1, &[(1, "female")]),
        ("[fe|||]male", 10, &[(1, "female"), (2, "male"), (3, "male"), (4, "male"), (5, "female"), (6, "male"), (7, "male"), (8, "male"), (9, "female"), (10, "male")]),
        ("[fe|||]male", 3, &[(1, "female"), (2, "male"), (3, "male")]),
        ("[fe|||]male", 1, &[(1, "female")]),
        ("a [{b|d{:.5] c", 10, &[(10, "a [{b|d{:.5] c")]),
        ("a [{b|d{:.5] c", 3, &[(3, "a [{b|d{:.5] c")]),
        ("a [{b|d{:.5] c", 1, &[(1, "a [{b|d{:.5] c")]),
        ("[a:b:c:3]", 10, &[(10, "[a:b:c:3]")]),
        ("[a:b:c:3]", 3, &[(3, "[a:b:c:3]")]),
        ("[a:b:c:3]", 1, &[(1, "[a:b:c:3]")]),
        ("(a:b:3)", 10, &[(10, "(a:b:3)")]),
        ("(a:b:3)", 3, &[(3, "(a:b:3)")]),
        ("(a:b:3)", 1, &[(1, "(a:b:3)")]),
        ("[a|b:3]", 10, &[(10, "[a|b:3]")]),
        ("[a|b:3]", 3, &[(3, "[a|b:3]")]),
        ("[a|b:3]", 1, &[(1, "[a|b:3]")]),
        ("[a:3 ]", 10, &[(3, ""), (10, "a")]),
        ("[a:3 ]", 3, &[(3, "")]),
        ("[a:3 ]", 1, &[(1, "")]),
        ("[a:-3]", 10, &[(10, "a")]),
        ("[a:-3]", 3, &[(3, "a")]),
        ("[a:-3]", 1, &[(1, "a")]),
        ("[a:1e1]", 10, &[(10, "")]),
        ("[a:1e1]", 3, &[(3, "")]),
        ("[a:1e1]", 1, &[(1, "")]),
        ("[:3]", 10, &[(3, ""), (10, "")]),
        ("[:3]", 3, &[(3, "")]),
        ("[:3]", 1, &[(1, "")]),
        ("[|]", 10, &[(1, ""), (2, ""), (3, ""), (4, ""), (5, ""), (6, ""), (7, ""), (8, ""), (9, ""), (10, "")]),
        ("[|]", 3, &[(1, ""), (2, ""), (3, "")]),
        ("[|]", 1, &[(1, "")]),
        ("[a::3]", 10, &[(3, "a"), (10, "")]),
        ("[a::3]", 3, &[(3, "a")]),
        ("[a::3]", 1, &[(1, "a")]),
        ("[[a:b:2]|c]", 10, &[(1, "a"), (2, "c"), (3, "b"), (4, "c"), (5, "b"), (6, "c"), (7, "b"), (8, "c"), (9, "b"), (10, "c")]),
        ("[[a:b:2]|c]", 3, &[(1, "a"), (2, "c"), (3, "b")]),
        ("[[a:b:2]|c]", 1, &[(1, "a")]),
        ("(a|b)", 10, &[(10, "(a|b)")]),
        ("(a|b)", 3, &[(3, "(a|b)")]),
        ("(a|b)", 1, &[(1, "(a|b)")]),
        ("a|b", 10, &[(10, "a|b")]),
        ("a|b", 3, &[(3, "a|b")]),
        ("a|b", 1, &[(1, "a|b")]),
        ("[a:b:c]", 10, &[(10, "[a:b:c]")]),
        ("[a:b:c]", 3, &[(3, "[a:b:c]")]),
        ("[a:b:c]", 1, &[(1, "[a:b:c]")]),
        ("[ a : 3]", 10, &[(3, ""), (10, " a ")]),
        ("[ a : 3]", 3, &[(3, "")]),
        ("[ a : 3]", 1, &[(1, "")]),
        ("[a:+3]", 10, &[(3, ""), (10, "a")]),
        ("[a:+3]", 3, &[(3, "")]),
        ("[a:+3]", 1, &[(1, "")]),
        ("[a:3.]", 10, &[(10, "")]),
        ("[a:3.]", 3, &[(3, "")]),
        ("[a:3.]", 1, &[(1, "")]),
        ("[a:.]", 10, &[(10, "[a:.]")]),
        ("[a:.]", 3, &[(3, "[a:.]")]),
        ("[a:.]", 1, &[(1, "[a:.]")]),
        ("[a:1.5e1]", 10, &[(10, "")]),
        ("[a:1.5e1]", 3, &[(3, "")]),
        ("[a:1.5e1]", 1, &[(1, "")]),
        ("a\\", 10, &[(10, "a\\")]),
        ("a\\", 3, &[(3, "a\\")]),
        ("a\\", 1, &[(1, "a\\")]),
        ("a \\[b:2] [c\\:d:2]", 10, &[(2, "a \\[b:2] "), (10, "a \\[b:2] c\\:d")]),
        ("a \\[b:2] [c\\:d:2]", 3, &[(2, "a \\[b:2] "), (3, "a \\[b:2] c\\:d")]),
        ("a \\[b:2] [c\\:d:2]", 1, &[(1, "a \\[b:2] ")]),
        ("x]y", 10, &[(10, "x]y")]),
        ("x]y", 3, &[(3, "x]y")]),
        ("x]y", 1, &[(1, "x]y")]),
        ("", 10, &[(10, "")]),
        ("", 3, &[(3, "")]),
        ("", 1, &[(1, "")]),
        ("BREAK [a:b:1]", 10, &[(1, "BREAK a"), (10, "BREAK b")]),
        ("BREAK [a:b:1]", 3, &[(1, "BREAK a"), (3, "BREAK b")]),
        ("BREAK [a:b:1]", 1, &[(1, "BREAK a")]),
        ("[a:b:0]", 10, &[(10, "b")]),
        ("[a:b:0]", 3, &[(3, "b")]),
        ("[a:b:0]", 1, &[(1, "b")]),
        ("[a:b:0.0]", 10, &[(10, "b")]),
        ("[a:b:0.0]", 3, &[(3, "b")]),
        ("[a:b:0.0]", 1, &[(1, "b")]),
        ("[a:b:99]", 10, &[(10, "a")]),
        ("[a:b:99]", 3, &[(3, "a")]),
        ("[a:b:99]", 1, &[(1, "a")]),
        ("a [b:c:0.5] d", 10, &[(5, "a b d"), (10, "a c d")]),
        ("a [b:c:0.5] d", 3, &[(1, "a b d"), (3, "a c d")]),
        ("a [b:c:0.5] d", 1, &[(1, "a c d")]),
        ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]", 10, &[(2, "fantasy landscape with a mountain and an oak in foreground shoddy"), (5, "fantasy landscape with a lake and an oak in foreground in background shoddy"), (6, "fantasy landscape with a lake and an oak in foreground in background masterful"), (7, "fantasy landscape with a lake and an oak in background masterful"), (10, "fantasy landscape with a lake and a christmas tree in background masterful")]),
        ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]", 100, &[(25, "fantasy landscape with a mountain and an oak in foreground shoddy"), (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"), (60, "fantasy landscape with a lake and an oak in foreground in background masterful"), (75, "fantasy landscape with a lake and an oak in background masterful"), (100, "fantasy landscape with a lake and a christmas tree in background masterful")]),
    ];
    for (prompt, steps, expected) in cases {
        assert_eq!(
            schedules(prompt, *steps),
            s(expected),
            "{prompt:?} over {steps} steps"
        );
    }
}
/// A1111 counts the first sampling step as step 0 and uses the first entry ending at or after
/// it: `[dog:cat:0.5]` over 8 steps is dog for 5 steps; `[red|blue]` starts red, red, blue.
#[test]
fn steps_are_counted_as_a1111_counts_them() {
    let texts = |prompt: &str, steps: usize| -> Vec<String> {
        let schedule = schedules(prompt, steps);
        (0..steps)
            .map(|i| schedule[entry_at_step(&schedule, i)].1.clone())
            .collect()
    };
    assert_eq!(
        texts("[dog:cat:0.5]", 8),
        ["dog", "dog", "dog", "dog", "dog", "cat", "cat", "cat"]
    );
    assert_eq!(texts("[red|blue]", 3), ["red", "red", "blue"]);
    assert_eq!(
        texts("[red|blue|green]", 5),
        ["red", "red", "blue", "green", "red"]
    );
    assert_eq!(texts("a [b:c:2]", 4), ["a b", "a b", "a b", "a c"]);
}

/// The construct wins where lark's choice depends on the hash seed.
#[test]
fn ambiguous_brackets_read_as_constructs() {
    assert_eq!(schedules("([::3](x", 10), s(&[(3, "((x"), (10, "((x")]));
    assert!(parses("([::3](x"));
    assert!(!parses("a | b"));
    assert!(!parses("a\\"));
}

#[test]
fn splits_and_with_weights_as_a1111() {
    let cases: &[(&str, &[(&str, f64)])] = &[
        ("a cat", &[("a cat", 1.0)]),
        ("a cat:1.2", &[("a cat", 1.2)]),
        ("a cat : -0.5  ", &[("a cat", -0.5)]),
        ("a cat:.5", &[("a cat", 0.5)]),
        ("a cat:3.", &[("a cat", 3.0)]),
        ("a cat:1.2.3", &[("a cat:1.2.3", 1.0)]),
        ("(a cat:1.2)", &[("(a cat:1.2)", 1.0)]),
        (
            "a AND b:2 AND  c :0.5",
            &[("a", 1.0), (" b", 2.0), ("  c", 0.5)],
        ),
        ("ANDROID AND_x", &[("ANDROID AND_x", 1.0)]),
        ("a AND", &[("a", 1.0), ("", 1.0)]),
        ("[a:b:3]", &[("[a:b:3]", 1.0)]),
    ];
    for (prompt, expected) in cases {
        let expected: Vec<(String, f64)> =
            expected.iter().map(|(t, w)| (t.to_string(), *w)).collect();
        assert_eq!(split_and(prompt), expected, "{prompt:?}");
    }
}

/// Found by the property tests (tests/properties/prompt.rs): 10,000 nested brackets overflowed
/// a worker's stack. Edits nested up to the limit still schedule; deeper brackets are text.
#[test]
fn nesting_is_read_up_to_the_limit() {
    let n = crate::limits::PROMPT_NESTING;
    let at_limit = format!("{}[a:b:2]{}", "(".repeat(n - 1), ")".repeat(n - 1));
    let sched = schedules(&at_limit, 4);
    assert_eq!(sched.len(), 2, "{sched:?}");
    assert!(sched[0].1.contains('a') && sched[1].1.contains('b'));
    let deeper = format!("{}[a:b:2]{}", "(".repeat(n), ")".repeat(n));
    let sched = schedules(&deeper, 4);
    // The outermost bracket is text; the rest, back within the limit, still schedules.
    assert_eq!(sched.len(), 2, "{sched:?}");
    let deep = "(".repeat(20_000) + "x" + &")".repeat(20_000);
    let sched = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || schedules(&deep, 4))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(sched.len(), 1);
}
