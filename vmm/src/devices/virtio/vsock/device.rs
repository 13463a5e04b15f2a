//! `VsockDevice`: the queues' side of the device, shared by both transports.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use log::{debug, warn};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::host::{self, SocketGuard, STOP_TOKEN};
use super::muxer::{MuxStats, Muxer};
use super::packet::{Hdr, HDR_LEN, MAX_PKT_DATA};
use super::VsockError;

/// Connections at most, by default (each holds a host fd and up to 320 KiB
/// of buffers while its peer is slow).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// What a device serves.
#[derive(Debug, Clone)]
pub struct VsockConfig {
    /// The guest's context id.
    pub guest_cid: u64,
    /// The host Unix socket; guest connections to port P go to `<socket>_P`.
    pub socket: PathBuf,
    /// Cap on connections.
    pub max_connections: usize,
}

impl VsockConfig {
    /// Guest CID 3, the default cap.
    pub fn new(socket: PathBuf) -> Self {
        Self {
            guest_cid: super::GUEST_CID,
            socket,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// A virtio-vsock device. `Send + Sync`: the queues are processed from the
/// transport's threads, the host sockets from the device's own thread.
pub struct VsockDevice {
    cid: u64,
    socket: PathBuf,
    muxer: Arc<Mutex<Muxer>>,
    wake: Arc<EventFd>,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
    malformed: AtomicU64,
    _guard: SocketGuard,
}

impl std::fmt::Debug for VsockDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockDevice")
            .field("cid", &self.cid)
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

fn setup(what: &'static str) -> impl Fn(std::io::Error) -> VsockError {
    move |source| VsockError::Setup { what, source }
}

impl VsockDevice {
    /// Binds the socket and starts the host thread.
    pub fn new(cfg: VsockConfig) -> Result<Self, VsockError> {
        let listener = host::bind(&cfg.socket)?;
        let guard = SocketGuard::new(&cfg.socket);
        let epoll = Arc::new(Epoll::new().map_err(setup("epoll"))?);
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(setup("stop eventfd"))?;
        epoll
            .ctl(
                ControlOperation::Add,
                stop.as_raw_fd(),
                EpollEvent::new(EventSet::IN, STOP_TOKEN),
            )
            .map_err(setup("epoll"))?;
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(setup("wake eventfd"))?);
        let muxer = Muxer::new(
            cfg.guest_cid,
            cfg.socket.clone(),
            listener,
            epoll.clone(),
            cfg.max_connections,
        )
        .map_err(setup("listener"))?;
        let muxer = Arc::new(Mutex::new(muxer));
        let thread = host::spawn_loop(muxer.clone(), epoll, wake.clone())?;
        Ok(Self {
            cid: cfg.guest_cid,
            socket: cfg.socket,
            muxer,
            wake,
            stop,
            thread: Some(thread),
            malformed: AtomicU64::new(0),
            _guard: guard,
        })
    }

    /// The guest's context id.
    pub fn guest_cid(&self) -> u64 {
        self.cid
    }

    /// The host socket path.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// `struct virtio_vsock_config`: `guest_cid`, little-endian.
    pub fn config_space(&self) -> [u8; 8] {
        self.cid.to_le_bytes()
    }

    /// Signalled when the receive queue has work that no driver notify announces.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Descriptor chains dropped because they were malformed.
    pub fn malformed_chains(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// Ends every connection: the driver reset the device (see
    /// `Muxer::reset`).
    pub fn reset(&self) {
        let ended = self.lock().reset();
        if ended > 0 {
            log::info!(
                "virtio-vsock {}: device reset, {ended} connection(s) closed",
                self.socket().display()
            );
        }
    }

    /// The muxer's counters.
    pub fn stats(&self) -> MuxStats {
        self.lock().stats
    }

    /// Open connections and pending host clients.
    pub fn connections(&self) -> usize {
        self.lock().connections()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Muxer> {
        self.muxer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn malformed(&self, queue: &str, e: &dyn std::fmt::Display) {
        let n = self.malformed.fetch_add(1, Ordering::Relaxed);
        if n < 16 {
            warn!("vsock: malformed {queue} chain dropped: {e}");
        } else {
            debug!("vsock: malformed {queue} chain dropped: {e}");
        }
    }

    /// Takes every packet the guest queued on the transmit queue; returns
    /// whether the driver must be notified.
    pub fn process_tx(&self, mem: &GuestMemoryMmap, queue: &mut Queue) -> Result<bool, VsockError> {
        let qerr = |op| queue_err("transmit", op);
        let mut used = false;
        let mut data = Vec::new();
        let mut m = self.lock();
        while let Some(mut chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => {
                    let hdr = Hdr::of(&pkt);
                    data.clear();
                    if let Some(slice) = pkt.data_slice() {
                        data.resize(slice.len(), 0);
                        slice.copy_to(&mut data[..]);
                    }
                    m.handle_tx(&hdr, &data);
                }
                Err(e) => self.malformed("transmit", &e),
            }
            queue
                .add_used(mem, head, 0)
                .map_err(qerr("adding a used element"))?;
            used = true;
        }
        if m.has_rx() {
            let _ = self.wake.write(1);
        }
        drop(m);
        if !used {
            return Ok(false);
        }
        queue
            .needs_notification(mem)
            .map_err(qerr("checking whether to notify"))
    }

    /// Fills the receive queue with waiting packets; returns whether the
    /// driver must be notified.
    pub fn process_rx(&self, mem: &GuestMemoryMmap, queue: &mut Queue) -> Result<bool, VsockError> {
        let qerr = |op| queue_err("receive", op);
        let mut used = false;
        let mut m = self.lock();
        while m.has_rx() {
            let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Err(e) => {
                    self.malformed("receive", &e);
                    0
                }
                Ok(mut pkt) => {
                    let room = pkt.data_slice().map_or(0, |d| d.len());
                    let Some((hdr, data)) = m.pop_rx(room) else {
                        queue.go_to_previous_position();
                        break;
                    };
                    let wrote = pkt.set_header_from_raw(&hdr.to_bytes()).is_ok()
                        && (data.is_empty()
                            || pkt
                                .data_slice()
                                .is_some_and(|d| d.write_slice(&data, 0).is_ok()));
                    if !wrote {
                        self.malformed("receive", &"cannot write the packet");
                    }
                    (HDR_LEN + data.len()) as u32
                }
            };
            queue
                .add_used(mem, head, len)
                .map_err(qerr("adding a used element"))?;
            used = true;
        }
        drop(m);
        if !used {
            return Ok(false);
        }
        queue
            .needs_notification(mem)
            .map_err(qerr("checking whether to notify"))
    }
}

impl Drop for VsockDevice {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // `_guard` removes the socket file.
    }
}

/// Error mapper for a failed operation `op` on queue `queue`.
fn queue_err(
    queue: &'static str,
    op: &'static str,
) -> impl FnOnce(virtio_queue::Error) -> VsockError {
    move |source| VsockError::Queue { op, queue, source }
}
