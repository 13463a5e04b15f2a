//! Tests of the virtio-fs device: the queue path, the system-root policy and the vhost-user
//! server.

mod create_lookup;
mod dir_stream;
mod dirs;
mod drain;
mod escape;
mod fuse_driver;
mod mmio;
mod openfiles;
mod policy;
mod queue;
mod rename_report;
mod tmpfile;
mod vhost_user;
mod xattr_hint;
