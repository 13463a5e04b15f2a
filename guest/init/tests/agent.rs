//! The agent on the host, over Unix socket pairs instead of vsock: real
//! processes, real pipes and pseudo-terminals. A separate test binary,
//! because the agent's reaper waits for any child of the process.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::Duration;

use hutch_init::agent::{Agent, Event};
use hutch_proto::{read_msg, write_msg, ExecRequest, Msg, WinSize};

fn agent() -> (Agent, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel();
    (Agent::new(tx), rx)
}

fn exec(argv: &[&str], tty: Option<WinSize>) -> Msg {
    Msg::Exec(ExecRequest {
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        env: vec![b"PATH=/usr/bin:/bin".to_vec(), b"TERM=dumb".to_vec()],
        cwd: b"/".to_vec(),
        tty,
        uid: 0,
        gid: 0,
    })
}

/// Collects stdout, stderr and the exit status of a session.
fn collect(conn: &mut UnixStream) -> (Vec<u8>, Vec<u8>, Option<i32>, Vec<String>) {
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (mut out, mut err, mut status, mut errors) = (vec![], vec![], None, vec![]);
    while let Some(m) = read_msg(conn).unwrap() {
        match m {
            Msg::Stdout(d) => out.extend(d),
            Msg::Stderr(d) => err.extend(d),
            Msg::Exit(s) => {
                status = Some(s);
                break;
            }
            Msg::Error(e) => errors.push(e),
            _ => {}
        }
    }
    (out, err, status, errors)
}

#[test]
fn separate_streams_stdin_eof_and_exit_status() {
    let (a, events) = agent();
    let (mut host, guest) = UnixStream::pair().unwrap();
    a.spawn_conn(guest, true);
    write_msg(
        &mut host,
        &exec(&["sh", "-c", "cat; echo err >&2; exit 7"], None),
    )
    .unwrap();
    write_msg(&mut host, &Msg::Stdin(b"hello\xff\n".to_vec())).unwrap();
    write_msg(&mut host, &Msg::StdinEof).unwrap();
    let (out, err, status, _) = collect(&mut host);
    assert_eq!(out, b"hello\xff\n");
    assert_eq!(err, b"err\n");
    assert_eq!(status, Some(7));
    drop(host);
    assert_eq!(
        events.recv_timeout(Duration::from_secs(10)).unwrap(),
        Event::MainExited(7)
    );
}

#[test]
fn a_terminal_session_has_the_size_resizes_and_takes_signals() {
    let (a, _events) = agent();
    let (mut host, guest) = UnixStream::pair().unwrap();
    a.spawn_conn(guest, false);
    let script =
        "stty size; trap 'stty size; exit 3' WINCH; echo ready; while :; do sleep 0.05; done";
    write_msg(
        &mut host,
        &exec(&["sh", "-c", script], Some(WinSize { rows: 30, cols: 90 })),
    )
    .unwrap();
    host.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("ready") {
        match read_msg(&mut host).unwrap().unwrap() {
            Msg::Stdout(d) => seen.extend(d),
            Msg::Started(_) => {}
            other => panic!("{other:?}"),
        }
    }
    write_msg(
        &mut host,
        &Msg::Resize(WinSize {
            rows: 40,
            cols: 120,
        }),
    )
    .unwrap();
    let (out, err, status, _) = collect(&mut host);
    let text = String::from_utf8_lossy(&seen).to_string() + &String::from_utf8_lossy(&out);
    assert!(text.starts_with("30 90\r\n"), "{text:?}");
    assert!(text.contains("40 120"), "{text:?}");
    assert!(err.is_empty(), "a terminal has one stream");
    assert_eq!(status, Some(3));

    // Ctrl-C as a signal reaches the foreground process group.
    let (mut host, guest) = UnixStream::pair().unwrap();
    a.spawn_conn(guest, false);
    write_msg(
        &mut host,
        &exec(
            &["sh", "-c", "echo go; exec sleep 30"],
            Some(WinSize { rows: 5, cols: 5 }),
        ),
    )
    .unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("go") {
        if let Msg::Stdout(d) = read_msg(&mut host).unwrap().unwrap() {
            seen.extend(d)
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    write_msg(&mut host, &Msg::Signal(libc::SIGINT)).unwrap();
    assert_eq!(collect(&mut host).2, Some(128 + libc::SIGINT));
}

#[test]
fn bad_requests_are_refused_and_the_agent_goes_on() {
    let (a, _events) = agent();
    // Garbage.
    let (mut host, guest) = UnixStream::pair().unwrap();
    a.spawn_conn(guest, false);
    host.write_all(&[0x7f, 1, 2, 3, 4, 5, 6]).unwrap();
    let (_, _, status, errors) = collect(&mut host);
    assert_eq!(status, None);
    assert!(
        errors[0].contains("unknown message kind 0x7f"),
        "{errors:?}"
    );
    // A session message where a request belongs.
    let (mut host, guest) = UnixStream::pair().unwrap();
    a.spawn_conn(guest, false);
    write_msg(&mut host, &Msg::StdinEof).unwrap();
    assert!(collect(&mut host).3[0].contains("unexpected first message"));
    // A missing command and a missing directory.
    let (mut host, guest) = UnixStream::pair().unwrap();
    a.spawn_conn(guest, false);
    write_msg(&mut host, &exec(&["hutch-no-such-command"], None)).unwrap();
    let (_, err, status, _) = collect(&mut host);
    assert_eq!(status, Some(127));
    assert!(String::from_utf8_lossy(&err).contains("command not found"));
    let (mut host, guest) = UnixStream::pair().unwrap();
    a.spawn_conn(guest, false);
    let mut req = exec(&["true"], None);
    if let Msg::Exec(r) = &mut req {
        r.cwd = b"/nonexistent-dir".to_vec();
    }
    write_msg(&mut host, &req).unwrap();
    assert!(collect(&mut host).3[0].contains("working directory /nonexistent-dir"));
    // Still serving.
    let (mut host, guest) = UnixStream::pair().unwrap();
    a.spawn_conn(guest, false);
    write_msg(&mut host, &Msg::Ping).unwrap();
    assert_eq!(read_msg(&mut host).unwrap(), Some(Msg::Ok));
}

#[test]
fn forwards_to_a_local_port_or_says_why_not() {
    let (a, _events) = agent();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf.map(|b| b.to_ascii_uppercase())).unwrap();
    });
    let (mut host, guest) = UnixStream::pair().unwrap();
    a.spawn_conn(guest, false);
    write_msg(&mut host, &Msg::Forward(port)).unwrap();
    assert_eq!(read_msg(&mut host).unwrap(), Some(Msg::Ok));
    host.write_all(b"hello").unwrap();
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"HELLO");

    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap().port();
    drop(closed);
    let (mut host, guest) = UnixStream::pair().unwrap();
    a.spawn_conn(guest, false);
    write_msg(&mut host, &Msg::Forward(dead)).unwrap();
    match read_msg(&mut host).unwrap() {
        Some(Msg::Error(e)) => assert!(e.contains(&format!("guest port {dead}")), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn shutdown_is_acknowledged_and_reported() {
    let (a, events) = agent();
    let (mut host, guest) = UnixStream::pair().unwrap();
    a.spawn_conn(guest, false);
    write_msg(&mut host, &Msg::Shutdown).unwrap();
    assert_eq!(read_msg(&mut host).unwrap(), Some(Msg::Ok));
    assert_eq!(
        events.recv_timeout(Duration::from_secs(5)).unwrap(),
        Event::Shutdown
    );
}
