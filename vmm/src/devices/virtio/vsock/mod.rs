//! virtio-vsock: one device model, served over two transports.
//!
//! The host side speaks the hybrid Unix-socket protocol of Firecracker and
//! Cloud Hypervisor: a client connects to the device's socket `PATH` and
//! sends `CONNECT <port>\n`, gets `OK <hostport>\n` and a byte stream to the
//! guest's listener on vsock port `<port>`; a guest connection to host port
//! `P` reaches the Unix socket `PATH_P` when something listens there.
//!
//! [`VsockDevice::process_rx`] / [`VsockDevice::process_tx`] move packets
//! between the virtqueues and the [`muxer::Muxer`] (connections, credit flow
//! control, limits); a host thread runs the Unix sockets' epoll loop. When
//! host data or a reply is waiting for the receive queue, the device signals
//! [`VsockDevice::wake_fd`], which both transports poll: the MMIO
//! transport's worker (`VirtioDevice::wake_event`) and the vhost-user
//! backend's epoll handler ([`serve_vhost_user_vsock`]).
//!
//! Files: `packet.rs` (header and constants), `conn.rs` (one connection's
//! state and credit), `muxer.rs` (connections and host sockets),
//! `host.rs` (socket binding, the event-loop thread, clean-up), `device.rs`
//! (queues), `glue.rs` (`VirtioDevice`), `vhost_user.rs`, `error.rs`.

mod conn;
mod device;
mod error;
mod glue;
mod host;
pub mod muxer;
pub mod packet;
mod vhost_user;

#[cfg(test)]
mod tests;

pub use device::{VsockConfig, VsockDevice};
pub use error::VsockError;
pub use host::SocketGuard;
pub use vhost_user::{serve_vhost_user_vsock, VhostUserVsock, VhostUserVsockHandle};

/// The guest's context id (the first one a guest may have).
pub const GUEST_CID: u64 = 3;
/// The host's context id.
pub const HOST_CID: u64 = 2;
/// Queues: receive (0), transmit (1), event (2).
pub const NUM_QUEUES: usize = 3;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Largest size of each queue.
pub const QUEUE_SIZE: u16 = 256;
