//! A minimal stderr logger for the `log` macros used across hutch.
//! `HUTCH_LOG=error|warn|info|debug|trace` sets the level (default: warn).

use log::{LevelFilter, Log, Metadata, Record};

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record) {
        if self.enabled(r.metadata()) {
            // Never panic on a closed stderr: this runs on device threads.
            // One write per line: hutch and its fs backend processes share
            // stderr, and a line written in pieces interleaves with theirs
            // (a pipe keeps writes of up to 4 KiB whole).
            use std::io::Write;
            let line = line(r.level(), r.args());
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// `hutch: LEVEL: MESSAGE\n`.
fn line(level: log::Level, args: &std::fmt::Arguments<'_>) -> String {
    format!("hutch: {}: {args}\n", level.as_str().to_ascii_lowercase())
}

static LOGGER: Stderr = Stderr;

/// The level `HUTCH_LOG` names, or warn.
pub fn level_from(var: Option<&str>) -> LevelFilter {
    match var.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("off") => LevelFilter::Off,
        Some("error") => LevelFilter::Error,
        Some("info") => LevelFilter::Info,
        Some("debug") => LevelFilter::Debug,
        Some("trace") => LevelFilter::Trace,
        _ => LevelFilter::Warn,
    }
}

/// Installs the logger (once; later calls do nothing).
pub fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level_from(std::env::var("HUTCH_LOG").ok().as_deref()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(level_from(None), LevelFilter::Warn);
        assert_eq!(level_from(Some("DEBUG")), LevelFilter::Debug);
        assert_eq!(level_from(Some("off")), LevelFilter::Off);
        assert_eq!(level_from(Some("nonsense")), LevelFilter::Warn);
    }

    #[test]
    fn a_record_is_one_line() {
        let l = line(log::Level::Info, &format_args!("a {} c", "b"));
        assert_eq!(l, "hutch: info: a b c\n");
    }
}
