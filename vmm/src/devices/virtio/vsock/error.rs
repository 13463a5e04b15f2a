//! The one error type of the virtio-vsock device.

use std::io;
use std::path::PathBuf;

/// Errors of the virtio-vsock device, its host sockets and its vhost-user server.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The host socket could not be created.
    #[error("vsock socket {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    /// Something else already serves the socket path.
    #[error("vsock socket {}: in use by another process", path.display())]
    InUse { path: PathBuf },
    /// The path exists and is not a socket.
    #[error("vsock socket {}: exists and is not a socket", path.display())]
    NotSocket { path: PathBuf },
    /// An eventfd, epoll instance or thread could not be created.
    #[error("vsock {what}: {source}")]
    Setup {
        what: &'static str,
        source: io::Error,
    },
    /// A virtqueue operation failed (the queue's rings are not usable).
    #[error("vsock {op} failed on the {queue} queue: {source}")]
    Queue {
        op: &'static str,
        queue: &'static str,
        source: virtio_queue::Error,
    },
    /// The vhost-user socket could not be bound.
    #[error("vsock: cannot listen on vhost-user socket {}: {source}", socket.display())]
    VhostUserListen {
        socket: PathBuf,
        source: vhost::vhost_user::Error,
    },
    /// The vhost-user daemon failed.
    #[error("vsock: vhost-user daemon on {}: {message}", socket.display())]
    VhostUserDaemon { socket: PathBuf, message: String },
    /// The vhost-user server thread panicked.
    #[error("vsock: the vhost-user thread for {} panicked", socket.display())]
    VhostUserPanicked { socket: PathBuf },
}
