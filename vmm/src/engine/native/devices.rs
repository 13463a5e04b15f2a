//! The native VMM's device set: COM1, the boot-timer and exit ports, the
//! i8042 reset line, one virtio-mmio window per virtio-fs share, then one
//! for the virtio-vsock device when the spec asks for it.

use std::io::{Stderr, Stdout};
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout;
use crate::control::RunControl;
use crate::devices::bus::Buses;
use crate::devices::legacy::{BootTimer, ExitPort, I8042Reset, I8042_PORT};
use crate::devices::serial::{feed_all, SerialDevice, COM1_LEN, COM1_PORT};
use crate::devices::virtio::fs::{FsDevice, ShareConfig};
use crate::devices::virtio::mmio::{reg, MmioTransport};
use crate::devices::virtio::vsock::{VsockConfig, VsockDevice};
use crate::devices::virtio::VirtioDevice;
use crate::devices::DeviceError;
use hutch_proto::{Frame, FrameKind};

use crate::engine::console::{pump_stdin, ConsoleWriter, HostConsole, ReadyGate};
use crate::engine::EngineError;
use crate::hypervisor::Vm;

type Serial = SerialDevice<ConsoleWriter<Stdout, Stderr>>;

/// The devices of one native VM. Dropping it stops the device workers.
pub struct NativeDevices {
    pub buses: Arc<Buses>,
    serial: Arc<Mutex<Serial>>,
    fs: Vec<Arc<FsDevice>>,
}

fn efd(what: &str) -> Result<EventFd, DeviceError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|source| DeviceError::EventFd {
        what: what.to_string(),
        source,
    })
}

/// Creates the devices, wires their interrupts and notifications into `vm`
/// and puts them on the buses.
pub fn build<V: Vm>(
    vm: &V,
    mem: &GuestMemoryMmap,
    shares: Vec<ShareConfig>,
    vsock: Option<std::path::PathBuf>,
    ctl: Arc<RunControl>,
    console: Arc<Mutex<HostConsole<Stdout, Stderr>>>,
) -> Result<NativeDevices, EngineError> {
    let mut buses = Buses::default();

    let serial_irq = efd("COM1 interrupt")?;
    vm.register_irqfd(&serial_irq, layout::SERIAL_IRQ)?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        serial_irq,
        ConsoleWriter(console),
    )));
    buses
        .pio
        .insert(u64::from(COM1_PORT), COM1_LEN, serial.clone())?;
    buses.pio.insert(
        u64::from(hutch_proto::BOOT_TIMER_PORT),
        1,
        Arc::new(Mutex::new(BootTimer(ctl.clone()))),
    )?;
    buses.pio.insert(
        u64::from(hutch_proto::EXIT_PORT),
        4,
        Arc::new(Mutex::new(ExitPort(ctl.clone()))),
    )?;
    buses.pio.insert(
        u64::from(I8042_PORT),
        1,
        Arc::new(Mutex::new(I8042Reset(ctl))),
    )?;

    let mut fs = Vec::new();
    let mut virtio: Vec<Arc<dyn VirtioDevice>> = Vec::new();
    for share in shares {
        let fs_dev = Arc::new(FsDevice::new(share)?);
        fs.push(fs_dev.clone());
        virtio.push(fs_dev);
        crate::control::mark_early("virtio-fs share opened");
    }
    // After the shares: boot.rs's cmdline() announces the windows in this order.
    if let Some(path) = vsock {
        virtio.push(Arc::new(VsockDevice::new(VsockConfig::new(path))?));
    }
    for (i, dev) in virtio.into_iter().enumerate() {
        let base = layout::virtio_mmio_addr(i);
        let gsi = layout::VIRTIO_FIRST_IRQ + i as u32;
        let irq = efd(&format!("{} interrupt", dev.name()))?;
        vm.register_irqfd(&irq, gsi)?;
        let transport = MmioTransport::new(dev, mem.clone(), irq)?;
        for (q, fd) in transport.notify_fds().iter().enumerate() {
            vm.register_ioeventfd(fd, base + reg::QUEUE_NOTIFY, q as u32)?;
        }
        buses.mmio.insert(
            base,
            layout::VIRTIO_MMIO_SIZE,
            Arc::new(Mutex::new(transport)),
        )?;
    }
    Ok(NativeDevices {
        buses: Arc::new(buses),
        serial,
        fs,
    })
}

impl NativeDevices {
    /// Each virtio-fs device's counters, as report text.
    pub fn fs_stats(&self) -> Vec<String> {
        self.fs
            .iter()
            .map(|d| d.stats().report(&d.name()))
            .collect()
    }

    /// Forwards hutch's stdin into COM1 as stdin frames, on its own thread.
    /// Stdin waits for `gate` (init's first frame); with `forward` false only
    /// the end-of-file frame is sent.
    pub fn forward_stdin(&self, ctl: Arc<RunControl>, gate: ReadyGate, forward: bool) {
        let serial = self.serial.clone();
        std::thread::spawn(move || {
            if !gate.wait(&|| ctl.should_stop()) {
                return;
            }
            let send = |frame: &[u8]| {
                feed_all(&serial, frame, &|| ctl.should_stop());
                Ok(())
            };
            if forward {
                pump_stdin(std::io::stdin(), send);
            } else {
                let _ = send(&Frame::encode(FrameKind::StdinEof, &[]));
            }
        });
    }
}
