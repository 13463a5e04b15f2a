//! AF_VSOCK sockets. Connected sockets are handed out as `UnixStream`s: the
//! type only wraps a stream-socket descriptor, and its `read`, `write`,
//! `shutdown` and `try_clone` are the plain system calls, which work on any
//! stream socket.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use crate::sys::check;

/// The host's context id.
pub const HOST_CID: u32 = 2;

fn addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain integers; all zeros is a valid value.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; a valid descriptor is owned below.
    let fd =
        check(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket(2) and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

/// A listening vsock socket on `port` for any context id.
pub fn listen(port: u32, backlog: i32) -> io::Result<OwnedFd> {
    let fd = socket()?;
    let a = addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: `a` is a valid sockaddr_vm of ADDR_LEN bytes; `fd` is open.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&a as *const libc::sockaddr_vm).cast(),
            ADDR_LEN,
        )
    })?;
    // SAFETY: `fd` is an open, bound socket.
    check(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(fd)
}

/// Accepts one connection (retrying on EINTR).
pub fn accept(listener: &OwnedFd) -> io::Result<UnixStream> {
    loop {
        // SAFETY: `listener` is an open listening socket; null address
        // pointers are allowed.
        let r = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        match check(r) {
            // SAFETY: accept4 returned a new descriptor that we own.
            Ok(fd) => return Ok(unsafe { UnixStream::from_raw_fd(fd) }),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Connects to `port` on context `cid`.
pub fn connect(cid: u32, port: u32) -> io::Result<UnixStream> {
    let fd = socket()?;
    let a = addr(cid, port);
    // SAFETY: `a` is a valid sockaddr_vm of ADDR_LEN bytes; `fd` is open.
    check(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&a as *const libc::sockaddr_vm).cast(),
            ADDR_LEN,
        )
    })
    .map_err(|e| io::Error::new(e.kind(), format!("vsock connect {cid}:{port}: {e}")))?;
    Ok(UnixStream::from(fd))
}
