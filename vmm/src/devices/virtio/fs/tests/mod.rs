//! Tests of the virtio-fs device: the queue path, the system-root policy and the vhost-user
//! server.

mod create_lookup;
mod dir_reply;
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
mod write_attr;
mod xattr_hint;

/// PassthroughFs over `root`, xattrs on, as the workspace and the root
/// share build it (the policy layered above is each test's own).
fn passthrough(root: &std::path::Path) -> fuse_backend_rs::passthrough::PassthroughFs {
    fuse_backend_rs::passthrough::PassthroughFs::new(passthrough_config(root)).unwrap()
}

/// [`passthrough`]'s configuration, for a test that changes one setting.
fn passthrough_config(root: &std::path::Path) -> fuse_backend_rs::passthrough::Config {
    fuse_backend_rs::passthrough::Config {
        root_dir: root.to_str().unwrap().to_owned(),
        xattr: true,
        do_import: true,
        ..Default::default()
    }
}
