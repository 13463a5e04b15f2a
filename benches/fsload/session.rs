//! A FUSE session over one vhost-user connection: FUSE_INIT as Linux 6.1 sends it, then
//! requests in slots (one per request in flight) on the request queue, FORGETs on hiprio.

use std::path::Path;
use std::time::Duration;

use thiserror::Error;

use crate::frontend::{Connection, FrontendError, HIPRIO, REQUEST};
use crate::fuse::{op, op_name, Request, LINUX_6_1_INIT_FLAGS, SECURITY_CTX};
use crate::reply::{InitOut, OutHeader, ReplyError};
use crate::slots::{SlotError, Slots, DIRECT_DESCS};
use crate::vring::queue_bytes;

/// Ring entries per queue, QEMU's default `queue-size` for vhost-user-fs.
pub const QUEUE_SIZE: u16 = 128;
/// How long a reply may take before the run is declared hung.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of a session; each names the socket.
#[derive(Debug, Error)]
pub enum SessionError {
    #[error(transparent)]
    Frontend(#[from] FrontendError),
    #[error("{socket}: {source}")]
    Slot { socket: String, source: SlotError },
    #[error("{socket}: {source}")]
    Reply { socket: String, source: ReplyError },
    #[error(
        "{socket}: queue depth {depth} does not fit {QUEUE_SIZE} ring entries ({per} per request)"
    )]
    Depth {
        socket: String,
        depth: usize,
        per: u16,
    },
    #[error("{socket}: the used ring returned unknown head {head}")]
    UnknownHead { socket: String, head: u32 },
    #[error("{socket}: the server takes at most {max} bytes per READ/WRITE, {want} asked")]
    IoSize { socket: String, max: u32, want: u32 },
}

/// A reply, decoded as far as the transport goes.
#[derive(Debug, Clone)]
pub struct Reply {
    pub opcode: u32,
    pub header: OutHeader,
    /// The reply's fixed struct (as much as the request left room for).
    pub args: Vec<u8>,
    /// The reply pages, copied for READDIR and READDIRPLUS only.
    pub data: Vec<u8>,
}

impl Reply {
    /// Fails with the server's errno, if any.
    pub fn ok(&self) -> Result<&Self, ReplyError> {
        match self.header.errno() {
            Some(errno) => Err(ReplyError::Errno {
                op: op_name(self.opcode),
                errno,
            }),
            None => Ok(self),
        }
    }
}

/// A finished request.
#[derive(Debug)]
pub struct Done {
    pub slot: usize,
    pub reply: Reply,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    unique: u64,
    opcode: u32,
    reply_args: u32,
}

/// One connection's FUSE session.
pub struct Session {
    conn: Connection,
    slots: Slots,
    depth: usize,
    unique: u64,
    inflight: Vec<Option<InFlight>>,
    pub init: InitOut,
}

impl Session {
    /// Connects to `socket`, with `depth` request slots of `io_max` payload bytes, and
    /// sends FUSE_INIT.
    pub fn open(
        socket: &Path,
        wait: Duration,
        depth: usize,
        io_max: u32,
    ) -> Result<Self, SessionError> {
        let name = socket.display().to_string();
        let rings = 2 * queue_bytes(QUEUE_SIZE);
        // One more slot for FORGETs on hiprio.
        let mem_size = Slots::new(rings, depth + 1, io_max, false).end();
        let conn = Connection::open(socket, wait, mem_size, QUEUE_SIZE)?;
        let per = if conn.indirect { 1 } else { DIRECT_DESCS };
        if depth == 0 || (depth + 1) * usize::from(per) > usize::from(QUEUE_SIZE) {
            return Err(SessionError::Depth {
                socket: name,
                depth,
                per,
            });
        }
        let slots = Slots::new(rings, depth + 1, io_max, conn.indirect);
        let mut s = Self {
            conn,
            slots,
            depth,
            unique: 0,
            inflight: vec![None; depth + 1],
            init: InitOut {
                major: 0,
                minor: 0,
                flags: 0,
                max_write: 0,
                max_pages: 0,
            },
        };
        let reply = s.call(&Request::init(LINUX_6_1_INIT_FLAGS))?;
        s.init = InitOut::parse(&reply.args).map_err(|e| s.reply_err(e))?;
        if s.init.max_io() < io_max {
            return Err(SessionError::IoSize {
                socket: name,
                max: s.init.max_io(),
                want: io_max,
            });
        }
        Ok(s)
    }

    pub fn socket(&self) -> String {
        self.conn.socket.display().to_string()
    }

    /// The virtio features both sides agreed on.
    pub fn virtio_features(&self) -> u64 {
        self.conn.features
    }

    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Whether CREATE must carry a security context header.
    pub fn secctx(&self) -> bool {
        self.init.flags & SECURITY_CTX != 0
    }

    pub fn reply_err(&self, source: ReplyError) -> SessionError {
        SessionError::Reply {
            socket: self.socket(),
            source,
        }
    }

    fn slot_err(&self, source: SlotError) -> SessionError {
        SessionError::Slot {
            socket: self.socket(),
            source,
        }
    }

    /// Lays `req` out in `slot` (which must be free) on the request queue; it reaches
    /// the device at the next `flush`.
    pub fn submit(&mut self, slot: usize, req: &Request) -> Result<(), SessionError> {
        let q = if req.is_forget() { HIPRIO } else { REQUEST };
        self.unique += 1;
        let header = req.header(self.unique, 0, 0, std::process::id());
        let (mem, vq) = (&self.conn.mem, &mut self.conn.queues[q]);
        if let Err(e) = self.slots.submit(mem, vq, slot, &header, req) {
            return Err(self.slot_err(e));
        }
        self.inflight[slot] = Some(InFlight {
            unique: self.unique,
            opcode: req.opcode,
            reply_args: req.reply_args,
        });
        Ok(())
    }

    /// Publishes submitted requests and kicks the device if it wants it.
    pub fn flush(&mut self) -> Result<(), SessionError> {
        Ok(self.conn.flush(REQUEST)?)
    }

    /// Waits for at least one reply on the request queue.
    pub fn wait(&mut self) -> Result<Vec<Done>, SessionError> {
        let used = self.conn.wait_used(REQUEST, REPLY_TIMEOUT)?;
        let mut out = Vec::with_capacity(used.len());
        for (head, _len) in used {
            let Some((slot, f)) = self
                .slots
                .slot_of(head)
                .and_then(|s| self.inflight[s].take().map(|f| (s, f)))
            else {
                return Err(SessionError::UnknownHead {
                    socket: self.socket(),
                    head,
                });
            };
            let (h, args) = self
                .slots
                .reply_bytes(&self.conn.mem, slot, f.reply_args)
                .map_err(|e| self.slot_err(e))?;
            let header = OutHeader::parse(&h, f.opcode, f.unique).map_err(|e| self.reply_err(e))?;
            let dir = matches!(f.opcode, op::READDIR | op::READDIRPLUS);
            let data = if dir && header.errno().is_none() {
                let len = header.body_len();
                self.slots
                    .reply_data(&self.conn.mem, slot, len)
                    .map_err(|e| self.slot_err(e))?
            } else {
                Vec::new()
            };
            let reply = Reply {
                opcode: f.opcode,
                header,
                args,
                data,
            };
            out.push(Done { slot, reply });
        }
        Ok(out)
    }

    /// Sends one request and waits for its reply (setup, not measured).
    pub fn call(&mut self, req: &Request) -> Result<Reply, SessionError> {
        self.submit(0, req)?;
        self.flush()?;
        loop {
            if let Some(done) = self.wait()?.pop() {
                return Ok(done.reply);
            }
        }
    }

    /// Drops lookup counts with BATCH_FORGET on hiprio, as the guest's inode eviction would.
    pub fn forget(&mut self, entries: &[(u64, u64)]) -> Result<(), SessionError> {
        // 8 + 16 * 250 bytes fit the argument area.
        for chunk in entries.chunks(250) {
            let slot = self.depth;
            self.submit(slot, &Request::batch_forget(chunk))?;
            self.inflight[slot] = None;
            self.conn.flush(HIPRIO)?;
            self.conn.wait_used(HIPRIO, REPLY_TIMEOUT)?;
        }
        Ok(())
    }
}
