//! What a file system server may keep: the capabilities a FUSE worker needs,
//! for one thread (`keep_fs_caps`, the in-process server's workers) or for
//! the whole file system backend process (`confine_process`, before it starts
//! any thread, so every thread inherits the same sets).

use std::io;

pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions, touches no memory and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Capabilities a thread serving FUSE requests keeps (bit numbers from
/// `linux/capability.h`): CHOWN (guest chown), DAC_OVERRIDE and DAC_READ_SEARCH (the VMM
/// acts on every file of the share whatever its mode), FOWNER (chmod and utimens on files
/// of other owners) and FSETID (PassthroughFs lowers and raises it around writes). Every
/// other one is dropped: no SETUID/SETGID (creating calls never switch credentials, see
/// `PolicyFs::passthrough`), no MKNOD, SETFCAP, SYS_ADMIN, NET_*, SYS_PTRACE, ...
const WORKER_CAPS: u64 = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4);

/// The highest capability number this code knows of (CAP_CHECKPOINT_RESTORE, Linux 5.9).
const LAST_CAP: u32 = 40;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Keeps only `WORKER_CAPS` in the calling thread's effective, permitted and bounding sets
/// (capabilities are per thread on Linux; the rest of the VMM keeps its own). A no-op when
/// the VMM is not root: it then has no capabilities to give up.
pub fn keep_fs_caps() -> io::Result<()> {
    if !running_as_root() {
        return Ok(());
    }
    for cap in 0..=LAST_CAP {
        // SAFETY: PR_CAPBSET_READ takes a capability number and touches no memory.
        let bounded = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
        // Dropping needs CAP_SETPCAP, which a confined process no longer has:
        // only drop what is still there.
        if WORKER_CAPS & (1 << cap) == 0 && bounded == 1 {
            // SAFETY: PR_CAPBSET_DROP takes a capability number and touches no memory.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            // EINVAL: a capability this kernel does not have.
            if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                return Err(io::Error::last_os_error());
            }
        }
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget with a version-3 header (pid 0: this thread) writes two `CapData`
    // structs, which `data` holds.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    for (i, d) in data.iter_mut().enumerate() {
        let keep = (WORKER_CAPS >> (32 * i)) as u32;
        d.effective &= keep;
        d.permitted &= keep;
        d.inheritable = 0;
    }
    // SAFETY: capset reads the version-3 header and two `CapData` structs; pid 0 is the
    // calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Confines the file system backend process: no new privileges through exec
/// (set-ID or file capabilities), and only `WORKER_CAPS` (in every set,
/// bounding included) for the calling thread and every thread it starts.
pub fn confine_process() -> io::Result<()> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    keep_fs_caps()
}

/// The capabilities [`keep_fs_caps`] keeps, as a `CapEff` mask (for tests).
pub const KEPT_CAPS: u64 = WORKER_CAPS;
