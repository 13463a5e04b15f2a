//! What `hutch policy` and `hutch secret` do, apart from argument parsing:
//! each function takes the file it works on and returns the text to print,
//! so the command-line layer stays thin and this logic is unit-tested.

pub mod logview;
pub mod policy;
pub mod secret;

use crate::scope::Scope;

/// A failed command: bad usage (exit 2) or anything else (exit 125).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

impl AdminError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            AdminError::Usage(_) => 2,
            AdminError::Failed(_) => 125,
        }
    }

    pub(crate) fn failed(e: impl std::fmt::Display) -> AdminError {
        AdminError::Failed(e.to_string())
    }
}

/// `[-g | NAME] REST...`: with `-g` every argument is in REST; otherwise
/// the first names the sandbox. `what` names REST in the usage message.
pub fn split_scope(
    global: bool,
    args: &[String],
    what: &str,
) -> Result<(Scope, Vec<String>), AdminError> {
    if global {
        return Ok((Scope::Global, args.to_vec()));
    }
    match args.split_first() {
        Some((name, rest)) if !rest.is_empty() => {
            if name.is_empty() {
                return Err(AdminError::Usage("the sandbox name is empty".into()));
            }
            Ok((Scope::Sandbox(name.clone()), rest.to_vec()))
        }
        _ => Err(AdminError::Usage(format!(
            "expected -g (every sandbox) or a sandbox NAME, then {what}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scope_comes_from_g_or_the_first_argument() {
        assert_eq!(
            split_scope(true, &v(&["a.com"]), "RULES").unwrap(),
            (Scope::Global, v(&["a.com"]))
        );
        assert_eq!(
            split_scope(false, &v(&["web", "a.com", "b.com"]), "RULES").unwrap(),
            (Scope::Sandbox("web".into()), v(&["a.com", "b.com"]))
        );
        let err = split_scope(false, &v(&["a.com"]), "RULES").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("expected -g"), "{err}");
    }
}
