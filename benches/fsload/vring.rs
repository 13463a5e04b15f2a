//! The driver side of a split virtqueue (virtio 1.2, 2.7) in memory shared with the
//! device: descriptor table, available ring, used ring, and event-index notification
//! suppression the way Linux's virtio_ring does it.

use std::sync::atomic::{fence, Ordering};

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// `VRING_DESC_F_NEXT`.
pub const F_NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`: the device writes this buffer.
pub const F_WRITE: u16 = 2;
/// `VRING_DESC_F_INDIRECT`: the buffer is a table of descriptors.
pub const F_INDIRECT: u16 = 4;
/// `VRING_USED_F_NO_NOTIFY`.
const USED_F_NO_NOTIFY: u16 = 1;
/// Size of one descriptor.
pub const DESC_LEN: u64 = 16;

/// A guest memory access outside the mapping (a layout bug).
#[derive(Debug, Error)]
#[error("virtqueue at {base:#x}: guest memory access at {addr:#x} failed: {source}")]
pub struct VringError {
    base: u64,
    addr: u64,
    source: vm_memory::GuestMemoryError,
}

/// One descriptor: guest address, length, flags; `next` is filled in when chaining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Desc {
    pub fn new(addr: u64, len: u32, write: bool) -> Self {
        let flags = if write { F_WRITE } else { 0 };
        Self {
            addr,
            len,
            flags,
            next: 0,
        }
    }

    /// `struct vring_desc` bytes.
    pub fn encode(&self) -> [u8; DESC_LEN as usize] {
        let mut b = [0u8; DESC_LEN as usize];
        b[..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// Links `descs` into one chain whose entries sit at `first`, `first + 1`, ...
pub fn chain(descs: &mut [Desc], first: u16) {
    let n = descs.len();
    for (i, d) in descs.iter_mut().enumerate() {
        if i + 1 < n {
            d.flags |= F_NEXT;
            d.next = first + i as u16 + 1;
        }
    }
}

/// `vring_need_event()`: whether moving an index from `old` to `new` crosses `event`.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Bytes a queue of `size` entries takes (rings page-aligned as legacy layouts do).
pub fn queue_bytes(size: u16) -> u64 {
    let s = u64::from(size);
    let used = align(DESC_LEN * s + 6 + 2 * s, 4096);
    align(used + 6 + 8 * s, 4096)
}

/// Rounds `x` up to a multiple of `to` (a power of two).
pub fn align(x: u64, to: u64) -> u64 {
    (x + to - 1) & !(to - 1)
}

/// A split virtqueue owned by the driver.
#[derive(Debug)]
pub struct SplitQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    event_idx: bool,
    /// Our copy of `avail.idx`.
    avail_idx: u16,
    /// `avail.idx` when the device was last kicked.
    kicked_idx: u16,
    /// Next used entry to read.
    last_used: u16,
}

impl SplitQueue {
    /// A queue of `size` entries whose rings start at guest address `base`.
    pub fn new(base: u64, size: u16, event_idx: bool) -> Self {
        let s = u64::from(size);
        let avail = base + DESC_LEN * s;
        Self {
            size,
            desc: base,
            avail,
            used: base + align(DESC_LEN * s + 6 + 2 * s, 4096),
            event_idx,
            avail_idx: 0,
            kicked_idx: 0,
            last_used: 0,
        }
    }

    fn err(&self, addr: u64) -> impl FnOnce(vm_memory::GuestMemoryError) -> VringError {
        let base = self.desc;
        move |source| VringError { base, addr, source }
    }

    /// Writes `descs` into the descriptor table from entry `first` on.
    pub fn write_descs(
        &self,
        mem: &GuestMemoryMmap,
        first: u16,
        descs: &[Desc],
    ) -> Result<(), VringError> {
        write_table(mem, self.desc + DESC_LEN * u64::from(first), descs)
    }

    /// Puts the chain at `head` in the available ring; the device sees it after `publish`.
    pub fn push(&mut self, mem: &GuestMemoryMmap, head: u16) -> Result<(), VringError> {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_slice(&head.to_le_bytes(), GuestAddress(slot))
            .map_err(self.err(slot))?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Ok(())
    }

    /// Publishes the pushed chains; returns whether the device wants a kick.
    pub fn publish(&mut self, mem: &GuestMemoryMmap) -> Result<bool, VringError> {
        if self.avail_idx == self.kicked_idx {
            return Ok(false);
        }
        let idx = self.avail + 2;
        // Release: descriptors and ring entries are visible before the index.
        mem.store(self.avail_idx, GuestAddress(idx), Ordering::Release)
            .map_err(self.err(idx))?;
        // The index store must be visible before we read the device's suppression state.
        fence(Ordering::SeqCst);
        let (old, new) = (self.kicked_idx, self.avail_idx);
        self.kicked_idx = new;
        if self.event_idx {
            let at = self.used + 4 + 8 * u64::from(self.size);
            let event: u16 = mem
                .load(GuestAddress(at), Ordering::Acquire)
                .map_err(self.err(at))?;
            Ok(need_event(event, new, old))
        } else {
            let flags: u16 = mem
                .load(GuestAddress(self.used), Ordering::Acquire)
                .map_err(self.err(self.used))?;
            Ok(flags & USED_F_NO_NOTIFY == 0)
        }
    }

    /// The next used entry (descriptor head, bytes written), if the device added one.
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Result<Option<(u32, u32)>, VringError> {
        let at = self.used + 2;
        let idx: u16 = mem
            .load(GuestAddress(at), Ordering::Acquire)
            .map_err(self.err(at))?;
        if idx == self.last_used {
            return Ok(None);
        }
        let elem = self.used + 4 + 8 * u64::from(self.last_used % self.size);
        let mut b = [0u8; 8];
        mem.read_slice(&mut b, GuestAddress(elem))
            .map_err(self.err(elem))?;
        self.last_used = self.last_used.wrapping_add(1);
        let id = u32::from_le_bytes(b[..4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(b[4..].try_into().expect("4 bytes"));
        Ok(Some((id, len)))
    }

    /// Asks for an interrupt at the next used entry (`virtqueue_enable_cb`); returns
    /// whether entries arrived meanwhile, which the caller must read before sleeping.
    pub fn arm(&mut self, mem: &GuestMemoryMmap) -> Result<bool, VringError> {
        if self.event_idx {
            let at = self.avail + 4 + 2 * u64::from(self.size);
            mem.store(self.last_used, GuestAddress(at), Ordering::Release)
                .map_err(self.err(at))?;
        }
        fence(Ordering::SeqCst);
        let at = self.used + 2;
        let idx: u16 = mem
            .load(GuestAddress(at), Ordering::Acquire)
            .map_err(self.err(at))?;
        Ok(idx != self.last_used)
    }
}

/// Writes a descriptor table (the ring's, or an indirect one) at `addr`.
pub fn write_table(mem: &GuestMemoryMmap, addr: u64, descs: &[Desc]) -> Result<(), VringError> {
    let mut b = Vec::with_capacity(descs.len() * DESC_LEN as usize);
    for d in descs {
        b.extend_from_slice(&d.encode());
    }
    mem.write_slice(&b, GuestAddress(addr))
        .map_err(|source| VringError {
            base: addr,
            addr,
            source,
        })
}

#[cfg(test)]
#[path = "vring_tests.rs"]
mod tests;
