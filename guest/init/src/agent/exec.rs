//! One exec session: start the process on pipes or a pseudo-terminal, relay
//! its streams as separate messages, apply window sizes and signals, and
//! report its exit status.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hutch_proto::agent::{encode_data, STDERR_KIND, STDOUT_KIND};
use hutch_proto::{read_msg, ExecRequest, Msg};

use super::pty;
use crate::reaper::Reaper;
use crate::{spawn, sys};

/// How long to wait for the output streams once the process is gone (a
/// background child may hold them open).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for the host to close its end after the exit status.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Largest read from the process's output at a time.
const CHUNK: usize = 128 * 1024;
/// stdin chunks queued for a process that is not reading.
const STDIN_QUEUE: usize = 16;

/// The host end, shared by the threads that write to it.
pub type Writer = Arc<Mutex<UnixStream>>;

fn send(w: &Writer, bytes: &[u8]) -> io::Result<()> {
    w.lock().unwrap_or_else(|p| p.into_inner()).write_all(bytes)
}

/// Runs `req` with its I/O on `conn`; returns the exit status (after
/// sending it), or `None` when the process could not be started.
pub fn run(conn: UnixStream, req: &ExecRequest) -> Option<i32> {
    let writer: Writer = match conn.try_clone() {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => {
            super::refuse(conn, &format!("dup the session socket: {e}"));
            return None;
        }
    };
    let cwd = sys::path(&req.cwd);
    if !cwd.is_dir() {
        let why = std::fs::metadata(cwd)
            .err()
            .map_or("not a directory".into(), |e| e.to_string());
        super::refuse(conn, &format!("working directory {}: {why}", cwd.display()));
        return None;
    }
    let started = match start(req) {
        Ok(s) => s,
        Err(e) => {
            let (msg, status) = spawn::spawn_failure(&req.argv[0], &e);
            let _ = send(&writer, &Msg::Stderr(msg).encode());
            let _ = send(&writer, &Msg::Exit(status).encode());
            let _ = conn.shutdown(std::net::Shutdown::Both);
            return Some(status);
        }
    };
    let pid = started.pid;
    let _ = send(&writer, &Msg::Started(pid as u32).encode());

    let (done_tx, done_rx) = mpsc::channel();
    let mut pumps = 0;
    for (src, kind) in started.outputs {
        let (w, done) = (writer.clone(), done_tx.clone());
        let ok = thread::Builder::new()
            .name("output".into())
            .spawn(move || {
                pump_output(src, kind, &w);
                let _ = done.send(());
            })
            .is_ok();
        pumps += usize::from(ok);
    }
    let finished = Arc::new(AtomicBool::new(false));
    let control = Control {
        pid,
        master: started.master,
        finished: finished.clone(),
    };
    let stdin = started.stdin.map(start_stdin_writer);
    let input = conn.try_clone();
    let (closed_tx, closed_rx) = mpsc::channel::<()>();
    let _ = thread::Builder::new().name("input".into()).spawn(move || {
        if let Ok(input) = input {
            pump_input(input, stdin, &control);
        }
        let _ = closed_tx.send(());
    });

    let status = Reaper::get().wait(pid);
    let deadline = Instant::now() + OUTPUT_GRACE;
    for _ in 0..pumps {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    finished.store(true, Ordering::SeqCst);
    let _ = send(&writer, &Msg::Exit(status).encode());
    // Nothing follows; the host closes its end once it has the status, which
    // ends the input thread. Waiting for that means everything sent has
    // arrived, even if the guest powers off next.
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let _ = closed_rx.recv_timeout(CLOSE_GRACE);
    let _ = conn.shutdown(std::net::Shutdown::Both);
    Some(status)
}

/// A started process and its ends of the streams.
struct Started {
    pid: libc::pid_t,
    outputs: Vec<(File, u8)>,
    stdin: Option<File>,
    master: Option<File>,
}

fn start(req: &ExecRequest) -> io::Result<Started> {
    match req.tty {
        Some(ws) => {
            let p = pty::open(ws)?;
            let dup = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
            let mut cmd = spawn::command(req, true);
            cmd.stdin(dup(&p.slave)?)
                .stdout(dup(&p.slave)?)
                .stderr(dup(&p.slave)?);
            let child = Reaper::get().spawn(&mut cmd)?;
            // The slave must close here, so reads on the master end (EIO)
            // when the process and its children are gone.
            drop(cmd);
            drop(p.slave);
            let out = p.master.try_clone()?;
            let inp = p.master.try_clone()?;
            Ok(Started {
                pid: child.id() as libc::pid_t,
                outputs: vec![(out, STDOUT_KIND)],
                stdin: Some(inp),
                master: Some(p.master),
            })
        }
        None => {
            let mut cmd = spawn::command(req, false);
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = Reaper::get().spawn(&mut cmd)?;
            let file = |fd: OwnedFd| File::from(fd);
            let mut outputs = Vec::new();
            if let Some(o) = child.stdout.take() {
                outputs.push((file(o.into()), STDOUT_KIND));
            }
            if let Some(e) = child.stderr.take() {
                outputs.push((file(e.into()), STDERR_KIND));
            }
            Ok(Started {
                pid: child.id() as libc::pid_t,
                outputs,
                stdin: child.stdin.take().map(|s| file(s.into())),
                master: None,
            })
        }
    }
}

/// Copies `src` into messages of `kind` until end of file (or EIO, a pty
/// whose last user is gone). Once the host is gone, keeps reading and
/// dropping, so the process never blocks on a full pipe.
fn pump_output(mut src: File, kind: u8, w: &Writer) {
    let mut buf = vec![0u8; CHUNK];
    let mut host_ok = true;
    loop {
        match src.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if host_ok {
                    host_ok = send(w, &encode_data(kind, &buf[..n])).is_ok();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Writes queued stdin chunks to the process; dropping the queue's sender
/// closes its stdin (end of file).
fn start_stdin_writer(mut dst: File) -> SyncSender<Vec<u8>> {
    let (tx, rx): (SyncSender<Vec<u8>>, Receiver<Vec<u8>>) = mpsc::sync_channel(STDIN_QUEUE);
    let _ = thread::Builder::new().name("stdin".into()).spawn(move || {
        for chunk in rx {
            if dst.write_all(&chunk).is_err() {
                // The process closed its stdin: drop the rest.
                return;
            }
        }
    });
    tx
}

/// What the input side can do to the process.
struct Control {
    pid: libc::pid_t,
    master: Option<File>,
    /// The process has been reaped: its pid may be reused, signal nothing.
    finished: Arc<AtomicBool>,
}

impl Control {
    /// Signals the terminal's foreground group, else the session's group.
    fn signal(&self, sig: i32) {
        if self.finished.load(Ordering::SeqCst) {
            return;
        }
        let group = self
            .master
            .as_ref()
            .and_then(pty::foreground)
            .unwrap_or(self.pid);
        // SAFETY: kill only sends a signal; a bad number fails with EINVAL.
        unsafe { libc::kill(-group, sig) };
    }
}

/// Reads the host's messages until the connection ends: stdin, end of
/// stdin, window sizes and signals. When the host goes away mid-session, the
/// process gets SIGHUP, as on a terminal hang-up.
fn pump_input(mut conn: UnixStream, mut stdin: Option<SyncSender<Vec<u8>>>, ctl: &Control) {
    loop {
        match read_msg(&mut conn) {
            Ok(Some(Msg::Stdin(data))) => {
                if let Some(tx) = &stdin {
                    if tx.send(data).is_err() {
                        stdin = None;
                    }
                }
            }
            Ok(Some(Msg::StdinEof)) => {
                // A terminal has no end of file to pass on: leave it open.
                if ctl.master.is_none() {
                    stdin = None;
                }
            }
            Ok(Some(Msg::Resize(ws))) => {
                if let Some(m) = &ctl.master {
                    let _ = pty::resize(m, ws);
                }
            }
            Ok(Some(Msg::Signal(sig))) => ctl.signal(sig),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                ctl.signal(libc::SIGHUP);
                return;
            }
        }
    }
}
