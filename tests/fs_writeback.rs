//! The workspace's writeback cache (lever `writeback`, off by default; guest
//! kernel patch 0011): with `+writeback`, small writes reach the host in a
//! few large WRITEs at close, a write to a file kept open reaches it within
//! the writeback bound, and a file the guest wrote still follows edits made
//! on the host, which the upstream writeback cache misses (it trusts the
//! guest's own size and mtime for good).

use hutch_e2e::{per_engine, Engine};

/// hutch's environment for a run with the writeback cache.
const WRITEBACK: &[(&str, &str)] = &[("HUTCH_FS_LEVERS", "+writeback")];

/// Unbuffered writes of 100 bytes each, then the file read back.
const WRITES: usize = 2000;

const SCRIPT: &str = r#"
import os, sys
n = int(sys.argv[1])
fd = os.open("out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for i in range(n):
    os.write(fd, b"%099d\n" % i)
os.close(fd)
with open("out", "rb") as f:
    data = f.read()
want = b"".join(b"%099d\n" % i for i in range(n))
print(len(data), "same" if data == want else "different")
"#;

fn expected(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("{i:099}\n").into_bytes())
        .collect()
}

per_engine!(small_writes_reach_the_host_in_few_writes, |e: Engine| {
    let ws = hutch_e2e::workspace();
    std::fs::write(ws.path().join("writes.py"), SCRIPT).unwrap();
    let want = expected(WRITES);
    let mut writes_seen = Vec::new();
    for levers in ["+writeback", ""] {
        let case = format!("levers {levers:?}");
        let _ = std::fs::remove_file(ws.path().join("out"));
        let n = WRITES.to_string();
        let o = hutch_e2e::run_with_stats(e, ws.path(), &["python3", "writes.py", &n], levers, &[]);
        assert_eq!(o.status, 0, "{case}: {}", o.stderr);
        // What the guest read back is what it wrote, and so is the host's file.
        let host = std::fs::read(ws.path().join("out")).unwrap();
        assert!(
            host == want,
            "{case}: the host file differs ({} bytes)",
            host.len()
        );
        assert_eq!(o.stdout_str(), format!("{} same\n", want.len()), "{case}");
        let (writes, _, _) = hutch_e2e::workspace_counts(&case, &o.stderr, "WRITE");
        writes_seen.push(writes);
    }
    assert!(
        writes_seen[0] * 20 < WRITES as u64,
        "with the writeback cache: {} WRITE for {WRITES} write() calls",
        writes_seen[0]
    );
    assert!(
        writes_seen[1] >= WRITES as u64,
        "without it: {} WRITE for {WRITES} write() calls",
        writes_seen[1]
    );
});

/// How long a host-side change may stay invisible in the guest: the
/// workspace's attribute timeout (5 s), plus scheduling slack.
const COHERENCE_BOUND_MS: u64 = 6_000;

/// The guest watches until `$1` holds (20 s at most), then drops the marker
/// `$2`; the host times from its change to the marker.
const WATCH: &str = r#"watch() { i=0; while :; do eval "$1" && break; i=$((i+1)); [ $i -gt 800 ] && { echo "STALE: $2"; exit 3; }; sleep 0.025; done; : > "$2"; }
"#;

per_engine!(guest_written_files_follow_host_edits, |e: Engine| {
    let ws = hutch_e2e::workspace();
    // The guest writes `g` (its pages and size now the guest's own) and
    // reads it back; the host then shortens it, rewrites it at the same
    // size (only the mtime tells) and lengthens it; the guest appends last.
    let script = format!(
        "{WATCH}printf 'written by the guest' > g; cat g; echo; : > ready
watch '[ \"$(cat g)\" = short ]' seen1
watch '[ \"$(cat g)\" = SHORT ]' seen2
watch '[ \"$(cat g)\" = \"a longer host version\" ]' seen3
echo appended >> g"
    );
    let (h, mut child) = hutch_e2e::start_until_ready_with(e, ws.path(), &script, WRITEBACK);
    let g = ws.path().join("g");
    // Written back at close, before the guest said it was ready.
    assert_eq!(std::fs::read_to_string(&g).unwrap(), "written by the guest");
    let mut took = Vec::new();
    for (n, text) in [(1, "short"), (2, "SHORT"), (3, "a longer host version")] {
        // In place: the same inode, as an editor that truncates and writes.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let edited = std::time::Instant::now();
        std::fs::write(&g, text).unwrap();
        assert!(
            hutch_e2e::wait_for_file(&ws.path().join(format!("seen{n}")), 60),
            "the guest never saw host edit {n}"
        );
        took.push(edited.elapsed().as_millis() as u64);
    }
    let (code, out, err) = hutch_e2e::collect(&mut child);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.starts_with("written by the guest\n"), "{out}");
    for (n, ms) in took.iter().enumerate() {
        eprintln!(
            "host edit {} of a guest-written file visible in the guest after {ms} ms (host clock)",
            n + 1
        );
        assert!(
            *ms <= COHERENCE_BOUND_MS,
            "host edit {} took {ms} ms",
            n + 1
        );
    }
    // The append went to the end of the host's version, not the guest's
    // old size.
    assert_eq!(
        std::fs::read_to_string(&g).unwrap(),
        "a longer host versionappended\n"
    );
    hutch_e2e::assert_no_leftovers(h.runtime.path());
});

/// How long a write to a file the guest keeps open may take to reach the
/// host: the guest writes back pages dirty for 1 s, looking every 1 s
/// (`vm.dirty_*_centisecs` set to 100 by guest init), plus slack.
const WRITEBACK_BOUND_MS: u64 = 4_000;

per_engine!(
    writes_to_a_file_kept_open_reach_the_host_within_the_bound,
    |e: Engine| {
        let ws = hutch_e2e::workspace();
        // A log the guest appends to and never closes or syncs while the host
        // watches it.
        let script = r#"python3 -c '
import os, time
fd = os.open("log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.write(fd, b"first line\n")
open("ready", "w").close()
for _ in range(600):
    if os.path.exists("done"):
        break
    time.sleep(0.05)
os.close(fd)
print(open("/proc/sys/vm/dirty_expire_centisecs").read().strip())
'"#;
        let (h, mut child) = hutch_e2e::start_until_ready_with(e, ws.path(), script, WRITEBACK);
        let started = std::time::Instant::now();
        let log = ws.path().join("log");
        let mut seen = None;
        while started.elapsed() < std::time::Duration::from_secs(20) {
            if std::fs::read(&log).unwrap_or_default() == b"first line\n" {
                seen = Some(started.elapsed());
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::write(ws.path().join("done"), "").unwrap();
        let (code, out, err) = hutch_e2e::collect(&mut child);
        assert_eq!(code, Some(0), "{out}\n{err}");
        assert_eq!(out, "100\n", "the guest's writeback interval");
        let ms = seen
            .unwrap_or_else(|| panic!("the write never reached the host file: {err}"))
            .as_millis() as u64;
        eprintln!("a write to a file kept open reached the host after {ms} ms");
        assert!(ms <= WRITEBACK_BOUND_MS, "{ms} ms");
        hutch_e2e::assert_no_leftovers(h.runtime.path());
    }
);
