//! Sandboxes that stay up: `run -d`, `exec`, `ls`, `stop`, `rm`, published
//! ports, separate 50 MiB streams, concurrent sessions, a killed VMM, and
//! bad input on the agent's vsock port. Each test has its own state
//! directory (`HUTCH_STATE_DIR`) and removes its sandbox at the end.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hutch_e2e::{hutch_bin, per_engine, processes_mentioning, Engine};

/// One background sandbox, removed on drop.
struct Sandbox {
    name: String,
    state: tempfile::TempDir,
    ws: tempfile::TempDir,
}

impl Sandbox {
    fn start(e: Engine, name: &str, extra: &[&str]) -> Sandbox {
        let sb = Sandbox {
            name: name.into(),
            state: tempfile::tempdir().unwrap(),
            ws: hutch_e2e::workspace(),
        };
        let mut args = vec!["run", "-d", "--name", name, "--engine", e.flag()];
        args.extend(["--memory", "512M", "--cpus", "1"]);
        args.extend(extra);
        let ws = sb.ws.path().to_str().unwrap().to_string();
        args.push(&ws);
        let out = sb.hutch(&args, None);
        assert_eq!(out.status.code(), Some(0), "run -d: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), name, "run -d prints the name");
        sb
    }

    fn hutch(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        hutch_in(self.state.path(), args, stdin)
    }

    fn exec(&self, args: &[&str]) -> Output {
        let mut a = vec!["exec"];
        a.extend(args);
        self.hutch(&a, None)
    }

    fn record(&self) -> String {
        std::fs::read_to_string(
            self.state
                .path()
                .join("sandboxes")
                .join(&self.name)
                .join("state.json"),
        )
        .unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        let r = self.record();
        let at = r.find("\"pid\":").expect("pid in the record") + 6;
        r[at..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn ls_line(&self) -> String {
        let out = self.hutch(&["ls"], None);
        text(&out.stdout)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(self.name.as_str()))
            .unwrap_or_default()
            .to_string()
    }

    fn vsock(&self) -> PathBuf {
        self.state
            .path()
            .join("sandboxes")
            .join(&self.name)
            .join("vsock")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.hutch(&["rm", &self.name], None);
        // Nothing may outlive rm: not the VMM, not QEMU, not the socket reaper.
        let needle = self.state.path().to_string_lossy().to_string();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !processes_mentioning(&needle).is_empty() {
            if Instant::now() > deadline {
                if !std::thread::panicking() {
                    panic!("left behind: {:?}", processes_mentioning(&needle));
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn hutch_in(state: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(hutch_bin());
    cmd.args(args)
        .env("HUTCH_STATE_DIR", state)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn hutch");
    if let Some(data) = stdin {
        let mut si = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = si.write_all(&data);
        });
    }
    child.wait_with_output().expect("wait for hutch")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

per_engine!(lifecycle_run_d_exec_ls_stop_rm, |e: Engine| {
    let sb = Sandbox::start(e, "life", &[]);
    let ws = sb.ws.path().to_str().unwrap().to_string();
    let line = sb.ls_line();
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[1], "running", "{line}");
    assert!(line.contains(&ws) && line.contains("512M"), "{line}");
    assert_eq!(cols[cols.len() - 3], "1", "cpus: {line}");

    // cwd defaults to the workspace; -w, -e and --user apply.
    let o = sb.exec(&["life", "--", "sh", "-c", "echo $PWD $(id -u) $(hostname)"]);
    assert_eq!(text(&o.stdout), format!("{ws} 0 hutch\n"));
    let o = sb.exec(&[
        "-w",
        "/tmp",
        "-e",
        "K=v w",
        "-u",
        "1000:1001",
        "life",
        "--",
        "sh",
        "-c",
        "echo $PWD $K $(id -u) $(id -g)",
    ]);
    assert_eq!(
        text(&o.stdout),
        "/tmp v w 1000 1001\n",
        "{}",
        text(&o.stderr)
    );
    // Exit status, stderr kept apart, stdin only with -i, and its EOF.
    let o = sb.exec(&["life", "--", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(
        (o.status.code(), text(&o.stdout), text(&o.stderr)),
        (Some(7), "out\n".into(), "err\n".into())
    );
    let o = sb.hutch(
        &["exec", "-i", "life", "--", "sh", "-c", "cat; echo eof"],
        Some(b"piped\xff\n"),
    );
    assert_eq!(o.stdout, b"piped\xff\neof\n");
    let o = sb.hutch(
        &["exec", "life", "--", "sh", "-c", "cat; echo eof"],
        Some(b"ignored"),
    );
    assert_eq!(o.stdout, b"eof\n", "without -i stdin is empty");
    // A file written by one session is seen by the next, and on the host.
    let o = sb.exec(&[
        "life",
        "--",
        "sh",
        "-c",
        "echo kept > /tmp/t; echo shared > f.txt",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        text(&sb.exec(&["life", "--", "cat", "/tmp/t"]).stdout),
        "kept\n"
    );
    assert_eq!(
        std::fs::read_to_string(sb.ws.path().join("f.txt")).unwrap(),
        "shared\n"
    );
    let o = sb.exec(&["life", "--", "hutch-no-such-command"]);
    assert_eq!(o.status.code(), Some(127));
    assert!(text(&o.stderr).contains("command not found"));

    let o = sb.hutch(&["stop", "life"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(sb.ls_line().contains(" stopped "), "{}", sb.ls_line());
    let o = sb.exec(&["life", "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        text(&o.stderr).contains("sandbox life is stopped"),
        "{}",
        text(&o.stderr)
    );
    let o = sb.exec(&["nope", "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        text(&o.stderr).contains("no sandbox named nope"),
        "{}",
        text(&o.stderr)
    );
    let o = sb.hutch(&["run", "-d", "--name", "life", &ws], None);
    assert!(
        text(&o.stderr).contains("already exists (stopped)"),
        "{}",
        text(&o.stderr)
    );
    let o = sb.hutch(&["rm", "life"], None);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(sb.ls_line(), "");
    let o = sb.hutch(&["run", "-d", "--name", "bad/name", &ws], None);
    assert!(
        text(&o.stderr).contains("bad sandbox name"),
        "{}",
        text(&o.stderr)
    );
});

per_engine!(
    separate_50mib_streams_and_8_concurrent_sessions,
    |e: Engine| {
        let sb = Sandbox::start(e, "streams", &[]);
        // Two different 50 MiB files, written to stdout and stderr at once.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for name in ["a.bin", "b.bin"] {
            let mut data = vec![0u8; 50 << 20];
            for chunk in data.chunks_mut(8) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
            }
            std::fs::write(sb.ws.path().join(name), data).unwrap();
        }
        let t = Instant::now();
        let o = sb.exec(&[
            "streams",
            "--",
            "sh",
            "-c",
            "cat a.bin & cat b.bin >&2; wait",
        ]);
        let took = t.elapsed();
        assert_eq!(o.status.code(), Some(0));
        assert!(
            o.stdout == std::fs::read(sb.ws.path().join("a.bin")).unwrap(),
            "stdout is a.bin ({} bytes)",
            o.stdout.len()
        );
        assert!(
            o.stderr == std::fs::read(sb.ws.path().join("b.bin")).unwrap(),
            "stderr is b.bin ({} bytes)",
            o.stderr.len()
        );
        eprintln!("100 MiB over two streams in {took:?}");
        // And 50 MiB into stdin.
        let data = std::fs::read(sb.ws.path().join("a.bin")).unwrap();
        let o = sb.hutch(
            &["exec", "-i", "streams", "--", "sh", "-c", "cat > in.bin"],
            Some(&data),
        );
        assert_eq!(o.status.code(), Some(0));
        assert!(
            std::fs::read(sb.ws.path().join("in.bin")).unwrap() == data,
            "stdin arrived intact"
        );

        // Eight sessions at once, each with its own output and status.
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let state = sb.state.path().to_path_buf();
                std::thread::spawn(move || {
                    let script = format!(
                        "sleep 1; head -c {} a.bin | wc -c; exit {i}",
                        (i + 1) * 1000
                    );
                    hutch_in(
                        &state,
                        &["exec", "streams", "--", "sh", "-c", &script],
                        None,
                    )
                })
            })
            .collect();
        for (i, t) in threads.into_iter().enumerate() {
            let o = t.join().unwrap();
            assert_eq!(
                o.status.code(),
                Some(i as i32),
                "session {i}: {}",
                text(&o.stderr)
            );
            assert_eq!(text(&o.stdout).trim(), ((i + 1) * 1000).to_string());
        }
    }
);

/// GET / from `port` on the host's loopback; the body, if any.
fn http_get(port: u16) -> Option<String> {
    let out = Command::new("curl")
        .args(["-s", "-m", "10", &format!("http://127.0.0.1:{port}/")])
        .output()
        .expect("curl (Debian package curl)");
    out.status.success().then(|| text(&out.stdout))
}

per_engine!(published_ports_reach_a_guest_http_server, |e: Engine| {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    // A port in use is refused up front, before anything boots.
    let state = tempfile::tempdir().unwrap();
    let ws = hutch_e2e::workspace();
    let spec = format!("{taken_port}:8000");
    let o = hutch_in(
        state.path(),
        &[
            "run",
            "--engine",
            e.flag(),
            "-p",
            &spec,
            ws.path().to_str().unwrap(),
            "--",
            "true",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(125));
    assert!(
        text(&o.stderr).contains(&format!("127.0.0.1:{taken_port} is already in use")),
        "{}",
        text(&o.stderr)
    );

    let sb = Sandbox::start(e, "web", &["-p", "8000"]);
    std::fs::write(sb.ws.path().join("index.html"), "hello from the guest\n").unwrap();
    let o = sb.exec(&[
        "web",
        "--",
        "sh",
        "-c",
        "setsid python3 -m http.server 8000 >/dev/null 2>&1 < /dev/null &",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let ports = text(&sb.hutch(&["ports", "web", "ls"], None).stdout);
    let port: u16 = ports
        .trim()
        .strip_prefix("127.0.0.1:")
        .and_then(|r| r.split("->").next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("ports ls: {ports:?}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        if let Some(b) = http_get(port).filter(|b| !b.is_empty()) {
            break b;
        }
        assert!(Instant::now() < deadline, "the guest server never answered");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(body, "hello from the guest\n");
    // Publishing at run time, a taken port, and unpublishing.
    let o = sb.hutch(&["ports", "web", "publish", &spec], None);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        text(&o.stderr).contains("already in use"),
        "{}",
        text(&o.stderr)
    );
    let o = sb.hutch(&["ports", "web", "publish", "8000"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let second: u16 = text(&o.stdout)
        .trim()
        .strip_prefix("127.0.0.1:")
        .and_then(|r| r.split("->").next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(http_get(second).as_deref(), Some("hello from the guest\n"));
    // A guest port nobody listens on: the connection is closed, the sandbox stays up.
    let o = sb.hutch(&["ports", "web", "publish", "9"], None);
    let dead: u16 = text(&o.stdout)
        .trim()
        .strip_prefix("127.0.0.1:")
        .and_then(|r| r.split("->").next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(http_get(dead), None);
    let o = sb.hutch(&["ports", "web", "unpublish", "8000"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "unpublished"
    );
    let o = sb.hutch(&["ports", "web", "publish", "80/udp"], None);
    assert!(text(&o.stderr).contains("only tcp"), "{}", text(&o.stderr));
    assert_eq!(sb.exec(&["web", "--", "true"]).status.code(), Some(0));
    drop(taken);
});

per_engine!(
    a_killed_vmm_shows_as_stale_and_can_be_removed,
    |e: Engine| {
        let sb = Sandbox::start(e, "victim", &[]);
        let pid = sb.pid();
        // SAFETY: SIGKILL to the sandbox's VMM process, which this test started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sb.ls_line().contains(" stale ") {
            assert!(Instant::now() < deadline, "{}", sb.ls_line());
            std::thread::sleep(Duration::from_millis(100));
        }
        let o = sb.exec(&["victim", "--", "true"]);
        assert!(text(&o.stderr).contains("is stale"), "{}", text(&o.stderr));
        let o = sb.hutch(&["rm", "victim"], None);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        assert_eq!(sb.ls_line(), "");
    }
);

/// `CONNECT port` on the sandbox's hybrid socket; the stream, or `None`
/// when the guest refused.
fn connect(path: &Path, port: u32) -> Option<UnixStream> {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    line.starts_with(b"OK ").then_some(s)
}

per_engine!(
    bad_input_on_the_agent_is_refused_and_the_sandbox_stays_up,
    |e: Engine| {
        let sb = Sandbox::start(e, "tough", &[]);
        let v = sb.vsock();
        // Garbage where a request belongs: an error message, then close.
        let mut s = connect(&v, 1024).expect("the agent listens on 1024");
        s.write_all(&[0x7f, 0xff, 0xff, 0xff, 0xff, 1, 2, 3])
            .unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(
            text(&got).contains("unknown message kind 0x7f"),
            "{:?}",
            text(&got)
        );
        // An oversized length.
        let mut s = connect(&v, 1024).unwrap();
        s.write_all(&[0x20, 0xff, 0xff, 0xff, 0x7f]).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(text(&got).contains("over the"), "{:?}", text(&got));
        // A guest port nobody listens on.
        assert!(
            connect(&v, 4444).is_none(),
            "CONNECT to a closed port is refused"
        );
        // Hundreds of host connections held open at once.
        let held: Vec<_> = (0..300).filter_map(|_| connect(&v, 1024)).collect();
        assert!(!held.is_empty());
        drop(held);
        // The guest closes them at its own pace; until it has, new
        // connections may meet the 256-connection cap.
        let deadline = Instant::now() + Duration::from_secs(60);
        while sb.exec(&["tough", "--", "true"]).status.code() != Some(0) {
            assert!(
                Instant::now() < deadline,
                "the sandbox never took commands again"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The guest opens 2000 connections to a host port nobody listens on, and
        // 300 to one that answers.
        let listener =
            std::os::unix::net::UnixListener::bind(format!("{}_7000", v.display())).unwrap();
        std::thread::spawn(move || {
            let mut keep = Vec::new();
            for c in listener.incoming().flatten() {
                keep.push(c);
            }
        });
        let script = "import socket\nrefused = held = 0\nfor i in range(2000):\n    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)\n    try:\n        s.connect((2, 6999))\n    except OSError:\n        refused += 1\n    s.close()\nkeep = []\nfor i in range(300):\n    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)\n    try:\n        s.connect((2, 7000)); keep.append(s)\n    except OSError:\n        pass\nprint(refused, len(keep))\n";
        std::fs::write(sb.ws.path().join("flood.py"), script).unwrap();
        let o = sb.exec(&["tough", "--", "python3", "flood.py"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        let counts: Vec<u32> = text(&o.stdout)
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(
            counts[0], 2000,
            "every connection to a closed host port is refused"
        );
        assert!(
            counts[1] > 0,
            "some connections to the open port succeed: {counts:?}"
        );
        // Still serving.
        let o = sb.exec(&["tough", "--", "echo", "alive"]);
        assert_eq!(text(&o.stdout), "alive\n");
    }
);
