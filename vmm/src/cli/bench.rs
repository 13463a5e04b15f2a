//! `hutch bench-boot` (hidden): builds the same native VM as `hutch run`,
//! lets the guest run for `--guest-ms`, and prints the time from `exec` to
//! the first `KVM_RUN` and the VMM's resident memory outside guest RAM.
//! `benches/run.sh` drives it; set `HUTCH_T0_NS` (CLOCK_REALTIME at exec) so
//! the time includes process start-up.

use std::time::{Duration, Instant};

use super::{run, BenchBootArgs};
use crate::control::Phase;
use crate::engine;

/// Runs the probe; prints `key=value` figures.
pub fn main(args: BenchBootArgs, started: Instant) -> i32 {
    match probe(args, started) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("hutch bench-boot: {e}");
            1
        }
    }
}

fn probe(args: BenchBootArgs, started: Instant) -> Result<(), String> {
    let mut vm = run::vm_spec(&args.run, started, None)?;
    vm.time_limit = Some(Duration::from_millis(args.guest_ms));
    vm.measure_rss = true;
    vm.forward_stdin = false;
    let o = engine::native::run(vm).map_err(|e| e.to_string())?;
    let first = o
        .phases
        .iter()
        .find(|(p, _)| *p == Phase::FirstRun)
        .map(|(_, d)| d.as_micros())
        .ok_or_else(|| format!("the vCPU never ran: {:?}", o.stop))?;
    if std::env::var_os("HUTCH_BENCH_VERBOSE").is_some() {
        for (p, d) in &o.phases {
            eprintln!("  {:>9.3} ms  {}", d.as_secs_f64() * 1e3, p.name());
        }
    }
    let (rss, anon) = o.vmm_rss_kib.ok_or("no RSS figure")?;
    println!("first_kvm_run_us={first} vmm_rss_kib={rss} vmm_anon_kib={anon}");
    Ok(())
}
