//! A minimal virtio-fs driver for tests: lays FUSE requests out in guest memory as
//! descriptor chains on a mock split queue, and reads the replies back.

use std::mem::size_of;

use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, GetattrIn, InHeader, InitIn, Opcode, OutHeader, ROOT_ID,
};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::virtio::fs::FsDevice;

/// Size of the test queues.
pub const QUEUE_LEN: u16 = 256;
/// Guest memory given to the tests.
pub const MEM_SIZE: u64 = 0x100_0000;
/// Where buffers start (the rings live below).
const BUF_BASE: u64 = 0x10_0000;

/// One descriptor of a chain.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

impl Desc {
    pub fn read(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: false,
        }
    }

    pub fn write(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: true,
        }
    }
}

/// A request in flight.
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    pub head: u16,
    pub unique: u64,
    /// Writable buffers: (address, length), in chain order.
    pub reply: [(u64, u32); 2],
}

/// The driver side of one queue.
pub struct Driver<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub vq: MockSplitQueue<'a, GuestMemoryMmap>,
    next_desc: u16,
    next_buf: u64,
    next_unique: u64,
    next_used: u16,
}

/// 16 MiB of zeroed guest memory at address 0.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

impl<'a> Driver<'a> {
    pub fn new(mem: &'a GuestMemoryMmap) -> Self {
        Self {
            mem,
            vq: MockSplitQueue::new(mem, QUEUE_LEN),
            next_desc: 0,
            next_buf: BUF_BASE,
            next_unique: 1,
            next_used: 0,
        }
    }

    /// The device-side queue over the same rings.
    pub fn queue(&self) -> Queue {
        self.vq.create_queue().unwrap()
    }

    /// Allocates `len` zeroed bytes of guest memory.
    pub fn alloc(&mut self, len: u32) -> u64 {
        let addr = self.next_buf;
        self.next_buf += (u64::from(len.max(8)) + 7) & !7;
        assert!(self.next_buf <= MEM_SIZE, "test guest memory exhausted");
        addr
    }

    /// The table slot the next chain starts at.
    pub fn next_desc(&self) -> u16 {
        self.next_desc
    }

    /// Writes raw descriptors at the next free table slots and makes the first available.
    pub fn add_raw(&mut self, descs: &[RawDescriptor]) -> u16 {
        let head = self.next_desc;
        self.vq.add_desc_chains(descs, head).unwrap();
        self.next_desc += descs.len() as u16;
        head
    }

    /// Adds a chain of `descs`, linked in order.
    pub fn add_chain(&mut self, descs: &[Desc]) -> u16 {
        let head = self.next_desc;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut flags = if d.write {
                    VRING_DESC_F_WRITE as u16
                } else {
                    0
                };
                let mut next = 0;
                if i + 1 < descs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                    next = head + i as u16 + 1;
                }
                RawDescriptor::from(SplitDescriptor::new(d.addr, d.len, flags, next))
            })
            .collect();
        self.add_raw(&raw)
    }

    /// Puts `head` in the available ring as is (even if it is not a valid index).
    pub fn push_avail(&mut self, head: u16) {
        let idx: u16 = self.vq.avail().idx().load();
        let slot = self
            .vq
            .avail_addr()
            .unchecked_add(4 + 2 * u64::from(idx % QUEUE_LEN));
        self.mem.write_obj(head, slot).unwrap();
        self.vq.avail().idx().store(idx.wrapping_add(1));
    }

    /// Lays out a FUSE request with `body`, and writable buffers of `reply_lens` (one or two).
    pub fn request(
        &mut self,
        opcode: Opcode,
        nodeid: u64,
        body: &[u8],
        reply_lens: &[u32],
    ) -> Pending {
        self.request_raw(opcode as u32, nodeid, body, reply_lens)
    }

    /// [`Self::request`] with an opcode fuse-backend-rs has no name for.
    pub fn request_raw(
        &mut self,
        opcode: u32,
        nodeid: u64,
        body: &[u8],
        reply_lens: &[u32],
    ) -> Pending {
        let unique = self.next_unique;
        self.next_unique += 1;
        let total = size_of::<InHeader>() + body.len();
        let header = InHeader {
            len: total as u32,
            opcode,
            unique,
            nodeid,
            uid: 0,
            gid: 0,
            pid: 1,
            padding: 0,
        };
        let req = self.alloc(total as u32);
        self.mem
            .write_slice(header.as_slice(), GuestAddress(req))
            .unwrap();
        self.mem
            .write_slice(body, GuestAddress(req + size_of::<InHeader>() as u64))
            .unwrap();

        let mut descs = vec![Desc::read(req, total as u32)];
        let mut reply = [(0, 0); 2];
        for (slot, &len) in reply.iter_mut().zip(reply_lens) {
            let addr = self.alloc(len);
            *slot = (addr, len);
            descs.push(Desc::write(addr, len));
        }
        let head = self.add_chain(&descs);
        Pending {
            head,
            unique,
            reply,
        }
    }

    /// GETATTR of the share's root, with room for its answer.
    pub fn getattr_root(&mut self) -> Pending {
        let reply = (size_of::<OutHeader>() + size_of::<AttrOut>()) as u32;
        self.request(
            Opcode::Getattr,
            ROOT_ID,
            GetattrIn::default().as_slice(),
            &[reply],
        )
    }

    /// FUSE_INIT as a 7.33 kernel sends it.
    pub fn init(&mut self) -> Pending {
        let body = InitIn {
            major: 7,
            minor: 33,
            max_readahead: 0x2_0000,
            flags: 0,
        };
        self.request(Opcode::Init, 0, body.as_slice(), &[256])
    }

    /// Used ring entries (id, len) added since the last call.
    pub fn used(&mut self) -> Vec<(u32, u32)> {
        let idx: u16 = self.vq.used().idx().load();
        let mut out = Vec::new();
        while self.next_used != idx {
            let elem = self
                .vq
                .used()
                .ring()
                .ref_at(usize::from(self.next_used % QUEUE_LEN))
                .unwrap()
                .load();
            out.push((elem.id(), elem.len()));
            self.next_used = self.next_used.wrapping_add(1);
        }
        out
    }

    /// The reply header, and the bytes after it (from the first writable buffer, then the
    /// second one, up to the length the header announces).
    pub fn reply(&self, p: &Pending) -> (OutHeader, Vec<u8>) {
        let (first, first_len) = p.reply[0];
        let header: OutHeader = self.mem.read_obj(GuestAddress(first)).unwrap();
        let body_len = (header.len as usize).saturating_sub(size_of::<OutHeader>());
        let mut body = vec![0u8; body_len];
        let in_first = (first_len as usize - size_of::<OutHeader>()).min(body_len);
        self.mem
            .read_slice(
                &mut body[..in_first],
                GuestAddress(first + size_of::<OutHeader>() as u64),
            )
            .unwrap();
        if in_first < body_len {
            let (second, _) = p.reply[1];
            self.mem
                .read_slice(&mut body[in_first..], GuestAddress(second))
                .unwrap();
        }
        (header, body)
    }

    /// Reads a `T` from the start of `body`.
    pub fn parse<T: ByteValued>(body: &[u8]) -> T {
        assert!(body.len() >= size_of::<T>(), "reply too short");
        *T::from_slice(&body[..size_of::<T>()]).unwrap()
    }

    /// Writes `used_event` (driver-written, end of the avail ring).
    pub fn set_used_event(&self, value: u16) {
        let addr = self
            .vq
            .avail_addr()
            .unchecked_add(4 + 2 * u64::from(QUEUE_LEN));
        self.mem.write_obj(value, addr).unwrap();
    }

    /// Reads `avail_event` (device-written, end of the used ring).
    pub fn avail_event(&self) -> u16 {
        let addr = self
            .vq
            .used_addr()
            .unchecked_add(4 + 8 * u64::from(QUEUE_LEN));
        self.mem.read_obj(addr).unwrap()
    }
}

/// Sends the requests `build` lays out, processes the queue, and returns
/// each reply's (error, body) (nothing for a request without reply buffers).
pub fn exchange(
    dev: &FsDevice,
    drv: &mut Driver<'_>,
    queue: &mut virtio_queue::Queue,
    build: impl FnOnce(&mut Driver<'_>) -> Vec<Pending>,
) -> Vec<(i32, Vec<u8>)> {
    let pending = build(drv);
    dev.process_queue(drv.mem, queue).unwrap();
    drv.used();
    pending
        .iter()
        .map(|p| {
            if p.reply[0].1 == 0 {
                // FORGET: no reply.
                return (0, Vec::new());
            }
            let (h, body) = drv.reply(p);
            assert_eq!(h.unique, p.unique);
            (h.error, body)
        })
        .collect()
}

/// A device serving `dir` under `policy`, tagged "work".
pub fn share(dir: &std::path::Path, policy: crate::devices::virtio::fs::SharePolicy) -> FsDevice {
    FsDevice::new(crate::devices::virtio::fs::ShareConfig {
        tag: "work".into(),
        source: dir.into(),
        policy,
    })
    .unwrap()
}

/// FUSE_INIT as Linux 6.1 sends it, with INIT_EXT and `flags2` (where the
/// hutch-private flags live) and 11 reserved words. Returns the reply's
/// (flags, flags2).
pub fn init_ext(
    dev: &FsDevice,
    drv: &mut Driver<'_>,
    q: &mut virtio_queue::Queue,
    flags2: u32,
) -> (u32, u32) {
    init_offering(dev, drv, q, 0, flags2)
}

/// [`init_ext`] offering the standard `flags` too (INIT_EXT is added).
pub fn init_offering(
    dev: &FsDevice,
    drv: &mut Driver<'_>,
    q: &mut virtio_queue::Queue,
    flags: u32,
    flags2: u32,
) -> (u32, u32) {
    const INIT_EXT: u32 = 1 << 30;
    let mut body = Vec::new();
    for word in [7u32, 36, 0x2_0000, flags | INIT_EXT, flags2] {
        body.extend_from_slice(&word.to_le_bytes());
    }
    body.extend_from_slice(&[0u8; 44]);
    let r = exchange(dev, drv, q, |d| {
        vec![d.request(Opcode::Init, 0, &body, &[256])]
    });
    assert_eq!(r[0].0, 0, "INIT answered");
    let word = |at: usize| u32::from_le_bytes(r[0].1[at..at + 4].try_into().unwrap());
    (word(12), word(32))
}

/// The private flags (`flags2`) a fresh device serving an empty directory
/// under `policy` grants to an INIT offering `offered`.
pub fn granted(policy: crate::devices::virtio::fs::SharePolicy, offered: u32) -> u32 {
    let dir = tempfile::tempdir().unwrap();
    let mem = guest_memory();
    let dev = share(dir.path(), policy);
    let mut drv = Driver::new(&mem);
    let mut q = drv.queue();
    init_ext(&dev, &mut drv, &mut q, offered).1
}
