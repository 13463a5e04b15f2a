//! PID 1 of a hutch guest: builds the root file system, starts the agent on
//! vsock, tells the host it is ready, and powers off when the run's command
//! exits (one-shot runs) or the host asks (detached sandboxes). Errors before
//! the agent is up, and the final status, go to the host on the serial line. The parts live in the library; this file sequences
//! them.
//!
//! `no_main`: std's runtime start-up would open `/dev/null` for closed stdio
//! descriptors, and abort (killing the kernel) when it cannot, which is the
//! case before devtmpfs is mounted. Init does that itself, later.
#![no_main]

use std::fs::File;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use hutch_init::agent::{forward, Agent, Event};
use hutch_init::channel::{self, FrameSink, TTY_PATH};
use hutch_init::{config, console, host, mounts, ports, power, rootfs, spawn, vsock};
use hutch_proto::agent::{AGENT_PORT, PROTOCOL_VERSION, READY_PORT};
use hutch_proto::{write_msg, FrameKind, Milestone, Msg, CA_BUNDLE_PATH, SPEC_PATH};

/// Exit status when init itself failed (as `env` reports its own failures).
const INIT_FAILED: i32 = 125;
/// How long processes get between SIGTERM and SIGKILL at shutdown.
const STOP_GRACE: Duration = Duration::from_millis(500);

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
    if let Err(e) = host::set_writeback_intervals() {
        console::say(&format!("warning: {e}"));
    }
    run(!rootfs::read_only_requested(&cmdline))
}

/// Runs the spec over the serial channel (`writable_root`: try the overlay
/// root); returns the status to report.
fn run(writable_root: bool) -> i32 {
    let tty = match channel::open_tty(TTY_PATH) {
        Ok(t) => t,
        Err(e) => {
            console::say(&e.to_string());
            return INIT_FAILED;
        }
    };
    console::trace("serial line open");
    let sink = Arc::new(FrameSink::new(tty));
    // Ready marker: an empty Stdout frame says the tty is raw, so the host may
    // send stdin from now on (earlier bytes are lost or cooked by the kernel).
    let _ = sink.send(FrameKind::Stdout, &[]);
    console::trace("ready frame sent");
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| serve(&sink, writable_root)));
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
fn serve(_sink: &Arc<FrameSink<File>>, writable_root: bool) -> Result<i32, String> {
    let spec = config::load_spec(SPEC_PATH).map_err(|e| e.to_string())?;
    console::trace("spec loaded");
    let warnings = rootfs::build(&spec, writable_root).map_err(|e| e.to_string())?;
    console::trace("root file system built");
    for w in warnings {
        console::say(&format!("warning: {w}"));
    }
    if !spec.ca_bundle.is_empty() {
        let path = std::path::Path::new(CA_BUNDLE_PATH);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(path, &spec.ca_bundle));
        written.map_err(|e| format!("writing {CA_BUNDLE_PATH}: {e}"))?;
    }
    let _ = host::loopback_up();
    let _ = host::set_hostname("hutch");
    console::trace("loopback up");
    ports::milestone(Milestone::Mounted);
    console::trace("mounted");

    let (events_tx, events) = mpsc::channel();
    let agent = Agent::new(events_tx);
    let listener = vsock::listen(AGENT_PORT, 64)
        .map_err(|e| format!("agent: listen on vsock port {AGENT_PORT}: {e}"))?;
    let a = agent.clone();
    thread::Builder::new()
        .name("agent".into())
        .spawn(move || a.serve(listener))
        .map_err(|e| format!("agent thread: {e}"))?;
    let _ = thread::Builder::new()
        .name("proxy-relay".into())
        .spawn(forward::serve_proxy);
    let mut ready = vsock::connect(vsock::HOST_CID, READY_PORT)
        .map_err(|e| format!("telling the host the agent is up: {e}"))?;
    write_msg(&mut ready, &Msg::Hello(PROTOCOL_VERSION))
        .map_err(|e| format!("telling the host the agent is up: {e}"))?;
    agent.spawn_conn(ready, !spec.detached);
    ports::milestone(Milestone::CommandStart);
    console::trace("agent ready");

    let status = match events.recv() {
        Ok(Event::MainExited(status)) => {
            spawn::kill_leftovers();
            status
        }
        Ok(Event::Shutdown) | Err(_) => {
            spawn::stop_everything(STOP_GRACE);
            0
        }
    };
    // SAFETY: sync only flushes file system buffers.
    unsafe { libc::sync() };
    ports::milestone(Milestone::CommandExit);
    console::trace("stopped");
    Ok(status)
}
