//! The writeback cache, only for a guest that still sees host changes.
//!
//! With FUSE WRITEBACK_CACHE the guest buffers writes in its page cache and
//! sends them in large WRITEs at close, fsync or writeback instead of one
//! synchronous WRITE per `write()`. Upstream Linux then trusts its own size
//! and mtime of a file for good, so a file edited or truncated on the host
//! keeps showing its old size and pages: the stale-content bug. hutch's
//! guest kernel (patch 0011) offers the private INIT flag
//! [`FUSE_HUTCH_WB_COHERENT`]: granted, the guest trusts its own attributes
//! only while it holds changes the server has not seen (dirty pages, WRITEs
//! in flight, a time update not yet sent) and takes the server's otherwise,
//! so a host change shows within the attribute timeout, as without the
//! cache. The workspace grants WRITEBACK_CACHE only together with this flag:
//! a guest that does not offer it (a kernel of the user's own, `--kernel`)
//! has WRITEBACK_CACHE taken out of its INIT offer before the server reads it.
//!
//! With the flag, a WRITE from the guest's writeback also carries the file's
//! mtime as the guest keeps it ([`FUSE_WRITE_HUTCH_MTIME`]), and the server
//! sets it on the host file after writing. The guest then sends no SETATTR
//! of its times when it writes the inode back: at every close() of a file
//! it wrote, which upstream's writeback cache pays for with one more round
//! trip per file (tar, npm, a compiler's outputs).

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;

use super::private_init;

/// INIT flag (bit 26 of `flags2`): the guest's writeback cache takes the
/// server's attributes whenever it holds no unsent change.
pub const FUSE_HUTCH_WB_COHERENT: u64 = 1 << 58;

/// WRITE flag (`fuse_write_in.write_flags`): `lock_owner` holds the file's
/// mtime in nanoseconds since the epoch (with FUSE_WRITE_LOCKOWNER, so that
/// it reaches the file system), to be set after the write.
pub const FUSE_WRITE_HUTCH_MTIME: u32 = 1 << 31;

/// The mtime a WRITE carries, as a `stat64` for SETATTR's MTIME, if the
/// guest sent one ([`FUSE_WRITE_HUTCH_MTIME`]).
pub fn carried_mtime(fuse_flags: u32, lock_owner: Option<u64>) -> Option<libc::stat64> {
    if fuse_flags & FUSE_WRITE_HUTCH_MTIME == 0 {
        return None;
    }
    // The guest sends a signed count of nanoseconds (before 1970: negative).
    let ns = lock_owner? as i64;
    // SAFETY: stat64 is plain data; all zeroes is a valid value.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    st.st_mtime = ns.div_euclid(1_000_000_000);
    st.st_mtime_nsec = ns.rem_euclid(1_000_000_000);
    Some(st)
}

/// FUSE_WRITEBACK_CACHE in `fuse_init_in.flags`.
const FUSE_WRITEBACK_CACHE: u32 = 1 << 16;

/// Takes WRITEBACK_CACHE out of the INIT request's offer in `chain` unless
/// the guest also offers [`FUSE_HUTCH_WB_COHERENT`] (`offers`, from
/// [`private_init::init_offers`]). Returns whether it took it out.
pub fn withhold_unless_coherent<M: GuestMemory>(
    mem: &M,
    chain: &DescriptorChain<&M>,
    offers: u64,
) -> bool {
    if offers & FUSE_HUTCH_WB_COHERENT != 0 {
        return false;
    }
    match private_init::init_in_flags(mem, chain) {
        Some(flags) if flags & FUSE_WRITEBACK_CACHE != 0 => {
            private_init::set_init_in_flags(mem, chain, flags & !FUSE_WRITEBACK_CACHE)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_carried_mtime_is_split_into_seconds_and_nanoseconds() {
        let flags = FUSE_WRITE_HUTCH_MTIME | 1;
        let st = carried_mtime(flags, Some(1_700_000_000_123_456_789)).unwrap();
        assert_eq!(
            (st.st_mtime, st.st_mtime_nsec),
            (1_700_000_000, 123_456_789)
        );
        let before_1970 = carried_mtime(flags, Some((-1_500_000_000i64) as u64)).unwrap();
        assert_eq!(
            (before_1970.st_mtime, before_1970.st_mtime_nsec),
            (-2, 500_000_000)
        );
    }

    #[test]
    fn a_plain_write_carries_no_mtime() {
        assert!(
            carried_mtime(1, Some(5)).is_none(),
            "a lock owner is not a time"
        );
        assert!(carried_mtime(FUSE_WRITE_HUTCH_MTIME, None).is_none());
    }
}
