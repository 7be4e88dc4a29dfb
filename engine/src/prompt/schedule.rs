//! AUTOMATIC1111's prompt editing: `[from:to:when]`, `[to:when]`, `[from::when]` and
//! alternation `[a|b|c]`, turned into the text each sampling step uses
//! (`get_learned_conditioning_prompt_schedules` in A1111's `modules/prompt_parser.py`).
//!
//! A1111 parses with a lark Earley grammar and, when the prompt is not in the grammar, uses the
//! whole prompt as written for every step. The grammar, restated as the rules this parser
//! implements:
//!
//! * Inside brackets every `(`, `[`, `)`, `]`, `:` and `|` is structure: `(p)`, `(p:p)` and
//!   `[p]` are emphasis (kept verbatim for the attention parser), `[p:N]` and `[p:p:N]` are
//!   edits (N a signed number, optionally surrounded by whitespace), `[p|p|...]` alternation
//!   (options may be empty). Anything else inside brackets makes that bracket invalid.
//! * Outside brackets, `(`, `)`, `[`, `]` and `:` may also stand alone as text; a bracket that
//!   does not form a valid construct is such text.
//! * A `|` outside brackets, or a backslash that ends the prompt or precedes a line break, puts
//!   the prompt outside the grammar: the whole prompt is then used verbatim at every step.
//! * `\x` is the literal `\x` (kept for the attention parser).
//!
//! When a bracket can be read both as an edit and as stray text (`([::3](x`), lark's choice
//! depends on Python's per-process string hash seed, so A1111 itself reads such prompts
//! differently from run to run; beeswax always reads the construct.
//!
//! `when`: with a decimal point anywhere in the number (`0.5`, `3.`, `1.5e1`) it is a fraction
//! of the steps (`int(v * steps)`), otherwise a step count; either is capped at `steps`. The text
//! of an edit is the "from" part while `step <= when`. Steps are counted as A1111 counts them:
//! sampling step `i` (0-based) uses the first schedule entry whose end is `>= i`, so
//! `[dog:cat:0.5]` over 8 steps is `dog` for steps 0..=4 and `cat` for 5..=7, and `[red|blue]`
//! over 3 steps is red, red, blue.

/// One parsed piece of a prompt.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// Text kept as written (emphasis brackets included).
    Text(String),
    /// Emphasis or a stray bracket: its pieces, rendered in order.
    Group(Vec<Node>),
    /// `[from:to:when]`; `from` is `None` for `[to:when]`.
    Edit {
        from: Option<Vec<Node>>,
        to: Vec<Node>,
        when: String,
    },
    /// `[a|b|...]`.
    Alternate(Vec<Vec<Node>>),
}

/// A prompt's texts over the sampling steps: `(end_step, text)` pairs sorted by `end_step`; the
/// last one ends at `steps`.
pub type Schedule = Vec<(usize, String)>;

/// The schedule of `prompt` over `steps` sampling steps, equal to A1111's
/// `get_learned_conditioning_prompt_schedules([prompt], steps)[0]`.
pub fn schedules(prompt: &str, steps: usize) -> Schedule {
    let Some(nodes) = parse(prompt) else {
        return vec![(steps, prompt.to_string())];
    };
    let mut ends = std::collections::BTreeSet::from([steps as i64]);
    collect_ends(&nodes, steps, &mut ends);
    ends.into_iter()
        .map(|end| {
            let mut text = String::new();
            render(&nodes, end, steps, &mut text);
            (end.max(0) as usize, text)
        })
        .collect()
}

/// Whether A1111's grammar accepts `prompt` (when it does not, the prompt is used verbatim).
pub fn parses(prompt: &str) -> bool {
    parse(prompt).is_some()
}

/// The index of the schedule entry sampling step `step` (0-based) uses: the first whose end is
/// `>= step` (A1111's `reconstruct_cond_batch`), or the first entry when none is.
pub fn entry_at_step(schedule: &[(usize, String)], step: usize) -> usize {
    entry_index(schedule.iter().map(|(end, _)| *end), step)
}

/// [`entry_at_step`] over the entries' end steps alone.
pub fn entry_index(ends: impl IntoIterator<Item = usize>, step: usize) -> usize {
    ends.into_iter().position(|end| step <= end).unwrap_or(0)
}

/// Splits an A1111 prompt into its `AND` sub-prompts with their weights (A1111's
/// `get_multicond_prompt_list`): `AND` as a whole word separates sub-prompts, and a trailing
/// `:number` on a sub-prompt (`a cat :1.5`) is its weight (default 1) and is removed from the
/// text. A single prompt goes through the same rule, so `a cat:0.5` is the text `a cat` with
/// weight 0.5.
pub fn split_and(prompt: &str) -> Vec<(String, f64)> {
    split_on_word(prompt, "AND")
        .into_iter()
        .map(|part| match trailing_weight(part) {
            Some((text, weight)) => (text.to_string(), weight),
            None => (strip_trailing_ws(part).to_string(), 1.0),
        })
        .collect()
}

/// `text` split at each occurrence of `word` that stands as a whole word (`\bword\b`).
pub(crate) fn split_on_word<'a>(text: &'a str, word: &str) -> Vec<&'a str> {
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut parts = Vec::new();
    let mut start = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find(word) {
        let at = search + found;
        let end = at + word.len();
        let before = text[..at].chars().next_back();
        let after = text[end..].chars().next();
        if !is_word(before) && !is_word(after) {
            parts.push(&text[start..at]);
            start = end;
        }
        search = at + word.len();
    }
    parts.push(&text[start..]);
    parts
}

/// A1111's `re_weight`: `text \s* : \s* number \s*` at the end of a sub-prompt, where number is
/// `[-+]?(\d+\.?|\d*\.\d+)`. Returns the text before the colon (trailing whitespace removed) and
/// the number.
fn trailing_weight(part: &str) -> Option<(&str, f64)> {
    let trimmed = strip_trailing_ws(part);
    let bytes = trimmed.as_bytes();
    let mut start = bytes.len();
    while start > 0 && (bytes[start - 1].is_ascii_digit() || bytes[start - 1] == b'.') {
        start -= 1;
    }
    let digits = &trimmed[start..];
    let valid = !digits.is_empty()
        && digits.matches('.').count() <= 1
        && digits.bytes().any(|b| b.is_ascii_digit());
    if !valid {
        return None;
    }
    let mut sign_at = start;
    if sign_at > 0 && matches!(bytes[sign_at - 1], b'+' | b'-') {
        sign_at -= 1;
    }
    let before = strip_trailing_ws(&trimmed[..sign_at]);
    let text = before.strip_suffix(':')?;
    let weight = trimmed[sign_at..].parse::<f64>().ok()?;
    Some((strip_trailing_ws(text), weight))
}

fn strip_trailing_ws(s: &str) -> &str {
    s.trim_end_matches(char::is_whitespace)
}

/// Parses the whole prompt; `None` when A1111's grammar rejects it.
fn parse(prompt: &str) -> Option<Vec<Node>> {
    let s: Vec<char> = prompt.chars().collect();
    let mut nodes = Vec::new();
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            '[' | '(' => match construct(&s, i, 0) {
                Some((node, next)) => {
                    nodes.push(node);
                    i = next;
                }
                None => {
                    nodes.push(Node::Text(s[i].to_string()));
                    i += 1;
                }
            },
            '\\' => {
                let next = *s.get(i + 1).filter(|&&c| c != '\n')?;
                nodes.push(Node::Text(format!("\\{next}")));
                i += 2;
            }
            '|' => return None,
            c => {
                nodes.push(Node::Text(c.to_string()));
                i += 1;
            }
        }
    }
    Some(nodes)
}

/// A sequence inside brackets, up to (not including) the next `]`, `)`, `:` or `|` at this
/// depth or the end; `None` when a nested bracket is invalid or nests deeper than
/// [`crate::limits::PROMPT_NESTING`] (`depth` brackets are open around it).
fn sequence(s: &[char], mut i: usize, depth: usize) -> Option<(Vec<Node>, usize)> {
    let mut nodes = Vec::new();
    let mut text = String::new();
    while i < s.len() {
        match s[i] {
            '\\' => {
                let next = *s.get(i + 1).filter(|&&c| c != '\n')?;
                text.push('\\');
                text.push(next);
                i += 2;
            }
            '[' | '(' => {
                if !text.is_empty() {
                    nodes.push(Node::Text(std::mem::take(&mut text)));
                }
                let (node, next) = construct(s, i, depth)?;
                nodes.push(node);
                i = next;
            }
            ']' | ')' | ':' | '|' => break,
            c => {
                text.push(c);
                i += 1;
            }
        }
    }
    if !text.is_empty() {
        nodes.push(Node::Text(text));
    }
    Some((nodes, i))
}

/// The construct opening at `s[i]` (`(` or `[`) inside `depth` others, and the index after it.
fn construct(s: &[char], i: usize, depth: usize) -> Option<(Node, usize)> {
    if depth >= crate::limits::PROMPT_NESTING {
        return None;
    }
    let depth = depth + 1;
    let text = |c: char| Node::Text(c.to_string());
    let (first, j) = sequence(s, i + 1, depth)?;
    if s[i] == '(' {
        let mut parts = vec![text('(')];
        parts.extend(first);
        return match s.get(j)? {
            ')' => {
                parts.push(text(')'));
                Some((Node::Group(parts), j + 1))
            }
            ':' => {
                let (second, k) = sequence(s, j + 1, depth)?;
                (*s.get(k)? == ')').then_some(())?;
                parts.push(text(':'));
                parts.extend(second);
                parts.push(text(')'));
                Some((Node::Group(parts), k + 1))
            }
            _ => None,
        };
    }
    match s.get(j)? {
        ']' => {
            let mut parts = vec![text('[')];
            parts.extend(first);
            parts.push(text(']'));
            Some((Node::Group(parts), j + 1))
        }
        '|' => {
            let mut options = vec![first];
            let mut j = j;
            while s.get(j) == Some(&'|') {
                let (option, next) = sequence(s, j + 1, depth)?;
                options.push(option);
                j = next;
            }
            (*s.get(j)? == ']').then_some((Node::Alternate(options), j + 1))
        }
        ':' => {
            if let Some((when, next)) = edit_tail(s, j + 1) {
                return Some((
                    Node::Edit {
                        from: None,
                        to: first,
                        when,
                    },
                    next,
                ));
            }
            let (second, k) = sequence(s, j + 1, depth)?;
            (*s.get(k)? == ':').then_some(())?;
            let (when, next) = edit_tail(s, k + 1)?;
            Some((
                Node::Edit {
                    from: Some(first),
                    to: second,
                    when,
                },
                next,
            ))
        }
        _ => None,
    }
}

/// `[whitespace] NUMBER [whitespace] ]` from `i`: the number's text and the index after `]`.
fn edit_tail(s: &[char], i: usize) -> Option<(String, usize)> {
    let start = skip_ws(s, i);
    let end = number_end(s, start)?;
    let close = skip_ws(s, end);
    (s.get(close) == Some(&']')).then(|| (s[start..end].iter().collect(), close + 1))
}

fn skip_ws(s: &[char], mut i: usize) -> usize {
    while s.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    i
}

/// The end of lark's `SIGNED_NUMBER` at `i`, matched as Python's `re` matches its regex (the
/// first alternative that matches: `INT EXP`, then `DECIMAL EXP?`, then `INT`).
fn number_end(s: &[char], i: usize) -> Option<usize> {
    let digits = |mut k: usize| {
        while s.get(k).is_some_and(char::is_ascii_digit) {
            k += 1;
        }
        k
    };
    let exponent = |k: usize| -> Option<usize> {
        if !matches!(s.get(k), Some('e' | 'E')) {
            return None;
        }
        let mut e = k + 1;
        if matches!(s.get(e), Some('+' | '-')) {
            e += 1;
        }
        let d = digits(e);
        (d > e).then_some(d)
    };
    let j = if matches!(s.get(i), Some('+' | '-')) {
        i + 1
    } else {
        i
    };
    let int_end = digits(j);
    if int_end > j {
        if let Some(e) = exponent(int_end) {
            return Some(e);
        }
    }
    let decimal_end = if int_end > j && s.get(int_end) == Some(&'.') {
        Some(digits(int_end + 1))
    } else if int_end == j && s.get(j) == Some(&'.') && digits(j + 1) > j + 1 {
        Some(digits(j + 1))
    } else {
        None
    };
    if let Some(d) = decimal_end {
        return Some(exponent(d).unwrap_or(d));
    }
    (int_end > j).then_some(int_end)
}

/// A1111's `when`: a fraction of `steps` if the number has a decimal point, else a step count;
/// at most `steps`, truncated toward zero.
fn when_step(number: &str, steps: usize) -> i64 {
    let mut v = number.parse::<f64>().unwrap_or(0.0);
    if number.contains('.') {
        v *= steps as f64;
    }
    // A1111 raises on an infinite value (`int(inf)`); saturate instead.
    (v.trunc().clamp(i64::MIN as f64, i64::MAX as f64) as i64).min(steps as i64)
}

fn collect_ends(nodes: &[Node], steps: usize, ends: &mut std::collections::BTreeSet<i64>) {
    for node in nodes {
        match node {
            Node::Text(_) => {}
            Node::Group(parts) => collect_ends(parts, steps, ends),
            Node::Alternate(options) => {
                ends.extend(1..=steps as i64);
                for option in options {
                    collect_ends(option, steps, ends);
                }
            }
            Node::Edit { from, to, when } => {
                let when = when_step(when, steps);
                if when >= 1 {
                    ends.insert(when);
                }
                if let Some(from) = from {
                    collect_ends(from, steps, ends);
                }
                collect_ends(to, steps, ends);
            }
        }
    }
}

fn render(nodes: &[Node], step: i64, steps: usize, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Group(parts) => render(parts, step, steps, out),
            Node::Alternate(options) => {
                let index = (step - 1).rem_euclid(options.len() as i64) as usize;
                render(&options[index], step, steps, out);
            }
            Node::Edit { from, to, when } => {
                if step <= when_step(when, steps) {
                    if let Some(from) = from {
                        render(from, step, steps, out);
                    }
                } else {
                    render(to, step, steps, out);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
