//! hutch: a microVM sandbox for coding agents and file-heavy builds.
//!
//! See `docs/architecture.md` for the walk from `main.rs` to the vCPU loop.

pub mod agent;
pub mod arch;
pub mod cli;
pub mod control;
pub mod devices;
pub mod engine;
pub mod exit_watch;
pub mod guest_init;
pub mod hypervisor;
pub mod kernel;
pub mod logger;
pub mod sandbox;
