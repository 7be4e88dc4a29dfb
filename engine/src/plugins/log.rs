//! Log lines written by plugins (`beeswax.log` of a WASM plugin): control characters escaped
//! (a plugin cannot forge a host log line or drive the terminal), written through `tracing`
//! (so `--log-json` output stays JSON) with the plugin's name as a field, and rate-limited per
//! plugin over time: at most [`LINES_PER_SECOND`] lines a second, the rest counted and
//! reported in one "suppressed K lines" line when the next second begins (or when the plugin
//! is unloaded).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most lines one plugin may log per second (all its instances together).
pub const LINES_PER_SECOND: u32 = 20;
/// Longest line kept, in bytes (longer ones are cut).
pub const MAX_LINE_BYTES: usize = 1024;
const WINDOW: Duration = Duration::from_secs(1);

/// A plugin log line's level, as the ABI numbers it (0 error, 1 warning, 2 info, else debug).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// 0.
    Error,
    /// 1.
    Warning,
    /// 2.
    Info,
    /// Anything else.
    Debug,
}

impl Level {
    /// The level the ABI's number stands for.
    pub fn from_abi(level: i32) -> Self {
        match level {
            0 => Level::Error,
            1 => Level::Warning,
            2 => Level::Info,
            _ => Level::Debug,
        }
    }
}

/// One plugin's log: its name and its rate limit.
#[derive(Debug)]
pub struct PluginLog {
    plugin: Arc<str>,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

/// What to do with a line.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Write it, after a "suppressed K lines" line when K > 0.
    Write { suppressed_before: u64 },
    /// Count it and drop it.
    Drop,
}

impl PluginLog {
    /// The log of `plugin`.
    pub fn new(plugin: Arc<str>) -> Self {
        Self {
            plugin,
            window: Mutex::new(Window {
                start: None,
                lines: 0,
                suppressed: 0,
            }),
        }
    }

    /// Writes one line the plugin logged (raw bytes, cut at [`MAX_LINE_BYTES`]), unless over
    /// the rate limit.
    pub fn line(&self, level: Level, bytes: &[u8]) {
        let Admit::Write { suppressed_before } = self.admit(Instant::now()) else {
            return;
        };
        if suppressed_before > 0 {
            self.suppressed(suppressed_before);
        }
        let bytes = &bytes[..bytes.len().min(MAX_LINE_BYTES)];
        let text = escape(String::from_utf8_lossy(bytes).trim_end());
        let plugin = &*self.plugin;
        match level {
            Level::Error => tracing::error!(plugin, "plugin {plugin}: {text}"),
            Level::Warning => tracing::warn!(plugin, "plugin {plugin}: {text}"),
            Level::Info => tracing::info!(plugin, "plugin {plugin}: {text}"),
            Level::Debug => tracing::debug!(plugin, "plugin {plugin}: {text}"),
        }
    }

    fn suppressed(&self, count: u64) {
        let plugin = &*self.plugin;
        tracing::warn!(
            plugin,
            suppressed = count,
            "plugin {plugin}: suppressed {count} log lines (more than {LINES_PER_SECOND} a second)"
        );
    }

    fn admit(&self, now: Instant) -> Admit {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let mut suppressed_before = 0;
        if w.start
            .is_none_or(|start| now.duration_since(start) >= WINDOW)
        {
            w.start = Some(now);
            w.lines = 0;
            suppressed_before = std::mem::take(&mut w.suppressed);
        }
        if w.lines >= LINES_PER_SECOND {
            w.suppressed += 1;
            return Admit::Drop;
        }
        w.lines += 1;
        Admit::Write { suppressed_before }
    }
}

impl Drop for PluginLog {
    fn drop(&mut self) {
        let count = self
            .window
            .get_mut()
            .map_or_else(|p| p.into_inner().suppressed, |w| w.suppressed);
        if count > 0 {
            self.suppressed(count);
        }
    }
}

/// `text` with control characters (newlines, escape sequences, ...) and Unicode direction
/// overrides written as Rust escapes (`\n`, `\u{1b}`), so one plugin line stays one log line
/// and cannot drive a terminal.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape("ok\nINFO forged line\x1b[2J\u{202e}"),
            "ok\\nINFO forged line\\u{1b}[2J\\u{202e}"
        );
        assert_eq!(escape("plain ünïcode text"), "plain ünïcode text");
    }

    #[test]
    fn lines_are_limited_per_second_and_the_rest_counted() {
        let log = PluginLog::new(Arc::from("chatty"));
        let t0 = Instant::now();
        for _ in 0..LINES_PER_SECOND {
            assert_eq!(
                log.admit(t0),
                Admit::Write {
                    suppressed_before: 0
                }
            );
        }
        for _ in 0..7 {
            assert_eq!(log.admit(t0 + Duration::from_millis(900)), Admit::Drop);
        }
        // The next second writes again, first saying how many lines were dropped.
        assert_eq!(
            log.admit(t0 + Duration::from_millis(1000)),
            Admit::Write {
                suppressed_before: 7
            }
        );
        assert_eq!(
            log.admit(t0 + Duration::from_millis(1001)),
            Admit::Write {
                suppressed_before: 0
            }
        );
    }
}
