//! Emphasis: which words of a prompt weigh more or less.
//!
//! * [`parse_prompt_attention`]: AUTOMATIC1111's `parse_prompt_attention`. `(x)` multiplies
//!   the weight of `x` by 1.1, `[x]` divides it by 1.1, `(x:w)` multiplies it by `w`; brackets
//!   nest; `\(`, `\)`, `\[`, `\]` and `\\` are literal characters; an unclosed bracket applies
//!   to the end of the prompt; a stray closing bracket is text. `BREAK` (a whole word) becomes
//!   the segment `("BREAK", -1.0)`, exactly as A1111 marks it (so a `BREAK` inside brackets has
//!   its marker weight multiplied and is then tokenized as a word, as in A1111).
//! * [`comfy_token_weights`]: ComfyUI's `token_weights` after `escape_important`. Only round
//!   brackets are syntax: `(x)` multiplies by 1.1, `(x:w)` sets the weight to `w` (it does not
//!   multiply); square brackets are plain text; `\(` and `\)` are literal.
//!
//! Weights are computed in f64 in the same order of operations as Python, so they equal
//! A1111's and ComfyUI's bit for bit.

/// A piece of prompt text and its weight.
pub type Weighted = (String, f64);

/// The weight A1111 gives the `BREAK` marker segment.
pub const BREAK_WEIGHT: f64 = -1.0;
/// The text of the `BREAK` marker segment.
pub const BREAK: &str = "BREAK";

/// Whether `segment` is A1111's BREAK marker (`text == 'BREAK' and weight == -1`).
pub fn is_break(segment: &Weighted) -> bool {
    segment.0 == BREAK && segment.1 == BREAK_WEIGHT
}

/// One token of A1111's `re_attention`.
#[derive(Debug, PartialEq)]
enum Token<'a> {
    /// `\x` (or a lone `\`): the literal text after the backslash.
    Escaped(&'a str),
    Open(char),
    /// `:w)`: the weight text and the whole match.
    WeightClose(&'a str, &'a str),
    Close(char),
    /// Text without brackets, backslashes or colons.
    Text(&'a str),
    Colon,
}

/// Splits `text` as A1111's `re_attention.finditer` does.
fn tokens(text: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let c = rest.chars().next().unwrap_or_default();
        let (token, len) = match c {
            '\\' => match rest[1..].chars().next() {
                Some(next @ ('(' | ')' | '[' | ']' | '\\')) => {
                    (Token::Escaped(&rest[1..2]), 1 + next.len_utf8())
                }
                _ => (Token::Escaped(""), 1),
            },
            '(' | '[' => (Token::Open(c), 1),
            ')' | ']' => (Token::Close(c), 1),
            ':' => match weight_close(rest) {
                Some((weight, len)) => (Token::WeightClose(weight, &rest[..len]), len),
                None => (Token::Colon, 1),
            },
            _ => {
                let end = rest
                    .find(['\\', '(', ')', '[', ']', ':'])
                    .unwrap_or(rest.len());
                (Token::Text(&rest[..end]), end)
            }
        };
        out.push(token);
        i += len;
    }
    out
}

/// `:\s*([+-]?[.\d]+)\s*\)` at the start of `rest`: the weight text and the match length.
fn weight_close(rest: &str) -> Option<(&str, usize)> {
    let after = &rest[1..];
    let start = 1 + (after.len() - after.trim_start().len());
    let body = &rest[start..];
    let sign = usize::from(body.starts_with(['+', '-']));
    let digits = body[sign..]
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len() - sign);
    if digits == 0 {
        return None;
    }
    let number_end = start + sign + digits;
    let tail = &rest[number_end..];
    let close = number_end + (tail.len() - tail.trim_start().len());
    rest[close..]
        .starts_with(')')
        .then(|| (&rest[start..number_end], close + 1))
}

/// A1111's `parse_prompt_attention`: the prompt as `(text, weight)` segments, runs of equal
/// weight merged, BREAK markers as `("BREAK", -1.0)`. A weight written like a number that is
/// not one (`(x:1.2.3)`, on which A1111 raises an error) is read as text before a plain `)`.
pub fn parse_prompt_attention(text: &str) -> Vec<Weighted> {
    let mut res: Vec<Weighted> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply = |res: &mut Vec<Weighted>, from: usize, by: f64| {
        for segment in &mut res[from..] {
            segment.1 *= by;
        }
    };
    for token in tokens(text) {
        match token {
            Token::Escaped(literal) => res.push((literal.to_string(), 1.0)),
            Token::Open('(') => round.push(res.len()),
            Token::Open(_) => square.push(res.len()),
            Token::WeightClose(w, _) if !round.is_empty() => match w.parse::<f64>() {
                Ok(weight) => {
                    let from = round.pop().unwrap_or_default();
                    multiply(&mut res, from, weight);
                }
                Err(_) => {
                    push_text(&mut res, &format!(":{w}"));
                    let from = round.pop().unwrap_or_default();
                    multiply(&mut res, from, 1.1);
                }
            },
            Token::Close(')') if !round.is_empty() => {
                let from = round.pop().unwrap_or_default();
                multiply(&mut res, from, 1.1);
            }
            Token::Close(']') if !square.is_empty() => {
                let from = square.pop().unwrap_or_default();
                multiply(&mut res, from, 1.0 / 1.1);
            }
            Token::WeightClose(_, t) | Token::Text(t) => push_text(&mut res, t),
            Token::Colon => push_text(&mut res, ":"),
            Token::Close(c) => push_text(&mut res, if c == ')' { ")" } else { "]" }),
        }
    }
    for from in round {
        multiply(&mut res, from, 1.1);
    }
    for from in square {
        multiply(&mut res, from, 1.0 / 1.1);
    }
    if res.is_empty() {
        res.push((String::new(), 1.0));
    }
    let mut merged: Vec<Weighted> = Vec::with_capacity(res.len());
    for segment in res {
        match merged.last_mut() {
            Some(last) if last.1 == segment.1 => last.0.push_str(&segment.0),
            _ => merged.push(segment),
        }
    }
    merged
}

/// Appends plain text, split on `BREAK` (`\s*\bBREAK\b\s*`) into segments and markers.
fn push_text(res: &mut Vec<Weighted>, text: &str) {
    for (i, part) in split_break(text).into_iter().enumerate() {
        if i > 0 {
            res.push((BREAK.to_string(), BREAK_WEIGHT));
        }
        res.push((part.to_string(), 1.0));
    }
}

/// `re.split(r"\s*\bBREAK\b\s*", text)`.
fn split_break(text: &str) -> Vec<&str> {
    let parts = super::schedule::split_on_word(text, BREAK);
    let last = parts.len() - 1;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            let part = if i > 0 { part.trim_start() } else { part };
            if i < last {
                part.trim_end()
            } else {
                part
            }
        })
        .collect()
}

/// Warnings for `beeswax prompt`: what A1111's attention parser reads leniently.
pub fn attention_warnings(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut open: Vec<char> = Vec::new();
    for token in tokens(text) {
        match token {
            Token::Open(c) => open.push(c),
            Token::WeightClose(w, _) if open.contains(&'(') => {
                if w.parse::<f64>().is_err() {
                    out.push(format!(
                        "`:{w})` is not a weight: read as text, with a plain `)`"
                    ));
                }
                remove_last(&mut open, '(');
            }
            Token::Close(')') if open.contains(&'(') => remove_last(&mut open, '('),
            Token::Close(']') if open.contains(&'[') => remove_last(&mut open, '['),
            Token::Close(c) => out.push(format!("a `{c}` closes nothing: read as text")),
            _ => {}
        }
    }
    for c in open {
        let effect = if c == '(' { "x1.1" } else { "/1.1" };
        out.push(format!(
            "a `{c}` is never closed: it weighs the rest of the prompt ({effect})"
        ));
    }
    out
}

fn remove_last(open: &mut Vec<char>, c: char) {
    if let Some(i) = open.iter().rposition(|&o| o == c) {
        open.remove(i);
    }
}

/// ComfyUI's `escape_important` then `token_weights(text, 1.0)`, with `unescape_important`
/// applied to each segment: `(text, weight)` segments in order (not merged).
pub fn comfy_token_weights(text: &str) -> Vec<Weighted> {
    let escaped = text.replace("\\)", "\0\u{1}").replace("\\(", "\0\u{2}");
    token_weights(&escaped, 1.0, 0)
        .into_iter()
        .map(|(segment, weight)| {
            let plain = segment.replace("\0\u{1}", ")").replace("\0\u{2}", "(");
            (plain, weight)
        })
        .collect()
}

/// ComfyUI's `parse_parentheses`: top-level text and `(...)` groups.
fn parse_parentheses(text: &str) -> Vec<String> {
    let mut result = Vec::new();
    let mut current = String::new();
    let mut level: i64 = 0;
    for c in text.chars() {
        match c {
            '(' => {
                if level == 0 {
                    if !current.is_empty() {
                        result.push(std::mem::take(&mut current));
                    }
                    current = "(".to_string();
                } else {
                    current.push(c);
                }
                level += 1;
            }
            ')' => {
                level -= 1;
                if level == 0 {
                    current.push(')');
                    result.push(std::mem::take(&mut current));
                } else {
                    current.push(c);
                }
            }
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        result.push(current);
    }
    result
}

/// ComfyUI's `token_weights` inside `depth` groups; groups deeper than
/// [`crate::limits::PROMPT_NESTING`] are text (ComfyUI recurses without bound).
fn token_weights(text: &str, current: f64, depth: usize) -> Vec<Weighted> {
    let mut out = Vec::new();
    for item in parse_parentheses(text) {
        let chars: Vec<char> = item.chars().collect();
        let group = chars.len() >= 2 && chars[0] == '(' && chars[chars.len() - 1] == ')';
        if group && depth < crate::limits::PROMPT_NESTING {
            let inner: String = chars[1..chars.len() - 1].iter().collect();
            let mut weight = current * 1.1;
            let mut inner_text = inner.as_str();
            if let Some(colon) = inner.rfind(':').filter(|&c| c > 0) {
                if let Some(w) = python_float(&inner[colon + 1..]) {
                    weight = w;
                    inner_text = &inner[..colon];
                }
            }
            out.extend(token_weights(inner_text, weight, depth + 1));
        } else {
            out.push((item, current));
        }
    }
    out
}

/// Python's `float(text)` for the forms a weight takes (surrounding whitespace allowed).
pub(crate) fn python_float(text: &str) -> Option<f64> {
    let t = text.trim();
    if t.is_empty() || t.contains("__") || t.starts_with('_') || t.ends_with('_') {
        return None;
    }
    t.replace('_', "").parse::<f64>().ok()
}

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;
