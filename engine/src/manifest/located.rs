//! The one error helper of the manifest layer. Every section's owner validates its values
//! through a [`Located`] (the file, its text and its parsed table), so that every error names
//! the file, the 1-based line and the dotted field at fault, whichever section it is in.
//!
//! Also here: serde errors turned into that form (the field path found at the error's span),
//! and the value checks several sections share (ranges from [`crate::limits`], SHA-256 hashes,
//! non-empty strings, paths relative to the manifest's folder).

use std::fmt::Display;
use std::ops::{Range, RangeInclusive, Rem};
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{sections, ManifestError};
use crate::limits;

/// A manifest file being read: where its errors point.
#[derive(Debug, Clone, Copy)]
pub struct Located<'a> {
    file: &'a Path,
    text: &'a str,
    table: &'a DeTable<'a>,
}

/// The 1-based line of byte `offset` in `text`.
pub fn line(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl<'a> Located<'a> {
    /// The helper for `file`, whose `text` parsed into `table`.
    pub fn new(file: &'a Path, text: &'a str, table: &'a DeTable<'a>) -> Self {
        Self { file, text, table }
    }

    /// The manifest file.
    pub fn file(&self) -> &'a Path {
        self.file
    }

    /// The 1-based line of `value`.
    pub fn line_of<T>(&self, value: &Spanned<T>) -> usize {
        line(self.text, value.span().start)
    }

    /// A [`ManifestError::Invalid`] for `field` at `span`.
    pub fn invalid(
        &self,
        span: Range<usize>,
        field: &str,
        message: impl Into<String>,
    ) -> ManifestError {
        ManifestError::invalid(self.file, line(self.text, span.start), field, message)
    }

    /// A [`ManifestError::Invalid`] for `field`, whose value is `value`.
    pub fn at<T>(
        &self,
        value: &Spanned<T>,
        field: &str,
        message: impl Into<String>,
    ) -> ManifestError {
        self.invalid(value.span(), field, message)
    }

    /// Turns a serde error in the top-level table `section` of this file into
    /// [`ManifestError::Invalid`], naming the field found at its span
    /// (`pipeline.defaults.steps`; the section itself when no key covers the span, as for a
    /// field missing from the second `[[pipeline]]`) and saying how to fix it.
    pub fn serde_error(&self, section: &str, err: &toml::de::Error) -> ManifestError {
        let span = err.span().unwrap_or(0..0);
        let within = |field: &String| field == section || field.starts_with(&format!("{section}."));
        let field = field_at(self.table, span.start)
            .filter(within)
            .unwrap_or_else(|| section.to_string());
        let message = err.message().trim();
        let (field, message) = if let Some(missing) = backticked(message, "missing field `") {
            let message = format!(
                "is required: add `{missing} = ...` to the {} table",
                header(&field)
            );
            (join_key(&field, missing), message)
        } else if let Some(unknown) = backticked(message, "unknown field `") {
            let expected = message
                .split_once(", expected ")
                .map_or(String::new(), |(_, list)| format!(" (allowed: {list})"));
            let message =
                format!("is not a known field{expected}: remove `{unknown}` or fix its spelling");
            (field, message)
        } else {
            let message = format!(
                "has the wrong type: {}; fix the value",
                plain(message, &field)
            );
            (field, message)
        };
        self.invalid(span, &field, message)
    }

    /// `path` as written in the manifest, joined to the manifest's folder (made absolute).
    pub fn relative_path(&self, path: &str) -> PathBuf {
        let joined = self.file.parent().unwrap_or(Path::new("")).join(path);
        std::path::absolute(&joined).unwrap_or(joined)
    }

    /// The trimmed string, or an error saying `how` to fill it in if it is blank.
    pub fn non_empty<'v>(
        &self,
        value: &'v Spanned<String>,
        field: &str,
        how: &str,
    ) -> Result<&'v str, ManifestError> {
        let trimmed = value.get_ref().trim();
        if trimmed.is_empty() {
            Err(self.at(value, field, format!("must not be empty: {how}")))
        } else {
            Ok(trimmed)
        }
    }

    /// A whole number within `range` (and a multiple of `multiple_of`, if given).
    pub fn whole<T>(
        &self,
        value: &Option<Spanned<i64>>,
        field: &str,
        range: &RangeInclusive<T>,
        multiple_of: Option<T>,
    ) -> Result<Option<T>, ManifestError>
    where
        T: Copy + Default + Display + PartialOrd + Rem<Output = T> + TryFrom<i64>,
    {
        let Some(value) = value else {
            return Ok(None);
        };
        let n = *value.get_ref();
        let fits = |t: &T| {
            range.contains(t)
                && multiple_of.is_none_or(|m| m == T::default() || *t % m == T::default())
        };
        match T::try_from(n) {
            Ok(t) if fits(&t) => Ok(Some(t)),
            _ => {
                let multiple =
                    multiple_of.map_or(String::new(), |m| format!(" and a multiple of {m}"));
                let message = format!(
                    "must be {}{multiple} (got {n}): change the value",
                    limits::describe(range)
                );
                Err(self.at(value, field, message))
            }
        }
    }

    /// A width or height: within [`limits::SIZE`] and a multiple of [`limits::SIZE_MULTIPLE`].
    pub fn size(
        &self,
        value: &Option<Spanned<i64>>,
        field: &str,
    ) -> Result<Option<usize>, ManifestError> {
        self.whole(value, field, &limits::SIZE, Some(limits::SIZE_MULTIPLE))
    }

    /// A finite number within `range`; the message suggests `example` when given.
    pub fn number(
        &self,
        value: &Option<Spanned<f64>>,
        field: &str,
        range: &RangeInclusive<f64>,
        example: Option<f64>,
    ) -> Result<Option<f64>, ManifestError> {
        let Some(value) = value else {
            return Ok(None);
        };
        let x = *value.get_ref();
        if x.is_finite() && range.contains(&x) {
            return Ok(Some(x));
        }
        let key = field.rsplit('.').next().unwrap_or(field);
        let example = example.map_or(String::new(), |e| format!(", e.g. `{key} = {e}`"));
        let message = format!(
            "must be {} (got {x}): change the value{example}",
            limits::describe(range)
        );
        Err(self.at(value, field, message))
    }

    /// A SHA-256 written as 64 hexadecimal digits, returned in lowercase; `file` is the file it
    /// pins, as the manifest names it.
    pub fn sha256(
        &self,
        value: &Spanned<String>,
        field: &str,
        file: &str,
    ) -> Result<String, ManifestError> {
        let hex = value.get_ref().trim().to_ascii_lowercase();
        if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(hex);
        }
        let message = format!(
            "must be 64 hexadecimal digits (got `{}`): put the file's SHA-256 here, as \
             `sha256sum {file}` prints it",
            value.get_ref()
        );
        Err(self.at(value, field, message))
    }
}

/// The names of one kind of entry seen so far across the folder's files, to refuse a name
/// defined twice with both places.
#[derive(Debug)]
pub struct UniqueNames {
    field: &'static str,
    what: &'static str,
    seen: Vec<(String, PathBuf, usize)>,
}

impl UniqueNames {
    /// Names of `field` (e.g. `pipeline.name`); `what` names the entries in the plural.
    pub fn new(field: &'static str, what: &'static str) -> Self {
        Self {
            field,
            what,
            seen: Vec::new(),
        }
    }

    /// Records `name`, written at `line` of `file`; an error if it was seen before.
    pub fn insert(&mut self, name: &str, file: &Path, line: usize) -> Result<(), ManifestError> {
        if let Some((_, first, first_line)) = self.seen.iter().find(|(n, ..)| n == name) {
            let message = format!(
                "`{name}` is defined twice, also in {}:{first_line}: rename one of the {}",
                first.display(),
                self.what
            );
            return Err(ManifestError::invalid(file, line, self.field, message));
        }
        self.seen.push((name.to_string(), file.to_path_buf(), line));
        Ok(())
    }
}

/// How the table holding `field` is written: `[[pipeline]]`, `[pack]`, `[pack.defaults]`.
fn header(field: &str) -> String {
    match sections::find(field) {
        Some(section) => section.header(),
        None => format!("[{field}]"),
    }
}

/// Serde's type names in words a manifest's author uses.
fn plain(message: &str, field: &str) -> String {
    let message = message
        .replace("expected i64", "expected a whole number")
        .replace("expected f64", "expected a number")
        .replace("expected a sequence", "expected an array")
        .replace("expected a map", "expected a table");
    match message.split_once("expected struct ") {
        Some((before, after)) => {
            let rest = after.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_');
            format!("{before}expected a {} table{rest}", header(field))
        }
        None => message,
    }
}

/// The text between `prefix` and the next backtick, if `message` starts with `prefix`.
fn backticked<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split('`').next()
}

fn join_key(table: &str, key: &str) -> String {
    if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    }
}

/// The dotted path of the deepest key whose name or value covers byte `offset`.
fn field_at(table: &DeTable<'_>, offset: usize) -> Option<String> {
    for (key, value) in table {
        let name = key.get_ref();
        if key.span().contains(&offset) {
            return Some(name.to_string());
        }
        let inner = match value.get_ref() {
            DeValue::Table(inner) => field_at(inner, offset),
            DeValue::Array(items) => items.iter().find_map(|item| match item.get_ref() {
                DeValue::Table(inner) => field_at(inner, offset),
                _ => None,
            }),
            _ => None,
        };
        if let Some(inner) = inner {
            return Some(join_key(name, &inner));
        }
        if value.span().contains(&offset) {
            return Some(name.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_located<R>(text: &str, f: impl FnOnce(Located<'_>) -> R) -> R {
        let table = DeTable::parse(text).unwrap();
        f(Located::new(Path::new("/m/x.toml"), text, table.get_ref()))
    }

    #[test]
    fn lines_count_from_one() {
        assert_eq!(line("a\nb\nc", 0), 1);
        assert_eq!(line("a\nb\nc", 2), 2);
        assert_eq!(line("a\nb\nc", 99), 3);
    }

    #[test]
    fn field_paths_reach_into_arrays_of_tables() {
        let text = "[[pipeline]]\nname = \"a\"\n[pipeline.defaults]\nsteps = 4\n";
        let table = DeTable::parse(text).unwrap();
        let offset = text.find("4").unwrap();
        assert_eq!(
            field_at(table.get_ref(), offset).as_deref(),
            Some("pipeline.defaults.steps")
        );
    }

    #[test]
    fn ranges_come_from_the_limits() {
        let text = "[t]\nsteps = 0\nwidth = 100\nguidance = nan\n";
        with_located(text, |loc| {
            let steps = Some(Spanned::new(text.find("0").unwrap()..0, 0i64));
            let err = loc
                .whole(&steps, "t.steps", &limits::STEPS, None)
                .unwrap_err();
            let message = err.to_string();
            assert!(
                message.starts_with("/m/x.toml:2: `t.steps` must be between 1 and 1000 (got 0)"),
                "{message}"
            );
            let width = Some(Spanned::new(text.find("100").unwrap()..0, 100i64));
            let err = loc
                .whole(
                    &width,
                    "t.width",
                    &limits::SIZE,
                    Some(limits::SIZE_MULTIPLE),
                )
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(":3:") && err.contains("and a multiple of 8"),
                "{err}"
            );
            let g = Some(Spanned::new(text.find("nan").unwrap()..0, f64::NAN));
            let err = loc
                .number(&g, "t.guidance", &limits::GUIDANCE, Some(7.5))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(":4:") && err.contains("e.g. `guidance = 7.5`"),
                "{err}"
            );
            let ok = Some(Spanned::new(0..0, 64i64));
            assert_eq!(
                loc.whole(&ok, "t.width", &limits::SIZE, Some(8)).unwrap(),
                Some(64usize)
            );
        });
    }

    #[test]
    fn hashes_are_64_hex_digits() {
        with_located("[t]\n", |loc| {
            let good = Spanned::new(0..0, "AB".repeat(32));
            assert_eq!(loc.sha256(&good, "t.sha256", "f").unwrap(), "ab".repeat(32));
            let bad = Spanned::new(0..0, "abc".to_string());
            let err = loc
                .sha256(&bad, "t.sha256", "f.wasm")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("64 hexadecimal") && err.contains("sha256sum f.wasm"),
                "{err}"
            );
        });
    }
}
