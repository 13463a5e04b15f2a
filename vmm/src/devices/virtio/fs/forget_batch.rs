//! FORGETs in batches on the vhost-user hiprio queue.
//!
//! The guest sends a FORGET each time it evicts an inode, so `rm -rf`, an
//! unlink loop or a cache shrink sends one per file. Nobody waits for
//! the answer, but each FORGET still costs a kick (a VM exit, and the
//! hiprio worker's wake-up) and an interrupt (the VMM's event loop, the
//! vCPU, the guest's completion worker). Once callers poll for their
//! answers (poll.rs), that interrupt also knocks the next caller's watch
//! off its CPU. In the TCG guest, an unlink loop took 0.07-0.08 s per
//! 1,000 with a kick and an interrupt per FORGET, and 0.03-0.04 s with
//! this batching (docs/fs-levers.md).
//!
//! Once a drain of hiprio found FORGETs, the worker lets the driver queue
//! [`BATCH`] more before it kicks: with EVENT_IDX the driver kicks only
//! when its avail index passes the device's `avail_event`. A timer drains
//! whatever is left [`LINGER`] later, and after a quiet [`LINGER`] the
//! queue kicks at once again. So a FORGET waits at most [`LINGER`]. That
//! matters twice:
//! - a deleted file's handle is closed on the host that late;
//! - the guest's unmount, which waits for every FORGET to be answered,
//!   waits that long at most.

use std::sync::atomic::Ordering;
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

/// How many FORGETs the driver may queue between kicks while they keep
/// coming (at most a quarter of the queue, so the driver never finds
/// it full).
pub const BATCH: u16 = 32;

/// How long a queued FORGET waits at most for its batch to fill.
pub const LINGER: Duration = Duration::from_millis(20);

/// The batch for a queue of `size` entries.
pub fn batch_for(size: u16) -> u16 {
    BATCH.min(size / 4).max(1)
}

/// Lets the driver make `batch - 1` more chains available before it kicks:
/// writes the used ring's `avail_event` (split ring: after the
/// `batch`-entry used ring) past the device's next index. Only with
/// EVENT_IDX; the next drain's `enable_notification` brings it back.
pub fn defer_kicks<M: GuestMemory>(
    mem: &M,
    queue: &Queue,
    batch: u16,
) -> Result<(), virtio_queue::Error> {
    if !queue.event_idx_enabled() || batch <= 1 {
        return Ok(());
    }
    // flags (2) + idx (2) + size used elements (8 each), then avail_event.
    let at = GuestAddress(queue.used_ring())
        .checked_add(4 + 8 * u64::from(queue.size()))
        .ok_or(virtio_queue::Error::AddressOverflow)?;
    let event = queue.next_avail().wrapping_add(batch - 1);
    mem.store(event.to_le(), at, Ordering::Release)
        .map_err(virtio_queue::Error::GuestMemory)?;
    // The driver reads avail_event after publishing its avail index; pair
    // with its barrier so it sees the new value from here on.
    std::sync::atomic::fence(Ordering::SeqCst);
    Ok(())
}
