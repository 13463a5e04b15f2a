//! The decision log: one entry per proxied request or tunnel, kept in
//! memory (the newest `capacity` entries) and appended as JSON lines to a
//! file when one is configured.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open decision log {}: {source}", file.display())]
    Open {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot append to decision log {}: {source}", file.display())]
    Write {
        file: PathBuf,
        source: std::io::Error,
    },
}

/// allow or deny (or error: allowed, but the destination could not be reached).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
    Error,
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub sandbox: String,
    pub host: String,
    pub port: u16,
    /// The HTTP method (`CONNECT` for tunnels).
    pub method: String,
    /// The path, for plain HTTP only (a tunnel's is not visible).
    pub path: Option<String>,
    /// The rule that decided, when one did.
    pub rule: Option<String>,
    pub verdict: Verdict,
    /// Why, in words (the 403 body's reason, or the connect error).
    pub reason: Option<String>,
    /// The credential added (its service), when the host has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Bytes from the sandbox to the destination.
    pub bytes_up: u64,
    /// Bytes from the destination to the sandbox.
    pub bytes_down: u64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The log itself; shared by all connections of a proxy.
#[derive(Debug)]
pub struct DecisionLog {
    entries: Mutex<VecDeque<Entry>>,
    capacity: usize,
    file: Option<(PathBuf, Mutex<File>)>,
}

impl DecisionLog {
    /// A log keeping `capacity` entries in memory, appending to `file` if
    /// given (its directory is made if missing).
    pub fn new(capacity: usize, file: Option<&Path>) -> Result<DecisionLog, LogError> {
        let file = match file {
            Some(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    // A failure here shows up as the open's error just below.
                    let _ = std::fs::create_dir_all(dir);
                }
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| LogError::Open {
                        file: path.into(),
                        source,
                    })?;
                Some((path.to_path_buf(), Mutex::new(f)))
            }
            None => None,
        };
        Ok(DecisionLog {
            entries: Mutex::new(VecDeque::new()),
            capacity,
            file,
        })
    }

    /// Records an entry; the in-memory copy is kept even if the file write fails.
    pub fn record(&self, entry: Entry) -> Result<(), LogError> {
        let result = match &self.file {
            Some((path, f)) => {
                let mut line = serde_json::to_string(&entry).unwrap_or_default();
                line.push('\n');
                f.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write_all(line.as_bytes())
                    .map_err(|source| LogError::Write {
                        file: path.clone(),
                        source,
                    })
            }
            None => Ok(()),
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() == self.capacity {
            entries.pop_front();
        }
        if self.capacity > 0 {
            entries.push_back(entry);
        }
        result
    }

    /// The entries in memory, oldest first.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(host: &str) -> Entry {
        Entry {
            time_ms: now_ms(),
            sandbox: "sb".into(),
            host: host.into(),
            port: 443,
            method: "CONNECT".into(),
            path: None,
            rule: Some("**.example.com".into()),
            verdict: Verdict::Allow,
            reason: None,
            credential: None,
            bytes_up: 10,
            bytes_down: 20,
        }
    }

    #[test]
    fn keeps_the_newest_and_appends_json_lines() {
        let dir = std::env::temp_dir().join(format!("hutch-proxy-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("decisions.jsonl");
        let _ = std::fs::remove_file(&path);
        let log = DecisionLog::new(2, Some(&path)).unwrap();
        for h in ["a.example.com", "b.example.com", "c.example.com"] {
            log.record(entry(h)).unwrap();
        }
        let hosts: Vec<_> = log.entries().into_iter().map(|e| e.host).collect();
        assert_eq!(hosts, ["b.example.com", "c.example.com"]);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Entry> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], entry("a.example.com").with_time(lines[0].time_ms));
        assert!(text.contains("\"verdict\":\"allow\""), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn open_errors_name_the_file() {
        // A regular file where the log's directory should be.
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().join("log.jsonl");
        let err = DecisionLog::new(1, Some(&path)).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    impl Entry {
        fn with_time(mut self, t: u64) -> Entry {
            self.time_ms = t;
            self
        }
    }
}
