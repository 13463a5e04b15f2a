//! The share behind the native engine's MMIO transport: its worker drains the
//! request queue as the vhost-user one does (an interrupt per answer, then a
//! watch of the ring), driven through the registers as a guest driver would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::fuse_driver::{guest_memory, share, Driver, Pending, QUEUE_LEN};
use crate::devices::bus::BusDevice;
use crate::devices::virtio::fs::{FsDevice, SharePolicy};
use crate::devices::virtio::mmio::{reg, status, MmioTransport};
use crate::devices::virtio::{F_EVENT_IDX, F_VERSION_1};

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(off, &mut d);
    u32::from_le_bytes(d)
}

/// Negotiates VERSION_1 and EVENT_IDX, points the request queue at `drv`'s
/// rings and sets DRIVER_OK, as the guest's virtio-mmio driver does.
fn bring_up(t: &mut MmioTransport, drv: &Driver<'_>) {
    let features = F_VERSION_1 | F_EVENT_IDX;
    let acked = status::ACKNOWLEDGE | status::DRIVER;
    w(t, reg::STATUS, status::ACKNOWLEDGE);
    w(t, reg::STATUS, acked);
    for (sel, half) in [(0, features as u32), (1, (features >> 32) as u32)] {
        w(t, reg::DRIVER_FEATURES_SEL, sel);
        w(t, reg::DRIVER_FEATURES, half);
    }
    w(t, reg::STATUS, acked | status::FEATURES_OK);
    let q = drv.queue();
    w(t, reg::QUEUE_SEL, FsDevice::REQUEST_QUEUE as u32);
    w(t, reg::QUEUE_NUM, u32::from(QUEUE_LEN));
    for (low, addr) in [
        (reg::QUEUE_DESC_LOW, q.desc_table()),
        (reg::QUEUE_AVAIL_LOW, q.avail_ring()),
        (reg::QUEUE_USED_LOW, q.used_ring()),
    ] {
        w(t, low, addr as u32);
        w(t, low + 4, (addr >> 32) as u32);
    }
    w(t, reg::QUEUE_READY, 1);
    w(
        t,
        reg::STATUS,
        acked | status::FEATURES_OK | status::DRIVER_OK,
    );
    assert_ne!(
        t.status() & status::DRIVER_OK,
        0,
        "the device refused DRIVER_OK"
    );
}

/// Waits (5 s at most) until the driver sees `n` more used elements, and checks
/// each pending request's answer.
fn await_answers(drv: &mut Driver<'_>, pending: &[Pending]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut used = Vec::new();
    while used.len() < pending.len() {
        assert!(
            Instant::now() < deadline,
            "answered {} of {}",
            used.len(),
            pending.len()
        );
        used.extend(drv.used());
        std::thread::yield_now();
    }
    for p in pending {
        let (header, _) = drv.reply(p);
        assert_eq!((header.unique, header.error), (p.unique, 0));
    }
}

/// Waits (5 s at most) for the interrupt eventfd; returns how many were raised.
fn await_interrupts(irq: &EventFd) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(n) = irq.read() {
            return n;
        }
        assert!(Instant::now() < deadline, "no interrupt");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A workspace share with these drain levers behind an MMIO transport:
/// (its directory, the device, guest memory, the irqfd, the transport).
fn behind_mmio(
    irq_window: Option<Duration>,
    poll: Duration,
) -> (
    tempfile::TempDir,
    Arc<FsDevice>,
    GuestMemoryMmap,
    EventFd,
    MmioTransport,
) {
    let dir = tempfile::tempdir().unwrap();
    let dev = share(dir.path(), SharePolicy::Workspace).with_drain_levers(irq_window, poll);
    let dev = Arc::new(dev);
    let mem = guest_memory();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let t = MmioTransport::new(dev.clone(), mem.clone(), irq.try_clone().unwrap()).unwrap();
    (dir, dev, mem, irq, t)
}

#[test]
fn behind_mmio_the_worker_interrupts_per_answer_and_takes_the_next_request_unkicked() {
    // A watch long enough that a loaded test machine still adds the second
    // request inside it; a request ends the watch at once.
    let (_dir, dev, mem, irq, mut t) =
        behind_mmio(Some(Duration::ZERO), Duration::from_millis(800));
    let mut drv = Driver::new(&mem);
    bring_up(&mut t, &drv);

    let init = drv.init();
    w(&mut t, reg::QUEUE_NOTIFY, FsDevice::REQUEST_QUEUE as u32);
    await_answers(&mut drv, &[init]);
    assert_eq!(await_interrupts(&irq), 1, "one answer, one interrupt");
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS) & 1, 1, "used-ring bit");
    w(&mut t, reg::INTERRUPT_ACK, 1);

    // The driver wants to hear of the next answer, and makes the request
    // available without a notify while the worker watches the ring.
    drv.set_used_event(1);
    let polled = dev.stats().polled_batches();
    let second = drv.getattr_root();
    await_answers(&mut drv, &[second]);
    assert_eq!(await_interrupts(&irq), 1);
    assert_eq!(dev.stats().polled_batches(), polled + 1);
    // Dropping the transport stops the worker (after its watch).
    drop(t);
}

#[test]
fn behind_mmio_a_share_without_levers_interrupts_once_per_batch() {
    let (_dir, dev, mem, irq, mut t) = behind_mmio(None, Duration::ZERO);
    let mut drv = Driver::new(&mem);
    bring_up(&mut t, &drv);
    let mut pending = vec![drv.init()];
    pending.extend((0..3).map(|_| drv.getattr_root()));
    w(&mut t, reg::QUEUE_NOTIFY, FsDevice::REQUEST_QUEUE as u32);
    await_answers(&mut drv, &pending);
    assert_eq!(await_interrupts(&irq), 1, "four answers, one interrupt");
    assert_eq!(dev.stats().polled_batches(), 0);
}

#[test]
fn only_the_request_queue_is_drained_with_the_levers() {
    let dir = tempfile::tempdir().unwrap();
    let dev = share(dir.path(), SharePolicy::Workspace)
        .with_drain_levers(Some(Duration::ZERO), Duration::from_millis(300));
    let mut never = || panic!("hiprio never signals on its own");
    let drain = dev.drain(FsDevice::HIPRIO_QUEUE, &mut never);
    assert!(drain.signal.is_none() && drain.irq_window.is_none() && drain.poll.is_zero());
    let mut fine = || {};
    let drain = dev.drain(FsDevice::REQUEST_QUEUE, &mut fine);
    assert!(drain.signal.is_some());
    assert_eq!(
        (drain.irq_window, drain.poll),
        (Some(Duration::ZERO), Duration::from_millis(300))
    );
    // The read-only root neither polls nor interrupts early.
    let root = share(dir.path(), SharePolicy::SystemRoot);
    let drain = root.drain(FsDevice::REQUEST_QUEUE, &mut fine);
    assert!(drain.signal.is_none() && drain.poll.is_zero());
}
