//! Which part of a store an edit applies to: every sandbox, or one.

use std::fmt;

/// `-g` (every sandbox) or one sandbox by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Global,
    Sandbox(String),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::Sandbox(n) => write!(f, "sandbox {n}"),
        }
    }
}
