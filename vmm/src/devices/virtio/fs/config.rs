//! What a share is: its tag, host source and policy, and the config space the guest reads.

use std::path::PathBuf;

use super::FsError;

/// Length of `virtio_fs_config.tag` (virtio 1.2, 5.11.4).
pub const TAG_LEN: usize = 36;

/// Size of `struct virtio_fs_config`: the tag and `num_request_queues`.
pub const CONFIG_SPACE_LEN: usize = TAG_LEN + 4;

/// How the guest may use a share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharePolicy {
    /// A host directory, read-write, passed through as is.
    Workspace,
    /// The guest's root view of the host's system directories (source normally "/"):
    /// read-only, only the allowlisted top-level names, secrets masked.
    SystemRoot,
}

/// One virtio-fs share.
#[derive(Debug, Clone)]
pub struct ShareConfig {
    /// The tag the guest mounts (`mount -t virtiofs TAG /mnt`); at most 36 bytes.
    pub tag: String,
    /// Host directory served as the share's root.
    pub source: PathBuf,
    /// What the guest may do with it.
    pub policy: SharePolicy,
}

/// Checks that `tag` fits `virtio_fs_config.tag`.
pub(crate) fn validate_tag(tag: &str) -> Result<(), FsError> {
    let reason = if tag.is_empty() {
        "it is empty"
    } else if tag.len() > TAG_LEN {
        "it is longer than 36 bytes"
    } else if tag.bytes().any(|b| b == 0) {
        "it contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(FsError::InvalidTag {
        tag: tag.to_owned(),
        reason,
    })
}

/// Encodes `struct virtio_fs_config` for `tag` with `num_request_queues` request queues.
pub(crate) fn config_space(tag: &str, num_request_queues: u32) -> [u8; CONFIG_SPACE_LEN] {
    let mut cfg = [0u8; CONFIG_SPACE_LEN];
    let n = tag.len().min(TAG_LEN);
    cfg[..n].copy_from_slice(&tag.as_bytes()[..n]);
    cfg[TAG_LEN..].copy_from_slice(&num_request_queues.to_le_bytes());
    cfg
}
