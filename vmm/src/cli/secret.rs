//! `hutch secret set | ls | rm`: the secrets store (`secrets.toml` in the
//! config directory, mode 0600). Values are read from stdin or a no-echo
//! prompt, never from argv, and never printed. The logic is in
//! `hutch_proxy::admin::secret`.

use clap::{Args, Subcommand};
use hutch_proxy::admin;
use hutch_proxy::paths;

use super::policy::finish;

/// `hutch secret`.
#[derive(Debug, Args)]
pub struct SecretArgs {
    #[command(subcommand)]
    pub command: SecretCommand,
}

/// `[-g | NAME] SERVICE`.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// For every sandbox.
    #[arg(short = 'g', long)]
    pub global: bool,
    /// The sandbox NAME (unless -g), then SERVICE: anthropic, openai,
    /// github, or HOST:HEADER (e.g. api.example.com:X-Api-Key).
    #[arg(required = true, value_name = "NAME|SERVICE")]
    pub args: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a secret, read from stdin (or a prompt on a terminal).
    Set(ServiceArgs),
    /// List stored secrets (services and scopes, never values).
    Ls {
        /// Only this sandbox's (and the global ones).
        name: Option<String>,
    },
    /// Remove a secret.
    Rm(ServiceArgs),
}

/// Runs a secret subcommand; returns the exit status (0, 2 bad usage, 125).
pub fn main(args: SecretArgs) -> i32 {
    let file = paths::secrets_file();
    finish(match args.command {
        SecretCommand::Set(a) => {
            admin::secret::set(&file, a.global, &a.args, admin::secret::read_value)
        }
        SecretCommand::Ls { name } => admin::secret::ls(&file, name.as_deref()),
        SecretCommand::Rm(a) => admin::secret::rm(&file, a.global, &a.args),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        c: SecretCommand,
    }

    #[test]
    fn subcommands_parse_and_take_no_value() {
        let parse = |a: &[&str]| {
            T::try_parse_from(std::iter::once("secret").chain(a.iter().copied())).map(|t| t.c)
        };
        let SecretCommand::Set(a) = parse(&["set", "-g", "anthropic"]).unwrap() else {
            panic!()
        };
        assert!(a.global);
        assert_eq!(a.args, ["anthropic"]);
        assert!(matches!(
            parse(&["ls"]).unwrap(),
            SecretCommand::Ls { name: None }
        ));
        assert!(parse(&["set"]).is_err());
        assert!(parse(&["set", "-g", "anthropic", "--value", "x"]).is_err());
    }
}
