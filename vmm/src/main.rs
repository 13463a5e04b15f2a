//! The `hutch` binary: parse the command line and dispatch (see `cli`).

use clap::Parser;

fn main() {
    let mut started = std::time::Instant::now();
    // Benchmarks pass the wall-clock time of exec so start-up counts too.
    if let Some(t0) = std::env::var("HUTCH_T0_NS")
        .ok()
        .and_then(|v| v.parse::<u128>().ok())
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(t0);
        let since_exec = std::time::Duration::from_nanos(now.saturating_sub(t0) as u64);
        started = started.checked_sub(since_exec).unwrap_or(started);
    }
    hutch::logger::init();
    let cli = hutch::cli::Cli::parse();
    std::process::exit(hutch::cli::dispatch(cli, started));
}
