//! The guest-side file system workload runner of issue 3: metadata and data
//! loops over one directory, each phase timed on its own. It is a static
//! binary (the workspace builds with crt-static), so the same file runs on
//! the host and inside any guest straight from the share.
//!
//! Usage: hutch-bench-fsops DIR [--n N] [--mib M] [--drop-caches] [--readdir BIG]
//!
//! Prints one line per phase: `fsops PHASE OPS SECONDS`. `ops` counts system
//! calls of the phase's kind (files created, stats, entries read, ...); for
//! the sequential phases it counts MiB. `--drop-caches` writes 3 to
//! /proc/sys/vm/drop_caches before each read phase (inside a guest, so reads
//! reach the file server, not the guest's page cache).
//!
//! `BIG` (default `DIR/big`) is a directory of many entries for `readdir` (listed
//! five times; `readdir_stat` lists it once and stats every entry); the bench
//! script makes it on the host before the guest starts (creating 10k files in
//! the guest would take most of the run under emulation).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How many times the `readdir` phase lists `BIG`.
const READDIR_LISTINGS: usize = 5;

struct Args {
    dir: PathBuf,
    n: usize,
    mib: usize,
    drop_caches: bool,
    readdir: Option<PathBuf>,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args_os().skip(1);
    let mut a = Args {
        dir: PathBuf::new(),
        n: 1000,
        mib: 64,
        drop_caches: false,
        readdir: None,
    };
    let num = |v: Option<std::ffi::OsString>, what: &str| -> Result<usize, String> {
        v.and_then(|s| s.to_str().and_then(|s| s.parse().ok()))
            .filter(|&n| n > 0)
            .ok_or(format!("{what} needs a positive number"))
    };
    while let Some(arg) = it.next() {
        match arg.to_str() {
            Some("--n") => a.n = num(it.next(), "--n")?,
            Some("--mib") => a.mib = num(it.next(), "--mib")?,
            Some("--drop-caches") => a.drop_caches = true,
            Some("--readdir") => a.readdir = it.next().map(PathBuf::from),
            Some(s) if s.starts_with('-') => return Err(format!("unknown option {s}")),
            _ => a.dir = PathBuf::from(arg),
        }
    }
    if a.dir.as_os_str().is_empty() {
        return Err(
            "usage: hutch-bench-fsops DIR [--n N] [--mib M] [--drop-caches] [--readdir BIG]".into(),
        );
    }
    Ok(a)
}

fn report(phase: &str, ops: usize, t: Instant) {
    println!("fsops {phase} {ops} {:.6}", t.elapsed().as_secs_f64());
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in bench paths")
}

fn drop_caches(on: bool) {
    if on {
        // SAFETY: sync takes no arguments and only flushes dirty data.
        unsafe { libc::sync() };
        if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "3") {
            eprintln!("fsops: dropping caches: {e}");
        }
    }
}

/// The metadata loops, on `n` files in a fresh `dir/meta`; `big` is a
/// directory of many entries to list.
fn metadata(dir: &Path, n: usize, big: &Path) -> std::io::Result<()> {
    let d = dir.join("meta");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir(&d)?;
    let names: Vec<PathBuf> = (0..n).map(|i| d.join(format!("f{i:06}"))).collect();
    let t = Instant::now();
    for p in &names {
        File::create(p)?;
    }
    report("create", n, t);

    let cnames: Vec<CString> = names.iter().map(|p| cpath(p)).collect();
    let t = Instant::now();
    for c in &cnames {
        // SAFETY: `c` is a NUL-terminated path and `st` a writable stat buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above; the result is checked.
        if unsafe { libc::stat(c.as_ptr(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    report("stat_existing", n, t);

    let missing: Vec<CString> = (0..n)
        .map(|i| cpath(&d.join(format!("missing{i:06}"))))
        .collect();
    let t = Instant::now();
    for _round in 0..2 {
        for c in &missing {
            // SAFETY: as above; ENOENT is the expected result.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: `c` is NUL-terminated, `st` is writable.
            if unsafe { libc::stat(c.as_ptr(), &mut st) } == 0 {
                return Err(std::io::Error::other("a missing name exists"));
            }
        }
    }
    report("stat_missing", 2 * n, t);

    let t = Instant::now();
    for p in &names {
        drop(File::open(p)?);
    }
    report("open_close", n, t);

    if big.is_dir() {
        // Five listings: one takes about 20 ms in a TCG guest, too short
        // to time alone on a noisy host.
        let t = Instant::now();
        let mut listed = 0;
        for _ in 0..READDIR_LISTINGS {
            for e in std::fs::read_dir(big)? {
                e?;
                listed += 1;
            }
        }
        report("readdir", listed, t);
        let entries = listed / READDIR_LISTINGS;
        let t = Instant::now();
        for e in std::fs::read_dir(big)? {
            std::fs::symlink_metadata(e?.path())?;
        }
        report("readdir_stat", entries, t);
    }

    let renamed: Vec<PathBuf> = (0..n).map(|i| d.join(format!("r{i:06}"))).collect();
    let t = Instant::now();
    for (a, b) in names.iter().zip(&renamed) {
        std::fs::rename(a, b)?;
    }
    report("rename", n, t);

    let t = Instant::now();
    for p in &renamed {
        std::fs::remove_file(p)?;
    }
    report("unlink", n, t);
    std::fs::remove_dir(&d)
}

/// A small deterministic generator for random offsets.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The data loops on one file of `mib` MiB.
fn data(dir: &Path, mib: usize, drop_first: bool) -> std::io::Result<()> {
    let path = dir.join("data.bin");
    let block = vec![0xa5u8; 1 << 20];
    let t = Instant::now();
    {
        let mut f = File::create(&path)?;
        for _ in 0..mib {
            f.write_all(&block)?;
        }
        f.sync_all()?;
    }
    report("seq_write_mib", mib, t);

    drop_caches(drop_first);
    let t = Instant::now();
    {
        let mut f = File::open(&path)?;
        let mut buf = vec![0u8; 1 << 20];
        while f.read(&mut buf)? > 0 {}
    }
    report("seq_read_mib", mib, t);

    let pages = (mib << 20) / 4096;
    let ops = 4096.min(pages);
    drop_caches(drop_first);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let t = Instant::now();
    {
        let f = File::open(&path)?;
        let mut buf = [0u8; 4096];
        for _ in 0..ops {
            let off = (rng.next() % pages as u64) * 4096;
            f.read_exact_at(&mut buf, off)?;
        }
    }
    report("rand_read_4k", ops, t);

    let t = Instant::now();
    {
        let f = OpenOptions::new().write(true).open(&path)?;
        let buf = [0x5au8; 4096];
        for _ in 0..ops {
            let off = (rng.next() % pages as u64) * 4096;
            f.write_all_at(&buf, off)?;
        }
        f.sync_all()?;
    }
    report("rand_write_4k", ops, t);

    drop_caches(drop_first);
    let t = Instant::now();
    mmap_read(&path, mib << 20)?;
    report("mmap_read_mib", mib, t);
    std::fs::remove_file(&path)
}

/// Maps `path` read-only and touches every page.
fn mmap_read(path: &Path, len: usize) -> std::io::Result<()> {
    let f = File::open(path)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: a fresh private read-only mapping of an open file; the pointer
    // is checked against MAP_FAILED before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let mut sum = 0u64;
    for off in (0..len).step_by(4096) {
        // SAFETY: `off < len`, inside the mapping made above.
        sum = sum.wrapping_add(u64::from(unsafe { *(p as *const u8).add(off) }));
    }
    std::hint::black_box(sum);
    // SAFETY: unmaps exactly the mapping made above.
    unsafe { libc::munmap(p, len) };
    Ok(())
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hutch-bench-fsops: {e}");
            std::process::exit(2);
        }
    };
    let run = std::fs::create_dir_all(&args.dir)
        .and_then(|()| {
            let big = args.readdir.clone().unwrap_or_else(|| args.dir.join("big"));
            metadata(&args.dir, args.n, &big)
        })
        .and_then(|()| data(&args.dir, args.mib, args.drop_caches));
    if let Err(e) = run {
        eprintln!("hutch-bench-fsops: in {}: {e}", args.dir.display());
        std::process::exit(1);
    }
}
