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

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::policy::{Policy, PolicyError, Preset};
use crate::rule::{Rule, RuleError};
use crate::scope::Scope;

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
    #[error("cannot write policy file {}: {source}", file.display())]
    Write {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{rule} is not in the {scope} rules")]
    NotFound { rule: String, scope: Scope },
}

/// Which list of a rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    Allow,
    Deny,
}

impl List {
    pub fn name(self) -> &'static str {
        match self {
            List::Allow => "allow",
            List::Deny => "deny",
        }
    }
}

#[derive(Serialize)]
struct OutRules<'a> {
    allow: Vec<&'a str>,
    deny: Vec<&'a str>,
}

#[derive(Serialize)]
struct OutStore<'a> {
    default: &'a str,
    global: OutRules<'a>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    sandbox: BTreeMap<&'a str, OutRules<'a>>,
}

fn same(a: &Rule, b: &Rule) -> bool {
    a.pattern() == b.pattern() && a.port() == b.port()
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

impl RuleSet {
    fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    fn list_mut(&mut self, list: List) -> &mut Vec<Rule> {
        match list {
            List::Allow => &mut self.allow,
            List::Deny => &mut self.deny,
        }
    }

    fn out(&self) -> OutRules<'_> {
        OutRules {
            allow: self.allow.iter().map(Rule::text).collect(),
            deny: self.deny.iter().map(Rule::text).collect(),
        }
    }
}

impl Store {
    /// The rules of one scope (empty if it has none).
    pub fn rules(&self, scope: &Scope) -> RuleSet {
        match scope {
            Scope::Global => self.global.clone(),
            Scope::Sandbox(n) => self.sandboxes.get(n).cloned().unwrap_or_default(),
        }
    }

    fn rules_mut(&mut self, scope: &Scope) -> &mut RuleSet {
        match scope {
            Scope::Global => &mut self.global,
            Scope::Sandbox(n) => self.sandboxes.entry(n.clone()).or_default(),
        }
    }

    fn tidy(&mut self) {
        self.sandboxes.retain(|_, r| !r.is_empty());
    }

    /// Adds rules to one list of a scope; a rule already there is kept
    /// once, and the same rule in the other list is taken out (so `allow`
    /// after `deny` does what it says). Returns the rules taken out.
    pub fn add(&mut self, scope: &Scope, list: List, rules: Vec<Rule>) -> Vec<Rule> {
        let other = match list {
            List::Allow => List::Deny,
            List::Deny => List::Allow,
        };
        let set = self.rules_mut(scope);
        let mut moved = Vec::new();
        for rule in rules {
            let o = set.list_mut(other);
            if let Some(i) = o.iter().position(|r| same(r, &rule)) {
                moved.push(o.remove(i));
            }
            let l = set.list_mut(list);
            if !l.iter().any(|r| same(r, &rule)) {
                l.push(rule);
            }
        }
        moved
    }

    /// Removes rules (from allow and deny) of a scope; nothing changes
    /// unless every rule is there.
    pub fn remove(&mut self, scope: &Scope, rules: &[Rule]) -> Result<(), StoreError> {
        let set = self.rules(scope);
        for rule in rules {
            if !set.allow.iter().chain(&set.deny).any(|r| same(r, rule)) {
                return Err(StoreError::NotFound {
                    rule: rule.text().into(),
                    scope: scope.clone(),
                });
            }
        }
        let set = self.rules_mut(scope);
        for rule in rules {
            set.allow.retain(|r| !same(r, rule));
            set.deny.retain(|r| !same(r, rule));
        }
        self.tidy();
        Ok(())
    }

    /// Clears one scope's rules, or (with `None`) the whole store back to
    /// its defaults.
    pub fn reset(&mut self, scope: Option<&Scope>) {
        match scope {
            None => *self = Store::default(),
            Some(s) => *self.rules_mut(s) = RuleSet::default(),
        }
        self.tidy();
    }

    /// The store as TOML.
    pub fn render(&self) -> String {
        let out = OutStore {
            default: self.default.name(),
            global: self.global.out(),
            sandbox: self
                .sandboxes
                .iter()
                .map(|(n, r)| (n.as_str(), r.out()))
                .collect(),
        };
        let body = toml::to_string(&out).unwrap_or_default();
        format!("# hutch network policy: edited by `hutch policy`; see proxy/README.md.\n{body}")
    }

    /// Writes the store atomically (creating its directory).
    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        let err = |source| StoreError::Write {
            file: path.into(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, self.render()).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
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
    fn edits_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hutch/policy.toml");
        let rule = |s: &str| s.parse::<Rule>().unwrap();
        let web = Scope::Sandbox("web app".into());
        let mut store = Store::load(&path).unwrap();
        store.add(
            &Scope::Global,
            List::Allow,
            vec![rule("**.example.com"), rule("10.0.0.0/8:5432")],
        );
        store.add(&Scope::Global, List::Allow, vec![rule("**.Example.com")]);
        store.add(&web, List::Deny, vec![rule("evil.test")]);
        let moved = store.add(&web, List::Allow, vec![rule("evil.test")]);
        assert_eq!(moved, vec![rule("evil.test")]);
        store.default = Preset::LockedDown;
        store.save(&path).unwrap();
        let loaded = Store::load(&path).unwrap();
        assert_eq!(loaded, store);
        assert_eq!(loaded.global.allow.len(), 2);
        assert_eq!(loaded.rules(&web).allow, vec![rule("evil.test")]);

        let mut s = loaded;
        let err = s
            .remove(&web, &[rule("evil.test"), rule("nope.test")])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "nope.test is not in the sandbox web app rules"
        );
        assert_eq!(s.rules(&web).allow.len(), 1, "nothing removed on error");
        s.remove(&web, &[rule("evil.test")]).unwrap();
        assert!(!s.sandboxes.contains_key("web app"));
        s.reset(Some(&Scope::Global));
        assert!(s.global.allow.is_empty());
        assert_eq!(s.default, Preset::LockedDown);
        s.reset(None);
        assert_eq!(s, Store::default());
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
