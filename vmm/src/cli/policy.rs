//! `hutch policy ls | allow | deny | rm | reset | set-default | log`: edits
//! the policy store (`policy.toml` in the config directory) and reads the
//! decision logs. The logic is in `hutch_proxy::admin`; this is the argv side.

use clap::{Args, Subcommand};
use hutch_proxy::admin::{self, logview, AdminError};
use hutch_proxy::paths;
use hutch_proxy::store::List;

/// `hutch policy`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// `[-g | NAME] RULES...`.
#[derive(Debug, Args)]
pub struct RuleArgs {
    /// Apply to every sandbox (the global rules).
    #[arg(short = 'g', long)]
    pub global: bool,
    /// The sandbox NAME (unless -g), then the rules, e.g. `**.example.com`,
    /// `api.example.com:443`, `10.0.0.0/8`, `host.hutch.internal:8080`.
    #[arg(required = true, value_name = "NAME|RULE")]
    pub args: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Show the default preset and the global and per-sandbox rules.
    Ls {
        /// Show this sandbox's rules only (with the global ones).
        name: Option<String>,
    },
    /// Allow destinations: `-g RULES...` or `NAME RULES...`.
    Allow(RuleArgs),
    /// Deny destinations (deny beats allow): `-g RULES...` or `NAME RULES...`.
    Deny(RuleArgs),
    /// Remove rules (from allow and deny): `-g RULES...` or `NAME RULES...`.
    Rm(RuleArgs),
    /// Clear the rules of -g or NAME; with neither, the whole store (rules and default).
    Reset {
        /// Clear the global rules.
        #[arg(short = 'g', long)]
        global: bool,
        /// Clear this sandbox's rules.
        name: Option<String>,
    },
    /// Set the preset every sandbox starts from.
    SetDefault {
        #[arg(value_parser = ["open", "balanced", "locked-down"])]
        preset: String,
    },
    /// Show the newest proxy decisions (all sandboxes, or NAME's).
    Log {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// How many decisions to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only this sandbox.
        name: Option<String>,
    },
}

/// Runs a policy subcommand; returns the exit status (0, 2 bad usage, 125).
pub fn main(args: PolicyArgs) -> i32 {
    let store = paths::policy_file();
    let result = match args.command {
        PolicyCommand::Ls { name } => admin::policy::ls(&store, name.as_deref()),
        PolicyCommand::Allow(a) => admin::policy::add(&store, List::Allow, a.global, &a.args),
        PolicyCommand::Deny(a) => admin::policy::add(&store, List::Deny, a.global, &a.args),
        PolicyCommand::Rm(a) => admin::policy::rm(&store, a.global, &a.args),
        PolicyCommand::Reset { global, name } => {
            admin::policy::reset(&store, global, name.as_deref())
        }
        PolicyCommand::SetDefault { preset } => admin::policy::set_default(&store, &preset),
        PolicyCommand::Log { json, limit, name } => {
            logview::show(&paths::log_dir(), name.as_deref(), limit, json)
        }
    };
    finish(result)
}

/// Prints the output or `hutch: ERROR`; returns the exit status.
pub fn finish(result: Result<String, AdminError>) -> i32 {
    match result {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e) => {
            eprintln!("hutch: {e}");
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        c: PolicyCommand,
    }

    fn parse(a: &[&str]) -> Result<PolicyCommand, clap::Error> {
        T::try_parse_from(std::iter::once("policy").chain(a.iter().copied())).map(|t| t.c)
    }

    #[test]
    fn subcommands_parse() {
        let PolicyCommand::Allow(a) = parse(&["allow", "-g", "**.example.com", "::1"]).unwrap()
        else {
            panic!()
        };
        assert!(a.global);
        assert_eq!(a.args, ["**.example.com", "::1"]);
        let PolicyCommand::Deny(a) = parse(&["deny", "web", "evil.test"]).unwrap() else {
            panic!()
        };
        assert!(!a.global);
        assert!(matches!(
            parse(&["log", "--json", "--limit", "5", "web"]).unwrap(),
            PolicyCommand::Log { json: true, limit: 5, name: Some(n) } if n == "web"
        ));
        assert!(matches!(
            parse(&["set-default", "locked-down"]).unwrap(),
            PolicyCommand::SetDefault { .. }
        ));
        assert!(parse(&["set-default", "strict"]).is_err());
        assert!(parse(&["allow"]).is_err());
        assert!(parse(&["log", "--limit", "x"]).is_err());
    }
}
