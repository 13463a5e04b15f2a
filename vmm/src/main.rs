//! The `hutch` binary: parse the command line and dispatch (see `cli`).

use clap::Parser;

fn main() {
    let started = std::time::Instant::now();
    let cli = hutch::cli::Cli::parse();
    std::process::exit(hutch::cli::dispatch(cli, started));
}
