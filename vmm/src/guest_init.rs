//! The guest's PID 1, built by `build.rs` and carried inside `hutch`.

/// The static `hutch-init` binary.
pub static INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hutch-init"));
