//! `FsDevice`: one share's FUSE server and its virtqueue processing, shared by both
//! transports (the VMM's virtio-mmio device and the vhost-user server).

use std::fs;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{CreateIn, EntryOut, InHeader, OpenOut, OutHeader};
use fuse_backend_rs::api::filesystem::Context;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config as PassthroughConfig, PassthroughFs};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use log::{info, warn};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestMemory};

use super::config::{config_space, validate_tag, CONFIG_SPACE_LEN};
use super::create_lookup::FUSE_HUTCH_CREATE_LOOKUP;
use super::dir_reply::{self, FUSE_READDIR, FUSE_READDIRPLUS};
use super::policy::PolicyFs;
use super::poll::{self, Drain};
use super::private_init;
use super::rename_report::{self, FUSE_HUTCH_RENAME_REPORT, FUSE_RENAME2};
use super::stats::FsStats;
use super::wb_coherent::{self, FUSE_HUTCH_WB_COHERENT};
use super::write_attr;
use super::xattr_hint::FUSE_HUTCH_NOXATTR;
use super::{DirStreams, FsError, Levers, ShareConfig, SharePolicy};

/// The FUSE opcode of an unnamed file (O_TMPFILE), which fuse-backend-rs does not know.
const FUSE_TMPFILE: u32 = 51;
/// FUSE_INIT's opcode.
const FUSE_INIT: u32 = 26;

/// How long the guest may cache names and attributes of the system root.
const ROOT_CACHE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
// The workspace's timeout is a lever (levers.rs): host edits show within it.

/// The file system stack every share serves.
pub type ShareFs = PolicyFs<PassthroughFs>;

/// The caller a request names in its header, for the requests the device
/// serves itself (FUSE_TMPFILE, READDIR, marked RENAME2 and WRITE).
pub(super) fn caller(header: &InHeader) -> Context {
    Context {
        uid: header.uid,
        gid: header.gid,
        pid: header.pid as libc::pid_t,
    }
}

/// A virtio-fs device serving one share. `Send + Sync`: queues may be processed from
/// different threads at once.
pub struct FsDevice {
    tag: String,
    policy: SharePolicy,
    /// The shared directory, canonical: what the server resolves against.
    source: std::path::PathBuf,
    server: Server<Arc<ShareFs>>,
    /// The same file system, for the requests fuse-backend-rs has no call for.
    fs: Arc<ShareFs>,
    /// Chains answered with 0 bytes because they were malformed (for tests and metrics).
    malformed: AtomicU64,
    stats: FsStats,
    /// When a queue worker interrupts besides once per batch (a lever; `drain`).
    irq_window: Option<Duration>,
    /// How long a queue worker watches the request queue after a batch (poll.rs).
    poll: Duration,
    /// Whether a vhost-user worker batches FORGETs (forget_batch.rs; a lever).
    forget_batch: bool,
    /// Listings answered from one buffer (dir_reply.rs; a lever).
    flat_readdir: bool,
    /// The hutch-private INIT flags this share may grant: one-request O_CREAT
    /// opens (create_lookup.rs), renames that report what they replaced
    /// (rename_report.rs).
    private_flags: u64,
}

impl std::fmt::Debug for FsDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsDevice")
            .field("tag", &self.tag)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// Whether this thread has already given its capabilities up.
    static CONFINED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl FsDevice {
    /// Queues: hiprio (0) and one request queue (1).
    pub const NUM_QUEUES: usize = 2;
    /// Maximum size of each queue.
    pub const QUEUE_SIZE: u16 = 1024;
    /// `virtio_fs_config.num_request_queues`.
    pub const NUM_REQUEST_QUEUES: u32 = 1;
    /// The index of the hiprio queue (FORGETs).
    pub const HIPRIO_QUEUE: usize = 0;
    /// The index of the (only) request queue.
    pub const REQUEST_QUEUE: usize = 1;

    /// Creates the device for `cfg`. Nothing is opened under the source until the guest's
    /// FUSE_INIT, except the secrets scan of a system-root share.
    pub fn new(cfg: ShareConfig) -> Result<Self, FsError> {
        super::fd_limit::raise();
        let ShareConfig {
            tag,
            source,
            policy,
        } = cfg;
        validate_tag(&tag)?;
        let source = fs::canonicalize(&source).map_err(|e| FsError::SourceAccess {
            tag: tag.clone(),
            path: source.clone(),
            source: e,
        })?;
        let meta = fs::metadata(&source).map_err(|e| FsError::SourceAccess {
            tag: tag.clone(),
            path: source.clone(),
            source: e,
        })?;
        if !meta.is_dir() {
            return Err(FsError::SourceNotDirectory { tag, path: source });
        }
        let Some(root_dir) = source.to_str().map(str::to_owned) else {
            return Err(FsError::SourceNotUtf8 { tag, path: source });
        };

        // The system root is read-only and changes rarely (package installs):
        // keep file pages cached across opens, so a binary exec'd a hundred
        // times is read once, and keep names and attributes for a minute.
        // The workspace keeps close-to-open consistency (every open
        // revalidates), so host edits show up at once.
        let levers = match policy {
            SharePolicy::Workspace => Levers::from_env()?,
            SharePolicy::SystemRoot => Levers {
                root_poll: Levers::from_env()?.root_poll,
                ..Levers::default()
            },
        };
        let (cache_policy, timeout) = match policy {
            SharePolicy::SystemRoot => (CachePolicy::Always, ROOT_CACHE_TIMEOUT),
            SharePolicy::Workspace => (CachePolicy::Auto, levers.timeout),
        };
        let workspace = policy == SharePolicy::Workspace;
        let passthrough_cfg = PassthroughConfig {
            root_dir,
            cache_policy,
            entry_timeout: timeout,
            attr_timeout: timeout,
            xattr: true,
            do_import: true,
            // The server clears set-ID bits on write itself (FUSE
            // HANDLE_KILLPRIV_V2), so the guest stops asking for
            // security.capability before every write and truncate.
            killpriv_v2: true,
            writeback: workspace && levers.writeback,
            // The read-only root: OPEN is answered ENOSYS once and the guest
            // stops sending OPEN and RELEASE (zero-message open, with its
            // pages kept); every exec opened about 18 files through it.
            no_open: !workspace,
            // Likewise OPENDIR: the guest stops sending OPENDIR and RELEASEDIR
            // and keeps listings cached (FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE, as
            // CachePolicy::Always answered); each READDIR opens the directory
            // by its node. glibc opens a locale directory or two in every
            // process that sets a UTF-8 locale: two requests each.
            no_opendir: !workspace,
            ..Default::default()
        };
        let inner = PassthroughFs::new(passthrough_cfg).map_err(|e| FsError::Passthrough {
            tag: tag.clone(),
            path: source.clone(),
            source: e,
        })?;
        let fs = Arc::new(match policy {
            // Files the guest creates belong to the user running hutch, whoever the guest
            // caller is (a guest chown still changes them when hutch may do it).
            SharePolicy::Workspace => {
                let fs = PolicyFs::passthrough(inner, true).with_levers(levers);
                match DirStreams::new(&source) {
                    Ok(dirs) => fs.with_dir_streams(
                        dirs.with_prefetch(levers.dir_prefetch, levers.lookup_ahead),
                    ),
                    Err(e) => {
                        warn!("virtio-fs share {tag:?}: READDIR stays on the slow path: {e}");
                        fs
                    }
                }
            }
            SharePolicy::SystemRoot => {
                let fs = PolicyFs::system_root(inner, &source)
                    .map_err(|e| FsError::SourceAccess {
                        tag: tag.clone(),
                        path: source.clone(),
                        source: e,
                    })?
                    .with_levers(levers);
                info!(
                    "virtio-fs share {tag:?}: system root {}, {} secret file(s) masked",
                    source.display(),
                    fs.masked_files()
                );
                fs
            }
        });
        Ok(Self {
            tag,
            policy,
            source,
            server: Server::new(fs.clone()),
            fs,
            malformed: AtomicU64::new(0),
            stats: FsStats::default(),
            irq_window: if workspace { levers.irq_window } else { None },
            poll: if workspace {
                levers.poll
            } else {
                Duration::ZERO
            },
            forget_batch: workspace && levers.forget_batch,
            flat_readdir: workspace && levers.flat_readdir,
            private_flags: match policy {
                SharePolicy::Workspace => private_init::workspace_grants(&levers),
                SharePolicy::SystemRoot => private_init::root_grants(&levers),
            },
        })
    }

    /// How many unnamed (O_TMPFILE) files the guest holds.
    #[cfg(test)]
    pub fn tmp_files(&self) -> usize {
        self.fs.tmp_files()
    }

    /// How many inodes have handles cached for a guest that sends no OPEN.
    #[cfg(test)]
    pub fn cached_open_files(&self) -> usize {
        self.fs.cached_open_files()
    }

    /// The shared directory, canonical.
    pub fn source(&self) -> &std::path::Path {
        &self.source
    }

    /// How a transport drains queue `index` when it can interrupt the driver
    /// through `signal` at any time: the request queue with this share's
    /// interrupt window and poll budget; hiprio (nobody waits for a FORGET's
    /// answer) and a share with neither lever once per batch.
    pub fn drain<'a>(&self, index: usize, signal: &'a mut dyn FnMut()) -> Drain<'a> {
        if index != Self::REQUEST_QUEUE || (self.irq_window.is_none() && self.poll.is_zero()) {
            return Drain::batch();
        }
        Drain {
            signal: Some(signal),
            irq_window: self.irq_window,
            poll: self.poll,
        }
    }

    /// Whether a vhost-user hiprio worker batches FORGETs (forget_batch.rs).
    pub fn forget_batch(&self) -> bool {
        self.forget_batch
    }

    /// Test set-up: other drain levers than the environment's.
    #[cfg(test)]
    pub fn with_drain_levers(mut self, irq_window: Option<Duration>, poll: Duration) -> Self {
        self.irq_window = irq_window;
        self.poll = poll;
        self
    }

    /// The share's tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The share's policy.
    pub fn policy(&self) -> SharePolicy {
        self.policy
    }

    /// The device's request counters.
    pub fn stats(&self) -> &FsStats {
        &self.stats
    }

    /// Number of descriptor chains answered with 0 bytes because they were malformed.
    pub fn malformed_chains(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// Virtio feature bits offered: VERSION_1, EVENT_IDX and INDIRECT_DESC.
    pub fn device_features(&self) -> u64 {
        (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << VIRTIO_RING_F_EVENT_IDX)
            | (1u64 << VIRTIO_RING_F_INDIRECT_DESC)
    }

    /// `struct virtio_fs_config`: the tag, NUL-padded to 36 bytes, then
    /// `num_request_queues` (1) little-endian.
    pub fn config_space(&self) -> [u8; CONFIG_SPACE_LEN] {
        config_space(&self.tag, Self::NUM_REQUEST_QUEUES)
    }

    /// Processes every available descriptor chain of `queue` (hiprio or request queue alike);
    /// returns true if the guest must be notified.
    ///
    /// Malformed chains (addresses outside guest memory, loops, no room for a FUSE header or
    /// reply) are returned as used with length 0 and logged. An error means the queue's rings
    /// themselves are unusable. With EVENT_IDX negotiated (`queue.set_event_idx(true)`), the
    /// driver's notifications are suppressed while the queue is drained.
    pub fn process_queue<M: GuestMemory>(
        &self,
        mem: &M,
        queue: &mut Queue,
    ) -> Result<bool, FsError> {
        self.process_queue_with(mem, queue, Drain::batch())
    }

    /// Drains `queue` as `drain` says: who interrupts the driver, how often
    /// (with a `signal` and a zero `irq_window`, after each used request, so
    /// a driver with several requests in flight sees each completion without
    /// waiting for the slowest), and how long to watch the ring for more
    /// before returning (poll.rs; only with EVENT_IDX and a `signal`, since
    /// the batch's interrupt must go out before the watch). Returns whether
    /// a notification is still owed to the driver (never, with a `signal`).
    pub fn process_queue_with<M: GuestMemory>(
        &self,
        mem: &M,
        queue: &mut Queue,
        mut drain: Drain<'_>,
    ) -> Result<bool, FsError> {
        let desc_table = queue.desc_table();
        let queue_err = |op, source| FsError::Queue {
            tag: self.tag.clone(),
            op,
            desc_table,
            source,
        };
        let mut used_any = false;
        // Whether some used element has not been announced with `signal` yet,
        // and since when (timed only for an interrupt window).
        let mut untold = false;
        let mut untold_since: Option<std::time::Instant> = None;
        self.confine_thread();
        self.stats.notification();
        let notify_now = |queue: &mut Queue, signal: &mut dyn FnMut()| {
            let notify = queue
                .needs_notification(mem)
                .map_err(|e| queue_err("checking whether to notify", e))?;
            if notify {
                self.stats.interrupt();
                signal();
            }
            Ok::<(), FsError>(())
        };
        loop {
            if queue.event_idx_enabled() {
                queue
                    .disable_notification(mem)
                    .map_err(|e| queue_err("disabling notifications", e))?;
            }
            let mut used_now = false;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let len = self.handle_chain(mem, chain);
                if head >= queue.size() {
                    // Not a descriptor of this queue: there is nothing to give back.
                    warn!(
                        "virtio-fs share {:?}: dropping chain with out-of-range head {head}",
                        self.tag
                    );
                    continue;
                }
                queue
                    .add_used(mem, head, len)
                    .map_err(|e| queue_err("adding a used element", e))?;
                used_now = true;
                untold = true;
                if let (Some(window), Some(signal)) = (drain.irq_window, drain.signal.as_mut()) {
                    // A zero window (the default) needs no clock.
                    let due = window.is_zero() || {
                        let now = std::time::Instant::now();
                        now.duration_since(*untold_since.get_or_insert(now)) >= window
                    };
                    if due {
                        notify_now(queue, signal)?;
                        (untold, untold_since) = (false, None);
                    }
                }
                if !untold {
                    // The guest has the answer: read on in its listing meanwhile.
                    self.stats.ahead(self.fs.read_ahead(true));
                }
            }
            used_any |= used_now;
            if !queue.event_idx_enabled() {
                break;
            }
            if used_now && !drain.poll.is_zero() {
                if let Some(signal) = drain.signal.as_mut() {
                    // The batch's answers go out before the watch, not after it.
                    if untold {
                        notify_now(queue, signal)?;
                        (untold, untold_since) = (false, None);
                        self.stats.ahead(self.fs.read_ahead(true));
                    }
                    let more = poll::wait_for_avail(mem, queue, drain.poll)
                        .map_err(|e| queue_err("watching the avail ring", e))?;
                    if more {
                        self.stats.polled();
                        continue;
                    }
                }
            }
            let more = queue
                .enable_notification(mem)
                .map_err(|e| queue_err("enabling notifications", e))?;
            // Stop when nothing is pending, or when the ring claims more but yields nothing
            // (a corrupt avail index), so a broken driver cannot make us spin.
            if !more || !used_now {
                break;
            }
        }
        if !used_any {
            return Ok(false);
        }
        if let Some(signal) = drain.signal.as_mut() {
            if untold {
                notify_now(queue, signal)?;
                self.stats.ahead(self.fs.read_ahead(true));
            }
            return Ok(false);
        }
        // The caller interrupts after we return: no reading ahead before that.
        let _ = self.fs.read_ahead(false);
        let notify = queue
            .needs_notification(mem)
            .map_err(|e| queue_err("checking whether to notify", e))?;
        if notify {
            self.stats.interrupt();
        }
        Ok(notify)
    }

    /// Drops the capabilities a FUSE worker does not need, once per thread: the first time
    /// a thread processes a queue (the vhost-user vring workers and the MMIO worker only do
    /// that).
    fn confine_thread(&self) {
        if CONFINED.with(|c| c.replace(true)) {
            return;
        }
        if let Err(e) = super::confine::keep_fs_caps() {
            warn!(
                "virtio-fs share {:?}: cannot drop the worker thread's capabilities: {e}",
                self.tag
            );
        }
    }

    /// Serves one chain; returns the number of bytes written into its writable part.
    fn handle_chain<M: GuestMemory>(&self, mem: &M, chain: DescriptorChain<&M>) -> u32 {
        let started = std::time::Instant::now();
        let head = chain.head_index();
        // fuse_in_header: len (u32), opcode (u32), ...; read straight from the first
        // descriptor for the counters (the server parses the request on its own).
        let opcode = chain
            .clone()
            .next()
            .filter(|d| !d.is_write_only() && d.len() >= 8)
            .and_then(|d| mem.read_obj::<u32>(d.addr().unchecked_add(4)).ok())
            .unwrap_or(0);
        // INIT: the private flags fuse-backend-rs would drop are granted after it answers,
        // and the writeback cache only to a guest that sees host changes with it.
        let mut grant = 0;
        if opcode == FUSE_INIT && self.private_flags != 0 {
            let offers = private_init::init_offers(mem, &chain);
            grant = offers & self.private_flags;
            if self.private_flags & FUSE_HUTCH_WB_COHERENT != 0
                && wb_coherent::withhold_unless_coherent(mem, &chain, offers)
            {
                info!(
                    "virtio-fs share {:?}: no writeback cache: the guest kernel does not offer to see host changes with it",
                    self.tag
                );
            }
        }
        let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
            Ok(r) => r,
            Err(e) => return self.malformed(head, "its readable part", &e),
        };
        let bytes_in = reader.available_bytes();
        let init = (grant != 0).then(|| chain.clone());
        let reporting_rename = opcode == FUSE_RENAME2
            && self.private_flags & FUSE_HUTCH_RENAME_REPORT != 0
            && rename_report::is_marked(mem, &chain);
        let writing_attrs = opcode == write_attr::FUSE_WRITE
            && self.private_flags & write_attr::FUSE_HUTCH_WRITE_ATTR != 0
            && write_attr::is_marked(mem, &chain);
        let writer = match VirtioFsWriter::new(mem, chain) {
            Ok(w) => w,
            Err(e) => return self.malformed(head, "its writable part", &e),
        };
        let handled = if opcode == FUSE_TMPFILE {
            self.tmpfile(reader, writer)
        } else if reporting_rename {
            rename_report::serve(&self.fs, reader, writer)
        } else if writing_attrs {
            write_attr::serve(&self.fs, reader, writer)
        } else if self.flat_readdir && (opcode == FUSE_READDIR || opcode == FUSE_READDIRPLUS) {
            dir_reply::serve(&*self.fs, opcode == FUSE_READDIRPLUS, reader, writer)
        } else {
            self.server
                .handle_message(reader, writer.into(), None, None)
                .map_err(|e| io::Error::other(e.to_string()))
        };
        match handled {
            Ok(len) => {
                if let Some(chain) = init {
                    if private_init::grant(mem, &chain, len, grant) {
                        if grant & FUSE_HUTCH_NOXATTR != 0 {
                            self.fs.grant_xattr_hint();
                        }
                        info!(
                            "virtio-fs share {:?}: one-request O_CREAT opens: {}, renames without a target lookup: {}, xattr hints: {}, WRITEs answer attributes: {}",
                            self.tag,
                            grant & FUSE_HUTCH_CREATE_LOOKUP != 0,
                            grant & FUSE_HUTCH_RENAME_REPORT != 0,
                            grant & FUSE_HUTCH_NOXATTR != 0,
                            grant & write_attr::FUSE_HUTCH_WRITE_ATTR != 0
                        );
                    }
                }
                self.stats.request(opcode, bytes_in, len, started.elapsed());
                u32::try_from(len).unwrap_or(u32::MAX)
            }
            Err(e) => self.malformed(head, "the FUSE request", &e),
        }
    }

    /// FUSE_TMPFILE, which fuse-backend-rs does not parse: `fuse_create_in`
    /// and a name (ignored), answered like CREATE with an entry and a handle.
    fn tmpfile<B: vm_memory::bitmap::BitmapSlice>(
        &self,
        mut reader: Reader<'_, B>,
        mut writer: VirtioFsWriter<'_, B>,
    ) -> io::Result<usize> {
        let header: InHeader = reader.read_obj()?;
        let reply = match reader.read_obj::<CreateIn>() {
            Ok(args) => {
                let ctx = caller(&header);
                self.fs.tmpfile(&ctx, header.nodeid, args)
            }
            Err(_) => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        let out = |len: usize, error: i32| OutHeader {
            len: len as u32,
            error,
            unique: header.unique,
        };
        match reply {
            Ok((entry, handle)) => {
                let len = std::mem::size_of::<OutHeader>()
                    + std::mem::size_of::<EntryOut>()
                    + std::mem::size_of::<OpenOut>();
                writer.write_obj(out(len, 0))?;
                writer.write_obj(EntryOut::from(entry))?;
                writer.write_obj(OpenOut {
                    fh: handle,
                    open_flags: 0,
                    passthrough: 0,
                })?;
            }
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                writer.write_obj(out(std::mem::size_of::<OutHeader>(), -errno))?;
            }
        }
        Ok(writer.bytes_written())
    }

    fn malformed(&self, head: u16, what: &str, e: &dyn std::fmt::Display) -> u32 {
        self.malformed.fetch_add(1, Ordering::Relaxed);
        warn!(
            "virtio-fs share {:?}: chain {head}: cannot handle {what}: {e}",
            self.tag
        );
        0
    }
}
