//! The workspace share's performance levers, each a switch that
//! `HUTCH_FS_LEVERS` can flip for an experiment (`-flush,+writeback`), so a
//! lever's effect is measured by running the same benchmark twice with no
//! rebuild. The defaults are the levers that won; docs/fs-levers.md records
//! what each is worth.

use std::time::Duration;

use super::FsError;

/// The environment variable that overrides the defaults.
pub const LEVERS_ENV: &str = "HUTCH_FS_LEVERS";

/// Switches for the workspace share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levers {
    /// Answer FLUSH. Off: the first FLUSH gets ENOSYS and the guest stops
    /// sending one on every close(); the server's descriptors stay open
    /// until RELEASE, and locks are the guest kernel's own (no POSIX_LOCKS),
    /// so a FLUSH does nothing on a local host file system.
    pub flush: bool,
    /// Answer a lookup miss with a negative entry the guest caches for the
    /// entry timeout, instead of ENOENT, which it does not cache.
    pub negative: bool,
    /// FUSE WRITEBACK_CACHE: the guest buffers writes in its page cache.
    /// Off: with it the guest trusts its own file sizes and mtimes, so a
    /// host edit that changes a file's size can stay unseen (stale content).
    pub writeback: bool,
    /// Entry and attribute timeout: how long a host change may stay unseen.
    pub timeout: Duration,
    /// vhost-user: interrupt after each used request instead of once per
    /// drained batch. Off: 2x the load generator's depth-16 throughput,
    /// but the TCG guest's workloads were 6-20 % slower with it (more
    /// interrupts to take); docs/fs-levers.md.
    pub irq_per_request: bool,
    /// FOPEN_CACHE_DIR with KEEP_CACHE on a workspace directory that has not
    /// changed for [`SETTLED`]: the guest keeps the listing in its page cache
    /// and lists it again without a request, until the directory's mtime
    /// or its own change counter moves (checked at each rewind, with the
    /// attribute timeout as the bound for host changes). Off: a cached
    /// listing carries names only, so a listing followed by a stat of each
    /// entry (`ls -l`, `find`) sends a LOOKUP per name where READDIRPLUS
    /// would have brought the attributes along: 7x slower in the benchmark.
    pub cache_dir: bool,
    /// Zero-message open (openfiles.rs): the first OPEN gets ENOSYS, and the
    /// guest stops sending OPEN and RELEASE; its pages stay cached across
    /// opens until the host changes the file's size or mtime. Off: every
    /// open() and close() is a round trip and every open drops the file's
    /// pages (close-to-open).
    pub no_open: bool,
    /// One request per O_CREAT open of a name the guest has not looked up
    /// (create_lookup.rs): hutch's guest kernel (patch 0004) sends CREATE
    /// without a LOOKUP first, and the server answers an existing name with
    /// its entry instead of opening it. Off: LOOKUP, then CREATE.
    pub create_lookup: bool,
    /// Renames without a LOOKUP of the target (rename_report.rs): hutch's
    /// guest kernel (patch 0006) leaves the target name unlooked-up, and the
    /// server's RENAME2 answers with the node id of the inode it replaced.
    /// Off: LOOKUP, then RENAME.
    pub rename_report: bool,
    /// Entries that say whether a file has extended attributes
    /// (xattr_hint.rs): hutch's guest kernel (patch 0008) then answers
    /// getxattr and listxattr itself for a file that has none, until its
    /// attributes expire. Off: `ls -l` sends two GETXATTR per file.
    pub xattr_hint: bool,
    /// Listings read 32 KiB at a time (big_readdir.rs): hutch's guest
    /// kernel (patch 0009) sends READDIR of 32 KiB instead of one page.
    /// Off: a 10,000-entry listing takes about 80 READDIR instead of 10.
    pub big_readdir: bool,
}

/// How long a directory's mtime must be in the past before its listing may
/// be cached: a later change then always gives it a new mtime, even on a
/// file system with coarse (up to 2 s) timestamps.
pub const SETTLED: Duration = Duration::from_secs(2);

impl Default for Levers {
    fn default() -> Self {
        Self {
            flush: false,
            negative: true,
            writeback: false,
            timeout: Duration::from_secs(5),
            irq_per_request: false,
            cache_dir: false,
            no_open: true,
            create_lookup: true,
            rename_report: true,
            xattr_hint: true,
            big_readdir: true,
        }
    }
}

impl Levers {
    /// The defaults with `HUTCH_FS_LEVERS` applied.
    pub fn from_env() -> Result<Self, FsError> {
        match std::env::var(LEVERS_ENV) {
            Ok(spec) => Self::default().apply(&spec),
            Err(_) => Ok(Self::default()),
        }
    }

    /// Applies `spec`: comma-separated `+NAME`, `-NAME` or `timeout=SECONDS`.
    pub fn apply(mut self, spec: &str) -> Result<Self, FsError> {
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = |reason: &'static str| FsError::BadLever {
                item: item.to_owned(),
                reason,
            };
            if let Some(secs) = item.strip_prefix("timeout=") {
                let secs: f64 = secs.parse().map_err(|_| bad("not a number of seconds"))?;
                if !(0.0..=3600.0).contains(&secs) {
                    return Err(bad("must be 0 to 3600 seconds"));
                }
                self.timeout = Duration::from_secs_f64(secs);
                continue;
            }
            let (on, name) = match item.split_at(1) {
                ("+", name) => (true, name),
                ("-", name) => (false, name),
                _ => return Err(bad("start it with + or -")),
            };
            match name {
                "flush" => self.flush = on,
                "negative" => self.negative = on,
                "writeback" => self.writeback = on,
                "irq_per_request" => self.irq_per_request = on,
                "cache_dir" => self.cache_dir = on,
                "no_open" => self.no_open = on,
                "create_lookup" => self.create_lookup = on,
                "rename_report" => self.rename_report = on,
                "xattr_hint" => self.xattr_hint = on,
                "big_readdir" => self.big_readdir = on,
                _ => {
                    return Err(bad(
                        "levers are flush, negative, writeback, irq_per_request, cache_dir, \
                         no_open, create_lookup, rename_report, xattr_hint, big_readdir, \
                         timeout=S",
                    ))
                }
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let d = Levers::default();
        assert!(!d.flush && d.negative && !d.writeback && !d.cache_dir && d.no_open);
        assert!(d.create_lookup);
        let l = d
            .apply("+flush, -negative,+writeback,+irq_per_request,+cache_dir,-no_open,timeout=0.5")
            .unwrap();
        assert!(l.flush && !l.negative && l.writeback && l.irq_per_request && l.cache_dir);
        assert!(!l.no_open && l.create_lookup);
        assert!(!d.apply("-create_lookup").unwrap().create_lookup);
        assert!(d.rename_report && !d.apply("-rename_report").unwrap().rename_report);
        assert!(d.xattr_hint && !d.apply("-xattr_hint").unwrap().xattr_hint);
        assert!(d.big_readdir && !d.apply("-big_readdir").unwrap().big_readdir);
        assert_eq!(l.timeout, Duration::from_millis(500));
        assert_eq!(d.apply("").unwrap(), d);
    }

    #[test]
    fn bad_items_are_named() {
        for (spec, why) in [
            ("flush", "start it with +"),
            ("+dax", "levers are"),
            ("timeout=soon", "not a number"),
            ("timeout=-1", "0 to 3600"),
        ] {
            let e = Levers::default().apply(spec).unwrap_err().to_string();
            assert!(e.contains(spec) && e.contains(why), "{spec}: {e}");
        }
    }
}
