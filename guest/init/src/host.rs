//! Guest identity, network and kernel knobs: hostname, the loopback
//! interface and the page writeback intervals.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::sys::check;

/// The guest writes back pages dirty for 1 s, looking every 1 s (Linux's
/// defaults are 30 s and 5 s): with the workspace's writeback cache
/// (`+writeback`, off by default) a write to a file the guest keeps open
/// reaches the host within about 2 s, and host edits to such a file are
/// not hidden for longer. Init sets them: as `sysctl.` kernel parameters
/// they cost ~12 ms of a TCG boot (the kernel mounts a private procfs for
/// them before it starts init).
const WRITEBACK_INTERVALS: [(&str, &str); 2] = [
    ("/proc/sys/vm/dirty_expire_centisecs", "100"),
    ("/proc/sys/vm/dirty_writeback_centisecs", "100"),
];

/// Sets [`WRITEBACK_INTERVALS`] (`/proc` must be mounted).
pub fn set_writeback_intervals() -> io::Result<()> {
    for (path, value) in WRITEBACK_INTERVALS {
        std::fs::write(path, value)
            .map_err(|e| io::Error::new(e.kind(), format!("writing {value} to {path}: {e}")))?;
    }
    Ok(())
}

/// Sets the hostname.
pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, alive for the call.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// Brings up `lo` (sets IFF_UP) through an AF_INET datagram socket.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket takes only integers.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data (arrays, integers, pointers); all zeros is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq naming an interface; the socket is open.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) })?;
    // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; the kernel only reads `req`.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) })?;
    Ok(())
}
