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
    /// FUSE WRITEBACK_CACHE, **off**, granted only with hutch's private
    /// [`super::wb_coherent::FUSE_HUTCH_WB_COHERENT`] (guest kernel patch
    /// 0011): the guest buffers writes in its page cache and sends them in
    /// large WRITEs at close, fsync or after 1 s, and trusts its own size
    /// and mtime only while it holds changes the server has not seen, so a
    /// host edit still shows within [`Self::timeout`]. A cargo build sent
    /// 1,800 requests instead of 13,900, but in the TCG guest builds took
    /// 0.89-1.03x the default's time and extracting small files took
    /// 1.13-1.27x as long (the
    /// writeback machinery costs the guest more CPU than the polled
    /// round trips it saves; docs/fs-levers.md). Off: one synchronous
    /// WRITE per `write()`.
    pub writeback: bool,
    /// Entry and attribute timeout: how long a host change may stay unseen.
    pub timeout: Duration,
    /// vhost-user: besides once per drained batch, interrupt as soon as the
    /// oldest answer the driver has not been told about is this old (poll.rs).
    /// `Some(0)`, the default (`+irq_per_request`): after every request; the
    /// load generator's depth-16 4 KiB READ and WRITE run 2x faster than
    /// with `None` (`irq_window=batch`, once per batch only), and the TCG
    /// guest's workloads showed no difference beyond noise (docs/fs-levers.md).
    pub irq_window: Option<Duration>,
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
    /// vhost-user: after answering a batch, the request queue's worker
    /// watches the ring this long for the next request instead of sleeping
    /// on the guest's kick (poll.rs), yielding its CPU between looks.
    /// Default 300 µs: the TCG guest's workloads took 0.70-0.91x the time
    /// (docs/fs-levers.md). Zero: it always sleeps.
    pub poll: Duration,
    /// The guest polls for answers (poll.rs, [`super::poll::FUSE_HUTCH_POLL`]):
    /// hutch's guest kernel (patch 0010) then has the caller of a
    /// synchronous request watch the used ring for its answer, interrupts
    /// off, before sleeping. Off: every answer comes by interrupt, the
    /// completion worker and a wake-up.
    pub guest_poll: bool,
    /// vhost-user: FORGETs in batches (forget_batch.rs): after a drain of
    /// hiprio the driver may queue 32 more before it kicks, and a timer
    /// drains the rest 20 ms later. Off: a kick and an interrupt each.
    pub forget_batch: bool,
    /// FUSE ASYNC_READ, **off**: with it the guest sends readahead (every
    /// read of a page it lacks) as a background request, whose answer comes
    /// by interrupt and the completion worker, which then wakes the reader
    /// waiting on the page lock. Without it the reader sends the READ
    /// itself and polls for the answer ([`Self::guest_poll`]): random 4 KiB
    /// reads ran 5x faster and mmap reads 1.2x, sequential reads within
    /// noise (docs/fs-levers.md). The read-only root keeps it.
    pub async_read: bool,
    /// FUSE PARALLEL_DIROPS: the guest runs lookups and listings of one
    /// directory side by side instead of under the directory's lock.
    pub parallel_dirops: bool,
    /// qemu engine: the workspace device's virtqueue size (QEMU's
    /// `queue-size`), the most requests the guest can have in flight.
    /// Default 128, QEMU's own (docs/fs-levers.md: 1024 measured no better).
    pub queue: u16,
    /// The read-only root grants guest polling ([`Self::guest_poll`]'s
    /// flag) and answers INIT without ASYNC_READ, so an exec's page faults
    /// poll for their READs instead of waiting for an interrupt. The only
    /// lever the root share reads.
    pub root_poll: bool,
    /// Read ahead in big listings (dir_stream.rs): once a listing has shown
    /// itself big, the worker reads the next `getdents64` batch after it has
    /// answered, while the guest parses the chunk, instead of when the next
    /// READDIR comes.
    pub dir_prefetch: bool,
    /// With `dir_prefetch`: in a big READDIRPLUS listing the worker also
    /// looks up as many of the unsent names as the last answer held, after
    /// answering (dir_stream.rs).
    pub lookup_ahead: bool,
    /// READDIR and READDIRPLUS answers laid out in a local buffer and
    /// copied into the guest's in one write, instead of fuse-backend-rs's
    /// few small writes per entry (dir_reply.rs).
    pub flat_readdir: bool,
    /// Write-through WRITEs answer the file's attributes after the write,
    /// and whether anything else changed the file before it (hutch's
    /// private [`super::write_attr::FUSE_HUTCH_WRITE_ATTR`], guest kernel
    /// patch 0012), so the guest keeps the pages it wrote and sends no
    /// GETATTR before reading them back (write_attr.rs).
    pub write_attr: bool,
    /// READDIRPLUS for every page of a listing: the workspace answers INIT
    /// without READDIRPLUS_AUTO. With it, the guest sends READDIRPLUS for
    /// a listing's first page and for pages after a child was looked up,
    /// and marks every entry it links that way, so the first stat of each
    /// entry leaves the lockless path walk to tell the directory (guest
    /// kernel `fuse_dentry_revalidate`).
    pub always_plus: bool,
}

/// How long a directory's mtime must be in the past before its listing may
/// be cached: a later change then always gives it a new mtime, even on a
/// file system with coarse (up to 2 s) timestamps.
pub const SETTLED: Duration = Duration::from_secs(2);

/// The longest poll or interrupt window the levers accept: beyond it a
/// worker burns a CPU for requests that are not coming, or a driver waits.
const MAX_MICROS: u64 = 10_000;

/// QEMU's own virtqueue size for vhost-user-fs, and hutch's default.
pub const DEFAULT_QUEUE: u16 = 128;

/// A `queue=` lever: a power of two the device offers (16 to its 1024).
fn queue_size(n: &str) -> Result<u16, &'static str> {
    let n: u16 = n.parse().map_err(|_| "not a whole number of entries")?;
    if !(16..=super::FsDevice::QUEUE_SIZE).contains(&n) || !n.is_power_of_two() {
        return Err("must be a power of two from 16 to 1024");
    }
    Ok(n)
}

/// A lever's microseconds, 0 to [`MAX_MICROS`].
fn micros(us: &str) -> Result<Duration, &'static str> {
    let us: u64 = us
        .parse()
        .map_err(|_| "not a whole number of microseconds")?;
    if us > MAX_MICROS {
        return Err("must be 0 to 10000 microseconds");
    }
    Ok(Duration::from_micros(us))
}

impl Default for Levers {
    fn default() -> Self {
        Self {
            flush: false,
            negative: true,
            writeback: false,
            timeout: Duration::from_secs(5),
            irq_window: Some(Duration::ZERO),
            cache_dir: false,
            no_open: true,
            create_lookup: true,
            rename_report: true,
            xattr_hint: true,
            big_readdir: true,
            poll: Duration::from_micros(300),
            guest_poll: true,
            forget_batch: true,
            async_read: false,
            parallel_dirops: true,
            queue: DEFAULT_QUEUE,
            root_poll: false,
            dir_prefetch: true,
            lookup_ahead: true,
            flat_readdir: true,
            write_attr: true,
            always_plus: false,
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

    /// Applies `spec`: comma-separated `+NAME`, `-NAME`, `timeout=SECONDS`,
    /// `poll=MICROSECONDS`, `irq_window=MICROSECONDS|batch` or `queue=N`.
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
            if let Some(us) = item.strip_prefix("poll=") {
                self.poll = micros(us).map_err(bad)?;
                continue;
            }
            if let Some(us) = item.strip_prefix("irq_window=") {
                self.irq_window = match us {
                    "batch" => None,
                    us => Some(micros(us).map_err(bad)?),
                };
                continue;
            }
            if let Some(n) = item.strip_prefix("queue=") {
                self.queue = queue_size(n).map_err(bad)?;
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
                "irq_per_request" => self.irq_window = on.then_some(Duration::ZERO),
                "cache_dir" => self.cache_dir = on,
                "no_open" => self.no_open = on,
                "create_lookup" => self.create_lookup = on,
                "rename_report" => self.rename_report = on,
                "xattr_hint" => self.xattr_hint = on,
                "big_readdir" => self.big_readdir = on,
                "guest_poll" => self.guest_poll = on,
                "forget_batch" => self.forget_batch = on,
                "async_read" => self.async_read = on,
                "parallel_dirops" => self.parallel_dirops = on,
                "root_poll" => self.root_poll = on,
                "dir_prefetch" => self.dir_prefetch = on,
                "lookup_ahead" => self.lookup_ahead = on,
                "flat_readdir" => self.flat_readdir = on,
                "write_attr" => self.write_attr = on,
                "always_plus" => self.always_plus = on,
                _ => {
                    return Err(bad(
                        "levers are flush, negative, writeback, irq_per_request, cache_dir, \
                         no_open, create_lookup, rename_report, xattr_hint, big_readdir, \
                         guest_poll, forget_batch, async_read, parallel_dirops, root_poll, dir_prefetch, \
                         lookup_ahead, flat_readdir, write_attr, always_plus, timeout=S, poll=US, irq_window=US|batch, queue=N",
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
        assert!(l.flush && !l.negative && l.writeback && l.cache_dir);
        assert_eq!(l.irq_window, Some(Duration::ZERO));
        assert_eq!(d.irq_window, Some(Duration::ZERO));
        let w = d.apply("irq_window=25").unwrap();
        assert_eq!(w.irq_window, Some(Duration::from_micros(25)));
        assert_eq!(w.apply("irq_window=batch").unwrap().irq_window, None);
        assert_eq!(w.apply("-irq_per_request").unwrap().irq_window, None);
        assert_eq!(
            d.apply("irq_window=batch,+irq_per_request")
                .unwrap()
                .irq_window,
            Some(Duration::ZERO)
        );
        assert!(!l.no_open && l.create_lookup);
        assert!(!d.apply("-create_lookup").unwrap().create_lookup);
        assert!(d.rename_report && !d.apply("-rename_report").unwrap().rename_report);
        assert!(d.xattr_hint && !d.apply("-xattr_hint").unwrap().xattr_hint);
        assert!(d.big_readdir && !d.apply("-big_readdir").unwrap().big_readdir);
        assert!(d.guest_poll && !d.apply("-guest_poll").unwrap().guest_poll);
        assert!(d.forget_batch && !d.apply("-forget_batch").unwrap().forget_batch);
        assert!(d.write_attr && !d.apply("-write_attr").unwrap().write_attr);
        assert!(!d.always_plus && d.apply("+always_plus").unwrap().always_plus);
        assert_eq!(l.timeout, Duration::from_millis(500));
        assert_eq!(d.poll, Duration::from_micros(300));
        assert_eq!(d.apply("poll=0").unwrap().poll, Duration::ZERO);
        assert_eq!(d.apply("poll=40").unwrap().poll, Duration::from_micros(40));
        assert!(!d.async_read && d.apply("+async_read").unwrap().async_read);
        assert!(d.parallel_dirops && !d.apply("-parallel_dirops").unwrap().parallel_dirops);
        assert_eq!(d.queue, 128);
        assert!(!d.root_poll && d.apply("+root_poll").unwrap().root_poll);
        assert!(d.dir_prefetch && !d.apply("-dir_prefetch").unwrap().dir_prefetch);
        assert!(d.lookup_ahead && !d.apply("-lookup_ahead").unwrap().lookup_ahead);
        assert!(d.flat_readdir && !d.apply("-flat_readdir").unwrap().flat_readdir);
        assert_eq!(d.apply("queue=1024").unwrap().queue, 1024);
        assert_eq!(d.apply("queue=16").unwrap().queue, 16);
        assert_eq!(d.apply("").unwrap(), d);
    }

    #[test]
    fn bad_items_are_named() {
        for (spec, why) in [
            ("flush", "start it with +"),
            ("+dax", "levers are"),
            ("timeout=soon", "not a number"),
            ("timeout=-1", "0 to 3600"),
            ("poll=1.5", "whole number"),
            ("poll=20000", "0 to 10000"),
            ("irq_window=soon", "whole number"),
            ("queue=big", "whole number"),
            ("queue=100", "power of two"),
            ("queue=2048", "16 to 1024"),
            ("queue=8", "16 to 1024"),
        ] {
            let e = Levers::default().apply(spec).unwrap_err().to_string();
            assert!(e.contains(spec) && e.contains(why), "{spec}: {e}");
        }
    }
}
