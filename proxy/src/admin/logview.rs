//! `hutch policy log [--json] [--limit N] [NAME]`: the newest decisions from
//! the sandboxes' log files (`NAME.jsonl` in the log directory).

use std::path::{Path, PathBuf};

use super::AdminError;
use crate::log::{Entry, Verdict};

fn files(dir: &Path, name: Option<&str>) -> Result<Vec<PathBuf>, AdminError> {
    if let Some(n) = name {
        return Ok(vec![dir.join(format!("{n}.jsonl"))]);
    }
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(AdminError::Failed(format!(
            "cannot read {}: {e}",
            dir.display()
        ))),
    }
}

/// The newest `limit` entries (oldest first), as text lines or JSON lines.
/// Unparsable lines (a write cut short) are skipped.
pub fn show(
    dir: &Path,
    name: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<String, AdminError> {
    let mut entries: Vec<Entry> = Vec::new();
    for f in files(dir, name)? {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && name.is_some() => {
                return Err(AdminError::Failed(format!(
                    "no decisions logged for sandbox {} ({})",
                    name.unwrap_or(""),
                    f.display()
                )))
            }
            Err(e) => {
                return Err(AdminError::Failed(format!(
                    "cannot read {}: {e}",
                    f.display()
                )))
            }
        };
        entries.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
    }
    entries.sort_by_key(|e| e.time_ms);
    let skip = entries.len().saturating_sub(limit);
    let mut out = String::new();
    for e in &entries[skip..] {
        if json {
            out.push_str(&serde_json::to_string(e).unwrap_or_default());
        } else {
            out.push_str(&line(e));
        }
        out.push('\n');
    }
    Ok(out)
}

/// One entry as a line of text.
pub fn line(e: &Entry) -> String {
    let verdict = match e.verdict {
        Verdict::Allow => "allow",
        Verdict::Deny => "DENY ",
        Verdict::Error => "ERROR",
    };
    let target = match &e.path {
        Some(p) => format!("{}:{}{p}", e.host, e.port),
        None => format!("{}:{}", e.host, e.port),
    };
    let mut s = format!(
        "{} {} {verdict} {} {target}",
        utc(e.time_ms),
        e.sandbox,
        e.method
    );
    match (&e.rule, e.verdict) {
        (Some(r), _) => s.push_str(&format!(" rule={r}")),
        (None, Verdict::Deny) => s.push_str(" rule=(none)"),
        _ => {}
    }
    if let Some(c) = &e.credential {
        s.push_str(&format!(" credential={c}"));
    }
    s.push_str(&format!(" up={} down={}", e.bytes_up, e.bytes_down));
    if let (Some(r), false) = (&e.reason, e.verdict == Verdict::Allow) {
        s.push_str(&format!(" ({r})"));
    }
    s
}

/// `YYYY-MM-DDTHH:MM:SSZ` for milliseconds since the epoch.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::DecisionLog;

    fn entry(sandbox: &str, t: u64, verdict: Verdict) -> Entry {
        Entry {
            time_ms: t,
            sandbox: sandbox.into(),
            host: "evil.test".into(),
            port: 443,
            method: "CONNECT".into(),
            path: None,
            rule: None,
            verdict,
            reason: Some("evil.test:443: no rule allows it".into()),
            credential: None,
            bytes_up: 0,
            bytes_down: 0,
        }
    }

    #[test]
    fn newest_entries_from_every_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        for (name, times) in [("a", [1_000u64, 3_000]), ("b", [2_000, 4_000])] {
            let log =
                DecisionLog::new(10, Some(&dir.path().join(format!("{name}.jsonl")))).unwrap();
            for t in times {
                log.record(entry(name, t, Verdict::Deny)).unwrap();
            }
        }
        let text = show(dir.path(), None, 3, false).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "1970-01-01T00:00:02Z b DENY  CONNECT evil.test:443 rule=(none) up=0 down=0 (evil.test:443: no rule allows it)"
        );
        let json = show(dir.path(), Some("a"), 10, true).unwrap();
        let parsed: Vec<Entry> = json
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            parsed,
            vec![
                entry("a", 1_000, Verdict::Deny),
                entry("a", 3_000, Verdict::Deny)
            ]
        );
        assert!(show(dir.path(), Some("zz"), 10, false)
            .unwrap_err()
            .to_string()
            .contains("no decisions logged for sandbox zz"));
        assert_eq!(show(&dir.path().join("none"), None, 10, false).unwrap(), "");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_798_761_599_000), "2026-12-31T23:59:59Z");
    }
}
