//! The hutch-private FUSE INIT flags: which ones the guest offers, and the
//! grant written into the INIT reply.
//!
//! hutch's guest kernel offers extensions of its own in the upper half of
//! the 64-bit INIT flags (`flags2`): one-request O_CREAT opens
//! (create_lookup.rs), renames that report what they replaced
//! (rename_report.rs), entries that say whether a file has xattrs
//! (xattr_hint.rs), listings read 32 KiB at a time (big_readdir.rs),
//! callers that poll for their answers (poll.rs), a writeback cache that
//! sees host changes (wb_coherent.rs) and write-through WRITEs that answer
//! the file's attributes (write_attr.rs). fuse-backend-rs drops INIT flags it does not know, so
//! the device reads the offer from the request and writes the grant into
//! the reply after the server has answered. The byte helpers also serve
//! requests the device inspects before fuse-backend-rs parses them.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use virtio_queue::DescriptorChain;

use super::Levers;

/// Whether a lever is on.
type LeverOn = fn(&Levers) -> bool;

/// Every hutch-private INIT flag this server knows, with the workspace
/// lever that grants it. A new extension adds one row here.
const FLAGS: [(u64, LeverOn); 7] = [
    (super::create_lookup::FUSE_HUTCH_CREATE_LOOKUP, |l| {
        l.create_lookup
    }),
    (super::rename_report::FUSE_HUTCH_RENAME_REPORT, |l| {
        l.rename_report
    }),
    (super::xattr_hint::FUSE_HUTCH_NOXATTR, |l| l.xattr_hint),
    (super::big_readdir::FUSE_HUTCH_BIG_READDIR, |l| {
        l.big_readdir
    }),
    (super::poll::FUSE_HUTCH_POLL, |l| l.guest_poll),
    (super::wb_coherent::FUSE_HUTCH_WB_COHERENT, |l| l.writeback),
    (super::write_attr::FUSE_HUTCH_WRITE_ATTR, |l| l.write_attr),
];

/// The union of [`FLAGS`].
const PRIVATE: u64 = {
    let mut all = 0;
    let mut i = 0;
    while i < FLAGS.len() {
        all |= FLAGS[i].0;
        i += 1;
    }
    all
};

/// The private flags a workspace with `levers` grants when offered.
pub fn workspace_grants(levers: &Levers) -> u64 {
    FLAGS
        .iter()
        .filter(|(_, on)| on(levers))
        .fold(0, |all, (flag, _)| all | flag)
}

/// The private flags the read-only root grants when offered: polling only,
/// and only with the `root_poll` lever (it creates, renames and lists
/// nothing the other extensions are for).
pub fn root_grants(levers: &Levers) -> u64 {
    if levers.root_poll {
        super::poll::FUSE_HUTCH_POLL
    } else {
        0
    }
}

/// `fuse_in_header` (40 bytes), then `fuse_init_in`: major, minor,
/// max_readahead, flags (offset 52), then with INIT_EXT flags2 (offset 56).
const INIT_IN_FLAGS: u64 = 52;
const INIT_IN_FLAGS2: u64 = 56;
/// FUSE_INIT_EXT: `fuse_init_in` carries `flags2`.
const INIT_EXT: u32 = 1 << 30;
/// `fuse_out_header` (16 bytes: len, error, unique), then `fuse_init_out`,
/// whose `flags2` is at offset 32.
const OUT_ERROR: u64 = 4;
const INIT_OUT_FLAGS: u64 = 16 + 12;
const INIT_OUT_FLAGS2: u64 = 16 + 32;

/// The hutch-private INIT flags ([`FLAGS`]) among those the guest's
/// FUSE_INIT request offers; 0 without INIT_EXT.
pub fn init_offers<M: GuestMemory>(mem: &M, chain: &DescriptorChain<&M>) -> u64 {
    let flags = read_u32(mem, chain, false, INIT_IN_FLAGS).unwrap_or(0);
    if flags & INIT_EXT == 0 {
        return 0;
    }
    read_u32(mem, chain, false, INIT_IN_FLAGS2).map_or(0, |f2| u64::from(f2) << 32 & PRIVATE)
}

/// The INIT request's `flags` (the standard ones, low 32 bits).
pub fn init_in_flags<M: GuestMemory>(mem: &M, chain: &DescriptorChain<&M>) -> Option<u32> {
    read_u32(mem, chain, false, INIT_IN_FLAGS)
}

/// Rewrites the INIT request's `flags` before the server reads them.
pub fn set_init_in_flags<M: GuestMemory>(mem: &M, chain: &DescriptorChain<&M>, flags: u32) -> bool {
    write_u32(mem, chain, false, INIT_IN_FLAGS, flags)
}

/// Grants `bits` (of the private flags the guest offered) in a successful
/// INIT reply of `written` bytes, with INIT_EXT so that the guest reads
/// `flags2`. Returns whether it did.
pub fn grant<M: GuestMemory>(
    mem: &M,
    chain: &DescriptorChain<&M>,
    written: usize,
    bits: u64,
) -> bool {
    if bits & PRIVATE == 0
        || (written as u64) < INIT_OUT_FLAGS2 + 4
        || read_u32(mem, chain, true, OUT_ERROR) != Some(0)
    {
        return false;
    }
    let (Some(flags), Some(flags2)) = (
        read_u32(mem, chain, true, INIT_OUT_FLAGS),
        read_u32(mem, chain, true, INIT_OUT_FLAGS2),
    ) else {
        return false;
    };
    write_u32(mem, chain, true, INIT_OUT_FLAGS, flags | INIT_EXT)
        && write_u32(
            mem,
            chain,
            true,
            INIT_OUT_FLAGS2,
            flags2 | ((bits & PRIVATE) >> 32) as u32,
        )
}

/// The guest address of byte `offset` of the chain's readable (or writable)
/// part, which may span descriptors.
fn byte_addr<M: GuestMemory>(
    chain: &DescriptorChain<&M>,
    writable: bool,
    mut offset: u64,
) -> Option<GuestAddress> {
    for d in chain.clone().filter(|d| d.is_write_only() == writable) {
        let len = u64::from(d.len());
        if offset < len {
            return d.addr().checked_add(offset);
        }
        offset -= len;
    }
    None
}

pub(super) fn read_u32<M: GuestMemory>(
    mem: &M,
    chain: &DescriptorChain<&M>,
    writable: bool,
    offset: u64,
) -> Option<u32> {
    let mut b = [0u8; 4];
    for (i, byte) in b.iter_mut().enumerate() {
        let addr = byte_addr(chain, writable, offset + i as u64)?;
        *byte = mem.read_obj(addr).ok()?;
    }
    Some(u32::from_le_bytes(b))
}

/// Writes `value` at byte `offset` of the chain's readable (or writable) part.
fn write_u32<M: GuestMemory>(
    mem: &M,
    chain: &DescriptorChain<&M>,
    writable: bool,
    offset: u64,
    value: u32,
) -> bool {
    value.to_le_bytes().iter().enumerate().all(|(i, byte)| {
        byte_addr(chain, writable, offset + i as u64)
            .is_some_and(|a| mem.write_obj(*byte, a).is_ok())
    })
}

#[cfg(test)]
mod grant_tests {
    use super::*;

    #[test]
    fn each_lever_grants_its_own_flag_only() {
        let all = Levers::default().apply("+writeback").unwrap();
        assert_eq!(workspace_grants(&all), PRIVATE);
        assert_eq!(
            workspace_grants(&Levers::default()),
            PRIVATE & !super::super::wb_coherent::FUSE_HUTCH_WB_COHERENT,
            "the writeback cache is off by default"
        );
        for (flag, name) in [
            (
                super::super::create_lookup::FUSE_HUTCH_CREATE_LOOKUP,
                "create_lookup",
            ),
            (
                super::super::rename_report::FUSE_HUTCH_RENAME_REPORT,
                "rename_report",
            ),
            (super::super::xattr_hint::FUSE_HUTCH_NOXATTR, "xattr_hint"),
            (
                super::super::big_readdir::FUSE_HUTCH_BIG_READDIR,
                "big_readdir",
            ),
            (super::super::poll::FUSE_HUTCH_POLL, "guest_poll"),
            (
                super::super::wb_coherent::FUSE_HUTCH_WB_COHERENT,
                "writeback",
            ),
            (
                super::super::write_attr::FUSE_HUTCH_WRITE_ATTR,
                "write_attr",
            ),
        ] {
            let off = all.apply(&format!("-{name}")).unwrap();
            assert_eq!(workspace_grants(&off), PRIVATE & !flag, "-{name}");
        }
        assert_eq!(PRIVATE.count_ones(), 7);
    }

    #[test]
    fn the_root_grants_polling_only_with_its_lever() {
        assert_eq!(root_grants(&Levers::default()), 0);
        let on = Levers::default().apply("+root_poll").unwrap();
        assert_eq!(root_grants(&on), super::super::poll::FUSE_HUTCH_POLL);
        assert_eq!(root_grants(&on) & !PRIVATE, 0, "a flag INIT knows");
    }
}
