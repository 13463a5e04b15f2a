//! virtio devices and their transports.
//!
//! A device implements [`VirtioDevice`]: its identity, features, config space
//! and how it processes one queue over guest memory. Transports carry it to
//! a guest: [`mmio::MmioTransport`] inside hutch's own VMM, and vhost-user
//! (see `fs::vhost_user`) for QEMU or any other vhost-user frontend. The
//! queue-processing code is the same for both.

pub mod fs;
mod fs_glue;
pub mod mmio;
pub mod vhost_user;
pub mod vsock;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// virtio device type of virtio-fs.
pub const TYPE_FS: u32 = 26;
/// virtio device type of virtio-vsock.
pub const TYPE_VSOCK: u32 = 19;
/// virtio 1.0 (non-legacy) feature bit.
pub const F_VERSION_1: u64 = 1 << 32;
/// Ring feature: the driver and device publish event indices.
pub const F_EVENT_IDX: u64 = 1 << 29;

/// A device as a transport sees it.
pub trait VirtioDevice: Send + Sync {
    /// virtio device type (26 = fs).
    fn device_type(&self) -> u32;
    /// Short name for logs and errors (e.g. "virtio-fs hutch-ws").
    fn name(&self) -> String;
    /// Number of virtqueues.
    fn num_queues(&self) -> usize;
    /// Largest size of each queue.
    fn queue_max_size(&self) -> u16;
    /// Feature bits the device offers.
    fn features(&self) -> u64;
    /// Reads device config space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Processes available buffers of queue `index`; returns whether the
    /// driver must be notified.
    fn process_queue(
        &self,
        mem: &GuestMemoryMmap,
        index: usize,
        queue: &mut Queue,
    ) -> Result<bool, String>;
    /// [`Self::process_queue`] for a device that announces answers before its
    /// batch is done (and may watch the ring for the next request): it calls
    /// `raise` for each interrupt it owes on the way, and returns whether the
    /// caller still owes one. The default announces once per batch.
    fn process_queue_raising(
        &self,
        mem: &GuestMemoryMmap,
        index: usize,
        queue: &mut Queue,
        raise: &mut dyn FnMut(),
    ) -> Result<bool, String> {
        let _ = raise;
        self.process_queue(mem, index, queue)
    }
    /// An eventfd the device signals when queue `index` has work that no
    /// driver notify announces (host data for a receive queue); the
    /// transport's worker polls it next to the notify eventfds.
    fn wake_event(&self) -> Option<(&EventFd, usize)> {
        None
    }
    /// The driver reset the device (status 0): drop per-driver state such
    /// as open connections. Queues are reset by the transport.
    fn reset(&self) {}
}

/// Copies `cfg[offset..]` into `data`; bytes past the end read as zero.
pub fn read_config_bytes(cfg: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let start = (offset as usize).min(cfg.len());
    let end = (start + data.len()).min(cfg.len());
    data[..end - start].copy_from_slice(&cfg[start..end]);
}
