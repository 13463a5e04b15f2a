//! Host files the system-root share never shows, identified by (st_dev, st_ino) so that hard
//! links to them elsewhere are masked too.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use fuse_backend_rs::abi::fuse_abi::stat64;

/// Secret files and directories, relative to the share's source.
const SECRET_PATHS: &[&str] = &[
    "etc/shadow",
    "etc/shadow-",
    "etc/gshadow",
    "etc/gshadow-",
    "etc/ssl/private",
    "etc/sudoers",
    "etc/security/opasswd",
];

/// Directory whose `ssh_host_*_key` files (host private keys) are secret.
const SSH_DIR: &str = "etc/ssh";

/// The identities of the secrets found under one source directory.
#[derive(Debug, Default, Clone)]
pub(crate) struct MaskedFiles {
    ids: Vec<(u64, u64)>,
}

impl MaskedFiles {
    /// Stats the secrets that exist under `source`. Both the entry itself and, when it is a
    /// symlink, its target are masked.
    pub(crate) fn scan(source: &Path) -> Self {
        let mut paths: Vec<_> = SECRET_PATHS.iter().map(|p| source.join(p)).collect();
        if let Ok(dir) = fs::read_dir(source.join(SSH_DIR)) {
            for entry in dir.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("ssh_host_") && name.ends_with("_key") {
                    paths.push(entry.path());
                }
            }
        }

        let mut masked = Self::default();
        for path in paths {
            if let Ok(meta) = fs::symlink_metadata(&path) {
                masked.insert(meta.dev(), meta.ino());
            }
            if let Ok(meta) = fs::metadata(&path) {
                masked.insert(meta.dev(), meta.ino());
            }
        }
        masked
    }

    fn insert(&mut self, dev: u64, ino: u64) {
        if !self.ids.contains(&(dev, ino)) {
            self.ids.push((dev, ino));
        }
    }

    /// Whether `st` describes one of the secrets.
    pub(crate) fn contains(&self, st: &stat64) -> bool {
        // st_dev / st_ino are u64 on every Linux target stat64 exists for.
        #[allow(clippy::unnecessary_cast)]
        let id = (st.st_dev as u64, st.st_ino as u64);
        self.ids.contains(&id)
    }

    /// How many secret identities were found.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }
}
