//! The 8250 UART on COM1 (vm-superio), its interrupt line and its input
//! feeder. Output goes to any `Write` (the host console decoder).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

/// COM1 base port.
pub const COM1_PORT: u16 = 0x3f8;
/// Ports COM1 spans.
pub const COM1_LEN: u64 = 8;

/// An interrupt line backed by an irqfd.
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The UART with its output sink.
pub struct SerialDevice<W: Write + Send> {
    uart: Serial<IrqLine, NoEvents, W>,
}

impl<W: Write + Send> SerialDevice<W> {
    /// A UART raising `irq` and writing transmitted bytes to `out`.
    pub fn new(irq: EventFd, out: W) -> Self {
        Self {
            uart: Serial::new(IrqLine(irq), out),
        }
    }

    /// Queues as many `input` bytes as the receive FIFO takes; returns how many.
    pub fn feed(&mut self, input: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(input.len());
        if room == 0 {
            return 0;
        }
        self.uart.enqueue_raw_bytes(&input[..room]).unwrap_or(0)
    }
}

impl<W: Write + Send> BusDevice for SerialDevice<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(first) = data.first_mut() {
            *first = self.uart.read(offset as u8);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(b) = data.first() {
            // An output error (host pipe closed) must not stop the guest.
            let _ = self.uart.write(offset as u8, *b);
        }
    }
}

/// Pushes `input` into the UART as its FIFO drains, until done or `stop`.
pub fn feed_all<W: Write + Send>(
    dev: &Arc<Mutex<SerialDevice<W>>>,
    mut input: &[u8],
    stop: &dyn Fn() -> bool,
) {
    while !input.is_empty() && !stop() {
        let n = dev.lock().unwrap_or_else(|p| p.into_inner()).feed(input);
        input = &input[n..];
        if n == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;

    #[test]
    fn transmits_bytes_and_raises_irq_for_input() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(irq.try_clone().unwrap(), Vec::new());
        for b in b"hi" {
            s.write(THR, &[*b]);
        }
        assert_eq!(s.uart.writer(), b"hi");
        // Enable the received-data interrupt, then feed input.
        s.write(IER, &[1]);
        assert_eq!(s.feed(b"xyz"), 3);
        assert!(irq.read().unwrap() >= 1);
        let mut lsr = [0u8];
        s.read(LSR, &mut lsr);
        assert!(lsr[0] & 1 != 0, "data ready");
        let mut got = vec![];
        for _ in 0..3 {
            let mut d = [0u8];
            s.read(THR, &mut d);
            got.push(d[0]);
        }
        assert_eq!(got, b"xyz");
    }

    #[test]
    fn feed_stops_at_fifo_capacity() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(irq, Vec::new());
        let big = vec![b'a'; 1000];
        let n = s.feed(&big);
        assert!(n > 0 && n < 1000);
        assert_eq!(s.feed(&big), 0);
    }
}
