//! The per-user state directory: one folder per named sandbox, holding its
//! record (`state.json`), its sockets and its VMM's log.
//!
//! The VMM process writes its record; the CLI reads it, and writes it only
//! once that process is gone (stop of a stale entry). Writes go through a
//! temporary file and a rename, so readers never see half a record.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::ports::Published;

/// Longest sandbox name (socket paths must stay under 108 bytes).
pub const MAX_NAME: usize = 40;

/// Errors about sandboxes, naming the sandbox or file involved.
#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("bad sandbox name {0:?}: use 1 to {MAX_NAME} letters, digits, '-', '_' or '.', starting with a letter or digit")]
    BadName(String),
    #[error("no sandbox named {0} (hutch ls lists them)")]
    Unknown(String),
    #[error("a sandbox named {name} already exists ({status}); hutch rm {name} removes it")]
    Exists { name: String, status: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("sandbox record {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("no state directory: set HUTCH_STATE_DIR, XDG_STATE_HOME or HOME")]
    NoStateDir,
    #[error("socket path {path} is {len} bytes, over the 107-byte limit: use a shorter HUTCH_STATE_DIR or name")]
    PathTooLong { path: PathBuf, len: usize },
}

/// What the VMM process last said about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Booting; the agent has not said hello yet.
    Starting,
    /// The agent is serving.
    Running,
    /// The VM has stopped.
    Stopped,
}

/// One sandbox's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub status: Status,
    /// The VMM process, and its start time (clock ticks since boot, from
    /// `/proc/PID/stat`), so a reused pid is not mistaken for it.
    pub pid: u32,
    pub pid_start: u64,
    pub engine: String,
    pub workspace: PathBuf,
    pub memory: u64,
    pub cpus: u8,
    /// Seconds since the epoch.
    pub created: u64,
    /// Whether it was started with `run -d`.
    pub detached: bool,
    #[serde(default)]
    pub ports: Vec<Published>,
    /// Variables every process in it gets (the egress proxy's; no secrets).
    #[serde(default)]
    pub guest_env: Vec<String>,
}

impl Record {
    /// What `hutch ls` shows: the recorded status, or `stale` when the
    /// record says the VMM is up but its process is gone.
    pub fn shown_status(&self) -> &'static str {
        match self.status {
            Status::Stopped => "stopped",
            _ if !process_alive(self.pid, self.pid_start) => "stale",
            Status::Starting => "starting",
            Status::Running => "running",
        }
    }

    /// Whether the VMM process is alive.
    pub fn alive(&self) -> bool {
        self.status != Status::Stopped && process_alive(self.pid, self.pid_start)
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The start time of process `pid` in clock ticks since boot, if it exists
/// and has not exited.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; the command name (field 2) may hold spaces, so count from
    // the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    // A zombie has exited; only its parent has not reaped it yet.
    if matches!(fields.next()?, "Z" | "X") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

fn process_alive(pid: u32, start: u64) -> bool {
    process_start(pid) == Some(start)
}

/// Checks a sandbox name.
pub fn check_name(name: &str) -> Result<(), SandboxError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SandboxError::BadName(name.into()))
    }
}

/// The state directory and the sandboxes in it.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// `$HUTCH_STATE_DIR`, else `$XDG_STATE_HOME/hutch`, else
    /// `~/.local/state/hutch`.
    pub fn open() -> Result<Store, SandboxError> {
        let env = |k| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let root = env("HUTCH_STATE_DIR")
            .or_else(|| env("XDG_STATE_HOME").map(|p| p.join("hutch")))
            .or_else(|| env("HOME").map(|p| p.join(".local/state/hutch")))
            .ok_or(SandboxError::NoStateDir)?;
        Ok(Store::at(root))
    }

    /// A store rooted at `root`.
    pub fn at(root: PathBuf) -> Store {
        Store { root }
    }

    fn sandboxes(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    /// The folder of sandbox `name`.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.sandboxes().join(name)
    }

    /// Its vsock socket (hybrid protocol).
    pub fn vsock_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("vsock")
    }

    /// Its control socket.
    pub fn ctl_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("ctl")
    }

    /// Its VMM's log.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("vmm.log")
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("state.json")
    }

    /// Claims `name`: creates its folder (mode 0700), or fails when a
    /// sandbox of that name exists.
    pub fn create(&self, name: &str) -> Result<PathBuf, SandboxError> {
        check_name(name)?;
        let base = self.sandboxes();
        std::fs::create_dir_all(&base).map_err(|source| SandboxError::Io {
            what: "creating the state directory",
            path: base.clone(),
            source,
        })?;
        let dir = self.dir(name);
        // The longest socket path inside must fit a sockaddr_un.
        let longest = self.vsock_path(name).as_os_str().len() + "_65535".len();
        if longest > 107 {
            return Err(SandboxError::PathTooLong {
                path: self.vsock_path(name),
                len: longest,
            });
        }
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let status = match self.load(name) {
                    Ok(r) => r.shown_status().to_string(),
                    Err(_) => "unreadable".into(),
                };
                Err(SandboxError::Exists {
                    name: name.into(),
                    status,
                })
            }
            Err(source) => Err(SandboxError::Io {
                what: "creating sandbox folder",
                path: dir,
                source,
            }),
        }
    }

    /// Writes `rec` atomically.
    pub fn save(&self, rec: &Record) -> Result<(), SandboxError> {
        let path = self.record_path(&rec.name);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let json = serde_json::to_vec_pretty(rec).expect("a record serializes");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| SandboxError::Io {
                what: "writing sandbox record",
                path,
                source,
            })
    }

    /// Reads sandbox `name`'s record.
    pub fn load(&self, name: &str) -> Result<Record, SandboxError> {
        check_name(name)?;
        let path = self.record_path(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SandboxError::Unknown(name.into()))
            }
            Err(source) => {
                return Err(SandboxError::Io {
                    what: "reading sandbox record",
                    path,
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes).map_err(|e| SandboxError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }

    /// Every sandbox with a readable record, by name; unreadable ones are
    /// returned as errors so `ls` can say so.
    pub fn list(&self) -> Vec<Result<Record, SandboxError>> {
        let Ok(entries) = std::fs::read_dir(self.sandboxes()) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| check_name(n).is_ok())
            .collect();
        names.sort();
        names.iter().map(|n| self.load(n)).collect()
    }

    /// Removes sandbox `name`'s folder and everything in it.
    pub fn remove(&self, name: &str) -> Result<(), SandboxError> {
        check_name(name)?;
        let dir = self.dir(name);
        if !dir.exists() {
            return Err(SandboxError::Unknown(name.into()));
        }
        std::fs::remove_dir_all(&dir).map_err(|source| SandboxError::Io {
            what: "removing sandbox folder",
            path: dir,
            source,
        })
    }
}

/// Whether `path` exists (for sockets).
pub fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

/// A record of this process, for tests elsewhere in the crate.
#[cfg(test)]
pub fn test_record(name: &str, status: Status) -> Record {
    let pid = std::process::id();
    Record {
        name: name.into(),
        status,
        pid,
        pid_start: process_start(pid).unwrap_or(1),
        engine: "qemu (tcg)".into(),
        workspace: "/w".into(),
        memory: 1 << 30,
        cpus: 2,
        created: now(),
        detached: true,
        ports: vec![],
        guest_env: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, _pid: u32, status: Status) -> Record {
        test_record(name, status)
    }

    #[test]
    fn names_are_checked() {
        for ok in ["a", "web-1", "x.y_z", &"n".repeat(MAX_NAME)] {
            check_name(ok).unwrap();
        }
        for bad in [
            "",
            "-a",
            ".hidden",
            "a/b",
            "a b",
            "é",
            &"n".repeat(MAX_NAME + 1),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn create_save_load_list_and_remove() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::at(d.path().to_path_buf());
        assert!(s.list().is_empty());
        s.create("one").unwrap();
        let e = s.create("one").unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        let me = std::process::id();
        s.save(&rec("one", me, Status::Running)).unwrap();
        assert_eq!(s.load("one").unwrap().shown_status(), "running");
        assert!(s
            .create("one")
            .unwrap_err()
            .to_string()
            .contains("(running)"));
        s.create("two").unwrap();
        // A pid that is not running (or a start time that does not match)
        // is stale.
        let mut dead = rec("two", me, Status::Running);
        dead.pid_start += 1;
        s.save(&dead).unwrap();
        assert_eq!(s.load("two").unwrap().shown_status(), "stale");
        assert!(!s.load("two").unwrap().alive());
        let names: Vec<_> = s.list().into_iter().map(|r| r.unwrap().name).collect();
        assert_eq!(names, ["one", "two"]);
        s.remove("two").unwrap();
        assert!(matches!(s.load("two"), Err(SandboxError::Unknown(_))));
        assert!(s
            .remove("two")
            .unwrap_err()
            .to_string()
            .contains("no sandbox named two"));
        std::fs::write(s.record_path("one"), b"{").unwrap();
        assert!(s.load("one").unwrap_err().to_string().contains("corrupt"));
    }

    #[test]
    fn long_state_dirs_are_refused_before_sockets_fail() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::at(d.path().join("x".repeat(90)));
        let e = s.create("name").unwrap_err().to_string();
        assert!(e.contains("over the 107-byte limit"), "{e}");
    }

    #[test]
    fn process_start_of_self_and_of_nothing() {
        assert!(process_start(std::process::id()).is_some());
        assert_eq!(process_start(u32::MAX), None);
        // An exited child that is not reaped yet is a zombie: gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while process_start(pid).is_some() {
            assert!(std::time::Instant::now() < deadline, "zombie still counted");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok(),
            "still a zombie"
        );
        child.wait().unwrap();
    }
}
