//! Zero-message open on the workspace (lever `no_open`, levers.rs).
//!
//! The first OPEN of a file is answered ENOSYS, and Linux's FUSE client stops
//! sending OPEN and RELEASE for the whole mount: `open()` and `close()` of a
//! file whose attributes it holds cost the guest no request at all, and its
//! pages stay cached across opens (the client's default for a mount without
//! OPEN is FOPEN_KEEP_CACHE; AUTO_INVAL_DATA still drops them when the host
//! changes the file's size or mtime). READ, WRITE and the other calls on a
//! file then come with handle 0, and this table picks the host descriptor
//! that serves them: per inode, one handle that can read and one that can
//! write, held until the guest forgets the inode.
//!
//! The handle CREATE opened is kept as the new file's: a file created with
//! mode 0444 stays writable through the descriptor its creator got, the way
//! it does on a local file system (git writes its objects that way), where
//! opening it again for writing would be refused to a host user who is not
//! root.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Past this many inodes with cached handles (or a quarter of the open-file
/// limit, if lower), the table is emptied (the handles are given back) before
/// another is added: descriptors stay bounded however many files a guest
/// walks, next to the descriptor PassthroughFs holds for every inode the
/// guest knows. A file is opened again on its next use.
pub const MAX_CACHED: usize = 16_384;

/// The bound for this process: a quarter of its soft RLIMIT_NOFILE (which the
/// device has raised to the hard limit, fd_limit.rs), at most [`MAX_CACHED`].
fn process_cap() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into `lim`; the result is checked.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 256;
    }
    usize::try_from(lim.rlim_cur / 4)
        .unwrap_or(MAX_CACHED)
        .clamp(64, MAX_CACHED)
}

/// What a request needs its descriptor for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// READ, LSEEK, FSYNC: any descriptor that can read.
    Read,
    /// WRITE, FALLOCATE, truncation.
    Write,
}

impl Access {
    /// Whether a descriptor opened with `flags` allows this access.
    fn allowed_by(self, flags: u32) -> bool {
        let mode = flags as i32 & libc::O_ACCMODE;
        match self {
            Access::Read => mode == libc::O_RDONLY || mode == libc::O_RDWR,
            Access::Write => mode == libc::O_WRONLY || mode == libc::O_RDWR,
        }
    }
}

/// The inner handles cached for one inode.
#[derive(Debug, Default, Clone, Copy)]
struct Slots {
    read: Option<u64>,
    write: Option<u64>,
}

impl Slots {
    fn handles(self) -> Vec<u64> {
        let mut v: Vec<u64> = self.read.into_iter().collect();
        if let Some(w) = self.write.filter(|w| Some(*w) != self.read) {
            v.push(w);
        }
        v
    }
}

/// Inode → the inner handles serving its handle-0 requests.
#[derive(Debug)]
pub struct OpenFiles {
    map: Mutex<HashMap<u64, Slots>>,
    cap: usize,
}

impl Default for OpenFiles {
    fn default() -> Self {
        Self::with_cap(process_cap())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Handles the caller must give back to the inner file system (release).
pub type Released = Vec<(u64, u64)>;

fn drain(map: &mut HashMap<u64, Slots>) -> Released {
    map.drain()
        .flat_map(|(i, s)| s.handles().into_iter().map(move |h| (i, h)))
        .collect()
}

impl OpenFiles {
    /// A table that holds at most `cap` inodes' handles.
    pub fn with_cap(cap: usize) -> Self {
        Self {
            map: Mutex::default(),
            cap: cap.max(1),
        }
    }

    /// A cached handle of `inode` that allows `access`.
    pub fn get(&self, inode: u64, access: Access) -> Option<u64> {
        let map = lock(&self.map);
        let s = map.get(&inode)?;
        match access {
            Access::Read => s.read,
            Access::Write => s.write,
        }
    }

    /// Caches `handle`, opened with `flags`, for `inode`. A slot already
    /// filled keeps its handle, unless `replace` (CREATE's handle is the
    /// one that may write whatever the mode). Returns the (inode, handle)
    /// pairs no slot holds any more, for the caller to release, and the
    /// handle to use for `access` (None if `handle` does not allow it).
    pub fn adopt(
        &self,
        inode: u64,
        handle: u64,
        flags: u32,
        replace: bool,
        access: Option<Access>,
    ) -> (Option<u64>, Released) {
        let mut map = lock(&self.map);
        let mut released = Vec::new();
        if map.len() >= self.cap && !map.contains_key(&inode) {
            released = drain(&mut map);
        }
        let slots = map.entry(inode).or_default();
        let before = *slots;
        for (a, slot) in [
            (Access::Read, &mut slots.read),
            (Access::Write, &mut slots.write),
        ] {
            if a.allowed_by(flags) && (replace || slot.is_none()) {
                *slot = Some(handle);
            }
        }
        let after = *slots;
        let held = after.handles();
        released.extend(
            before
                .handles()
                .into_iter()
                .chain(std::iter::once(handle))
                .filter(|h| !held.contains(h))
                .map(|h| (inode, h)),
        );
        released.dedup();
        let chosen = access.and_then(|a| match a {
            Access::Read => after.read,
            Access::Write => after.write,
        });
        (chosen, released)
    }

    /// Removes every cached handle, for the caller to release (the process
    /// ran out of descriptors).
    pub fn drain(&self) -> Released {
        drain(&mut lock(&self.map))
    }

    /// Whether `inode` has cached handles.
    pub fn holds(&self, inode: u64) -> bool {
        lock(&self.map).contains_key(&inode)
    }

    /// Removes `inode`'s handles, for the caller to release.
    pub fn take(&self, inode: u64) -> Released {
        lock(&self.map)
            .remove(&inode)
            .map(|s| s.handles().into_iter().map(|h| (inode, h)).collect())
            .unwrap_or_default()
    }

    /// How many inodes have cached handles.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: u32 = libc::O_RDONLY as u32;
    const W: u32 = libc::O_WRONLY as u32;
    const RW: u32 = libc::O_RDWR as u32;

    #[test]
    fn slots_follow_the_access_mode() {
        let t = OpenFiles::default();
        assert_eq!(t.get(5, Access::Read), None);
        let (h, rel) = t.adopt(5, 10, R, false, Some(Access::Read));
        assert_eq!((h, rel), (Some(10), vec![]));
        assert_eq!(t.get(5, Access::Write), None);
        // A write-only handle fills the write slot only.
        let (h, rel) = t.adopt(5, 11, W, false, Some(Access::Read));
        assert_eq!((h, rel), (Some(10), vec![]));
        assert_eq!(t.get(5, Access::Write), Some(11));
        // A second read handle is not needed: it is given back.
        let (h, rel) = t.adopt(5, 12, RW, false, Some(Access::Write));
        assert_eq!((h, rel), (Some(11), vec![(5, 12)]));
        let mut all = t.take(5);
        all.sort();
        assert_eq!(all, vec![(5, 10), (5, 11)]);
        assert!(t.take(5).is_empty());
    }

    #[test]
    fn create_replaces_and_releases() {
        let t = OpenFiles::default();
        t.adopt(7, 1, R, false, None);
        t.adopt(7, 2, W, false, None);
        let (_, mut rel) = t.adopt(7, 3, RW, true, None);
        rel.sort();
        assert_eq!(rel, vec![(7, 1), (7, 2)]);
        assert_eq!(t.get(7, Access::Read), Some(3));
        assert_eq!(t.get(7, Access::Write), Some(3));
        assert_eq!(t.take(7), vec![(7, 3)]);
    }

    #[test]
    fn bounded() {
        let t = OpenFiles::with_cap(100);
        for i in 0..100 {
            t.adopt(i, i + 100_000, R, false, None);
        }
        assert_eq!(t.len(), 100);
        let (_, rel) = t.adopt(u64::MAX, 1, R, false, None);
        assert_eq!(rel.len(), 100);
        assert_eq!(t.len(), 1);
        assert_eq!(t.drain(), vec![(u64::MAX, 1)]);
        assert_eq!(t.len(), 0);
        let cap = process_cap();
        assert!((64..=MAX_CACHED).contains(&cap), "{cap}");
    }
}
