//! PID 1 of a hutch guest: builds the root file system, runs the one command
//! the host asked for, streams its I/O over the serial line, reports its exit
//! status and powers off. The parts live in the library; this file sequences
//! them.
//!
//! `no_main`: std's runtime start-up would open `/dev/null` for closed stdio
//! descriptors, and abort (killing the kernel) when it cannot, which is the
//! case before devtmpfs is mounted. Init does that itself, later.
#![no_main]

use std::fs::File;
use std::os::fd::OwnedFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use hutch_init::channel::{self, FrameSink, TTY_PATH};
use hutch_init::{config, console, host, mounts, ports, power, pump, rootfs, spawn, sys};
use hutch_proto::{FrameKind, Milestone, SPEC_PATH};

/// Exit status when init itself failed (as `env` reports its own failures).
const INIT_FAILED: i32 = 125;
/// How long to wait for the output pumps once the command is gone.
const PUMP_GRACE: Duration = Duration::from_secs(2);

/// Entry point, called by the C runtime.
#[unsafe(no_mangle)]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    // SAFETY: setting a disposition has no memory preconditions. Writes to a
    // pipe whose reader is gone must fail with EPIPE, not signal init.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    ports::init();
    ports::milestone(Milestone::InitStart);
    // A panic must not end PID 1 (that panics the kernel): report, power off.
    let status = panic::catch_unwind(boot).unwrap_or(INIT_FAILED);
    ports::exit_status(status);
    power::power_off()
}

/// Mounts the kernel file systems, then runs the self-test or the spec.
fn boot() -> i32 {
    let early = mounts::mount_kernel_fs();
    console::ensure_std_fds();
    for e in &early {
        console::say(&e.to_string());
    }
    let cmdline = std::fs::read("/proc/cmdline").unwrap_or_default();
    if cmdline
        .split(|b| b.is_ascii_whitespace())
        .any(|w| w == b"hutch.trace=1")
    {
        console::enable_trace();
    }
    console::trace("kernel file systems mounted");
    if config::is_selftest(&cmdline) {
        console::say("selftest: init running");
        return 0;
    }
    run()
}

/// Runs the spec over the serial channel; returns the status to report.
fn run() -> i32 {
    let tty = match channel::open_tty(TTY_PATH) {
        Ok(t) => t,
        Err(e) => {
            console::say(&e.to_string());
            return INIT_FAILED;
        }
    };
    let reader = match tty.try_clone() {
        Ok(r) => r,
        Err(e) => {
            console::say(&format!("dup {TTY_PATH}: {e}"));
            return INIT_FAILED;
        }
    };
    console::trace("serial line open");
    let sink = Arc::new(FrameSink::new(tty));
    // Ready marker: an empty Stdout frame says the tty is raw, so the host may
    // send stdin from now on (earlier bytes are lost or cooked by the kernel).
    let _ = sink.send(FrameKind::Stdout, &[]);
    console::trace("ready frame sent");
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| serve(&sink, reader)));
    let status = match outcome {
        Ok(Ok(status)) => status,
        Ok(Err(msg)) => report(&sink, &msg),
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            report(&sink, &format!("internal error: panic: {what}"))
        }
    };
    let _ = sink.send_exit(status);
    sink.with(|tty| channel::drain(tty));
    status
}

/// Sends an Error frame; returns the init-failure status.
fn report(sink: &FrameSink<File>, msg: &str) -> i32 {
    let _ = sink.send(FrameKind::Error, format!("hutch-init: {msg}").as_bytes());
    INIT_FAILED
}

/// Everything after the channel is up. `Err` is a message for an Error frame.
fn serve(sink: &Arc<FrameSink<File>>, tty_in: File) -> Result<i32, String> {
    let spec = config::load_spec(SPEC_PATH).map_err(|e| e.to_string())?;
    console::trace("spec loaded");
    let warnings = rootfs::build(&spec).map_err(|e| e.to_string())?;
    console::trace("root file system built");
    for w in warnings {
        console::say(&format!("warning: {w}"));
    }
    let _ = host::loopback_up();
    let _ = host::set_hostname("hutch");
    console::trace("loopback up");
    let _ = mounts::remount_root_readonly();
    ports::milestone(Milestone::Mounted);
    console::trace("mounted");

    let cwd = sys::path(&spec.cwd);
    if !cwd.is_dir() {
        let why = std::fs::metadata(cwd)
            .err()
            .map_or("not a directory".into(), |e| e.to_string());
        return Err(format!("working directory {}: {why}", cwd.display()));
    }
    let mut child = match spawn::command(&spec).spawn() {
        Ok(c) => c,
        Err(e) => {
            let (msg, status) = spawn::spawn_failure(&spec.argv[0], &e);
            let _ = sink.send(FrameKind::Stderr, &msg);
            return Ok(status);
        }
    };
    ports::milestone(Milestone::CommandStart);
    console::trace("command spawned");
    let pid = child.id() as libc::pid_t;

    let (done_tx, done_rx) = mpsc::channel();
    let mut pumps = 0;
    let outputs = [
        (
            child.stdout.take().map(|p| File::from(OwnedFd::from(p))),
            FrameKind::Stdout,
        ),
        (
            child.stderr.take().map(|p| File::from(OwnedFd::from(p))),
            FrameKind::Stderr,
        ),
    ];
    for (pipe, kind) in outputs {
        let (Some(pipe), sink, done) = (pipe, Arc::clone(sink), done_tx.clone()) else {
            continue;
        };
        let started = thread::Builder::new().spawn(move || {
            let _ = pump::pump_output(pipe, kind, &sink);
            let _ = done.send(());
        });
        pumps += usize::from(started.is_ok());
    }
    let stdin = child.stdin.take();
    let _ = thread::Builder::new().spawn(move || pump::pump_input(tty_in, stdin));

    let status = spawn::reap_until(pid).map_err(|e| format!("waitpid for the command: {e}"))?;
    console::trace("command exited");
    spawn::kill_leftovers(pid);
    let deadline = Instant::now() + PUMP_GRACE;
    for _ in 0..pumps {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    ports::milestone(Milestone::CommandExit);
    console::trace("output drained");
    Ok(status)
}
