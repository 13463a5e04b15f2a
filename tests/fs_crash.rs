//! Crash safety of the workspace: a guest appends checksummed records and fsyncs each one,
//! reporting on stdout what is synced; the test SIGKILLs the hutch process, the guest's
//! QEMU or the workspace's file system backend mid-loop and checks that every record
//! reported synced is on the host, intact (and, for the backend, that the run stops with
//! a reason instead of hanging).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hutch_e2e::{per_engine, Engine};

/// The guest's writer: `python3 -c WRITER FILES`. Record N of a file is
/// `N <crc32 of the payload> <payload>\n`; after fsync it prints `synced NAME N`.
const WRITER: &str = r#"
import os, sys, threading, zlib
files = int(sys.argv[1])
lock = threading.Lock()
def writer(name):
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    n = 0
    while True:
        n += 1
        payload = ("%s-record-%d-" % (name, n)) * (1 + n % 37)
        line = "%d %08x %s\n" % (n, zlib.crc32(payload.encode()), payload)
        os.write(fd, line.encode())
        os.fsync(fd)
        with lock:
            sys.stdout.write("synced %s %d\n" % (name, n))
            sys.stdout.flush()
names = ["log%d" % i for i in range(files)]
for name in names[1:]:
    threading.Thread(target=writer, args=(name,), daemon=True).start()
writer(names[0])
"#;

/// How many records (of all files together) the guest reports synced before
/// the kill, at the least: it also waits for one from every file.
const RECORDS_BEFORE_KILL: u64 = 120;

/// Which process the test kills.
#[derive(Clone, Copy, Debug)]
enum Victim {
    Hutch,
    Qemu,
    /// The workspace's `hutch fs-backend` process (qemu engine).
    Backend,
}

/// Checks `path` holds intact records 1..=`synced` in order (a torn record may follow).
fn verify(path: &Path, synced: u64) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = String::from_utf8_lossy(&data);
    let mut n = 0u64;
    for line in text.split_inclusive('\n') {
        if !line.ends_with('\n') {
            break; // a record cut by the kill, past what was synced
        }
        let mut parts = line.trim_end_matches('\n').splitn(3, ' ');
        let (Some(num), Some(crc), Some(payload)) = (parts.next(), parts.next(), parts.next())
        else {
            panic!("{}: malformed record after {n}: {line:?}", path.display());
        };
        let num: u64 = num.parse().unwrap();
        assert_eq!(num, n + 1, "{}: records out of order", path.display());
        let want = u32::from_str_radix(crc, 16).unwrap();
        assert_eq!(
            crc32(payload.as_bytes()),
            want,
            "{}: record {num} corrupt",
            path.display()
        );
        n = num;
    }
    assert!(
        n >= synced,
        "{}: {n} intact records, but {synced} were reported synced",
        path.display()
    );
    eprintln!(
        "{}: {n} intact records ({synced} reported synced)",
        path.display()
    );
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The QEMU child of the hutch process `pid`.
fn qemu_of(pid: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = hutch_e2e::children_of(pid)
            .into_iter()
            .find_map(|(child, cmd)| cmd.contains("qemu-system").then_some(child));
        if let Some(q) = found {
            return q;
        }
        assert!(Instant::now() < deadline, "no QEMU child of hutch {pid}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn crash_while_writing(e: Engine, victim: Victim, files: usize) {
    let ws = hutch_e2e::workspace();
    let n = files.to_string();
    let words = ["python3", "-c", WRITER, &n];
    let argv: Vec<&std::ffi::OsStr> = words.iter().map(std::ffi::OsStr::new).collect();
    let mut h = hutch_e2e::Hutch::new(hutch_e2e::run_args(e, ws.path(), &argv));
    let mut child = h
        .cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let qemu = matches!(e, Engine::Qemu).then(|| qemu_of(child.id()));
    let backend = matches!(victim, Victim::Backend).then(|| {
        hutch_e2e::children_of(child.id())
            .into_iter()
            .find_map(|(pid, cmd)| cmd.contains("--policy workspace").then_some(pid))
            .expect("the workspace's fs backend")
    });
    // A run that hangs instead of ending fails the test rather than blocking it.
    let hutch_pid = child.id() as i32;
    let hung = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let (hung, ended) = (hung.clone(), ended.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(180);
            while !ended.load(std::sync::atomic::Ordering::SeqCst) {
                if Instant::now() > deadline {
                    hung.store(true, std::sync::atomic::Ordering::SeqCst);
                    // SAFETY: kill on the hutch process this test started.
                    unsafe { libc::kill(hutch_pid, libc::SIGKILL) };
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut synced = std::collections::HashMap::<String, u64>::new();
    let mut total = 0u64;
    let mut killed = false;
    for line in stdout.lines() {
        let Ok(line) = line else { break };
        if let Some(rest) = line.strip_prefix("synced ") {
            let (name, num) = rest.split_once(' ').unwrap();
            synced.insert(name.to_string(), num.parse().unwrap());
            total += 1;
        }
        // Every writer must have synced something before the kill, or there
        // is nothing of its file to verify: the writers are threads of one
        // Python process, and the GIL can leave one of them waiting while
        // the others sync 120 records between them.
        if total >= RECORDS_BEFORE_KILL && synced.len() == files && !killed {
            let pid = match victim {
                Victim::Hutch => child.id(),
                Victim::Qemu => qemu.expect("the qemu engine runs QEMU"),
                Victim::Backend => backend.expect("found above"),
            };
            eprintln!("SIGKILL {victim:?} (pid {pid}) after {total} synced records");
            // SAFETY: kill with a pid we started (hutch) or its child (QEMU).
            assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
            killed = true;
            // Keep reading: records already in flight on the pipe were synced too.
        }
    }
    let status = child.wait().unwrap();
    ended.store(true, std::sync::atomic::Ordering::SeqCst);
    watchdog.join().unwrap();
    let mut err = String::new();
    if let Some(mut s) = child.stderr.take() {
        use std::io::Read;
        let _ = s.read_to_string(&mut err);
    }
    assert!(
        !hung.load(std::sync::atomic::Ordering::SeqCst),
        "the run hung after the kill:\n{err}"
    );
    if matches!(victim, Victim::Backend) {
        assert!(!status.success(), "{status:?}\n{err}");
        assert!(
            err.contains("file system backend for share hutch-ws")
                && err.contains("killed by signal 9"),
            "{err}"
        );
    }
    assert!(
        killed,
        "the guest synced only {total} records: {status:?}\n{err}"
    );
    eprintln!("hutch ended with {status:?}");
    assert_eq!(
        synced.len(),
        files,
        "every writer synced something: {synced:?}"
    );
    for (name, &n) in &synced {
        verify(&ws.path().join(name), n);
    }
    // Killing QEMU must not leave hutch behind, nor killing hutch leave QEMU.
    hutch_e2e::assert_no_leftovers(h.runtime.path());
    if let Some(q) = qemu {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{q}")).exists() {
            let stat = std::fs::read_to_string(format!("/proc/{q}/stat")).unwrap_or_default();
            if stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'))
            {
                break; // a zombie waiting for its (killed) parent's reaper
            }
            assert!(Instant::now() < deadline, "QEMU {q} outlived the run");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    h.runtime.close().unwrap();
}

per_engine!(sigkill_hutch_mid_write_loop, |e: Engine| {
    crash_while_writing(e, Victim::Hutch, 1)
});

per_engine!(sigkill_qemu_mid_write_loop, |e: Engine| {
    if matches!(e, Engine::Native) {
        // The native engine has no separate guest process: the VMM is the guest.
        hutch_e2e::report("sigkill_qemu_mid_write_loop::native", "no QEMU to kill");
        return;
    }
    crash_while_writing(e, Victim::Qemu, 1)
});

per_engine!(sigkill_hutch_with_eight_parallel_writers, |e: Engine| {
    crash_while_writing(e, Victim::Hutch, 8)
});

per_engine!(sigkill_qemu_with_eight_parallel_writers, |e: Engine| {
    if matches!(e, Engine::Native) {
        hutch_e2e::report(
            "sigkill_qemu_with_eight_parallel_writers::native",
            "no QEMU to kill",
        );
        return;
    }
    crash_while_writing(e, Victim::Qemu, 8)
});

per_engine!(sigkill_fs_backend_mid_write_loop, |e: Engine| {
    if matches!(e, Engine::Native) {
        // The native engine serves its file systems from the VMM itself.
        hutch_e2e::report(
            "sigkill_fs_backend_mid_write_loop::native",
            "no fs backend process to kill",
        );
        return;
    }
    crash_while_writing(e, Victim::Backend, 1)
});
