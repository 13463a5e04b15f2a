//! The vhost-user transport: serves a `VsockDevice` to QEMU's
//! `vhost-user-vsock-device` (which reads `guest_cid` from the backend's
//! config space) over a Unix socket, one frontend connection.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use log::error;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{
    Error as DaemonError, VhostUserBackend, VhostUserDaemon, VringRwLock, VringT,
};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::{VsockDevice, VsockError, NUM_QUEUES, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::F_VERSION_1;

type GuestMem = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// Event id of the device's wake eventfd in the vring worker's epoll set
/// (0..NUM_QUEUES are the queues, NUM_QUEUES the exit event).
const WAKE_EVENT: u16 = NUM_QUEUES as u16 + 1;

/// A `VhostUserBackend` over a `VsockDevice`.
#[derive(Debug)]
pub struct VhostUserVsock {
    dev: Arc<VsockDevice>,
    mem: GuestMem,
}

impl VhostUserVsock {
    /// Wraps `dev`; `mem` must be the `GuestMemoryAtomic` given to the daemon.
    pub fn new(dev: Arc<VsockDevice>, mem: GuestMem) -> Self {
        Self { dev, mem }
    }
}

impl VhostUserBackend for VhostUserVsock {
    type Bitmap = ();
    type Vring = VringRwLock<GuestMem>;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        // QEMU's vhost-user-vsock-device sets up 1024-entry rings.
        usize::from(QUEUE_SIZE).max(1024)
    }

    fn features(&self) -> u64 {
        F_VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn reset_device(&self) {
        self.dev.reset();
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = self.dev.config_space();
        let start = (offset as usize).min(cfg.len());
        let end = start.saturating_add(size as usize).min(cfg.len());
        cfg[start..end].to_vec()
    }

    fn update_memory(&self, _mem: GuestMem) -> io::Result<()> {
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)
            .map_err(|e| error!("vsock: cannot create a vring worker exit event: {e}"))
            .ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Self::Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mem = self.mem.memory();
        if device_event == WAKE_EVENT {
            let _ = self.dev.wake_fd().read();
        }
        if usize::from(device_event) == TX_QUEUE {
            if let Some(tx) = vrings.get(TX_QUEUE) {
                let mut state = tx.get_mut();
                match self.dev.process_tx(&mem, state.get_queue_mut()) {
                    Ok(true) => state.signal_used_queue()?,
                    Ok(false) => {}
                    Err(e) => error!("{e}"),
                }
            }
        }
        if let Some(rx) = vrings.get(RX_QUEUE) {
            let mut state = rx.get_mut();
            if state.is_enabled() {
                match self.dev.process_rx(&mem, state.get_queue_mut()) {
                    Ok(true) => state.signal_used_queue()?,
                    Ok(false) => {}
                    Err(e) => error!("{e}"),
                }
            }
        }
        Ok(())
    }
}

/// The background thread serving one vhost-user connection.
#[derive(Debug)]
pub struct VhostUserVsockHandle {
    socket: PathBuf,
    thread: JoinHandle<Result<(), VsockError>>,
}

impl VhostUserVsockHandle {
    /// Waits until the frontend has disconnected (normal end: `Ok`).
    pub fn join(self) -> Result<(), VsockError> {
        self.thread
            .join()
            .map_err(|_| VsockError::VhostUserPanicked {
                socket: self.socket,
            })?
    }
}

/// Binds the vhost-user socket, then serves one frontend connection in a
/// background thread until it disconnects; the socket file is removed then.
pub fn serve_vhost_user_vsock(
    dev: Arc<VsockDevice>,
    socket: &Path,
) -> Result<VhostUserVsockHandle, VsockError> {
    let socket = socket.to_path_buf();
    let daemon_err = {
        let socket = socket.clone();
        move |e: DaemonError| VsockError::VhostUserDaemon {
            socket: socket.clone(),
            message: e.to_string(),
        }
    };
    let listener = Listener::new(&socket, true).map_err(|e| VsockError::VhostUserListen {
        socket: socket.clone(),
        source: e,
    })?;
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let wake = dev.wake_fd().as_raw_fd();
    let backend = Arc::new(VhostUserVsock::new(dev, mem.clone()));
    let daemon =
        VhostUserDaemon::new("vhost-user-vsock".into(), backend, mem).map_err(&daemon_err)?;
    for handler in daemon.get_epoll_handlers() {
        handler
            .register_listener(wake, EventSet::IN, u64::from(WAKE_EVENT))
            .map_err(|e| VsockError::Setup {
                what: "vhost-user wake event",
                source: e,
            })?;
    }
    let thread = thread::Builder::new()
        .name("vu-vsock".into())
        .spawn(move || {
            crate::devices::virtio::vhost_user::serve_one(daemon, listener).map_err(&daemon_err)
        })
        .map_err(|source| VsockError::Setup {
            what: "vhost-user thread",
            source,
        })?;
    Ok(VhostUserVsockHandle { socket, thread })
}
