//! virtio-mmio transport (virtio 1.x, "version 2" register layout).
//!
//! The vCPU thread drives the register state machine; a worker thread per
//! device waits on the queue-notify eventfds (KVM ioeventfds, so a notify
//! costs no exit to user space) and runs the device's queue processing,
//! then raises the interrupt through an irqfd.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{VirtioDevice, F_EVENT_IDX, F_VERSION_1};
use crate::devices::bus::BusDevice;
use crate::devices::DeviceError;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4855_5443; // "HUTC"

/// Register offsets.
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits.
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const FAILED: u32 = 0x80;
}

const INT_USED_RING: u32 = 1;

/// State shared between the register side and the worker.
struct Shared {
    dev: Arc<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    queues: Vec<Mutex<Queue>>,
    active: AtomicBool,
    interrupt_status: AtomicU32,
    irq: EventFd,
}

impl Shared {
    fn process(&self, index: usize) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        let Some(q) = self.queues.get(index) else {
            return;
        };
        let mut q = q.lock().unwrap_or_else(|p| p.into_inner());
        let mut raise = || self.raise();
        match self
            .dev
            .process_queue_raising(&self.mem, index, &mut q, &mut raise)
        {
            Ok(true) => self.raise(),
            Ok(false) => {}
            Err(e) => log::warn!("{} queue {index}: {e}", self.dev.name()),
        }
    }

    fn raise(&self) {
        self.interrupt_status
            .fetch_or(INT_USED_RING, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            log::warn!("{}: raising interrupt: {e}", self.dev.name());
        }
    }
}

/// One virtio device behind an MMIO window.
pub struct MmioTransport {
    shared: Arc<Shared>,
    notify: Vec<EventFd>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    stop: EventFd,
    worker: Option<JoinHandle<()>>,
}

impl MmioTransport {
    /// Wraps `dev`; `irq` is the eventfd that raises its interrupt.
    pub fn new(
        dev: Arc<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq: EventFd,
    ) -> Result<Self, DeviceError> {
        let name = dev.name();
        let efd = |what: &str| {
            EventFd::new(libc::EFD_NONBLOCK).map_err(|source| DeviceError::EventFd {
                what: format!("{name} {what}"),
                source,
            })
        };
        let queues = (0..dev.num_queues())
            .map(|_| Queue::new(dev.queue_max_size()).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DeviceError::EventFd {
                what: format!("{name} queue setup ({e:?})"),
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            })?;
        let notify = (0..dev.num_queues())
            .map(|i| efd(&format!("queue {i} notify")))
            .collect::<Result<Vec<_>, _>>()?;
        let stop = efd("stop")?;
        let shared = Arc::new(Shared {
            dev,
            mem,
            queues,
            active: AtomicBool::new(false),
            interrupt_status: AtomicU32::new(0),
            irq,
        });
        let mut t = Self {
            shared,
            notify,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            stop,
            worker: None,
        };
        t.start_worker()?;
        Ok(t)
    }

    /// The notify eventfd of each queue, to register as ioeventfds at
    /// `base + reg::QUEUE_NOTIFY` with the queue index as datamatch.
    pub fn notify_fds(&self) -> &[EventFd] {
        &self.notify
    }

    /// Current device status.
    pub fn status(&self) -> u32 {
        self.status
    }

    fn start_worker(&mut self) -> Result<(), DeviceError> {
        let name = self.shared.dev.name();
        let thread_err = |source| DeviceError::Thread {
            what: name.clone(),
            source,
        };
        let epoll = Epoll::new().map_err(thread_err)?;
        for (i, fd) in self.notify.iter().enumerate() {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, i as u64),
                )
                .map_err(thread_err)?;
        }
        let stop_token = u64::MAX;
        let wake_token = u64::MAX - 1;
        let wake = match self.shared.dev.wake_event() {
            Some((fd, queue)) => {
                let fd = fd.try_clone().map_err(thread_err)?;
                epoll
                    .ctl(
                        ControlOperation::Add,
                        fd.as_raw_fd(),
                        EpollEvent::new(EventSet::IN, wake_token),
                    )
                    .map_err(thread_err)?;
                Some((fd, queue))
            }
            None => None,
        };
        epoll
            .ctl(
                ControlOperation::Add,
                self.stop.as_raw_fd(),
                EpollEvent::new(EventSet::IN, stop_token),
            )
            .map_err(thread_err)?;
        let fds: Vec<EventFd> = self
            .notify
            .iter()
            .map(|f| f.try_clone())
            .collect::<Result<_, _>>()
            .map_err(thread_err)?;
        let shared = self.shared.clone();
        let handle = std::thread::Builder::new()
            .name(shared.dev.name().to_string().chars().take(15).collect())
            .spawn(move || {
                let mut events = vec![EpollEvent::default(); fds.len() + 2];
                loop {
                    let n = match epoll.wait(-1, &mut events) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            log::error!("{}: epoll: {e}", shared.dev.name());
                            return;
                        }
                    };
                    for ev in &events[..n] {
                        let token = ev.data();
                        if token == stop_token {
                            return;
                        }
                        if let (true, Some((fd, queue))) = (token == wake_token, &wake) {
                            let _ = fd.read();
                            shared.process(*queue);
                            continue;
                        }
                        let i = token as usize;
                        let _ = fds[i].read();
                        shared.process(i);
                    }
                }
            })
            .map_err(thread_err)?;
        self.worker = Some(handle);
        Ok(())
    }

    fn with_queue<R>(&self, f: impl FnOnce(&mut Queue) -> R) -> Option<R> {
        let q = self.shared.queues.get(self.queue_sel as usize)?;
        Some(f(&mut q.lock().unwrap_or_else(|p| p.into_inner())))
    }

    fn queue_config_allowed(&self) -> bool {
        self.status & status::FEATURES_OK != 0 && self.status & status::DRIVER_OK == 0
    }

    fn reset(&mut self) {
        self.shared.active.store(false, Ordering::Release);
        self.shared.dev.reset();
        for q in &self.shared.queues {
            q.lock().unwrap_or_else(|p| p.into_inner()).reset();
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.shared.interrupt_status.store(0, Ordering::SeqCst);
    }

    fn set_status(&mut self, new: u32) {
        if new == 0 {
            self.reset();
            return;
        }
        if new & status::FAILED != 0 {
            self.status |= status::FAILED;
            return;
        }
        // The driver only ever adds bits; anything else is out of order.
        if new & self.status != self.status {
            log::warn!(
                "{}: status {new:#x} clears bits of {:#x}; ignored",
                self.shared.dev.name(),
                self.status
            );
            return;
        }
        let added = new & !self.status;
        if added & status::FEATURES_OK != 0 {
            let offered = self.shared.dev.features();
            if self.driver_features & !offered != 0 || self.driver_features & F_VERSION_1 == 0 {
                // Leave FEATURES_OK unset: the driver sees it did not stick.
                self.status = new & !status::FEATURES_OK;
                return;
            }
        }
        if added & status::DRIVER_OK != 0 && !self.activate() {
            self.status = new & !status::DRIVER_OK;
            self.status |= status::FAILED;
            return;
        }
        self.status = new;
    }

    fn activate(&mut self) -> bool {
        if self.status & status::FEATURES_OK == 0 {
            return false;
        }
        let event_idx = self.driver_features & F_EVENT_IDX != 0;
        for q in &self.shared.queues {
            let mut q = q.lock().unwrap_or_else(|p| p.into_inner());
            q.set_event_idx(event_idx);
            if q.ready() && !q.is_valid(&self.shared.mem) {
                log::warn!(
                    "{}: a ready queue is not valid in guest memory",
                    self.shared.dev.name()
                );
                return false;
            }
        }
        self.shared.active.store(true, Ordering::Release);
        true
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let features = self.shared.dev.features();
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.shared.dev.device_type(),
            reg::VENDOR_ID => VENDOR,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => features as u32,
                1 => (features >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.with_queue(|q| q.max_size()).unwrap_or(0).into(),
            reg::QUEUE_READY => self.with_queue(|q| q.ready() as u32).unwrap_or(0),
            reg::INTERRUPT_STATUS => self.shared.interrupt_status.load(Ordering::SeqCst),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                log::debug!(
                    "{}: read of write-only or unknown register {offset:#x}",
                    self.shared.dev.name()
                );
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let name = self.shared.dev.name();
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => {
                if self.status & status::DRIVER == 0 || self.status & status::FEATURES_OK != 0 {
                    log::warn!(
                        "{name}: driver features written in status {:#x}; ignored",
                        self.status
                    );
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NOTIFY => {
                // Reached only without ioeventfd; do what it would have done.
                if let Some(fd) = self.notify.get(v as usize) {
                    let _ = fd.write(1);
                }
            }
            reg::INTERRUPT_ACK => {
                self.shared.interrupt_status.fetch_and(!v, Ordering::SeqCst);
            }
            reg::STATUS => self.set_status(v),
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_AVAIL_LOW
            | reg::QUEUE_AVAIL_HIGH
            | reg::QUEUE_USED_LOW
            | reg::QUEUE_USED_HIGH => {
                if !self.queue_config_allowed() {
                    log::warn!(
                        "{name}: queue register {offset:#x} written in status {:#x}; ignored",
                        self.status
                    );
                    return;
                }
                self.with_queue(|q| match offset {
                    reg::QUEUE_NUM => q.set_size(v as u16),
                    reg::QUEUE_READY => q.set_ready(v == 1),
                    reg::QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
                    reg::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
                    reg::QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(v), None),
                    reg::QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(v)),
                    reg::QUEUE_USED_LOW => q.set_used_ring_address(Some(v), None),
                    _ => q.set_used_ring_address(None, Some(v)),
                });
            }
            _ => log::debug!("{name}: write to read-only or unknown register {offset:#x}"),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.shared.dev.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            log::warn!(
                "{}: {}-byte read at {offset:#x}; registers are 4 bytes",
                self.shared.dev.name(),
                data.len()
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            // The config spaces of hutch's devices are read-only.
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            log::warn!(
                "{}: {}-byte write at {offset:#x}; registers are 4 bytes",
                self.shared.dev.name(),
                data.len()
            );
            return;
        }
        self.write_reg(
            offset,
            u32::from_le_bytes([data[0], data[1], data[2], data[3]]),
        );
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests;
