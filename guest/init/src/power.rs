//! Ending the VM.

/// Flushes file systems and resets the machine. The kernel runs with
/// `reboot=t` (triple fault): QEMU (`-no-reboot`) exits and the native VMM sees
/// the shutdown. Never returns; if the reboot call fails, waits forever.
pub fn power_off() -> ! {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    // SAFETY: reboot takes only a command constant; on success it does not
    // return, on failure it returns -1 and changes nothing.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    loop {
        // SAFETY: pause has no preconditions; it only sleeps.
        unsafe { libc::pause() };
    }
}
