//! The secrets store: `secrets.toml` in the user's config directory, mode
//! 0600, with global and per-sandbox secrets by service.
//!
//! ```toml
//! [global]
//! anthropic = "sk-ant-..."
//!
//! [sandbox.myproject]
//! github = "ghp_..."
//! "api.example.com:X-Api-Key" = "..."
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::credential::{check_secret, CredentialError, Credentials, Service};
use crate::scope::Scope;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read secrets file {}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write secrets file {}: {source}", file.display())]
    Write {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("secrets file {} is readable by other users (mode {mode:04o}); run: chmod 600 {}", file.display(), file.display())]
    Exposed { file: PathBuf, mode: u32 },
    #[error("{}:{line}: {message}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: [{scope}] {source}", file.display())]
    Bad {
        file: PathBuf,
        scope: String,
        source: CredentialError,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    global: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    sandbox: BTreeMap<String, BTreeMap<String, String>>,
}

/// The parsed store. `Debug` shows services only, never values.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct Secrets {
    entries: BTreeMap<Scope, BTreeMap<Service, String>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.list().into_iter().map(|(s, v)| (s, v.to_string())))
            .finish()
    }
}

impl Secrets {
    /// Reads the store; a missing file is empty. A file that group or
    /// others can read is refused.
    pub fn load(path: &Path) -> Result<Secrets, SecretsError> {
        let read_err = |source| SecretsError::Read {
            file: path.into(),
            source,
        };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Secrets::default()),
            Err(e) => return Err(read_err(e)),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretsError::Exposed {
                file: path.into(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Secrets::parse(&text, path)
    }

    /// Parses the store's text; `file` is for messages only.
    pub fn parse(text: &str, file: &Path) -> Result<Secrets, SecretsError> {
        let raw: Raw = toml::from_str(text).map_err(|e| SecretsError::Syntax {
            file: file.into(),
            line: e.span().map_or(1, |s| {
                text.get(..s.start).unwrap_or(text).matches('\n').count() + 1
            }),
            message: e.message().trim().to_string(),
        })?;
        let mut secrets = Secrets::default();
        let tables = std::iter::once((Scope::Global, raw.global))
            .chain(raw.sandbox.into_iter().map(|(n, t)| (Scope::Sandbox(n), t)));
        for (scope, table) in tables {
            for (key, value) in table {
                let bad = |source| SecretsError::Bad {
                    file: file.into(),
                    scope: scope.to_string(),
                    source,
                };
                let service: Service = key.parse().map_err(bad)?;
                let value = check_secret(&service, &value).map_err(bad)?;
                secrets.set(scope.clone(), service, value);
            }
        }
        Ok(secrets)
    }

    /// Writes the store atomically with mode 0600 (its directory 0700 when created).
    pub fn save(&self, path: &Path) -> Result<(), SecretsError> {
        let write_err = |source| SecretsError::Write {
            file: path.into(),
            source,
        };
        let mut raw = Raw::default();
        for (scope, table) in &self.entries {
            let t: BTreeMap<String, String> = table
                .iter()
                .map(|(s, v)| (s.to_string(), v.clone()))
                .collect();
            match scope {
                Scope::Global => raw.global = t,
                Scope::Sandbox(n) => {
                    raw.sandbox.insert(n.clone(), t);
                }
            }
        }
        let body = toml::to_string(&raw).map_err(|e| write_err(std::io::Error::other(e)))?;
        let text = format!("# hutch secrets: written by `hutch secret`; keep mode 0600.\n{body}");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(write_err)?;
        }
        let tmp = path.with_extension("toml.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_err)?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(write_err)?;
        std::fs::rename(&tmp, path).map_err(write_err)
    }

    /// Sets (or replaces) one secret.
    pub fn set(&mut self, scope: Scope, service: Service, value: String) {
        self.entries
            .entry(scope)
            .or_default()
            .insert(service, value);
    }

    /// Removes one secret; false if there was none.
    pub fn remove(&mut self, scope: &Scope, service: &Service) -> bool {
        let Some(table) = self.entries.get_mut(scope) else {
            return false;
        };
        let removed = table.remove(service).is_some();
        if table.is_empty() {
            self.entries.remove(scope);
        }
        removed
    }

    /// Every (scope, service) pair, without values.
    pub fn list(&self) -> Vec<(Scope, &Service)> {
        self.entries
            .iter()
            .flat_map(|(scope, t)| t.keys().map(move |s| (scope.clone(), s)))
            .collect()
    }

    /// A sandbox's credentials: the global secrets, overridden per service
    /// by the sandbox's own.
    pub fn credentials_for(&self, sandbox: &str) -> Credentials {
        let mut merged: BTreeMap<&Service, &str> = BTreeMap::new();
        let own = Scope::Sandbox(sandbox.into());
        for scope in [&Scope::Global, &own] {
            for (s, v) in self.entries.get(scope).into_iter().flatten() {
                merged.insert(s, v);
            }
        }
        Credentials::new(merged.into_iter().map(|(s, v)| (s.clone(), v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::Host;

    #[test]
    fn round_trip_with_mode_0600_and_sandbox_override() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf/secrets.toml");
        let mut s = Secrets::default();
        s.set(Scope::Global, Service::Anthropic, "sk-global".into());
        s.set(
            Scope::Sandbox("web".into()),
            Service::Anthropic,
            "sk-web".into(),
        );
        let custom: Service = "api.example.com:X-Key".parse().unwrap();
        s.set(Scope::Sandbox("web".into()), custom.clone(), "k".into());
        s.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = Secrets::load(&path).unwrap();
        assert_eq!(loaded, s);

        let host = Host::parse("api.anthropic.com").unwrap();
        let web = loaded.credentials_for("web");
        assert_eq!(web.for_host(&host).unwrap().header_value(), "sk-web");
        let other = loaded.credentials_for("other");
        assert_eq!(other.for_host(&host).unwrap().header_value(), "sk-global");
        assert!(other
            .for_host(&Host::parse("api.example.com").unwrap())
            .is_none());

        let mut s = loaded;
        assert!(s.remove(&Scope::Sandbox("web".into()), &custom));
        assert!(!s.remove(&Scope::Sandbox("web".into()), &custom));
        assert_eq!(s.list().len(), 2);
        assert!(!format!("{s:?}").contains("sk-"), "{s:?}");
    }

    #[test]
    fn a_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.toml");
        std::fs::write(&path, "[global]\nanthropic = \"x\"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Secrets::load(&path).unwrap_err().to_string();
        assert!(err.contains("readable by other users (mode 0644)"), "{err}");
        assert!(err.contains("secrets.toml"), "{err}");
    }

    #[test]
    fn bad_entries_name_the_file() {
        let p = Path::new("s.toml");
        let err = |t: &str| Secrets::parse(t, p).unwrap_err().to_string();
        assert!(err("[global]\ngitlab = \"x\"\n").starts_with("s.toml: [global] unknown service"));
        assert!(err("[sandbox.w]\nopenai = \"\"\n")
            .contains("[sandbox w] the secret for openai is empty"));
        assert!(err("[global]\nanthropic = 1\n").starts_with("s.toml:2:"));
        assert!(err("[globl]\n").starts_with("s.toml:1:"));
    }
}
