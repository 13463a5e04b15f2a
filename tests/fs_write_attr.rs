//! Write-through WRITEs that answer the file's attributes (lever
//! `write_attr`, on; guest kernel patch 0012): a file the guest writes in
//! small pieces and reads back, as GNU ld writes its output, is read from
//! the guest's own pages with no GETATTR or READ per read, and a host edit
//! still shows: at once after the guest's next write (which the server
//! answers "changed"), and within the attribute timeout otherwise.

use hutch_e2e::{per_engine, Engine};

/// Writes of 16 bytes at rising offsets, each followed by a read of the
/// page that holds it; checks every read.
const PIECES: usize = 400;

const SCRIPT: &str = r#"
import os, sys
n = int(sys.argv[1])
fd = os.open("out", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
bad = 0
for i in range(n):
    piece = b"%015d\n" % i
    os.pwrite(fd, piece, 16 * i)
    page = 16 * i // 4096 * 4096
    back = os.pread(fd, 4096, page)
    if back[16 * i - page:16 * i - page + 16] != piece:
        bad += 1
os.close(fd)
print("bad", bad)
"#;

per_engine!(written_pages_are_read_back_without_requests, |e: Engine| {
    let ws = hutch_e2e::workspace();
    std::fs::write(ws.path().join("pieces.py"), SCRIPT).unwrap();
    let want: Vec<u8> = (0..PIECES)
        .flat_map(|i| format!("{i:015}\n").into_bytes())
        .collect();
    let n = PIECES.to_string();
    let mut seen = Vec::new();
    for levers in ["", "-write_attr"] {
        let case = format!("levers {levers:?}");
        let o = hutch_e2e::run_with_stats(e, ws.path(), &["python3", "pieces.py", &n], levers, &[]);
        assert_eq!(o.status, 0, "{case}: {}", o.stderr);
        assert_eq!(
            o.stdout_str(),
            "bad 0\n",
            "{case}: every read saw its write"
        );
        assert!(
            std::fs::read(ws.path().join("out")).unwrap() == want,
            "{case}: the host file differs"
        );
        let ops = hutch_e2e::workspace_ops(&o.stderr);
        let count = |op: &str| ops.get(op).copied().unwrap_or(0);
        eprintln!(
            "{case}: {} WRITE, {} GETATTR, {} READ for {PIECES} writes each read back",
            count("WRITE"),
            count("GETATTR"),
            count("READ")
        );
        assert!(count("WRITE") >= PIECES as u64, "{case}: write-through");
        seen.push((count("GETATTR"), count("READ")));
    }
    let few = PIECES as u64 / 10;
    assert!(
        seen[0].0 < few && seen[0].1 < few,
        "with write_attr: (GETATTR, READ) = {:?}",
        seen[0]
    );
    assert!(
        seen[1].0 >= PIECES as u64 / 2 && seen[1].1 >= PIECES as u64 / 2,
        "without it every read asks again: {:?}",
        seen[1]
    );
});

/// How long a host-side change may stay invisible in the guest: the
/// workspace's attribute timeout (5 s), plus scheduling slack.
const COHERENCE_BOUND_MS: u64 = 6_000;

/// The guest writes `g` and reads it back, then waits for a line on stdin
/// (the host has edited `g`), writes its last byte and reads its first
/// ones at once, then reads them until the host's second edit shows.
const EDITS: &str = r#"python3 -c '
import os, sys, time
fd = os.open("g", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"A" * 8192)
assert os.pread(fd, 8192, 0) == b"A" * 8192
open("ready", "w").close()
sys.stdin.readline()
os.pwrite(fd, b"B", 8191)
print("after the guest write:", os.pread(fd, 4, 0).decode(), flush=True)
open("seen1", "w").close()
start = time.monotonic()
while os.pread(fd, 4, 0) != b"EDIT":
    if time.monotonic() - start > 20:
        print("STALE:", os.pread(fd, 4, 0))
        raise SystemExit(3)
    time.sleep(0.02)
open("seen2", "w").close()
os.close(fd)
'"#;

per_engine!(
    host_edits_of_a_file_the_guest_writes_still_show,
    |e: Engine| {
        use std::io::Write;
        use std::os::unix::fs::FileExt;
        let ws = hutch_e2e::workspace();
        let argv: Vec<&std::ffi::OsStr> = ["sh", "-c", EDITS]
            .into_iter()
            .map(std::ffi::OsStr::new)
            .collect();
        let mut h = hutch_e2e::Hutch::new(hutch_e2e::run_args(e, ws.path(), &argv));
        let mut child = hutch_e2e::spawn_with_stdin(&mut h);
        assert!(
            hutch_e2e::wait_for_file(&ws.path().join("ready"), 120),
            "the guest never got ready"
        );
        let g = ws.path().join("g");
        let edit = |text: &[u8]| {
            // In place, the same inode and size: only the mtime tells.
            let f = std::fs::OpenOptions::new().write(true).open(&g).unwrap();
            f.write_at(text, 0).unwrap();
        };
        // First edit, then at once the guest's next write: the server must
        // answer it "changed", or the guest keeps its old first page.
        edit(b"HOST");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
        assert!(
            hutch_e2e::wait_for_file(&ws.path().join("seen1"), 60),
            "the guest never wrote after the first edit"
        );
        // Second edit with no guest write after it: shows within the bound.
        std::thread::sleep(std::time::Duration::from_millis(300));
        edit(b"EDIT");
        let edited = std::time::Instant::now();
        assert!(
            hutch_e2e::wait_for_file(&ws.path().join("seen2"), 60),
            "the guest never saw the second edit"
        );
        let ms = edited.elapsed().as_millis() as u64;
        drop(stdin);
        let (code, out, err) = hutch_e2e::collect(&mut child);
        assert_eq!(code, Some(0), "{out}\n{err}");
        assert!(
            out.starts_with("after the guest write: HOST\n"),
            "the guest's write must not hide the host's edit: {out}"
        );
        eprintln!("a host edit of a file the guest writes, visible in the guest after {ms} ms");
        assert!(ms <= COHERENCE_BOUND_MS, "the host edit took {ms} ms");
        let host = std::fs::read(&g).unwrap();
        assert_eq!(&host[..4], b"EDIT");
        assert_eq!(host[8191], b'B');
        assert!(host[4..8191].iter().all(|&b| b == b'A'));
        hutch_e2e::assert_no_leftovers(h.runtime.path());
    }
);
