//! The vhost-user transport: serves an `FsDevice` to QEMU's `vhost-user-fs-device` over a
//! Unix socket, one frontend connection per call.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};

use log::{error, warn};
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
use vmm_sys_util::timerfd::TimerFd;

use super::forget_batch;

use super::poll::Drain;
use super::{FsDevice, FsError};

/// Guest memory as vhost-user-backend maps it (no dirty-page bitmap: LOG_ALL is not offered).
type GuestMem = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// The hiprio queue (FORGETs), served by its own worker thread.
const HIPRIO: usize = FsDevice::HIPRIO_QUEUE;
/// The event id of the FORGET batch timer on the hiprio worker's epoll
/// (vhost-user-backend reserves 0 to `NUM_QUEUES` for kicks and its exit event).
const FORGET_TIMER: u16 = FsDevice::NUM_QUEUES as u16 + 1;

/// A `VhostUserBackend` that hands each kicked queue to `FsDevice::process_queue_with`,
/// and batches hiprio's FORGETs (forget_batch.rs).
#[derive(Debug)]
pub struct VhostUserFs {
    dev: Arc<FsDevice>,
    mem: GuestMem,
    /// Drains the FORGETs a batch left waiting (forget_batch.rs); set once
    /// it is registered with the hiprio worker, and until then FORGETs are
    /// not batched.
    forget_timer: OnceLock<Mutex<TimerFd>>,
}

impl VhostUserFs {
    /// Wraps `dev`; `mem` must be the same `GuestMemoryAtomic` given to the daemon, which
    /// replaces its content on SET_MEM_TABLE.
    pub fn new(dev: Arc<FsDevice>, mem: GuestMem) -> Self {
        Self {
            dev,
            mem,
            forget_timer: OnceLock::new(),
        }
    }

    /// After a drain of hiprio that took chains from `before` on: lets the
    /// driver queue a batch of FORGETs before its next kick, and arms the
    /// timer that drains them if the batch does not fill. A drain that
    /// found nothing leaves the driver kicking at once.
    fn batch_forgets(&self, mem: &GuestMemoryMmap<()>, queue: &virtio_queue::Queue, before: u16) {
        use virtio_queue::QueueT;
        let Some(timer) = self.forget_timer.get() else {
            return;
        };
        if queue.next_avail() == before || !queue.event_idx_enabled() {
            return;
        }
        // Armed first: a batch nobody drains would keep FORGETs forever.
        let armed = timer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reset(forget_batch::LINGER, None);
        let deferred = armed.map_err(|e| e.to_string()).and_then(|()| {
            forget_batch::defer_kicks(mem, queue, forget_batch::batch_for(queue.size()))
                .map_err(|e| e.to_string())
        });
        if let Err(e) = deferred {
            warn!(
                "virtio-fs share {:?}: FORGETs not batched: {e}",
                self.dev.tag()
            );
        }
    }
}

impl VhostUserBackend for VhostUserFs {
    type Bitmap = ();
    type Vring = VringRwLock<GuestMem>;

    fn num_queues(&self) -> usize {
        FsDevice::NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        usize::from(FsDevice::QUEUE_SIZE)
    }

    fn features(&self) -> u64 {
        self.dev.device_features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The handler already calls `set_event_idx` on each queue, which process_queue reads.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = self.dev.config_space();
        let start = (offset as usize).min(cfg.len());
        let end = start.saturating_add(size as usize).min(cfg.len());
        cfg[start..end].to_vec()
    }

    fn update_memory(&self, _mem: GuestMem) -> io::Result<()> {
        // `_mem` is a clone of `self.mem`: the daemon swaps the mapping inside it.
        Ok(())
    }

    /// One worker thread per queue, so FORGETs on hiprio never wait behind a slow request.
    fn queues_per_thread(&self) -> Vec<u64> {
        (0..FsDevice::NUM_QUEUES).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                error!(
                    "virtio-fs share {:?}: cannot create a vring worker exit event: {e}",
                    self.dev.tag()
                );
                None
            }
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Self::Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let timer = device_event == FORGET_TIMER && thread_id == HIPRIO;
        if timer {
            if let Some(t) = self.forget_timer.get() {
                // Readable, so this does not block: it takes the expiry.
                let _ = t.lock().unwrap_or_else(|p| p.into_inner()).wait();
            }
        }
        // The timer's worker serves hiprio only, its vring 0.
        let index = if timer { 0 } else { usize::from(device_event) };
        let Some(vring) = vrings.get(index) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        let mem = self.mem.memory();
        let mut state = vring.get_mut();
        if timer && !(state.is_enabled() && virtio_queue::QueueT::ready(state.get_queue())) {
            // The driver reset or disabled hiprio meanwhile: nothing waits.
            return Ok(());
        }
        let call = state.get_call().as_ref().and_then(|c| c.try_clone().ok());
        let mut notify = || {
            if let Some(c) = &call {
                let _ = c.notify();
            }
        };
        // Each queue has its own thread (`queues_per_thread`), so the thread
        // index is the queue index (`device_event` is the index within the thread).
        let drain = if call.is_some() {
            self.dev.drain(thread_id, &mut notify)
        } else {
            Drain::batch()
        };
        let before = virtio_queue::QueueT::next_avail(state.get_queue());
        let drained = self
            .dev
            .process_queue_with(&*mem, state.get_queue_mut(), drain);
        if thread_id == HIPRIO {
            self.batch_forgets(&mem, state.get_queue(), before);
        }
        match drained {
            Ok(true) => state.signal_used_queue(),
            Ok(false) => Ok(()),
            Err(e) => {
                // Keep the worker alive: the driver may reset the queue.
                error!("{e} (vhost-user queue {thread_id})");
                Ok(())
            }
        }
    }
}

/// Registers the FORGET batch timer with the hiprio worker; FORGETs are
/// batched only once that worked (and when the share's lever says so).
fn batch_forgets_on(backend: &VhostUserFs, daemon: &VhostUserDaemon<Arc<VhostUserFs>>) {
    if !backend.dev.forget_batch() {
        return;
    }
    let registered = TimerFd::new().and_then(|timer| {
        let handlers = daemon.get_epoll_handlers();
        let handler = handlers
            .get(HIPRIO)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        handler.register_listener(timer.as_raw_fd(), EventSet::IN, u64::from(FORGET_TIMER))?;
        Ok(timer)
    });
    match registered {
        Ok(timer) => {
            let _ = backend.forget_timer.set(Mutex::new(timer));
        }
        Err(e) => warn!(
            "virtio-fs share {:?}: no FORGET batch timer, FORGETs go one by one: {e}",
            backend.dev.tag()
        ),
    }
}

/// The background thread serving one vhost-user connection.
#[derive(Debug)]
pub struct VhostUserHandle {
    tag: String,
    socket: PathBuf,
    thread: JoinHandle<Result<(), FsError>>,
}

impl VhostUserHandle {
    /// The socket path served.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether the connection is over (the thread ended).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits until the frontend has disconnected (normal end: `Ok`).
    pub fn join(self) -> Result<(), FsError> {
        self.thread.join().map_err(|_| FsError::VhostUserPanicked {
            tag: self.tag,
            socket: self.socket,
        })?
    }
}

/// Binds the Unix socket before returning (so QEMU can connect right away), then serves
/// exactly one frontend connection in a background thread until it disconnects. The socket
/// file is removed when the thread ends.
pub fn serve_vhost_user(dev: Arc<FsDevice>, socket: &Path) -> Result<VhostUserHandle, FsError> {
    let listener = Listener::new(socket, true).map_err(|e| FsError::VhostUserListen {
        tag: dev.tag().to_owned(),
        socket: socket.to_path_buf(),
        source: e,
    })?;
    serve_vhost_user_on(dev, listener, socket)
}

/// [`serve_vhost_user`] on a socket already bound (by hutch's parent process, for the
/// file system backend process; `socket` names it in errors).
pub fn serve_vhost_user_on(
    dev: Arc<FsDevice>,
    listener: Listener,
    socket: &Path,
) -> Result<VhostUserHandle, FsError> {
    let tag = dev.tag().to_owned();
    let socket = socket.to_path_buf();
    let daemon_err = {
        let (tag, socket) = (tag.clone(), socket.clone());
        move |e: DaemonError| FsError::VhostUserDaemon {
            tag: tag.clone(),
            socket: socket.clone(),
            message: e.to_string(),
        }
    };

    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let backend = Arc::new(VhostUserFs::new(dev, mem.clone()));
    let daemon = VhostUserDaemon::new(format!("vhost-user-fs {tag}"), backend.clone(), mem)
        .map_err(&daemon_err)?;
    batch_forgets_on(&backend, &daemon);

    let thread = thread::Builder::new()
        .name(format!("vufs-{tag}"))
        .spawn(move || {
            crate::devices::virtio::vhost_user::serve_one(daemon, listener).map_err(&daemon_err)
        })
        .map_err(|e| FsError::VhostUserThread {
            tag: tag.clone(),
            socket: socket.clone(),
            source: e,
        })?;

    Ok(VhostUserHandle {
        tag,
        socket,
        thread,
    })
}
