//! Per-device counters: requests by FUSE opcode, bytes each way, queue
//! notifications and interrupts, and a service-time histogram. Printed by
//! `hutch run --stats`. Counting costs a few relaxed atomic adds per request.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Opcodes above this are counted together as "other".
const MAX_OPCODE: usize = 64;
/// Service-time buckets: < 1 µs, < 2 µs, < 4 µs, … (powers of two).
const BUCKETS: usize = 24;

/// Counters of one device.
pub struct FsStats {
    by_opcode: [AtomicU64; MAX_OPCODE + 1],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    notifications: AtomicU64,
    interrupts: AtomicU64,
    /// Batches that began without a kick: the worker saw them while polling.
    polled: AtomicU64,
    /// Listing batches read ahead (dir_stream.rs).
    read_ahead: AtomicU64,
    /// Names looked up ahead for READDIRPLUS.
    looked_up_ahead: AtomicU64,
    service_us: [AtomicU64; BUCKETS],
}

impl Default for FsStats {
    fn default() -> Self {
        Self {
            by_opcode: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            notifications: AtomicU64::new(0),
            interrupts: AtomicU64::new(0),
            polled: AtomicU64::new(0),
            read_ahead: AtomicU64::new(0),
            looked_up_ahead: AtomicU64::new(0),
            service_us: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// FUSE opcode names (linux/fuse.h), for the report.
pub fn opcode_name(op: usize) -> &'static str {
    match op {
        1 => "LOOKUP",
        2 => "FORGET",
        3 => "GETATTR",
        4 => "SETATTR",
        5 => "READLINK",
        6 => "SYMLINK",
        8 => "MKNOD",
        9 => "MKDIR",
        10 => "UNLINK",
        11 => "RMDIR",
        12 => "RENAME",
        13 => "LINK",
        14 => "OPEN",
        15 => "READ",
        16 => "WRITE",
        17 => "STATFS",
        18 => "RELEASE",
        20 => "FSYNC",
        21 => "SETXATTR",
        22 => "GETXATTR",
        23 => "LISTXATTR",
        24 => "REMOVEXATTR",
        25 => "FLUSH",
        26 => "INIT",
        27 => "OPENDIR",
        28 => "READDIR",
        29 => "RELEASEDIR",
        30 => "FSYNCDIR",
        31 => "GETLK",
        32 => "SETLK",
        33 => "SETLKW",
        34 => "ACCESS",
        35 => "CREATE",
        36 => "INTERRUPT",
        37 => "BMAP",
        38 => "DESTROY",
        39 => "IOCTL",
        40 => "POLL",
        41 => "NOTIFY_REPLY",
        42 => "BATCH_FORGET",
        43 => "FALLOCATE",
        44 => "READDIRPLUS",
        45 => "RENAME2",
        46 => "LSEEK",
        47 => "COPY_FILE_RANGE",
        48 => "SETUPMAPPING",
        49 => "REMOVEMAPPING",
        50 => "SYNCFS",
        51 => "TMPFILE",
        _ => "other",
    }
}

impl FsStats {
    /// Counts one request.
    pub fn request(&self, opcode: u32, bytes_in: usize, bytes_out: usize, took: Duration) {
        let op = (opcode as usize).min(MAX_OPCODE);
        self.by_opcode[op].fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes_in as u64, Ordering::Relaxed);
        self.bytes_out
            .fetch_add(bytes_out as u64, Ordering::Relaxed);
        let us = took.as_micros() as u64;
        let bucket = (u64::BITS - us.leading_zeros()) as usize;
        self.service_us[bucket.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one queue notification (a kick from the driver).
    pub fn notification(&self) {
        self.notifications.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one interrupt raised to the driver.
    pub fn interrupt(&self) {
        self.interrupts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one batch that the worker found by polling, without a kick.
    pub fn polled(&self) {
        self.polled.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts listing batches read and names looked up ahead.
    pub fn ahead(&self, (batches, names): (u64, u64)) {
        if batches + names > 0 {
            self.read_ahead.fetch_add(batches, Ordering::Relaxed);
            self.looked_up_ahead.fetch_add(names, Ordering::Relaxed);
        }
    }

    /// Listing batches read and names looked up ahead.
    pub fn ahead_counts(&self) -> (u64, u64) {
        (
            self.read_ahead.load(Ordering::Relaxed),
            self.looked_up_ahead.load(Ordering::Relaxed),
        )
    }

    /// Batches found by polling.
    pub fn polled_batches(&self) -> u64 {
        self.polled.load(Ordering::Relaxed)
    }

    /// Requests counted for `opcode`.
    pub fn count(&self, opcode: u32) -> u64 {
        self.by_opcode[(opcode as usize).min(MAX_OPCODE)].load(Ordering::Relaxed)
    }

    /// Total requests.
    pub fn requests(&self) -> u64 {
        self.by_opcode
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// A human-readable report for device `name`.
    pub fn report(&self, name: &str) -> String {
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = format!(
            "{name}: {} requests, {} bytes in, {} bytes out, {} notifications, {} interrupts, \
             {} batches found by polling\n",
            self.requests(),
            ld(&self.bytes_in),
            ld(&self.bytes_out),
            ld(&self.notifications),
            ld(&self.interrupts),
            ld(&self.polled)
        );
        let mut ops: Vec<(usize, u64)> = (0..=MAX_OPCODE)
            .map(|op| (op, ld(&self.by_opcode[op])))
            .filter(|(_, n)| *n > 0)
            .collect();
        ops.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        s.push_str("  by opcode:");
        for (op, n) in ops {
            let _ = write!(s, " {}={n}", opcode_name(op));
        }
        s.push_str("\n  service time:");
        for (b, c) in self.service_us.iter().enumerate() {
            let c = ld(c);
            if c > 0 {
                let _ = write!(s, " <{}us={c}", 1u64 << b);
            }
        }
        s.push('\n');
        let (batches, names) = self.ahead_counts();
        if batches + names > 0 {
            let _ = writeln!(
                s,
                "  read ahead: {batches} listing batches, {names} names looked up"
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_reports() {
        let s = FsStats::default();
        s.request(1, 48, 144, Duration::from_micros(3));
        s.request(1, 48, 16, Duration::from_micros(0));
        s.request(15, 80, 4096, Duration::from_micros(100));
        s.request(999, 40, 16, Duration::from_millis(1));
        s.notification();
        s.interrupt();
        assert_eq!(s.count(1), 2);
        assert_eq!(s.count(15), 1);
        assert_eq!(s.requests(), 4);
        let r = s.report("virtio-fs ws");
        assert!(r.starts_with("virtio-fs ws: 4 requests, 216 bytes in, 4272 bytes out, 1 notifications, 1 interrupts"), "{r}");
        assert!(
            r.contains("LOOKUP=2") && r.contains("READ=1") && r.contains("other=1"),
            "{r}"
        );
        assert!(
            r.contains("<1us=1") && r.contains("<4us=1") && r.contains("<128us=1"),
            "{r}"
        );
    }
}
