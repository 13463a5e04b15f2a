//! Emulated devices: the buses that route guest accesses, legacy port
//! devices (serial, boot timer, exit port) and virtio.

pub mod bus;
pub mod legacy;
pub mod serial;
pub mod virtio;

use thiserror::Error;

/// Errors setting up devices.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// Two devices claim overlapping address ranges.
    #[error("{bus} range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        bus: &'static str,
        base: u64,
        len: u64,
    },
    /// An eventfd could not be created or written.
    #[error("eventfd for {what}: {source}")]
    EventFd {
        what: String,
        source: std::io::Error,
    },
    /// A device worker thread could not be started.
    #[error("starting worker thread for {what}: {source}")]
    Thread {
        what: String,
        source: std::io::Error,
    },
}
