//! The policy store: a TOML file with the default preset, global rules and
//! per-sandbox rules.
//!
//! ```toml
//! default = "balanced"          # open | balanced | locked-down
//!
//! [global]
//! allow = ["**.example.com", "10.20.0.0/16:5432"]
//! deny = ["evil.example.com"]
//!
//! [sandbox.myproject]
//! allow = ["host.hutch.internal:8080"]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::policy::{Policy, PolicyError, Preset};
use crate::rule::{Rule, RuleError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read policy file {}: {source}", file.display())]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}:{line}: {source}", file.display())]
    BadRule {
        file: PathBuf,
        line: usize,
        source: RuleError,
    },
    #[error("{}:{line}: unknown default {name:?} (expected open, balanced or locked-down)", file.display())]
    UnknownPreset {
        file: PathBuf,
        line: usize,
        name: String,
    },
    #[error("built-in preset: {0}")]
    Preset(#[from] PolicyError),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRules {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    default: Option<Spanned<String>>,
    #[serde(default)]
    global: RawRules,
    #[serde(default)]
    sandbox: BTreeMap<String, RawRules>,
}

/// Allow and deny rules from one table of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
}

/// A parsed policy store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Store {
    pub default: Preset,
    pub global: RuleSet,
    pub sandboxes: BTreeMap<String, RuleSet>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

impl Store {
    /// Reads the store; a missing file is an empty store (`balanced`, no rules).
    pub fn load(path: &Path) -> Result<Store, StoreError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Store::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Store::default()),
            Err(source) => Err(StoreError::Io {
                file: path.into(),
                source,
            }),
        }
    }

    /// Parses the store's text; `file` is only used in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Store, StoreError> {
        let raw: RawStore = toml::from_str(text).map_err(|e| StoreError::Syntax {
            file: file.into(),
            line: e.span().map_or(1, |s| line_of(text, s.start)),
            message: e.message().trim().to_string(),
        })?;
        let rules = |raw: RawRules| -> Result<RuleSet, StoreError> {
            let parse = |list: Vec<Spanned<String>>| {
                list.into_iter()
                    .map(|s| {
                        let line = line_of(text, s.span().start);
                        s.into_inner()
                            .parse::<Rule>()
                            .map_err(|source| StoreError::BadRule {
                                file: file.into(),
                                line,
                                source,
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            Ok(RuleSet {
                allow: parse(raw.allow)?,
                deny: parse(raw.deny)?,
            })
        };
        let default = match raw.default {
            None => Preset::default(),
            Some(s) => {
                let line = line_of(text, s.span().start);
                s.get_ref().parse().map_err(|_| StoreError::UnknownPreset {
                    file: file.into(),
                    line,
                    name: s.get_ref().clone(),
                })?
            }
        };
        Ok(Store {
            default,
            global: rules(raw.global)?,
            sandboxes: raw
                .sandbox
                .into_iter()
                .map(|(name, r)| Ok((name, rules(r)?)))
                .collect::<Result<_, StoreError>>()?,
        })
    }

    /// The effective policy of one sandbox: the preset (or `preset`, a
    /// one-run override), then global rules, then the sandbox's rules.
    pub fn policy_for(&self, sandbox: &str, preset: Option<Preset>) -> Result<Policy, StoreError> {
        let mut policy = Policy::from_preset(preset.unwrap_or(self.default))?;
        let own = self.sandboxes.get(sandbox);
        for set in std::iter::once(&self.global).chain(own) {
            policy.allow.extend(set.allow.iter().cloned());
            policy.deny.extend(set.deny.iter().cloned());
        }
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::Host;

    const GOOD: &str = r#"
default = "locked-down"

[global]
allow = ["**.example.com", "10.20.0.0/16:5432"]
deny = ["evil.example.com"]

[sandbox.web]
allow = [
    "host.hutch.internal:8080",
    "crates.io:443",
]
"#;

    #[test]
    fn parses_global_and_sandbox_rules() {
        let store = Store::parse(GOOD, Path::new("policy.toml")).unwrap();
        assert_eq!(store.default, Preset::LockedDown);
        assert_eq!(store.global.allow.len(), 2);
        assert_eq!(store.sandboxes["web"].allow.len(), 2);

        let web = store.policy_for("web", None).unwrap();
        let other = store.policy_for("other", None).unwrap();
        let host = |s| Host::parse(s).unwrap();
        assert!(web.decide(&host("crates.io"), 443).allowed);
        assert!(!other.decide(&host("crates.io"), 443).allowed);
        assert!(other.decide(&host("www.example.com"), 443).allowed);
        assert!(!web.decide(&host("evil.example.com"), 443).allowed);
        assert!(web.decide(&host("host.hutch.internal"), 8080).allowed);

        let balanced = store.policy_for("other", Some(Preset::Balanced)).unwrap();
        assert!(balanced.decide(&host("crates.io"), 443).allowed);
    }

    #[test]
    fn missing_file_is_the_default_store() {
        let store = Store::load(Path::new("/nonexistent/hutch/policy.toml")).unwrap();
        assert_eq!(store, Store::default());
        assert_eq!(store.default, Preset::Balanced);
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases = [
            (
                "[global]\nallow = [\n  \"ok.example.com\",\n  \"bad..example.com\",\n]\n",
                "p.toml:4: bad rule \"bad..example.com\": empty label",
            ),
            (
                "[sandbox.x]\ndeny = [\"10.0.0.1/8\"]\n",
                "p.toml:2: bad rule \"10.0.0.1/8\": 10.0.0.1/8 has host bits set",
            ),
            (
                "\n\ndefault = \"strict\"\n",
                "p.toml:3: unknown default \"strict\"",
            ),
            ("[global]\nallow = [\"a.com\"\n", "p.toml:"),
            ("[global]\nalow = []\n", "p.toml:2: unknown field `alow`"),
            ("[global]\nallow = [1]\n", "p.toml:2:"),
        ];
        for (text, want) in cases {
            let err = Store::parse(text, Path::new("p.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(want),
                "{text:?}: got {err:?}, want {want:?}"
            );
        }
    }
}
