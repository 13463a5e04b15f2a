//! Writes to the boot-timer and exit I/O ports.
//!
//! Only the native VMM listens on these ports; QEMU ignores the writes. Port
//! access needs `ioperm`, which can fail (no `CONFIG_X86_IOPL_IOPERM`, other
//! architectures): then every write here is silently skipped, because an `out`
//! without permission would kill PID 1 and with it the kernel.

use std::sync::atomic::{AtomicBool, Ordering};

use hutch_proto::{Milestone, BOOT_TIMER_PORT, EXIT_PORT};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Asks for access to `BOOT_TIMER_PORT..EXIT_PORT + 4`; returns whether it was
/// granted. Later writes happen only if it was.
pub fn init() -> bool {
    let ok = request_access();
    ENABLED.store(ok, Ordering::SeqCst);
    ok
}

/// Reports a boot milestone (one byte to [`BOOT_TIMER_PORT`]).
pub fn milestone(m: Milestone) {
    if ENABLED.load(Ordering::SeqCst) {
        outb(BOOT_TIMER_PORT, m as u8);
    }
}

/// Reports the exit status (four bytes to [`EXIT_PORT`]).
pub fn exit_status(status: i32) {
    if ENABLED.load(Ordering::SeqCst) {
        outl(EXIT_PORT, status as u32);
    }
}

#[cfg(target_arch = "x86_64")]
fn request_access() -> bool {
    let from = libc::c_ulong::from(BOOT_TIMER_PORT);
    let num = libc::c_ulong::from(EXIT_PORT + 4 - BOOT_TIMER_PORT);
    // SAFETY: ioperm only changes this process's I/O permission bitmap; it
    // touches no memory of ours.
    unsafe { libc::ioperm(from, num, 1) == 0 }
}

#[cfg(target_arch = "x86_64")]
fn outb(port: u16, value: u8) {
    // SAFETY: called only after ioperm granted this port range, so `out`
    // cannot fault; it reads and writes no memory and leaves the flags alone.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") port, in("al") value,
            options(nomem, nostack, preserves_flags));
    }
}

#[cfg(target_arch = "x86_64")]
fn outl(port: u16, value: u32) {
    // SAFETY: as in `outb`: the port range was granted by ioperm.
    unsafe {
        std::arch::asm!("out dx, eax", in("dx") port, in("eax") value,
            options(nomem, nostack, preserves_flags));
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn request_access() -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn outb(_port: u16, _value: u8) {}

#[cfg(not(target_arch = "x86_64"))]
fn outl(_port: u16, _value: u32) {}
