//! Address-range buses for port I/O and MMIO, and the [`ExitHandler`] that
//! routes a vCPU's accesses to them.

use std::sync::{Arc, Mutex};

use super::DeviceError;
use crate::hypervisor::ExitHandler;

/// A device on a bus; `offset` is relative to the device's base.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Shared handle to a bus device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A set of non-overlapping ranges, each owned by one device.
pub struct Bus {
    name: &'static str,
    ranges: Vec<(u64, u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus; `name` appears in errors.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            ranges: Vec::new(),
        }
    }

    /// Adds `dev` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, dev: SharedDevice) -> Result<(), DeviceError> {
        let overlaps = |(b, l, _): &(u64, u64, SharedDevice)| base < b + l && *b < base + len;
        if len == 0 || self.ranges.iter().any(overlaps) {
            return Err(DeviceError::Overlap {
                bus: self.name,
                base,
                len,
            });
        }
        self.ranges.push((base, len, dev));
        self.ranges.sort_by_key(|r| r.0);
        Ok(())
    }

    /// The device covering `addr`, with the offset into it.
    pub fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let i = self.ranges.partition_point(|r| r.0 <= addr);
        let (base, len, dev) = self.ranges.get(i.checked_sub(1)?)?;
        (addr < base + len).then(|| (addr - base, dev))
    }

    fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((off, dev)) => lock(dev).read(off, data),
            // Unclaimed: reads float high, as on real hardware.
            None => data.fill(0xff),
        }
    }

    fn write(&self, addr: u64, data: &[u8]) {
        if let Some((off, dev)) = self.find(addr) {
            lock(dev).write(off, data);
        }
    }
}

fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    // A device that panicked mid-access leaves its state as it was; keep going.
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

/// The port and MMIO buses of one VM.
pub struct Buses {
    pub pio: Bus,
    pub mmio: Bus,
}

impl Default for Buses {
    fn default() -> Self {
        Self {
            pio: Bus::new("port I/O"),
            mmio: Bus::new("MMIO"),
        }
    }
}

impl ExitHandler for Buses {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.pio.read(u64::from(port), data)
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        self.pio.write(u64::from(port), data)
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.mmio.read(addr, data)
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.mmio.write(addr, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(u8, Vec<(u64, Vec<u8>)>);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.1.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let a = Arc::new(Mutex::new(Reg(0x10, vec![])));
        let b = Arc::new(Mutex::new(Reg(0x20, vec![])));
        let mut buses = Buses::default();
        buses.pio.insert(0x3f8, 8, a.clone()).unwrap();
        buses.pio.insert(0x440, 8, b.clone()).unwrap();
        let mut d = [0u8; 1];
        buses.pio_read(0x3fa, &mut d);
        assert_eq!(d, [0x12]);
        buses.pio_read(0x447, &mut d);
        assert_eq!(d, [0x27]);
        buses.pio_write(0x441, &[9]);
        assert_eq!(b.lock().unwrap().1, vec![(1, vec![9])]);
        assert!(a.lock().unwrap().1.is_empty());
    }

    #[test]
    fn unclaimed_reads_float_high_and_writes_vanish() {
        let buses = Buses::default();
        let mut d = [0u8; 4];
        buses.mmio_read(0xd000_0000, &mut d);
        assert_eq!(d, [0xff; 4]);
        buses.mmio_write(0xd000_0000, &[1, 2, 3, 4]);
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::new("test");
        let d = Arc::new(Mutex::new(Reg(0, vec![])));
        bus.insert(0x100, 0x10, d.clone()).unwrap();
        for (base, len) in [
            (0x100, 1),
            (0x10f, 4),
            (0xf8, 0x10),
            (0x0, 0x1000),
            (0x200, 0),
        ] {
            assert!(
                bus.insert(base, len, d.clone()).is_err(),
                "{base:#x}+{len:#x}"
            );
        }
        bus.insert(0x110, 0x10, d).unwrap();
        assert!(bus.find(0x10f).is_some());
        assert!(bus.find(0x120).is_none());
        assert!(bus.find(0xff).is_none());
    }
}
