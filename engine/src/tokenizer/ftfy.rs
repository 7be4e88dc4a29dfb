//! The part of `ftfy.fix_text` that prompts meet, as described in the module documentation.
use tokenizers::NormalizedString;

/// The subset of `ftfy.fix_text` described in the module documentation. Like ftfy it works line
/// by line and repeats each line's fixes until nothing changes.
pub(super) fn fix_text(text: &str) -> String {
    let mut unescape_html = true;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        // ftfy turns HTML unescaping off for good at the first line that looks like HTML.
        unescape_html &= !line.contains('<');
        let mut line = line.to_string();
        for _ in 0..16 {
            let fixed = fix_once(&line, unescape_html);
            if fixed == line {
                break;
            }
            line = fixed;
        }
        out.push_str(&line);
    }
    out
}

/// One round of ftfy's fixes, in ftfy's order.
fn fix_once(text: &str, unescape_html: bool) -> String {
    let text = if unescape_html {
        unescape_entities(text)
    } else {
        text.to_string()
    };
    let text = decode_utf8_mojibake(&text);
    let mut fixed = String::with_capacity(text.len());
    for c in text.chars() {
        if let Some((_, letters)) = LIGATURES.iter().find(|(ligature, _)| *ligature == c) {
            fixed.push_str(letters);
            continue;
        }
        match c {
            // C1 controls are Windows-1252 read as Latin-1.
            '\u{80}'..='\u{9f}' => fixed.push(u8::try_from(u32::from(c)).map_or(c, cp1252_char)),
            '\u{3000}' => fixed.push(' '),
            '\u{ff01}'..='\u{ffef}' => {
                let mut width = NormalizedString::from(c.to_string());
                fixed.push_str(width.nfkc().get());
            }
            '\u{2bc}' | '\u{2018}'..='\u{201b}' => fixed.push('\''),
            '\u{201c}'..='\u{201f}' => fixed.push('"'),
            _ => fixed.push(c),
        }
    }
    let fixed = fixed
        .replace("\r\n", "\n")
        .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n");
    let fixed: String = strip_terminal_escapes(&fixed)
        .chars()
        .filter(|&c| !is_unwanted_control(c))
        .collect();
    NormalizedString::from(fixed).nfc().get().to_string()
}

/// ftfy's Latin ligatures and digraphs, with the letters they stand for.
const LIGATURES: [(char, &str); 19] = [
    ('ﬀ', "ff"),
    ('ﬁ', "fi"),
    ('ﬂ', "fl"),
    ('ﬃ', "ffi"),
    ('ﬄ', "ffl"),
    ('ﬅ', "ſt"),
    ('ﬆ', "st"),
    ('Ĳ', "IJ"),
    ('ĳ', "ij"),
    ('ŉ', "ʼn"),
    ('Ǳ', "DZ"),
    ('ǲ', "Dz"),
    ('ǳ', "dz"),
    ('Ǆ', "DŽ"),
    ('ǅ', "Dž"),
    ('ǆ', "dž"),
    ('Ǉ', "LJ"),
    ('ǈ', "Lj"),
    ('ǉ', "lj"),
];

/// Decodes `&...;` character references: numeric ones (as Python's `html.unescape`) and the
/// common named ones.
fn unescape_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let entity = rest[1..]
            .find(';')
            .map(|semi| &rest[1..=semi])
            .filter(|name| {
                let body = name.strip_prefix('#').unwrap_or(name);
                (1..=24).contains(&body.len()) && body.chars().all(|c| c.is_ascii_alphanumeric())
            });
        match entity.and_then(entity_text) {
            Some(decoded) => {
                out.push_str(&decoded);
                rest = &rest[entity.map_or(0, str::len) + 2..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The text of one entity name such as `amp` or `#x41`; `None` leaves it as written.
fn entity_text(name: &str) -> Option<String> {
    if let Some(number) = name.strip_prefix('#') {
        let (digits, radix) = match number.strip_prefix(['x', 'X']) {
            Some(hex) => (hex, 16),
            None => (number, 10),
        };
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        // Too many digits for a u32 is as invalid as any code point past U+10FFFF.
        let code = u32::from_str_radix(digits, radix).unwrap_or(u32::MAX);
        let text = match (code, u8::try_from(code)) {
            (_, Ok(byte @ 0x80..=0x9f)) => cp1252_char(byte).to_string(),
            (0x0d, _) => "\r".to_string(),
            (0 | 0xd800..=0xdfff | 0x11_0000.., _) => "\u{fffd}".to_string(),
            (0x01..=0x08 | 0x0b | 0x0e..=0x1f | 0x7f | 0xfdd0..=0xfdef, _) => String::new(),
            _ if code & 0xfffe == 0xfffe => String::new(),
            _ => char::from_u32(code).map(String::from).unwrap_or_default(),
        };
        return Some(text);
    }
    let lookup = |name: &str| {
        let latin1 = LATIN1_ENTITIES.iter().position(|&e| e == name);
        let latin1 = latin1
            .and_then(|i| u32::try_from(0xa0 + i).ok())
            .and_then(char::from_u32);
        latin1.or_else(|| {
            OTHER_ENTITIES
                .iter()
                .find(|(e, _)| *e == name)
                .map(|&(_, c)| c)
        })
    };
    if let Some(c) = lookup(name) {
        return Some(c.to_string());
    }
    // Like ftfy, read an all-caps spelling of a lower-case name as the upper-case character.
    if name == name.to_ascii_uppercase() {
        return lookup(&name.to_ascii_lowercase()).map(|c| c.to_uppercase().collect());
    }
    None
}

/// HTML's names for U+00A0..=U+00FF, in order.
const LATIN1_ENTITIES: [&str; 96] = [
    "nbsp", "iexcl", "cent", "pound", "curren", "yen", "brvbar", "sect", "uml", "copy", "ordf",
    "laquo", "not", "shy", "reg", "macr", "deg", "plusmn", "sup2", "sup3", "acute", "micro",
    "para", "middot", "cedil", "sup1", "ordm", "raquo", "frac14", "frac12", "frac34", "iquest",
    "Agrave", "Aacute", "Acirc", "Atilde", "Auml", "Aring", "AElig", "Ccedil", "Egrave", "Eacute",
    "Ecirc", "Euml", "Igrave", "Iacute", "Icirc", "Iuml", "ETH", "Ntilde", "Ograve", "Oacute",
    "Ocirc", "Otilde", "Ouml", "times", "Oslash", "Ugrave", "Uacute", "Ucirc", "Uuml", "Yacute",
    "THORN", "szlig", "agrave", "aacute", "acirc", "atilde", "auml", "aring", "aelig", "ccedil",
    "egrave", "eacute", "ecirc", "euml", "igrave", "iacute", "icirc", "iuml", "eth", "ntilde",
    "ograve", "oacute", "ocirc", "otilde", "ouml", "divide", "oslash", "ugrave", "uacute", "ucirc",
    "uuml", "yacute", "thorn", "yuml",
];

/// The other named entities decoded: markup and common punctuation.
const OTHER_ENTITIES: [(&str, char); 15] = [
    ("amp", '&'),
    ("lt", '<'),
    ("gt", '>'),
    ("quot", '"'),
    ("apos", '\''),
    ("hellip", '…'),
    ("mdash", '—'),
    ("ndash", '–'),
    ("lsquo", '‘'),
    ("rsquo", '’'),
    ("ldquo", '“'),
    ("rdquo", '”'),
    ("bull", '•'),
    ("euro", '€'),
    ("trade", '™'),
];

/// Re-decodes UTF-8 that was read as Latin-1 or Windows-1252 (`cafÃ©` → `café`): the whole
/// line when all of it re-encodes to valid UTF-8 (ftfy's main case), otherwise the sequences that
/// start with the commonest mojibake leads, `Â`/`Ã` (Latin-1 letters and signs), `â`
/// (punctuation) and `ð` (emoji), and a word-final `Ã ` (`voilÃ le` → `voilà le`).
fn decode_utf8_mojibake(text: &str) -> String {
    if !text.is_ascii() {
        let bytes: Option<Vec<u8>> = text.chars().map(cp1252_byte).collect();
        if let Some(Ok(decoded)) = bytes.map(String::from_utf8) {
            return decoded;
        }
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        // ftfy's restore_byte_a0: "voilÃ le" was "voilà le" with its no-break space lost.
        let after_word = i == 0
            || chars[i - 1].is_ascii_lowercase()
            || (chars[i - 1] == ' ' && i >= 2 && chars[i - 2].is_ascii_lowercase());
        if chars[i] == 'Ã' && chars.get(i + 1) == Some(&' ') && after_word {
            out.push('à');
            i += 1;
            continue;
        }
        let continuations = match cp1252_byte(chars[i]) {
            Some(0xc2 | 0xc3) => 1,
            Some(0xe2) => 2,
            Some(0xf0) => 3,
            _ => 0,
        };
        let bytes: Option<Vec<u8>> = chars
            .get(i + 1..=i + continuations)
            .filter(|_| continuations > 0)
            .and_then(|rest| {
                std::iter::once(chars[i])
                    .chain(rest.iter().copied())
                    .map(cp1252_byte)
                    .collect()
            });
        match bytes.as_deref().map(std::str::from_utf8) {
            Some(Ok(decoded)) => {
                out.push_str(decoded);
                i += continuations + 1;
            }
            _ => {
                out.push(chars[i]);
                i += 1;
            }
        }
    }
    out
}

/// Windows-1252's characters for bytes 0x80..=0x9f; its five unassigned bytes stay C1 controls
/// (ftfy's "sloppy" Windows-1252).
const CP1252_HIGH: [char; 32] = [
    '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž', '\u{8f}',
    '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}', 'ž', 'Ÿ',
];

fn cp1252_char(byte: u8) -> char {
    match byte {
        0x80..=0x9f => CP1252_HIGH[usize::from(byte - 0x80)],
        _ => char::from(byte),
    }
}

/// The byte that sloppy Windows-1252 decodes to `c`, if any.
fn cp1252_byte(c: char) -> Option<u8> {
    match u8::try_from(u32::from(c)) {
        Ok(byte) if !(0x80..=0x9f).contains(&byte) => Some(byte),
        _ => CP1252_HIGH
            .iter()
            .position(|&h| h == c)
            .and_then(|i| u8::try_from(0x80 + i).ok()),
    }
}

/// Removes ANSI terminal escapes (`ESC [ digits/semicolons letter`).
fn strip_terminal_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(esc) = rest.find("\u{1b}[") {
        out.push_str(&rest[..esc]);
        let after = &rest[esc + 2..];
        let params = after
            .find(|c: char| !(c.is_ascii_digit() || c == ';'))
            .unwrap_or(after.len());
        match after[params..].chars().next() {
            Some(c) if c.is_ascii_alphabetic() => rest = &after[params + 1..],
            _ => {
                out.push_str(&rest[esc..esc + 2]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The control characters ftfy's `remove_control_chars` drops (tab, line feed, form feed and
/// carriage return stay).
fn is_unwanted_control(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}' | '\u{e}'..='\u{1f}' | '\u{7f}' | '\u{206a}'..='\u{206f}'
        | '\u{feff}' | '\u{fff9}'..='\u{fffc}')
}
