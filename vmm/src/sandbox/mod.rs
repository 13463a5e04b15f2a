//! Sandboxes that outlive a command line: their records in a per-user state
//! directory, the ports they publish, and the control socket their VMM
//! process serves.

pub mod ctl;
pub mod ports;
pub mod state;

pub use state::{Record, SandboxError, Status, Store};
