//! Messages on the kernel console, for what cannot go to the host as a frame.

use std::io::Write;

/// Prints `hutch-init: MSG` on `/dev/console` (best effort).
pub fn say(msg: &str) {
    let line = format!("hutch-init: {msg}\n");
    match std::fs::OpenOptions::new().write(true).open("/dev/console") {
        Ok(mut c) => {
            let _ = c.write_all(line.as_bytes());
        }
        Err(_) => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

/// Makes sure descriptors 0, 1 and 2 are open (on `/dev/console`, else
/// `/dev/null`). The kernel leaves them closed when the initramfs has no
/// `/dev/console`; files opened later would then land on them and a child's
/// stdio set-up could clobber them.
pub fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1 {
            continue;
        }
        for path in [c"/dev/console", c"/dev/null"] {
            // SAFETY: `path` is a NUL-terminated literal.
            let got = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
            if got < 0 {
                continue;
            }
            if got != fd {
                // SAFETY: both are descriptors; `got` is ours to close.
                unsafe {
                    libc::dup2(got, fd);
                    libc::close(got);
                }
            }
            break;
        }
    }
}

static TRACE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns on [`trace`] (kernel command line `hutch.trace=1`).
pub fn enable_trace() {
    TRACE.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// With tracing on, logs `hutch-init: STEP` through `/dev/kmsg`, so the
/// kernel's own timestamps show how long each of init's steps took (the
/// qemu engine has no boot-timer port).
pub fn trace(step: &str) {
    if TRACE.load(std::sync::atomic::Ordering::Relaxed) {
        if let Ok(mut k) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
            let _ = k.write_all(format!("hutch-init: {step}\n").as_bytes());
        }
    }
}
