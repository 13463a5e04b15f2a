//! The one error type of the virtio-fs device.

use std::io;
use std::path::PathBuf;

/// Errors of the virtio-fs device and its vhost-user server.
///
/// Every message names the share tag and the path, socket or queue involved.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag cannot go into `virtio_fs_config.tag`.
    #[error("virtio-fs tag {tag:?} is invalid: {reason}")]
    InvalidTag {
        /// The rejected tag.
        tag: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// `HUTCH_FS_LEVERS` holds an item hutch does not understand.
    #[error("HUTCH_FS_LEVERS item {item:?}: {reason}")]
    BadLever {
        /// The rejected item.
        item: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// The share's source could not be inspected.
    #[error("virtio-fs share {tag:?}: cannot access source {}: {source}", path.display())]
    SourceAccess {
        /// Share tag.
        tag: String,
        /// Host path of the source.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },

    /// The share's source is not a directory.
    #[error("virtio-fs share {tag:?}: source {} is not a directory", path.display())]
    SourceNotDirectory {
        /// Share tag.
        tag: String,
        /// Host path of the source.
        path: PathBuf,
    },

    /// The share's source path cannot be passed to the passthrough file system.
    #[error("virtio-fs share {tag:?}: source {} is not valid UTF-8", path.display())]
    SourceNotUtf8 {
        /// Share tag.
        tag: String,
        /// Host path of the source.
        path: PathBuf,
    },

    /// fuse-backend-rs refused to create the passthrough file system.
    #[error("virtio-fs share {tag:?}: cannot create passthrough file system on {}: {source}", path.display())]
    Passthrough {
        /// Share tag.
        tag: String,
        /// Host path of the source.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },

    /// A virtqueue operation failed (the queue's rings are not usable).
    #[error("virtio-fs share {tag:?}: {op} failed on the queue with descriptor table at {desc_table:#x}: {source}")]
    Queue {
        /// Share tag.
        tag: String,
        /// What was being done.
        op: &'static str,
        /// Guest address of the queue's descriptor table, to tell the queues apart.
        desc_table: u64,
        /// Underlying error.
        source: virtio_queue::Error,
    },

    /// The vhost-user socket could not be bound.
    #[error("virtio-fs share {tag:?}: cannot listen on vhost-user socket {}: {source}", socket.display())]
    VhostUserListen {
        /// Share tag.
        tag: String,
        /// Socket path.
        socket: PathBuf,
        /// Underlying error.
        source: vhost::vhost_user::Error,
    },

    /// The vhost-user daemon failed (setting up, accepting or serving the frontend).
    #[error("virtio-fs share {tag:?}: vhost-user daemon on {}: {message}", socket.display())]
    VhostUserDaemon {
        /// Share tag.
        tag: String,
        /// Socket path.
        socket: PathBuf,
        /// The daemon's error (vhost-user-backend's error type is not `std::error::Error`).
        message: String,
    },

    /// The vhost-user server thread could not be started.
    #[error("virtio-fs share {tag:?}: cannot spawn the vhost-user thread for {}: {source}", socket.display())]
    VhostUserThread {
        /// Share tag.
        tag: String,
        /// Socket path.
        socket: PathBuf,
        /// Underlying error.
        source: io::Error,
    },

    /// The vhost-user server thread panicked.
    #[error("virtio-fs share {tag:?}: the vhost-user thread for {} panicked", socket.display())]
    VhostUserPanicked {
        /// Share tag.
        tag: String,
        /// Socket path.
        socket: PathBuf,
    },
}
