//! Guest memory past the rings: one slot per request in flight, holding the request's
//! descriptors the way Linux's virtio-fs lays them out (in header, argument buffer,
//! payload pages; out header, reply argument buffer, reply pages), in an indirect table
//! when the device offers INDIRECT_DESC, else chained in the ring.

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::fuse::{Request, IN_HEADER_LEN, OUT_HEADER_LEN};
use crate::vring::{align, chain, write_table, Desc, SplitQueue, VringError, DESC_LEN, F_INDIRECT};

/// Guest page size: payloads are split at page boundaries.
pub const PAGE: u64 = 4096;
/// Room for the in header and the arguments (names, batch forgets).
const ARGS_AREA: u64 = 2 * PAGE;
/// Where the arguments start after the header, in the request area.
const ARGS_AT: u64 = 64;
/// Descriptors of a chain in the ring when there are no indirect tables (payloads are
/// then one descriptor).
pub const DIRECT_DESCS: u16 = 6;

/// Errors laying out or reading back a slot.
#[derive(Debug, Error)]
pub enum SlotError {
    #[error("slot {slot}: {what} of {len} bytes does not fit ({room} bytes)")]
    TooBig {
        slot: usize,
        what: &'static str,
        len: u64,
        room: u64,
    },
    #[error("slot {slot}: guest memory access failed: {source}")]
    Memory {
        slot: usize,
        source: vm_memory::GuestMemoryError,
    },
    #[error(transparent)]
    Ring(#[from] VringError),
}

/// Addresses of the slots.
#[derive(Debug, Clone)]
pub struct Slots {
    base: u64,
    io_max: u64,
    count: usize,
    indirect: bool,
}

impl Slots {
    /// `count` slots after `rings_end`, each able to carry `io_max` payload bytes.
    pub fn new(rings_end: u64, count: usize, io_max: u32, indirect: bool) -> Self {
        Self {
            base: align(rings_end, PAGE),
            io_max: align(u64::from(io_max), PAGE),
            count,
            indirect,
        }
    }

    fn table_bytes(&self) -> u64 {
        align((4 + self.io_max / PAGE) * DESC_LEN, PAGE)
    }

    fn stride(&self) -> u64 {
        self.table_bytes() + 2 * (ARGS_AREA + self.io_max)
    }

    /// Guest memory needed up to the end of the last slot.
    pub fn end(&self) -> u64 {
        self.base + self.stride() * self.count as u64
    }

    fn table(&self, slot: usize) -> u64 {
        self.base + self.stride() * slot as u64
    }

    fn request(&self, slot: usize) -> u64 {
        self.table(slot) + self.table_bytes()
    }

    fn data_out(&self, slot: usize) -> u64 {
        self.request(slot) + ARGS_AREA
    }

    fn reply(&self, slot: usize) -> u64 {
        self.data_out(slot) + self.io_max
    }

    /// Where a reply's pages start.
    pub fn data_in(&self, slot: usize) -> u64 {
        self.reply(slot) + ARGS_AREA
    }

    /// The ring entry a slot's chain starts at.
    pub fn head(&self, slot: usize) -> u16 {
        if self.indirect {
            slot as u16
        } else {
            slot as u16 * DIRECT_DESCS
        }
    }

    /// The slot whose chain starts at ring entry `head`.
    pub fn slot_of(&self, head: u32) -> Option<usize> {
        let per = if self.indirect {
            1
        } else {
            u32::from(DIRECT_DESCS)
        };
        let slot = (head / per) as usize;
        (head.is_multiple_of(per) && slot < self.count).then_some(slot)
    }

    /// The descriptors of `req` in `slot`, in chain order.
    pub fn descs(&self, slot: usize, req: &Request) -> Result<Vec<Desc>, SlotError> {
        let too_big = |what, len: u64, room| SlotError::TooBig {
            slot,
            what,
            len,
            room,
        };
        let args = req.args.len() as u64;
        if args > ARGS_AREA - ARGS_AT {
            return Err(too_big("arguments", args, ARGS_AREA - ARGS_AT));
        }
        let reply_args = u64::from(req.reply_args);
        if reply_args > ARGS_AREA - ARGS_AT {
            return Err(too_big("reply arguments", reply_args, ARGS_AREA - ARGS_AT));
        }
        for (what, len) in [("payload", req.data_out), ("reply payload", req.data_in)] {
            if u64::from(len) > self.io_max {
                return Err(too_big(what, u64::from(len), self.io_max));
            }
        }
        let mut v = vec![Desc::new(self.request(slot), IN_HEADER_LEN as u32, false)];
        if args > 0 {
            v.push(Desc::new(self.request(slot) + ARGS_AT, args as u32, false));
        }
        self.pages(&mut v, self.data_out(slot), req.data_out, false);
        if !req.is_forget() {
            v.push(Desc::new(self.reply(slot), OUT_HEADER_LEN as u32, true));
            if reply_args > 0 {
                v.push(Desc::new(self.reply(slot) + ARGS_AT, req.reply_args, true));
            }
            self.pages(&mut v, self.data_in(slot), req.data_in, true);
        }
        Ok(v)
    }

    /// Payload descriptors: a page each through an indirect table, else one.
    fn pages(&self, v: &mut Vec<Desc>, addr: u64, len: u32, write: bool) {
        if len == 0 {
            return;
        }
        if !self.indirect {
            v.push(Desc::new(addr, len, write));
            return;
        }
        let mut off = 0;
        while off < len {
            let n = (len - off).min(PAGE as u32);
            v.push(Desc::new(addr + u64::from(off), n, write));
            off += n;
        }
    }

    /// Writes `req` with `header` into `slot` and pushes its chain on `vq` (unpublished).
    pub fn submit(
        &self,
        mem: &GuestMemoryMmap,
        vq: &mut SplitQueue,
        slot: usize,
        header: &[u8],
        req: &Request,
    ) -> Result<(), SlotError> {
        let mem_err = |source| SlotError::Memory { slot, source };
        let mut descs = self.descs(slot, req)?;
        mem.write_slice(header, GuestAddress(self.request(slot)))
            .map_err(mem_err)?;
        mem.write_slice(&req.args, GuestAddress(self.request(slot) + ARGS_AT))
            .map_err(mem_err)?;
        let head = self.head(slot);
        if self.indirect {
            // Entries of an indirect table chain by their index in the table.
            chain(&mut descs, 0);
            write_table(mem, self.table(slot), &descs)?;
            let table_len = (descs.len() as u64 * DESC_LEN) as u32;
            let mut d = Desc::new(self.table(slot), table_len, false);
            d.flags = F_INDIRECT;
            vq.write_descs(mem, head, &[d])?;
        } else {
            chain(&mut descs, head);
            vq.write_descs(mem, head, &descs)?;
        }
        vq.push(mem, head)?;
        Ok(())
    }

    /// The reply in `slot`: the out header bytes and the reply arguments.
    pub fn reply_bytes(
        &self,
        mem: &GuestMemoryMmap,
        slot: usize,
        reply_args: u32,
    ) -> Result<(Vec<u8>, Vec<u8>), SlotError> {
        let mem_err = |source| SlotError::Memory { slot, source };
        let mut h = vec![0u8; OUT_HEADER_LEN];
        mem.read_slice(&mut h, GuestAddress(self.reply(slot)))
            .map_err(mem_err)?;
        let mut a = vec![0u8; reply_args as usize];
        mem.read_slice(&mut a, GuestAddress(self.reply(slot) + ARGS_AT))
            .map_err(mem_err)?;
        Ok((h, a))
    }

    /// The first `len` bytes of the reply pages of `slot`.
    pub fn reply_data(
        &self,
        mem: &GuestMemoryMmap,
        slot: usize,
        len: usize,
    ) -> Result<Vec<u8>, SlotError> {
        let mut d = vec![0u8; len];
        mem.read_slice(&mut d, GuestAddress(self.data_in(slot)))
            .map_err(|source| SlotError::Memory { slot, source })?;
        Ok(d)
    }
}

#[cfg(test)]
#[path = "slots_tests.rs"]
mod tests;
