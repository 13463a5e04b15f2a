//! What init was asked to do: the self-test flag on the kernel command line,
//! or the run spec in the initramfs.

use std::fmt;
use std::io;

use hutch_proto::{RunSpec, SpecError, SELFTEST_ARG};

/// Whether the kernel command line holds [`SELFTEST_ARG`] as one word.
pub fn is_selftest(cmdline: &[u8]) -> bool {
    cmdline
        .split(|b| b.is_ascii_whitespace())
        .any(|word| word == SELFTEST_ARG.as_bytes())
}

/// Why the run spec could not be loaded.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read { path: String, err: io::Error },
    /// The file is not a valid spec.
    Decode { path: String, err: SpecError },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, err } => write!(f, "read {path}: {err}"),
            Self::Decode { path, err } => write!(f, "{path}: {err}"),
        }
    }
}

/// Reads and decodes the run spec at `path`.
pub fn load_spec(path: &str) -> Result<RunSpec, ConfigError> {
    let bytes = std::fs::read(path).map_err(|err| ConfigError::Read {
        path: path.into(),
        err,
    })?;
    RunSpec::decode(&bytes).map_err(|err| ConfigError::Decode {
        path: path.into(),
        err,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selftest_is_a_whole_word() {
        assert!(is_selftest(b"console=ttyS0 hutch.selftest=1 panic=-1\n"));
        assert!(is_selftest(b"hutch.selftest=1"));
        assert!(!is_selftest(b"console=ttyS0 hutch.selftest=10\n"));
        assert!(!is_selftest(b"xhutch.selftest=1"));
        assert!(!is_selftest(b""));
    }

    #[test]
    fn load_errors_name_the_file() {
        let e = load_spec("/nonexistent/hutch/spec").unwrap_err();
        assert!(
            e.to_string().starts_with("read /nonexistent/hutch/spec: "),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("hutch-init-spec-{}", std::process::id()));
        std::fs::write(&dir, b"garbage").unwrap();
        let e = load_spec(dir.to_str().unwrap()).unwrap_err();
        let _ = std::fs::remove_file(&dir);
        assert!(e.to_string().contains("bad magic"), "{e}");
    }
}
