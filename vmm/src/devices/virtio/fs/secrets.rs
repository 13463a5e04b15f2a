//! Host files the system-root share never shows.
//!
//! A secret is hidden two ways: by name inside its directory (which also covers a secret
//! created or replaced after the share started: `passwd` writes a new /etc/shadow and
//! renames it over the old one), and by (st_dev, st_ino) as found at start, which covers
//! hard links to it elsewhere.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use fuse_backend_rs::abi::fuse_abi::stat64;

/// Secret files and directories: (directory relative to the source, name in it).
const SECRETS: &[(&str, &str)] = &[
    ("etc", "shadow"),
    ("etc", "shadow-"),
    ("etc", "gshadow"),
    ("etc", "gshadow-"),
    ("etc", "sudoers"),
    ("etc/ssl", "private"),
    ("etc/security", "opasswd"),
];

/// Directory whose `ssh_host_*_key` files (host private keys) are secret.
const SSH_DIR: &str = "etc/ssh";

/// A file's identity: (st_dev, st_ino).
pub(crate) type FileId = (u64, u64);

/// The identity of `st`.
pub(crate) fn file_id(st: &stat64) -> FileId {
    // st_dev / st_ino are u64 on every Linux target stat64 exists for.
    #[allow(clippy::unnecessary_cast)]
    (st.st_dev as u64, st.st_ino as u64)
}

fn ssh_host_key(name: &[u8]) -> bool {
    name.starts_with(b"ssh_host_") && name.ends_with(b"_key")
}

#[derive(Debug, Clone)]
enum NameRule {
    Exact(&'static str),
    SshHostKey,
}

impl NameRule {
    fn matches(&self, name: &[u8]) -> bool {
        match self {
            NameRule::Exact(n) => n.as_bytes() == name,
            NameRule::SshHostKey => ssh_host_key(name),
        }
    }
}

/// The secrets of one source directory.
#[derive(Debug, Default, Clone)]
pub(crate) struct MaskedFiles {
    ids: Vec<FileId>,
    names: Vec<(FileId, NameRule)>,
}

impl MaskedFiles {
    /// Finds the secrets' directories and the secrets that exist under `source`. Both a
    /// secret itself and, when it is a symlink, its target are masked by identity.
    pub(crate) fn scan(source: &Path) -> Self {
        let mut masked = Self::default();
        let mut paths = Vec::new();
        for &(dir, name) in SECRETS {
            if let Ok(meta) = fs::metadata(source.join(dir)) {
                masked
                    .names
                    .push(((meta.dev(), meta.ino()), NameRule::Exact(name)));
            }
            paths.push(source.join(dir).join(name));
        }
        let ssh = source.join(SSH_DIR);
        if let Ok(meta) = fs::metadata(&ssh) {
            masked
                .names
                .push(((meta.dev(), meta.ino()), NameRule::SshHostKey));
        }
        if let Ok(dir) = fs::read_dir(&ssh) {
            for entry in dir.flatten() {
                if ssh_host_key(entry.file_name().as_encoded_bytes()) {
                    paths.push(entry.path());
                }
            }
        }

        for path in paths {
            if let Ok(meta) = fs::symlink_metadata(&path) {
                masked.insert((meta.dev(), meta.ino()));
            }
            if let Ok(meta) = fs::metadata(&path) {
                masked.insert((meta.dev(), meta.ino()));
            }
        }
        masked
    }

    fn insert(&mut self, id: FileId) {
        if !self.ids.contains(&id) {
            self.ids.push(id);
        }
    }

    /// Whether `st` is one of the secrets found at start.
    pub(crate) fn contains(&self, st: &stat64) -> bool {
        self.ids.contains(&file_id(st))
    }

    /// Whether `name` inside the directory `dir` is a secret's name.
    pub(crate) fn hides_name(&self, dir: FileId, name: &[u8]) -> bool {
        self.names
            .iter()
            .any(|(d, rule)| *d == dir && rule.matches(name))
    }

    /// Whether the entry `name` of directory `dir` (when known) with attributes `st` is hidden.
    pub(crate) fn hides(&self, dir: Option<FileId>, name: &[u8], st: &stat64) -> bool {
        self.contains(st) || dir.is_some_and(|d| self.hides_name(d, name))
    }

    /// How many secret identities were found.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }
}
