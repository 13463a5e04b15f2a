//! Register state machine tests for the MMIO transport.

use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use vm_memory::GuestAddress;

use super::*;

struct Dummy {
    calls: AtomicUsize,
    last_queue: AtomicUsize,
    wake: Option<EventFd>,
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        26
    }
    fn name(&self) -> String {
        "dummy".into()
    }
    fn num_queues(&self) -> usize {
        2
    }
    fn queue_max_size(&self) -> u16 {
        256
    }
    fn features(&self) -> u64 {
        F_VERSION_1 | F_EVENT_IDX
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::super::read_config_bytes(b"tagname\0", offset, data);
    }
    fn process_queue(
        &self,
        _mem: &GuestMemoryMmap,
        index: usize,
        _queue: &mut Queue,
    ) -> Result<bool, String> {
        self.last_queue.store(index, Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(true)
    }
    fn wake_event(&self) -> Option<(&EventFd, usize)> {
        self.wake.as_ref().map(|fd| (fd, 0))
    }
}

struct Fixture {
    t: MmioTransport,
    dev: Arc<Dummy>,
    irq: EventFd,
}

fn fixture() -> Fixture {
    fixture_with(None)
}

fn fixture_with(wake: Option<EventFd>) -> Fixture {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let dev = Arc::new(Dummy {
        calls: AtomicUsize::new(0),
        last_queue: AtomicUsize::new(usize::MAX),
        wake,
    });
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let t = MmioTransport::new(dev.clone(), mem, irq.try_clone().unwrap()).unwrap();
    Fixture { t, dev, irq }
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(off, &mut d);
    u32::from_le_bytes(d)
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// Drives the driver side of initialisation up to FEATURES_OK.
fn negotiate(t: &mut MmioTransport, features: u64) {
    w(t, reg::STATUS, status::ACKNOWLEDGE);
    w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(t, reg::DRIVER_FEATURES_SEL, 0);
    w(t, reg::DRIVER_FEATURES, features as u32);
    w(t, reg::DRIVER_FEATURES_SEL, 1);
    w(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
    w(
        t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
}

fn setup_queue(t: &mut MmioTransport, i: u32, base: u64) {
    w(t, reg::QUEUE_SEL, i);
    w(t, reg::QUEUE_NUM, 16);
    w(t, reg::QUEUE_DESC_LOW, base as u32);
    w(t, reg::QUEUE_DESC_HIGH, 0);
    w(t, reg::QUEUE_AVAIL_LOW, (base + 0x1000) as u32);
    w(t, reg::QUEUE_USED_LOW, (base + 0x2000) as u32);
    w(t, reg::QUEUE_READY, 1);
}

#[test]
fn identity_registers() {
    let mut f = fixture();
    assert_eq!(r(&mut f.t, reg::MAGIC), 0x7472_6976);
    assert_eq!(r(&mut f.t, reg::VERSION), 2);
    assert_eq!(r(&mut f.t, reg::DEVICE_ID), 26);
    w(&mut f.t, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&mut f.t, reg::DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
    w(&mut f.t, reg::DEVICE_FEATURES_SEL, 0);
    assert_eq!(r(&mut f.t, reg::DEVICE_FEATURES), 1 << 29);
    w(&mut f.t, reg::DEVICE_FEATURES_SEL, 7);
    assert_eq!(r(&mut f.t, reg::DEVICE_FEATURES), 0);
    w(&mut f.t, reg::QUEUE_SEL, 1);
    assert_eq!(r(&mut f.t, reg::QUEUE_NUM_MAX), 256);
    w(&mut f.t, reg::QUEUE_SEL, 2);
    assert_eq!(r(&mut f.t, reg::QUEUE_NUM_MAX), 0, "no third queue");
}

#[test]
fn config_space_reads_any_width() {
    let mut f = fixture();
    let mut d = [0u8; 3];
    f.t.read(reg::CONFIG + 1, &mut d);
    assert_eq!(&d, b"agn");
    let mut past = [9u8; 4];
    f.t.read(reg::CONFIG + 100, &mut past);
    assert_eq!(past, [0; 4]);
}

#[test]
fn bad_sizes_and_offsets_are_ignored() {
    let mut f = fixture();
    let mut d = [0xaau8; 2];
    f.t.read(reg::MAGIC, &mut d);
    assert_eq!(d, [0, 0], "2-byte register read");
    let mut d4 = [0xaau8; 4];
    f.t.read(reg::MAGIC + 1, &mut d4);
    assert_eq!(d4, [0; 4], "unaligned read");
    assert_eq!(r(&mut f.t, 0x0f8), 0, "unknown register");
    f.t.write(reg::STATUS, &[1, 0]);
    assert_eq!(f.t.status(), 0, "2-byte status write ignored");
    w(&mut f.t, reg::MAGIC, 0);
    assert_eq!(r(&mut f.t, reg::MAGIC), 0x7472_6976, "read-only register");
}

#[test]
fn features_only_in_driver_state_and_must_be_offered() {
    let mut f = fixture();
    // Before DRIVER: ignored.
    w(&mut f.t, reg::DRIVER_FEATURES_SEL, 1);
    w(&mut f.t, reg::DRIVER_FEATURES, 1);
    w(&mut f.t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(
        &mut f.t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(
        f.t.status() & status::FEATURES_OK,
        0,
        "no VERSION_1 accepted"
    );

    let mut f = fixture();
    negotiate(&mut f.t, F_VERSION_1 | (1 << 5));
    assert_eq!(
        f.t.status() & status::FEATURES_OK,
        0,
        "unoffered bit 5 rejected"
    );

    let mut f = fixture();
    negotiate(&mut f.t, F_VERSION_1);
    assert!(f.t.status() & status::FEATURES_OK != 0);
    // After FEATURES_OK, feature writes are ignored.
    w(&mut f.t, reg::DRIVER_FEATURES_SEL, 0);
    w(&mut f.t, reg::DRIVER_FEATURES, 1 << 29);
    assert_eq!(f.t.driver_features, F_VERSION_1);
}

#[test]
fn queue_registers_only_between_features_ok_and_driver_ok() {
    let mut f = fixture();
    setup_queue(&mut f.t, 0, 0x10000);
    w(&mut f.t, reg::QUEUE_SEL, 0);
    assert_eq!(
        r(&mut f.t, reg::QUEUE_READY),
        0,
        "queue setup before FEATURES_OK ignored"
    );
    negotiate(&mut f.t, F_VERSION_1);
    setup_queue(&mut f.t, 0, 0x10000);
    w(&mut f.t, reg::QUEUE_SEL, 0);
    assert_eq!(r(&mut f.t, reg::QUEUE_READY), 1);
}

#[test]
fn status_cannot_clear_bits_and_zero_resets() {
    let mut f = fixture();
    negotiate(&mut f.t, F_VERSION_1);
    w(&mut f.t, reg::STATUS, status::ACKNOWLEDGE);
    assert!(
        f.t.status() & status::FEATURES_OK != 0,
        "clearing bits ignored"
    );
    w(&mut f.t, reg::STATUS, 0);
    assert_eq!(f.t.status(), 0);
    assert_eq!(f.t.driver_features, 0);
}

#[test]
fn driver_ok_without_features_ok_fails_the_device() {
    let mut f = fixture();
    w(&mut f.t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(
        &mut f.t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert_eq!(f.t.status() & status::DRIVER_OK, 0);
}

#[test]
fn invalid_queue_address_fails_activation() {
    let mut f = fixture();
    negotiate(&mut f.t, F_VERSION_1);
    // Rings beyond the 1 MiB of guest memory.
    setup_queue(&mut f.t, 0, 0x4000_0000);
    w(
        &mut f.t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    assert!(f.t.status() & status::FAILED != 0);
    assert_eq!(f.t.status() & status::DRIVER_OK, 0);
}

#[test]
fn notify_runs_the_device_and_raises_the_interrupt() {
    let mut f = fixture();
    negotiate(&mut f.t, F_VERSION_1);
    setup_queue(&mut f.t, 1, 0x10000);
    // Notify before DRIVER_OK does nothing.
    w(&mut f.t, reg::QUEUE_NOTIFY, 1);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(f.dev.calls.load(Ordering::SeqCst), 0);
    w(
        &mut f.t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    assert!(f.t.status() & status::DRIVER_OK != 0);
    w(&mut f.t, reg::QUEUE_NOTIFY, 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.dev.calls.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "worker never ran the queue");
        std::thread::sleep(Duration::from_millis(5));
    }
    while f.irq.read().is_err() {
        assert!(Instant::now() < deadline, "no interrupt");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(r(&mut f.t, reg::INTERRUPT_STATUS), INT_USED_RING);
    w(&mut f.t, reg::INTERRUPT_ACK, INT_USED_RING);
    assert_eq!(r(&mut f.t, reg::INTERRUPT_STATUS), 0);
    // Out-of-range notify is harmless.
    w(&mut f.t, reg::QUEUE_NOTIFY, 9);
}

#[test]
fn the_device_wake_event_runs_its_queue_without_a_notify() {
    let mut f = fixture_with(Some(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    negotiate(&mut f.t, F_VERSION_1);
    setup_queue(&mut f.t, 0, 0x10000);
    w(
        &mut f.t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    f.dev.wake.as_ref().unwrap().write(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.dev.calls.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the wake event never ran the queue"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(f.dev.last_queue.load(Ordering::SeqCst), 0);
    while f.irq.read().is_err() {
        assert!(Instant::now() < deadline, "no interrupt");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(r(&mut f.t, reg::INTERRUPT_STATUS), INT_USED_RING);
}
