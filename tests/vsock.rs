//! `hutch run --vsock PATH` end to end: a guest listener reached through the
//! hybrid `CONNECT <port>` protocol, a refused CONNECT that leaves the VM up,
//! and a guest-initiated connection reaching `PATH_<port>` on the host.
//! Every wait has a deadline, so a hang fails the test instead of CI.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hutch_e2e::{per_engine, run_args, Engine, Hutch};

const GUEST: &str = r#"
import socket
l = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
l.bind((socket.VMADDR_CID_ANY, 5000))
l.listen(4)
open("ready", "w").close()
c, _ = l.accept()
n = 0
while True:
    d = c.recv(65536)
    if not d:
        break
    c.sendall(d)
    n += len(d)
c.close()
s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
s.settimeout(60)
s.connect((2, 6000))
s.sendall(b"hello from the guest\n")
print(s.recv(100).decode().strip(), flush=True)
s.close()
print("echoed", n, flush=True)
"#;

fn wait_for(what: &str, deadline: Instant, mut ready: impl FnMut() -> bool) {
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `CONNECT port`; returns the stream after `OK`, or `None` when it was closed.
fn connect(path: &Path, port: u32) -> Option<UnixStream> {
    let mut s = UnixStream::connect(path).expect("connect to the vsock socket");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => return None,
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) => panic!("reading the CONNECT reply: {e} (timed out?)"),
        }
    }
    let line = String::from_utf8(line).unwrap();
    assert!(line.starts_with("OK "), "{line:?}");
    line[3..].parse::<u32>().expect("OK <hostport>");
    Some(s)
}

per_engine!(
    vsock_connect_echo_refuse_and_guest_initiated,
    |e: Engine| {
        let ws = hutch_e2e::workspace();
        std::fs::write(ws.path().join("guest.py"), GUEST).unwrap();
        let sockdir = tempfile::tempdir().unwrap();
        let path = sockdir.path().join("vm.sock");
        let listener = UnixListener::bind(sockdir.path().join("vm.sock_6000")).unwrap();
        listener.set_nonblocking(true).unwrap();

        let argv: Vec<&std::ffi::OsStr> =
            ["python3", "guest.py"].iter().map(|s| s.as_ref()).collect();
        let mut args = run_args(e, ws.path(), &argv);
        args.splice(1..1, ["--vsock".into(), path.clone().into_os_string()]);
        let mut h = Hutch::new(args);
        let mut child = h
            .cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hutch");
        let pid = child.id();
        // Kill hutch if the whole test takes too long, so nothing hangs.
        let watchdog = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(300));
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        });
        let started = Instant::now();
        let deadline = started + Duration::from_secs(240);
        wait_for("the guest's listener", deadline, || {
            ws.path().join("ready").exists()
        });
        let booted = started.elapsed();

        // Nobody listens on 5001: the client's connection is closed, the VM stays up.
        assert!(
            connect(&path, 5001).is_none(),
            "CONNECT to a closed port refused"
        );

        let t0 = Instant::now();
        let mut s = connect(&path, 5000).expect("CONNECT 5000");
        let data: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        let mut w = s.try_clone().unwrap();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            w.write_all(&sent).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut echo = Vec::new();
        s.read_to_end(&mut echo).expect("echo (timed out?)");
        writer.join().unwrap();
        assert_eq!(echo.len(), data.len());
        assert!(echo == data, "1 MiB echoed intact");
        let echo_time = t0.elapsed();

        // The guest connects to host port 6000: PATH_6000.
        let mut g = None;
        wait_for("the guest's connection to PATH_6000", deadline, || {
            g = listener.accept().ok().map(|(s, _)| s);
            g.is_some()
        });
        let g = g.unwrap();
        g.set_nonblocking(false).unwrap();
        g.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut line = String::new();
        BufReader::new(&g).read_line(&mut line).unwrap();
        assert_eq!(line, "hello from the guest\n");
        (&g).write_all(b"hello from the host\n").unwrap();

        let (code, out, err) = hutch_e2e::collect(&mut child);
        drop(watchdog);
        assert_eq!(code, Some(0), "stderr: {err}");
        assert_eq!(out, "hello from the host\nechoed 1048576\n");
        assert!(!path.exists(), "the vsock socket is removed at exit");
        hutch_e2e::report(
            "vsock",
            &format!(
                "{} boot to listener {:.1} s, 1 MiB echo {:.0} ms",
                e.flag(),
                booted.as_secs_f64(),
                echo_time.as_secs_f64() * 1e3
            ),
        );
        hutch_e2e::assert_no_leftovers(h.runtime.path());
    }
);
