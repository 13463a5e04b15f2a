//! Small port devices: the boot timer (guest milestones), the exit port
//! (the command's status) and the i8042 reset line.

use std::sync::Arc;

use hutch_proto::Milestone;

use super::bus::BusDevice;
use crate::control::{Phase, RunControl, StopReason};

/// Records a timestamp for each milestone byte the guest writes.
pub struct BootTimer(pub Arc<RunControl>);

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            if let Some(m) = data.first().copied().and_then(Milestone::from_u8) {
                self.0.mark(Phase::Guest(m));
            }
        }
    }
}

/// Takes the exit status (a 4-byte write) and stops the VM.
pub struct ExitPort(pub Arc<RunControl>);

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.len() == 4 {
            let status = i32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.0.request_stop(StopReason::GuestExit(status));
        }
    }
}

/// The i8042 controller's command port: 0xfe pulses the reset line.
pub struct I8042Reset(pub Arc<RunControl>);

/// Port of the i8042 command register.
pub const I8042_PORT: u16 = 0x64;
const CMD_RESET: u8 = 0xfe;

impl BusDevice for I8042Reset {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status: output buffer empty, input buffer empty.
        data.fill(0);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&CMD_RESET) {
            self.0
                .request_stop(StopReason::GuestShutdown("i8042 reset"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn boot_timer_records_known_milestones_only() {
        let c = Arc::new(RunControl::new(Instant::now()));
        let mut t = BootTimer(c.clone());
        t.write(0, &[Milestone::InitStart as u8]);
        t.write(0, &[99]);
        t.write(1, &[Milestone::Mounted as u8]);
        let p = c.phases();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, Phase::Guest(Milestone::InitStart));
    }

    #[test]
    fn exit_port_needs_four_bytes() {
        let c = Arc::new(RunControl::new(Instant::now()));
        let mut e = ExitPort(c.clone());
        e.write(0, &[7]);
        assert!(!c.should_stop());
        e.write(0, &7i32.to_le_bytes());
        assert_eq!(c.reason(), Some(StopReason::GuestExit(7)));
    }

    #[test]
    fn i8042_reset_stops() {
        let c = Arc::new(RunControl::new(Instant::now()));
        I8042Reset(c.clone()).write(0, &[0x01]);
        assert!(!c.should_stop());
        I8042Reset(c.clone()).write(0, &[0xfe]);
        assert!(matches!(c.reason(), Some(StopReason::GuestShutdown(_))));
    }
}
