//! The vhost-user frontend: what QEMU does for `vhost-user-fs-device` before the guest
//! runs. It shares a memfd as guest memory (SET_MEM_TABLE), negotiates features the way a
//! Linux guest acks them, sets up the hiprio queue (0) and one request queue (1), and
//! waits for used-buffer notifications on the call eventfds.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};
use vm_memory::{GuestMemoryRegion, MmapRegion};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::vring::{queue_bytes, SplitQueue};

/// `VIRTIO_F_VERSION_1`.
const F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_RING_F_INDIRECT_DESC`.
const F_INDIRECT_DESC: u64 = 1 << 28;
/// `VIRTIO_RING_F_EVENT_IDX`.
const F_EVENT_IDX: u64 = 1 << 29;
/// hiprio (FORGET) and the one request queue.
pub const NUM_QUEUES: usize = 2;
pub const HIPRIO: usize = 0;
pub const REQUEST: usize = 1;

/// Errors setting up or driving the connection; each names the socket.
#[derive(Debug, Error)]
pub enum FrontendError {
    #[error("vhost-user socket {socket}: cannot connect within {secs} s: {source}")]
    Connect {
        socket: PathBuf,
        secs: u64,
        source: vhost::Error,
    },
    #[error("vhost-user socket {socket}: {step} failed: {source}")]
    Protocol {
        socket: PathBuf,
        step: &'static str,
        source: vhost::Error,
    },
    #[error("vhost-user socket {socket}: the backend lacks {what}")]
    Missing { socket: PathBuf, what: &'static str },
    #[error("vhost-user socket {socket}: {what}: {source}")]
    Io {
        socket: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("vhost-user socket {socket}: guest memory of {size} bytes: {message}")]
    Memory {
        socket: PathBuf,
        size: u64,
        message: String,
    },
    #[error("vhost-user socket {socket}: no used buffer on queue {queue} within {secs} s")]
    Timeout {
        socket: PathBuf,
        queue: usize,
        secs: u64,
    },
}

/// A negotiated connection with its guest memory and queues.
pub struct Connection {
    pub socket: PathBuf,
    pub mem: GuestMemoryMmap,
    pub queues: [SplitQueue; NUM_QUEUES],
    /// Whether chains go through indirect descriptor tables, as Linux does when offered.
    pub indirect: bool,
    pub features: u64,
    // Dropping the frontend closes the socket, which ends the backend's connection.
    _fe: Frontend,
    kick: [EventFd; NUM_QUEUES],
    call: [EventFd; NUM_QUEUES],
    epoll: Epoll,
}

fn memfd(size: u64) -> std::io::Result<File> {
    // SAFETY: the name is a NUL-terminated literal; memfd_create reads nothing else.
    let fd = unsafe { libc::memfd_create(c"hutch-fsload-guest".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

impl Connection {
    /// Connects to `socket` (retrying until `wait` passes, while the server starts), maps
    /// `mem_size` bytes of guest memory and starts both queues with `queue_size` entries,
    /// their rings at the start of guest memory.
    pub fn open(
        socket: &Path,
        wait: Duration,
        mem_size: u64,
        queue_size: u16,
    ) -> Result<Self, FrontendError> {
        let sock = socket.to_path_buf();
        let proto = |step| {
            let socket = sock.clone();
            move |source| FrontendError::Protocol {
                socket,
                step,
                source,
            }
        };
        let io = |what| {
            let socket = sock.clone();
            move |source| FrontendError::Io {
                socket,
                what,
                source,
            }
        };
        let start = Instant::now();
        let mut fe = loop {
            match Frontend::connect(socket, NUM_QUEUES as u64) {
                Ok(fe) => break fe,
                Err(source) if start.elapsed() >= wait => {
                    return Err(FrontendError::Connect {
                        socket: sock,
                        secs: wait.as_secs(),
                        source,
                    })
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        };

        // Negotiation, in QEMU's order.
        fe.set_owner().map_err(proto("SET_OWNER"))?;
        let offered = fe.get_features().map_err(proto("GET_FEATURES"))?;
        let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if offered & F_VERSION_1 == 0 || offered & protocol == 0 {
            return Err(FrontendError::Missing {
                socket: sock,
                what: "VIRTIO_F_VERSION_1 or VHOST_USER_F_PROTOCOL_FEATURES",
            });
        }
        let features = offered & (F_VERSION_1 | F_INDIRECT_DESC | F_EVENT_IDX | protocol);
        fe.set_features(features).map_err(proto("SET_FEATURES"))?;
        let pf = fe
            .get_protocol_features()
            .map_err(proto("GET_PROTOCOL_FEATURES"))?;
        let want = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
        fe.set_protocol_features(pf & want)
            .map_err(proto("SET_PROTOCOL_FEATURES"))?;
        if pf.contains(VhostUserProtocolFeatures::MQ) {
            let n = fe.get_queue_num().map_err(proto("GET_QUEUE_NUM"))?;
            if n < NUM_QUEUES as u64 {
                return Err(FrontendError::Missing {
                    socket: sock,
                    what: "a request queue besides hiprio",
                });
            }
        }

        let memory = |message: String| FrontendError::Memory {
            socket: sock.clone(),
            size: mem_size,
            message,
        };
        let file = memfd(mem_size).map_err(|e| memory(e.to_string()))?;
        let region = MmapRegion::from_file(FileOffset::new(file, 0), mem_size as usize)
            .map_err(|e| memory(e.to_string()))?;
        let region = GuestRegionMmap::new(region, GuestAddress(0))
            .ok_or_else(|| memory("overflow".into()))?;
        let info = VhostUserMemoryRegionInfo::from_guest_region(&region)
            .map_err(|e| memory(e.to_string()))?;
        let host_base = region.as_ptr() as u64;
        debug_assert_eq!(region.len(), mem_size);
        let mem = GuestMemoryMmap::from_regions(vec![region]).map_err(|e| memory(e.to_string()))?;
        fe.set_mem_table(&[info]).map_err(proto("SET_MEM_TABLE"))?;

        let event_idx = features & F_EVENT_IDX != 0;
        let queues =
            [0, 1].map(|q| SplitQueue::new(q * queue_bytes(queue_size), queue_size, event_idx));
        let new_fd = || EventFd::new(EFD_NONBLOCK).map_err(io("eventfd"));
        let kick = [new_fd()?, new_fd()?];
        let call = [new_fd()?, new_fd()?];
        let epoll = Epoll::new().map_err(io("epoll_create"))?;
        for (q, vq) in queues.iter().enumerate() {
            let host = |gpa: u64| host_base + gpa;
            fe.set_vring_num(q, queue_size)
                .map_err(proto("SET_VRING_NUM"))?;
            fe.set_vring_base(q, 0).map_err(proto("SET_VRING_BASE"))?;
            let cfg = VringConfigData {
                queue_max_size: queue_size,
                queue_size,
                flags: 0,
                desc_table_addr: host(vq.desc),
                used_ring_addr: host(vq.used),
                avail_ring_addr: host(vq.avail),
                log_addr: None,
            };
            fe.set_vring_addr(q, &cfg)
                .map_err(proto("SET_VRING_ADDR"))?;
            fe.set_vring_kick(q, &kick[q])
                .map_err(proto("SET_VRING_KICK"))?;
            fe.set_vring_call(q, &call[q])
                .map_err(proto("SET_VRING_CALL"))?;
            let ev = EpollEvent::new(EventSet::IN, q as u64);
            epoll
                .ctl(ControlOperation::Add, call[q].as_raw_fd(), ev)
                .map_err(io("epoll_ctl"))?;
        }
        for q in 0..NUM_QUEUES {
            fe.set_vring_enable(q, true)
                .map_err(proto("SET_VRING_ENABLE"))?;
        }
        Ok(Self {
            socket: sock,
            mem,
            queues,
            indirect: features & F_INDIRECT_DESC != 0,
            features,
            _fe: fe,
            kick,
            call,
            epoll,
        })
    }

    /// Publishes queue `q`'s new chains and kicks the device if it asked for it.
    pub fn flush(&mut self, q: usize) -> Result<(), FrontendError> {
        let kick = self.queues[q]
            .publish(&self.mem)
            .map_err(|e| self.io_err("avail ring", e))?;
        if kick {
            self.kick[q].write(1).map_err(|e| FrontendError::Io {
                socket: self.socket.clone(),
                what: "kick eventfd",
                source: e,
            })?;
        }
        Ok(())
    }

    fn io_err(&self, what: &'static str, e: impl std::fmt::Display) -> FrontendError {
        FrontendError::Io {
            socket: self.socket.clone(),
            what,
            source: std::io::Error::other(e.to_string()),
        }
    }

    /// Used entries of queue `q` (head, length), sleeping on the call eventfd until at least
    /// one arrives or `timeout` passes.
    pub fn wait_used(
        &mut self,
        q: usize,
        timeout: Duration,
    ) -> Result<Vec<(u32, u32)>, FrontendError> {
        let start = Instant::now();
        let mut out = Vec::new();
        loop {
            while let Some(e) = self.queues[q]
                .pop_used(&self.mem)
                .map_err(|e| self.io_err("used ring", e))?
            {
                out.push(e);
            }
            if !out.is_empty() {
                return Ok(out);
            }
            if self.queues[q]
                .arm(&self.mem)
                .map_err(|e| self.io_err("used event", e))?
            {
                continue;
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(FrontendError::Timeout {
                    socket: self.socket.clone(),
                    queue: q,
                    secs: timeout.as_secs(),
                });
            }
            let mut events = [EpollEvent::default(); NUM_QUEUES];
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            match self.epoll.wait(ms, &mut events) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err("epoll_wait", e)),
            }
            // Drain every counter (level-triggered epoll would spin on the other queue's);
            // each wait reads its used ring before sleeping, so nothing is lost.
            for call in &self.call {
                let _ = call.read();
            }
        }
    }
}
