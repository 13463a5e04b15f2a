//! Reads of pages the guest lacks, through the workspace share: without
//! FUSE ASYNC_READ (the workspace's default, lever `async_read`) the reader
//! sends its READ itself and polls for the answer (guest kernel patch 0010),
//! so a random read costs no interrupt; with `+async_read` each READ is a
//! background request whose answer comes by interrupt. Either way every
//! block read holds what the host wrote. And programs read again into
//! pages that held other programs' code run their own code (guest kernel
//! patch 0013, for QEMU's TCG).

use hutch_e2e::{per_engine, Engine};

/// 4 KiB blocks in the file; the guest reads every 64th (256 reads, each
/// 256 KiB from the last, so no readahead covers the next one).
const BLOCKS: usize = 16384;
const STRIDE: usize = 64;

/// Block `b`'s contents: its number, repeated.
fn block(b: usize) -> Vec<u8> {
    format!("{b:08}.").into_bytes().repeat(4096 / 9 + 1)[..4096].to_vec()
}

const SCRIPT: &str = r#"
import os, sys
blocks, stride = int(sys.argv[1]), int(sys.argv[2])
fd = os.open("data", os.O_RDONLY)
bad = 0
for b in range(0, blocks, stride):
    want = (b"%08d." % b * (4096 // 9 + 1))[:4096]
    if os.pread(fd, 4096, b * 4096) != want:
        bad += 1
print("read %d bad %d" % (blocks // stride, bad))
"#;

per_engine!(reads_are_polled_for_without_async_read, |e: Engine| {
    let ws = hutch_e2e::workspace();
    let data: Vec<u8> = (0..BLOCKS).flat_map(block).collect();
    std::fs::write(ws.path().join("data"), data).unwrap();
    std::fs::write(ws.path().join("reads.py"), SCRIPT).unwrap();
    let mut seen = Vec::new();
    for levers in ["", "+async_read"] {
        let (blocks, stride) = (BLOCKS.to_string(), STRIDE.to_string());
        // A 5 ms watch, so that other tests' guests on the same CPUs do not
        // make the polling run's watches run out.
        let o = hutch_e2e::run_with_stats(
            e,
            ws.path(),
            &["python3", "reads.py", &blocks, &stride],
            levers,
            &["virtiofs.hutch_poll_us=5000"],
        );
        let case = format!("levers {levers:?}");
        assert_eq!(o.status, 0, "{case}: {}", o.stderr);
        assert_eq!(
            o.stdout_str(),
            format!("read {} bad 0\n", BLOCKS / STRIDE),
            "{case}"
        );
        let (reads, _, interrupts) = hutch_e2e::workspace_counts(&case, &o.stderr, "READ");
        assert!(reads >= (BLOCKS / STRIDE) as u64, "{case}: {reads} READ");
        seen.push((case, reads, interrupts));
    }
    let (case, reads, interrupts) = &seen[0];
    assert!(
        interrupts * 2 < *reads,
        "{case}: {interrupts} interrupts for {reads} READ"
    );
    let (case, reads, interrupts) = &seen[1];
    assert!(
        interrupts * 4 >= reads * 3,
        "{case}: {interrupts} interrupts for {reads} READ"
    );
});

/// The largest regular file under the host's /usr/bin of at least 4 MiB
/// (the guest's root share shows the host's /usr), and its size.
fn big_host_binary() -> Option<(std::path::PathBuf, u64)> {
    std::fs::read_dir("/usr/bin")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let m = std::fs::symlink_metadata(e.path()).ok()?;
            m.file_type().is_file().then(|| (e.path(), m.len()))
        })
        .filter(|(_, len)| *len >= 4 << 20)
        .max_by_key(|(_, len)| *len)
}

/// The read-only root's READ requests in a `--stats` run's stderr.
fn root_reads(stderr: &str) -> u64 {
    let at = stderr
        .lines()
        .position(|l| l.contains("virtio-fs hutch-root:"))
        .expect("root stats");
    stderr
        .lines()
        .nth(at + 1)
        .unwrap_or("")
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("READ=")?.parse().ok())
        .unwrap_or(0)
}

per_engine!(the_root_reads_a_big_file_in_large_reads, |e: Engine| {
    let (file, size) = big_host_binary().expect("a binary of 4 MiB or more in /usr/bin");
    let ws = hutch_e2e::workspace();
    let f = file.to_str().unwrap();
    // The same boot and commands, with and without reading the file: the
    // difference is the file's own READs (guest init sets the root's
    // read-ahead to 1 MiB, one READ of the largest size the server takes).
    let mut reads = Vec::new();
    for src in ["/dev/null", f] {
        let script = format!("cat {src} > /dev/null; wc -c < {f}");
        let o = hutch_e2e::run_with_stats(e, ws.path(), &["sh", "-c", &script], "", &[]);
        assert_eq!(o.status, 0, "{}", o.stderr);
        assert_eq!(o.stdout_str().trim(), size.to_string(), "{}", o.stderr);
        reads.push(root_reads(&o.stderr));
    }
    let own = reads[1].saturating_sub(reads[0]);
    eprintln!(
        "{f}: {size} bytes read through the root in {own} READs ({} KiB each on average)",
        size / 1024 / own.max(1)
    );
    assert!(own > 0, "the file was read through the root: {reads:?}");
    assert!(
        own <= size / (512 << 10) + 4,
        "{own} READs for {size} bytes: the root's read-ahead is small"
    );
});

/// Runs ten rounds of eight programs from the root share, dropping the
/// guest's caches between rounds, so their code comes back in READs into
/// pages that held other code; prints each failure and the count.
const RERUN_SCRIPT: &str = r#"
fails=0
for i in 1 2 3 4 5 6 7 8 9 10; do
  for c in "ls -l /usr/bin" "sort /etc/passwd" "md5sum /etc/passwd" "grep -c root /etc/passwd" \
           "od -c /etc/hostname" "tar --version" "sed -n 1p /etc/passwd" "du -s /usr/share/doc"; do
    sh -c "$c" >/dev/null 2>&1; rc=$?
    [ $rc -eq 0 ] || { fails=$((fails+1)); echo "round $i: $c: exit $rc"; }
  done
  echo 3 > /proc/sys/vm/drop_caches
done
echo "fails $fails"
"#;

per_engine!(programs_read_again_run_their_own_code, |e: Engine| {
    // Under TCG, QEMU keeps the code it translated from a page until a CPU
    // store reaches the page, and the backends' READs are not CPU stores:
    // without guest kernel patch 0013's store-back (the qemu engine's
    // `virtiofs.hutch_tcg_code=1`), 33 to 36 of these 80 runs died of
    // SIGSEGV, SIGILL or SIGABRT on QEMU 10.0 from the third round on.
    let ws = hutch_e2e::workspace();
    let o = hutch_e2e::run_with_stats(e, ws.path(), &["sh", "-c", RERUN_SCRIPT], "", &[]);
    assert_eq!(o.status, 0, "{}", o.stderr);
    assert_eq!(
        o.stdout_str().lines().last(),
        Some("fails 0"),
        "{}",
        o.stdout_str()
    );
    assert!(
        root_reads(&o.stderr) > 100,
        "the programs were read again: {}",
        o.stderr
    );
});
