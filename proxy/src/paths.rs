//! Where hutch keeps the proxy's files.
//!
//! - config (`$HUTCH_CONFIG_DIR`, else `$XDG_CONFIG_HOME/hutch`, else
//!   `~/.config/hutch`): `policy.toml` and `secrets.toml`;
//! - state (`$HUTCH_STATE_DIR`, else `$XDG_STATE_HOME/hutch`, else
//!   `~/.local/state/hutch`): each sandbox's decision log and TLS CA.

use std::ffi::OsString;
use std::path::PathBuf;

fn dir_from(own: &str, xdg: &str, fallback: &[&str]) -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = var(own) {
        return PathBuf::from(p);
    }
    if let Some(p) = var(xdg) {
        return PathBuf::from(p).join("hutch");
    }
    let mut home = PathBuf::from(var("HOME").unwrap_or_else(|| OsString::from("/tmp")));
    home.extend(fallback);
    home.join("hutch")
}

/// The user's hutch configuration directory.
pub fn config_dir() -> PathBuf {
    dir_from("HUTCH_CONFIG_DIR", "XDG_CONFIG_HOME", &[".config"])
}

/// The user's hutch state directory (logs, CAs).
pub fn state_dir() -> PathBuf {
    dir_from("HUTCH_STATE_DIR", "XDG_STATE_HOME", &[".local", "state"])
}

/// The policy store.
pub fn policy_file() -> PathBuf {
    config_dir().join("policy.toml")
}

/// The secrets store (mode 0600).
pub fn secrets_file() -> PathBuf {
    config_dir().join("secrets.toml")
}

/// The directory of per-sandbox decision logs (`NAME.jsonl`).
pub fn log_dir() -> PathBuf {
    state_dir().join("proxy-log")
}

/// One sandbox's decision log (JSON lines), for `Config::log_file`.
pub fn log_file(sandbox: &str) -> PathBuf {
    log_dir().join(format!("{}.jsonl", file_safe(sandbox)))
}

/// One sandbox's TLS CA directory, for `Config::ca_dir`.
pub fn ca_dir(sandbox: &str) -> PathBuf {
    state_dir().join("ca").join(file_safe(sandbox))
}

/// A sandbox name as a file name: `/`, NUL and leading dots replaced.
fn file_safe(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    match s.as_str() {
        "" => "_".into(),
        _ if s.starts_with('.') => format!("_{s}"),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_names_become_safe_file_names() {
        assert_eq!(file_safe("web"), "web");
        assert_eq!(file_safe("../x/y"), "_.._x_y");
        assert_eq!(file_safe(""), "_");
        assert!(log_file("a/b").ends_with("proxy-log/a_b.jsonl"));
    }
}
