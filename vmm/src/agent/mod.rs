//! The host side of the guest agent (see [`hutch_proto::agent`]): reaching
//! the agent through the vsock device's hybrid Unix socket, and running an
//! exec session with this process's stdin, stdout, stderr, terminal and
//! signals.

pub mod client;
pub mod ready;
pub mod session;
pub mod signals;
pub mod terminal;

pub use client::{connect, ClientError};
pub use session::{run_session, SessionIo};
