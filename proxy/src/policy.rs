//! Effective policies: allow and deny rule lists, the three presets, and
//! the decision for one destination (deny beats allow).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::cidr::Cidr;
use crate::rule::{Host, Rule, RuleError};

/// The rules of the `balanced` preset, one per line (see the file's header).
pub const BALANCED_RULES: &str = include_str!("../policies/balanced.txt");

/// A bad line in a rule list (a preset file or a `--policy` file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}:{line}: {source}")]
    BadRule {
        file: String,
        line: usize,
        source: RuleError,
    },
    #[error("unknown policy {name:?} (expected open, balanced or locked-down)")]
    UnknownPreset { name: String },
}

/// The starting point of a sandbox's policy, before the user's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preset {
    /// Every host name and every public address.
    Open,
    /// Common developer services only (`policies/balanced.txt`).
    #[default]
    Balanced,
    /// Nothing, until the user allows it.
    LockedDown,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Open => "open",
            Preset::Balanced => "balanced",
            Preset::LockedDown => "locked-down",
        }
    }

    /// The preset's allow rules.
    pub fn rules(self) -> Result<Vec<Rule>, PolicyError> {
        match self {
            Preset::Open => parse_rule_list("**\n0.0.0.0/0\n::/0\n", "<open preset>"),
            Preset::Balanced => parse_rule_list(BALANCED_RULES, "proxy/policies/balanced.txt"),
            Preset::LockedDown => Ok(Vec::new()),
        }
    }
}

impl FromStr for Preset {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Preset, PolicyError> {
        match s {
            "open" => Ok(Preset::Open),
            "balanced" => Ok(Preset::Balanced),
            "locked-down" | "locked_down" | "lockeddown" => Ok(Preset::LockedDown),
            _ => Err(PolicyError::UnknownPreset { name: s.into() }),
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses one rule per line; blank lines and `#` comments are skipped.
pub fn parse_rule_list(text: &str, file: &str) -> Result<Vec<Rule>, PolicyError> {
    let mut rules = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        rules.push(line.parse().map_err(|source| PolicyError::BadRule {
            file: file.into(),
            line: i + 1,
            source,
        })?);
    }
    Ok(rules)
}

/// The outcome of checking a destination against the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The rule that decided, or `None` when no rule matched (a denial).
    pub rule: Option<String>,
}

impl Decision {
    /// How the decision reads in a 403 body and in the log.
    pub fn describe(&self) -> String {
        match (&self.rule, self.allowed) {
            (Some(r), true) => format!("allowed by rule {r}"),
            (Some(r), false) => format!("denied by rule {r}"),
            (None, _) => "no rule allows it".into(),
        }
    }
}

/// A sandbox's effective rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
}

impl Policy {
    /// A policy from a preset plus extra allow and deny rules.
    pub fn from_preset(preset: Preset) -> Result<Policy, PolicyError> {
        Ok(Policy {
            allow: preset.rules()?,
            deny: Vec::new(),
        })
    }

    /// A policy from rule strings (for tests and callers with literal rules).
    pub fn from_rules(allow: &[&str], deny: &[&str]) -> Result<Policy, RuleError> {
        let parse = |rs: &[&str]| {
            rs.iter()
                .map(|r| r.parse())
                .collect::<Result<Vec<Rule>, _>>()
        };
        Ok(Policy {
            allow: parse(allow)?,
            deny: parse(deny)?,
        })
    }

    /// Deny rules first, then allow rules; nothing matching is a denial.
    pub fn decide(&self, host: &Host, port: u16) -> Decision {
        if let Some(r) = self.deny.iter().find(|r| r.matches(host, port)) {
            return Decision {
                allowed: false,
                rule: Some(r.to_string()),
            };
        }
        match self.allow.iter().find(|r| r.matches(host, port)) {
            Some(r) => Decision {
                allowed: true,
                rule: Some(r.to_string()),
            },
            None => Decision {
                allowed: false,
                rule: None,
            },
        }
    }

    /// A deny rule for a network that covers a resolved address.
    pub fn deny_for_addr(&self, ip: IpAddr, port: u16) -> Option<&Rule> {
        self.deny.iter().find(|r| r.matches_addr(ip, port))
    }

    /// An allow rule that explicitly opens `ip` inside the special-purpose
    /// range `range`: the rule's network must cover `ip` and lie entirely
    /// inside `range`, so `0.0.0.0/0` never opens `10.0.0.1`, but
    /// `10.0.0.0/8` or `127.0.0.1/32` do.
    pub fn exemption(&self, ip: IpAddr, port: u16, range: &Cidr) -> Option<&Rule> {
        self.allow.iter().find(|r| {
            r.matches_addr(ip, port)
                && matches!(r.pattern(), crate::rule::HostPattern::Net(net) if range.contains_net(net))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> Host {
        Host::parse(s).unwrap()
    }

    #[test]
    fn deny_beats_allow() {
        let p = Policy::from_rules(
            &["**.example.com", "example.com", "10.0.0.0/8", "**"],
            &["secret.example.com", "10.9.0.0/16", "*.bad.example.com:443"],
        )
        .unwrap();
        let cases = [
            ("www.example.com", 443, true, Some("**.example.com")),
            ("secret.example.com", 443, false, Some("secret.example.com")),
            (
                "x.bad.example.com",
                443,
                false,
                Some("*.bad.example.com:443"),
            ),
            ("x.bad.example.com", 80, true, Some("**.example.com")),
            ("10.1.0.1", 80, true, Some("10.0.0.0/8")),
            ("10.9.0.1", 80, false, Some("10.9.0.0/16")),
            ("other.test", 80, true, Some("**")),
            ("192.0.2.1", 80, false, None),
        ];
        for (h, port, allowed, rule) in cases {
            let d = p.decide(&host(h), port);
            assert_eq!(d.allowed, allowed, "{h}:{port}");
            assert_eq!(d.rule.as_deref(), rule, "{h}:{port}");
        }
    }

    #[test]
    fn presets() {
        let open = Policy::from_preset(Preset::Open).unwrap();
        assert!(open.decide(&host("docs.microsoft.com"), 443).allowed);
        assert!(open.decide(&host("1.1.1.1"), 443).allowed);

        let balanced = Policy::from_preset(Preset::Balanced).unwrap();
        assert_eq!(balanced.allow.len(), 144, "the seed table's 144 rules");
        let cases = [
            ("api.anthropic.com", 443, true),
            ("api.anthropic.com", 80, false),
            ("crates.io", 443, true),
            ("static.crates.io", 443, true),
            ("api.github.com", 443, true),
            ("objects.githubusercontent.com", 443, true),
            ("github.com", 443, true),
            ("ports.ubuntu.com", 80, true),
            ("deb.debian.org", 443, true),
            ("learn.microsoft.com", 443, false),
            ("example.com", 443, false),
            ("1.1.1.1", 443, false),
        ];
        for (h, port, allowed) in cases {
            assert_eq!(
                balanced.decide(&host(h), port).allowed,
                allowed,
                "{h}:{port}"
            );
        }

        let locked = Policy::from_preset(Preset::LockedDown).unwrap();
        assert!(!locked.decide(&host("crates.io"), 443).allowed);
        assert_eq!(
            locked.decide(&host("crates.io"), 443).describe(),
            "no rule allows it"
        );
    }

    #[test]
    fn preset_names() {
        for p in [Preset::Open, Preset::Balanced, Preset::LockedDown] {
            assert_eq!(p.name().parse::<Preset>().unwrap(), p);
        }
        assert!("strict"
            .parse::<Preset>()
            .unwrap_err()
            .to_string()
            .contains("strict"));
    }

    #[test]
    fn rule_list_errors_name_file_and_line() {
        let err = parse_rule_list("# c\nexample.com\n\nbad..name # x\n", "rules.txt").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("rules.txt:4: bad rule \"bad..name\""),
            "{msg}"
        );
    }

    #[test]
    fn exemptions_need_a_network_inside_the_range() {
        let ten: Cidr = Cidr::new("10.0.0.0".parse().unwrap(), 8).unwrap();
        let p = Policy::from_rules(&["0.0.0.0/0", "10.1.0.0/16:5432"], &[]).unwrap();
        let ip = "10.1.2.3".parse().unwrap();
        assert_eq!(
            p.exemption(ip, 5432, &ten).map(|r| r.text()),
            Some("10.1.0.0/16:5432")
        );
        assert!(p.exemption(ip, 80, &ten).is_none());
        assert!(p
            .exemption("10.2.0.1".parse().unwrap(), 5432, &ten)
            .is_none());
    }
}
