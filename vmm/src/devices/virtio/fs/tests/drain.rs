//! How a worker drains the queue (poll.rs): the interrupt window and polling
//! for the next request, with real FUSE requests in guest memory.

use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::fuse_driver::{guest_memory, share, Driver, Pending};
use crate::devices::virtio::fs::poll::Drain;
use crate::devices::virtio::fs::{FsDevice, SharePolicy};

fn workspace() -> (tempfile::TempDir, FsDevice) {
    let dir = tempfile::tempdir().unwrap();
    let dev = share(dir.path(), SharePolicy::Workspace);
    (dir, dev)
}

/// FUSE_INIT, answered and checked, as a driver starts.
fn handshake(dev: &FsDevice, mem: &GuestMemoryMmap, drv: &mut Driver<'_>, queue: &mut Queue) {
    let init = drv.init();
    dev.process_queue(mem, queue).unwrap();
    assert_answered(drv, &[init]);
}

/// Each pending request was answered without error.
fn assert_answered(drv: &mut Driver<'_>, pending: &[Pending]) {
    assert_eq!(drv.used().len(), pending.len());
    for p in pending {
        let (header, _) = drv.reply(p);
        assert_eq!((header.unique, header.error), (p.unique, 0));
    }
}

#[test]
fn the_interrupt_window_bounds_how_long_an_answer_waits_untold() {
    let (_dir, dev) = workspace();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem);
    // No EVENT_IDX: the driver wants to hear of every used element.
    let mut queue = drv.queue();
    handshake(&dev, &mem, &mut drv, &mut queue);

    for (window, expected) in [(Duration::from_secs(60), 1), (Duration::ZERO, 3)] {
        let pending: Vec<Pending> = (0..3).map(|_| drv.getattr_root()).collect();
        let mut signals = 0;
        let mut count = || signals += 1;
        let drain = Drain {
            signal: Some(&mut count),
            irq_window: Some(window),
            poll: Duration::ZERO,
        };
        let owed = dev.process_queue_with(&mem, &mut queue, drain).unwrap();
        assert!(!owed, "with a signal the worker interrupts itself");
        // A long window: once, at the end of the batch. Zero: after each one.
        assert_eq!(signals, expected, "window {window:?}");
        assert_answered(&mut drv, &pending);
    }
}

#[test]
fn a_polling_worker_answers_the_next_request_without_a_kick() {
    let (_dir, dev) = workspace();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem);
    let mut queue = drv.queue();
    queue.set_event_idx(true);
    handshake(&dev, &mem, &mut drv, &mut queue);

    let first = drv.getattr_root();
    // The driver asks to hear of the next used element.
    drv.set_used_event(queue.next_used());
    let polled_before = dev.stats().polled_batches();
    let (dev_ref, mem_ref) = (&dev, &mem);
    let (second, signals, queue) = std::thread::scope(|s| {
        let worker = s.spawn(move || {
            let mut signals = 0;
            let mut count = || signals += 1;
            let drain = Drain {
                signal: Some(&mut count),
                irq_window: None,
                poll: Duration::from_secs(2),
            };
            dev_ref
                .process_queue_with(mem_ref, &mut queue, drain)
                .unwrap();
            (queue, signals)
        });
        // Made available while the worker watches the ring, with no kick.
        while drv.used().is_empty() {
            std::thread::yield_now();
        }
        let second = drv.getattr_root();
        let (queue, signals) = worker.join().unwrap();
        (second, signals, queue)
    });
    let (header, _) = drv.reply(&first);
    assert_eq!((header.unique, header.error), (first.unique, 0));
    assert_answered(&mut drv, &[second]);
    assert_eq!(dev.stats().polled_batches(), polled_before + 1);
    // The first answer was announced before the watch began.
    assert!(signals >= 1, "{signals} interrupts");
    assert_eq!(queue.next_avail(), 3);
}

#[test]
fn polling_gives_up_after_its_budget_and_needs_event_idx() {
    let (_dir, dev) = workspace();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem);
    let mut queue = drv.queue();
    queue.set_event_idx(true);
    let init = drv.init();
    let budget = Duration::from_millis(30);
    let mut signals = 0;
    let mut count = || signals += 1;
    let mut ignore = || ();
    let started = Instant::now();
    let drain = Drain {
        signal: Some(&mut count),
        irq_window: None,
        poll: budget,
    };
    dev.process_queue_with(&mem, &mut queue, drain).unwrap();
    assert!(started.elapsed() >= budget, "returned before its budget");
    assert_eq!(signals, 1);
    assert_answered(&mut drv, &[init]);
    assert_eq!(dev.stats().polled_batches(), 0);

    // Without EVENT_IDX the driver's kicks cannot be suppressed: no watch.
    queue.set_event_idx(false);
    let attr = drv.getattr_root();
    let started = Instant::now();
    let drain = Drain {
        signal: Some(&mut ignore),
        irq_window: None,
        poll: Duration::from_secs(5),
    };
    dev.process_queue_with(&mem, &mut queue, drain).unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_answered(&mut drv, &[attr]);
}
