//! Log lines written by plugins (`beeswax.log` of a WASM plugin): control characters escaped
//! (a plugin cannot forge a host log line or drive the terminal), written through `tracing`
//! (so `--log-json` output stays JSON) with the plugin's name as a field (to stderr when no
//! subscriber is installed, as in `beeswax generate`), and rate-limited per
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
    /// `error`, `warning`, `info` or `debug`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

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
        if !subscribed() {
            // No subscriber (`beeswax generate`, `check`): straight to stderr, as before.
            eprintln!("plugin {plugin}: {}: {text}", level.as_str());
            return;
        }
        match level {
            Level::Error => tracing::error!(plugin, "plugin {plugin}: {text}"),
            Level::Warning => tracing::warn!(plugin, "plugin {plugin}: {text}"),
            Level::Info => tracing::info!(plugin, "plugin {plugin}: {text}"),
            Level::Debug => tracing::debug!(plugin, "plugin {plugin}: {text}"),
        }
    }

    fn suppressed(&self, count: u64) {
        let plugin = &*self.plugin;
        if !subscribed() {
            eprintln!(
                "plugin {plugin}: warning: suppressed {count} log lines (more than \
                 {LINES_PER_SECOND} a second)"
            );
            return;
        }
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

/// Whether a `tracing` subscriber (global or scoped) receives events.
fn subscribed() -> bool {
    tracing::dispatcher::get_default(|d| !d.is::<tracing::subscriber::NoSubscriber>())
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

    /// A writer into a shared buffer, for a JSON subscriber.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_go_through_tracing_as_one_json_line_each() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let log = PluginLog::new(Arc::from("sneaky"));
            log.line(Level::Info, b"step 1\n{\"level\":\"ERROR\"}\x1b[31m red");
            for _ in 0..LINES_PER_SECOND + 5 {
                log.line(Level::Warning, b"spam");
            }
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["fields"]["plugin"], "sneaky", "{text}");
        let message = lines[0]["fields"]["message"].as_str().unwrap();
        assert!(
            message.contains("step 1\\n{") && message.contains("\\u{1b}[31m"),
            "{message}"
        );
        // 20 lines a second: the first, 19 spam lines, then (on drop) how many were dropped.
        assert_eq!(lines.len(), LINES_PER_SECOND as usize + 1, "{text}");
        assert_eq!(lines.last().unwrap()["fields"]["suppressed"], 6, "{text}");
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
