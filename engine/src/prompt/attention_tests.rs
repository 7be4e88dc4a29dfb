//! A1111's `parse_prompt_attention` doctests and edge cases, ComfyUI's `token_weights`; the
//! expected values were printed by the reference Python functions (weights compared exactly).

use super::*;

fn seg(list: &[(&str, f64)]) -> Vec<Weighted> {
    list.iter().map(|(t, w)| (t.to_string(), *w)).collect()
}

#[test]
fn a1111_attention_matches_the_reference() {
    let cases: &[(&str, &[(&str, f64)])] = &[
        ("normal text", &[("normal text", 1.0)]),
        (
            "an (important) word",
            &[("an ", 1.0), ("important", 1.1), (" word", 1.0)],
        ),
        ("(unbalanced", &[("unbalanced", 1.1)]),
        ("\\(literal\\]", &[("(literal]", 1.0)]),
        ("(unnecessary)(parens)", &[("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            &[
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
        ("", &[("", 1.0)]),
        ("BREAK a", &[("", 1.0), ("BREAK", -1.0), ("a", 1.0)]),
        ("a BREAK b", &[("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
        (
            "a BREAK BREAK b",
            &[
                ("a", 1.0),
                ("BREAK", -1.0),
                ("", 1.0),
                ("BREAK", -1.0),
                ("b", 1.0),
            ],
        ),
        (
            "a BREAKb BREAK",
            &[("a BREAKb", 1.0), ("BREAK", -1.0), ("", 1.0)],
        ),
        ("(a BREAK b)", &[("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),
        ("(a:0)", &[("a", 0.0)]),
        ("(a:0) b", &[("a", 0.0), (" b", 1.0)]),
        ("[a", &[("a", 0.9090909090909091)]),
        ("a]b)", &[("a]b)", 1.0)]),
        ("(a: 1.5 )", &[("a", 1.5)]),
        ("(a:-1)", &[("a", -1.0)]),
        ("[[a]]", &[("a", 0.8264462809917354)]),
        (
            "(a[b)c]",
            &[("a", 1.1), ("b", 1.0), ("c", 0.9090909090909091)],
        ),
        ("x \\\\ y \\ z", &[("x \\ y  z", 1.0)]),
        ("a:b", &[("a:b", 1.0)]),
        ("((a:1.2):0.5)", &[("a", 0.6)]),
        ("(a:1.)", &[("a", 1.0)]),
        ("(a:.5)", &[("a", 0.5)]),
        (
            "[(a:1.5) b]",
            &[("a", 1.3636363636363635), (" b", 0.9090909090909091)],
        ),
    ];
    for (prompt, expected) in cases {
        assert_eq!(parse_prompt_attention(prompt), seg(expected), "{prompt:?}");
    }
}

#[test]
fn comfy_weights_match_the_reference() {
    let cases: &[(&str, &[(&str, f64)])] = &[
        ("normal text", &[("normal text", 1.0)]),
        ("(a)", &[("a", 1.1)]),
        ("((a))", &[("a", 1.2100000000000002)]),
        ("(a:1.5)", &[("a", 1.5)]),
        ("((a:1.5))", &[("a", 1.5)]),
        ("((a):1.5)", &[("a", 1.6500000000000001)]),
        ("(a:1.2:1.3)", &[("a:1.2", 1.3)]),
        ("[a] (b:x)", &[("[a] ", 1.0), ("b:x", 1.1)]),
        ("\\(a\\) (b)", &[("(a) ", 1.0), ("b", 1.1)]),
        ("(a", &[("(a", 1.0)]),
        ("a)", &[("a)", 1.0)]),
        ("a) (b", &[("a) (b", 1.0)]),
        ("(:1.5)", &[(":1.5", 1.1)]),
        ("(a:1.5)(b:0.5) c", &[("a", 1.5), ("b", 0.5), (" c", 1.0)]),
        ("(a:  2 )", &[("a", 2.0)]),
        ("(a (b:0.5) c:1.3)", &[("a ", 1.3), ("b", 0.5), (" c", 1.3)]),
    ];
    for (prompt, expected) in cases {
        assert_eq!(comfy_token_weights(prompt), seg(expected), "{prompt:?}");
    }
}

/// A1111 raises on a weight that is not a number; beeswax reads it as text.
#[test]
fn bad_weights_are_text() {
    assert_eq!(
        parse_prompt_attention("(a:1.2.3) b"),
        seg(&[("a:1.2.3", 1.1), (" b", 1.0)])
    );
    let warnings = attention_warnings("(a:1.2.3) [b c) (d");
    assert_eq!(warnings.len(), 4, "{warnings:?}");
    assert!(warnings[0].contains(":1.2.3)"));
    assert!(warnings[1].contains("`)` closes nothing"));
    assert!(attention_warnings("(a:1.5) [b] \\(c").is_empty());
}

/// Found by the property tests: ComfyUI-style weights recursed once per `(`, so a prompt of
/// nested parentheses overflowed the stack and held memory quadratic in its length. Groups
/// deeper than the nesting limit are text.
#[test]
fn comfy_nesting_is_bounded() {
    let n = crate::limits::PROMPT_NESTING;
    let at_limit = format!("{}x{}", "(".repeat(n), ")".repeat(n));
    let w = comfy_token_weights(&at_limit);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].0, "x");
    assert!((w[0].1 - 1.1f64.powi(n as i32)).abs() < 1e-9);
    let deep = "(".repeat(20_000) + "x" + &")".repeat(20_000);
    let w = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || comfy_token_weights(&deep))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(w.len(), 1);
    assert!(w[0].0.contains('x') && w[0].0.starts_with('('));
}
