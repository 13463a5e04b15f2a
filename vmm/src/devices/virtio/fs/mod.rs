//! virtio-fs: one device model, served over two transports.
//!
//! [`FsDevice::process_queue`] turns the FUSE requests in a virtqueue into calls on the
//! share's file system (fuse-backend-rs's PassthroughFs behind [`PolicyFs`]). The native
//! VMM's virtio-mmio transport calls it directly; [`serve_vhost_user`] calls it for QEMU's
//! `vhost-user-fs-device`.
//!
//! Files: `config.rs` (share description, config space), `device.rs` (the device and queue
//! processing), `confine.rs` (capabilities a server keeps), `landlock.rs` (paths a backend process may reach), `policy/` (the `FileSystem` wrapper enforcing a share's policy: its state and checks in `mod.rs`, the request handlers in `filesystem.rs`),
//! `secrets.rs` (files the system root masks), `levers.rs` (the workspace's tuning switches), `fd_limit.rs` (RLIMIT_NOFILE), `dirs.rs` (the workspace's READDIR), `dir_stream.rs` (one listing, read ahead), `dir_reply.rs` (listings answered from one buffer), `inodes.rs` (inodes handed to the guest), `tmpfiles.rs` (O_TMPFILE files), `openfiles.rs` (handles for a guest that sends no OPEN), `create_lookup.rs` (one-request O_CREAT opens), `private_init.rs` (the hutch-private INIT flags), `rename_report.rs` (renames without a target lookup), `xattr_hint.rs` (entries that say whether there are xattrs), `big_readdir.rs` (listings read 32 KiB at a time), `poll.rs` (watching the request queue instead of sleeping), `wb_coherent.rs` (the writeback cache for a guest that sees host changes),
//! `vhost_user.rs` (vhost-user server), `error.rs`.

mod big_readdir;
mod config;
mod confine;
mod create_lookup;
mod device;
mod dir_reply;
mod dir_stream;
mod dirs;
mod error;
mod fd_limit;
mod forget_batch;
mod inodes;
pub mod landlock;
mod levers;
mod openfiles;
mod policy;
pub(crate) mod poll;
mod private_init;
mod rename_report;
mod secrets;
mod stats;
mod tmpfiles;
mod vhost_user;
mod wb_coherent;
mod write_attr;
mod xattr_hint;

#[cfg(test)]
mod tests;

pub use config::{ShareConfig, SharePolicy, CONFIG_SPACE_LEN, TAG_LEN};
pub use confine::{confine_process, KEPT_CAPS};
pub use device::{FsDevice, ShareFs};
pub use dirs::{DirStreams, HostPath};
pub use error::FsError;
pub use levers::{Levers, DEFAULT_QUEUE, LEVERS_ENV};
pub use policy::{PolicyFs, ROOT_ALLOWLIST};
pub use stats::FsStats;
pub use vhost_user::{serve_vhost_user, serve_vhost_user_on, VhostUserFs, VhostUserHandle};
