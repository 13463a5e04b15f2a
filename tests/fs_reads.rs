//! Reads of pages the guest lacks, through the workspace share: without
//! FUSE ASYNC_READ (the workspace's default, lever `async_read`) the reader
//! sends its READ itself and polls for the answer (guest kernel patch 0010),
//! so a random read costs no interrupt; with `+async_read` each READ is a
//! background request whose answer comes by interrupt. Either way every
//! block read holds what the host wrote.

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
