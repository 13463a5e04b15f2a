//! `hutch-init`: PID 1 of a hutch guest.
//!
//! The binary (`main.rs`) only sequences the steps; everything it calls lives
//! here, split by what it touches, so the pure parts can be unit tested on the
//! host.

pub mod agent;
pub mod channel;
pub mod config;
pub mod console;
pub mod host;
pub mod mounts;
pub mod overlay;
pub mod ports;
pub mod power;
pub mod reaper;
pub mod rootfs;
pub mod spawn;
pub mod sys;
pub mod vsock;
