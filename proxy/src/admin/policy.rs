//! `hutch policy ls | allow | deny | rm | reset | set-default`.

use std::path::Path;

use super::{split_scope, AdminError};
use crate::policy::Preset;
use crate::rule::Rule;
use crate::scope::Scope;
use crate::store::{List, RuleSet, Store};

fn load(path: &Path) -> Result<Store, AdminError> {
    Store::load(path).map_err(AdminError::failed)
}

fn save(store: &Store, path: &Path) -> Result<(), AdminError> {
    store.save(path).map_err(AdminError::failed)
}

/// Parses rule arguments; a bad one is a usage error naming it and why.
fn parse_rules(args: &[String]) -> Result<Vec<Rule>, AdminError> {
    if args.is_empty() {
        return Err(AdminError::Usage("no rules given".into()));
    }
    args.iter()
        .map(|a| {
            a.parse::<Rule>()
                .map_err(|e| AdminError::Usage(e.to_string()))
        })
        .collect()
}

fn texts(rules: &[Rule]) -> String {
    rules.iter().map(Rule::text).collect::<Vec<_>>().join(" ")
}

fn show(out: &mut String, title: &str, set: &RuleSet) {
    out.push_str(&format!("{title}\n"));
    if set.allow.is_empty() && set.deny.is_empty() {
        out.push_str("  (no rules)\n");
    }
    for r in &set.allow {
        out.push_str(&format!("  allow {}\n", r.text()));
    }
    for r in &set.deny {
        out.push_str(&format!("  deny  {}\n", r.text()));
    }
}

/// `policy ls [NAME]`: the default preset, the global rules, and every
/// sandbox's rules (or NAME's only).
pub fn ls(path: &Path, name: Option<&str>) -> Result<String, AdminError> {
    let store = load(path)?;
    let mut out = format!("# {}\ndefault: {}\n", path.display(), store.default);
    show(&mut out, "global:", &store.global);
    match name {
        Some(n) => show(
            &mut out,
            &format!("sandbox {n}:"),
            &store.rules(&Scope::Sandbox(n.into())),
        ),
        None => {
            for (n, set) in &store.sandboxes {
                show(&mut out, &format!("sandbox {n}:"), set);
            }
        }
    }
    Ok(out)
}

/// `policy allow|deny [-g|NAME] RULES...`.
pub fn add(path: &Path, list: List, global: bool, args: &[String]) -> Result<String, AdminError> {
    let (scope, rest) = split_scope(global, args, "RULES")?;
    let rules = parse_rules(&rest)?;
    let mut store = load(path)?;
    let added = texts(&rules);
    let moved = store.add(&scope, list, rules);
    save(&store, path)?;
    let mut out = format!("{scope} {}: {added}\n", list.name());
    if !moved.is_empty() {
        let other = if list == List::Allow { "deny" } else { "allow" };
        out.push_str(&format!(
            "(removed from {scope} {other}: {})\n",
            texts(&moved)
        ));
    }
    Ok(out)
}

/// `policy rm [-g|NAME] RULES...`.
pub fn rm(path: &Path, global: bool, args: &[String]) -> Result<String, AdminError> {
    let (scope, rest) = split_scope(global, args, "RULES")?;
    let rules = parse_rules(&rest)?;
    let mut store = load(path)?;
    store.remove(&scope, &rules).map_err(AdminError::failed)?;
    save(&store, path)?;
    Ok(format!("{scope} removed: {}\n", texts(&rules)))
}

/// `policy reset [-g|NAME]`: one scope's rules, or everything (rules and
/// default) when neither is given.
pub fn reset(path: &Path, global: bool, name: Option<&str>) -> Result<String, AdminError> {
    let scope = match (global, name) {
        (true, Some(_)) => {
            return Err(AdminError::Usage(
                "give -g or a sandbox NAME, not both".into(),
            ))
        }
        (true, None) => Some(Scope::Global),
        (false, Some(n)) => Some(Scope::Sandbox(n.into())),
        (false, None) => None,
    };
    let mut store = load(path)?;
    store.reset(scope.as_ref());
    save(&store, path)?;
    Ok(match scope {
        Some(s) => format!("{s} rules cleared\n"),
        None => format!("policy reset: default {}, no rules\n", store.default),
    })
}

/// `policy set-default open|balanced|locked-down`.
pub fn set_default(path: &Path, preset: &str) -> Result<String, AdminError> {
    let preset: Preset = preset
        .parse()
        .map_err(|e| AdminError::Usage(format!("{e}")))?;
    let mut store = load(path)?;
    store.default = preset;
    save(&store, path)?;
    Ok(format!("default policy: {preset}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn allow_deny_rm_reset_and_default() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.toml");
        assert_eq!(
            add(
                &p,
                List::Allow,
                true,
                &v(&["**.example.com", "10.0.0.0/8:5432"])
            )
            .unwrap(),
            "global allow: **.example.com 10.0.0.0/8:5432\n"
        );
        add(&p, List::Deny, false, &v(&["web", "evil.example.com"])).unwrap();
        let out = add(&p, List::Allow, false, &v(&["web", "evil.example.com"])).unwrap();
        assert!(
            out.contains("(removed from sandbox web deny: evil.example.com)"),
            "{out}"
        );
        assert_eq!(
            set_default(&p, "locked-down").unwrap(),
            "default policy: locked-down\n"
        );
        let listing = ls(&p, None).unwrap();
        assert!(
            listing.contains("default: locked-down\nglobal:\n  allow **.example.com\n"),
            "{listing}"
        );
        assert!(
            listing.contains("sandbox web:\n  allow evil.example.com\n"),
            "{listing}"
        );
        let store = Store::load(&p).unwrap();
        let web = store.policy_for("web", None).unwrap();
        assert!(
            web.decide(&crate::rule::Host::parse("evil.example.com").unwrap(), 443)
                .allowed
        );

        rm(&p, false, &v(&["web", "evil.example.com"])).unwrap();
        assert!(ls(&p, Some("web"))
            .unwrap()
            .contains("sandbox web:\n  (no rules)\n"));
        let err = rm(&p, true, &v(&["nope.test"])).unwrap_err();
        assert_eq!(
            (err.exit_code(), err.to_string().as_str()),
            (125, "nope.test is not in the global rules")
        );
        reset(&p, true, None).unwrap();
        assert!(Store::load(&p).unwrap().global.allow.is_empty());
        reset(&p, false, None).unwrap();
        assert_eq!(Store::load(&p).unwrap(), Store::default());
    }

    #[test]
    fn bad_input_is_a_usage_error_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.toml");
        let err = add(&p, List::Allow, true, &v(&["ok.com", "bad..example.com"])).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string()
                .contains("bad rule \"bad..example.com\": empty label"),
            "{err}"
        );
        assert!(!p.exists(), "nothing written");
        assert_eq!(set_default(&p, "strict").unwrap_err().exit_code(), 2);
        assert_eq!(add(&p, List::Deny, true, &[]).unwrap_err().exit_code(), 2);
        assert_eq!(reset(&p, true, Some("web")).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn a_broken_store_is_reported_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.toml");
        std::fs::write(&p, "[global]\nallow = [\"bad..x\"]\n").unwrap();
        let err = ls(&p, None).unwrap_err();
        assert_eq!(err.exit_code(), 125);
        assert!(err.to_string().contains("policy.toml:2: bad rule"), "{err}");
    }
}
