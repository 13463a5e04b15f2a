//! The inode numbers the guest has been given, with their lookup counts.
//!
//! PassthroughFs creates inodes that the guest never sees: its `readdir` looks every entry up
//! and forgets it again, and a masked lookup lives until we forget it. Inode numbers are
//! sequential, so a crafted request could name such an inode in that window. The restricted
//! share therefore answers only for inodes it has handed out (the root, plus every entry it
//! returned and the guest has not forgotten yet).

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use fuse_backend_rs::api::filesystem::ROOT_ID;

use super::secrets::FileId;

#[derive(Debug)]
struct Issued {
    count: u64,
    id: FileId,
}

/// Lookup counts (and host identities) of the inodes handed to the guest. The root is always
/// present.
#[derive(Debug, Default)]
pub(crate) struct IssuedInodes {
    counts: RwLock<HashMap<u64, Issued>>,
}

impl IssuedInodes {
    /// Whether the guest may name `inode`.
    pub(crate) fn contains(&self, inode: u64) -> bool {
        inode == ROOT_ID
            || self
                .counts
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(&inode)
    }

    /// Records one more lookup of `inode` (host file `id`) by the guest.
    pub(crate) fn issue(&self, inode: u64, id: FileId) {
        if inode == ROOT_ID {
            return;
        }
        let mut counts = self.counts.write().unwrap_or_else(PoisonError::into_inner);
        let issued = counts.entry(inode).or_insert(Issued { count: 0, id });
        issued.count = issued.count.saturating_add(1);
        issued.id = id;
    }

    /// The host identity of an issued inode (not the root's: the caller knows it).
    pub(crate) fn identity(&self, inode: u64) -> Option<FileId> {
        self.counts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&inode)
            .map(|issued| issued.id)
    }

    /// Takes `count` lookups of `inode` back; returns how many the guest actually held
    /// (never more than were issued), which is what may be forwarded to the inner fs.
    pub(crate) fn forget(&self, inode: u64, count: u64) -> u64 {
        if inode == ROOT_ID {
            // PassthroughFs ignores forgets of the root too; pass it on unchanged.
            return count;
        }
        let mut counts = self.counts.write().unwrap_or_else(PoisonError::into_inner);
        let Some(held) = counts.get_mut(&inode) else {
            return 0;
        };
        let taken = count.min(held.count);
        held.count -= taken;
        if held.count == 0 {
            counts.remove(&inode);
        }
        taken
    }

    /// Forgets everything (FUSE_DESTROY).
    pub(crate) fn clear(&self) {
        self.counts
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}
