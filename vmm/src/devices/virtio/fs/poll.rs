//! How a worker drains a queue: when it interrupts the driver, and whether it
//! watches the ring for the next request instead of sleeping on its kick.
//!
//! Interrupts: once per drained batch is cheapest for a guest that pays for
//! each interrupt, but a driver with many requests in flight then sees every
//! answer only when the whole batch is done. The `irq_window` lever bounds
//! that wait: the worker interrupts once the oldest untold answer is that
//! old (0, the default: at once), and again at the end of the batch.
//!
//! Polling: on a machine whose idle CPUs are slow to wake (a VM, a laptop
//! saving power), a request's round trip is dominated by wake-ups: the
//! guest's kick wakes the worker, the worker's interrupt wakes the VMM, the
//! VMM wakes the vCPU. When requests come one after another (a build's
//! `stat`s, `git status`, an unpacking `tar`), the worker can skip the first
//! of those by watching the avail ring for a short while after it answered;
//! with EVENT_IDX the guest does not even kick while it is watched. The
//! budget is the `poll` lever.
//!
//! The guest can skip the other two: hutch's guest kernel (patch 0010)
//! offers [`FUSE_HUTCH_POLL`], and when the workspace grants it (lever
//! `guest_poll`) the caller of a synchronous request watches the used ring
//! for its answer (100 µs by default, `virtiofs.hutch_poll_us=` on the
//! kernel command line) with the queue's interrupts off, and ends the
//! requests it finds itself. An answer that comes in time then costs no
//! interrupt, no VMM wake-up, no completion worker and no wake-up of the
//! caller; the driver's `used_event` tells this worker not to interrupt.

use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;

/// INIT flag (bit 27 of `flags2`): the guest may poll for answers.
pub const FUSE_HUTCH_POLL: u64 = 1 << 59;

/// How a worker drains a queue and tells the driver about used requests.
pub struct Drain<'a> {
    /// Interrupts the driver. `None`: the caller does, from the return value
    /// of `process_queue_with`, once per call (and then `poll` is ignored).
    pub signal: Option<&'a mut dyn FnMut()>,
    /// With a `signal`: interrupt as soon as the oldest answer the driver has
    /// not been told about is this old, besides once at the end of each batch.
    /// Zero: after each request. `None`: once per batch only.
    pub irq_window: Option<Duration>,
    /// After a batch, watch the avail ring this long for the next request.
    pub poll: Duration,
}

impl Drain<'_> {
    /// The caller signals once, after the whole batch; no polling.
    pub fn batch() -> Self {
        Self {
            signal: None,
            irq_window: None,
            poll: Duration::ZERO,
        }
    }
}

/// Watches `queue`'s avail index for up to `budget`; true as soon as the
/// driver has made a chain available that the device has not taken. The
/// worker yields its CPU between looks: a busy spin took the CPU that the
/// VMM's event loop and vCPUs needed on a 2-CPU host and made requests
/// slower, not faster (docs/fs-levers.md).
pub fn wait_for_avail<M: GuestMemory>(
    mem: &M,
    queue: &Queue,
    budget: Duration,
) -> Result<bool, virtio_queue::Error> {
    let start = Instant::now();
    loop {
        if queue.avail_idx(mem, Ordering::Acquire)? != Wrapping(queue.next_avail()) {
            return Ok(true);
        }
        if start.elapsed() >= budget {
            return Ok(false);
        }
        std::thread::yield_now();
    }
}
