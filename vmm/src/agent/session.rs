//! One exec session from this process's point of view: the request goes
//! out, stdin follows it, stdout and stderr come back to this process's
//! descriptors, window-size changes and signals are passed on, and the exit
//! status ends it.

use std::fs::File;
use std::io::{Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;

use hutch_proto::{read_msg, write_msg, ExecRequest, Msg};

use super::client::ClientError;
use super::{signals, terminal};

/// Where the session's input comes from and how the terminal is handled.
#[derive(Debug, Clone, Copy)]
pub struct SessionIo {
    /// Send this process's stdin; otherwise the process sees end of file.
    pub forward_stdin: bool,
    /// Put the host terminal (stdin) in raw mode and follow its size.
    pub raw_tty: bool,
    /// Pass SIGINT, SIGTERM, SIGHUP and SIGQUIT on to the guest process.
    pub forward_signals: bool,
}

/// How many Ctrl-Cs it takes to give up on a guest that ignores them.
const INTERRUPTS_TO_QUIT: u32 = 3;

type Shared = Arc<Mutex<UnixStream>>;

fn send(w: &Shared, m: &Msg) -> bool {
    write_msg(&mut *w.lock().unwrap_or_else(|p| p.into_inner()), m).is_ok()
}

/// This process's descriptor `fd` as a file that is never closed.
fn fd_file(fd: i32) -> ManuallyDrop<File> {
    // SAFETY: 0, 1 and 2 stay open for the life of the process, and
    // ManuallyDrop keeps them from being closed here.
    ManuallyDrop::new(unsafe { File::from_raw_fd(fd) })
}

/// Runs `req` on the agent connection `conn` (from [`super::connect`]);
/// returns the exit status. `path` names the socket in errors.
pub fn run_session(
    mut conn: UnixStream,
    req: &ExecRequest,
    io: SessionIo,
    path: &Path,
) -> Result<i32, ClientError> {
    let proto = |source| ClientError::Protocol {
        path: path.into(),
        source,
    };
    write_msg(&mut conn, &Msg::Exec(req.clone())).map_err(|e| proto(e.into()))?;
    let writer: Shared = Arc::new(Mutex::new(conn.try_clone().map_err(|source| {
        ClientError::Socket {
            path: path.into(),
            source,
        }
    })?));
    let raw = if io.raw_tty && terminal::is_tty(0) {
        terminal::RawMode::enter(0).ok()
    } else {
        None
    };
    start_stdin(&writer, io.forward_stdin);
    start_signals(&writer, io);

    let (mut out, mut err) = (fd_file(1), fd_file(2));
    let (mut out_ok, mut err_ok) = (true, true);
    let result = loop {
        match read_msg(&mut conn) {
            Ok(Some(Msg::Stdout(d))) => {
                out_ok = out_ok && out.write_all(&d).is_ok();
            }
            Ok(Some(Msg::Stderr(d))) => {
                err_ok = err_ok && err.write_all(&d).is_ok();
            }
            Ok(Some(Msg::Exit(status))) => break Ok(status),
            Ok(Some(Msg::Error(message))) => {
                break Err(ClientError::Guest {
                    path: path.into(),
                    message,
                })
            }
            Ok(Some(_)) => {}
            Ok(None) => break Err(ClientError::Closed { path: path.into() }),
            Err(e) => break Err(proto(e)),
        }
    };
    // Closing tells the agent the status arrived (it waits for that before
    // a one-shot guest powers off).
    let _ = conn.shutdown(std::net::Shutdown::Both);
    drop(raw);
    result
}

fn start_stdin(w: &Shared, forward: bool) {
    if !forward {
        send(w, &Msg::StdinEof);
        return;
    }
    let w = w.clone();
    let _ = thread::Builder::new().name("stdin".into()).spawn(move || {
        let mut input = fd_file(0);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match input.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(0) | Err(_) => {
                    send(&w, &Msg::StdinEof);
                    return;
                }
                Ok(n) => {
                    if !send(&w, &Msg::Stdin(buf[..n].to_vec())) {
                        return;
                    }
                }
            }
        }
    });
}

fn start_signals(w: &Shared, io: SessionIo) {
    let mut sigs = Vec::new();
    if io.raw_tty {
        sigs.push(libc::SIGWINCH);
    }
    if io.forward_signals {
        sigs.extend([libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT]);
    }
    if sigs.is_empty() {
        return;
    }
    let Ok(mut caught) = signals::catch(&sigs) else {
        return;
    };
    let w = w.clone();
    let _ = thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut interrupts = 0;
            while let Some(sig) = signals::next(&mut caught) {
                let ok = if sig == libc::SIGWINCH {
                    match terminal::size(0).or_else(|| terminal::size(1)) {
                        Some(ws) => send(&w, &Msg::Resize(ws)),
                        None => true,
                    }
                } else {
                    if sig == libc::SIGINT {
                        interrupts += 1;
                        if interrupts >= INTERRUPTS_TO_QUIT {
                            eprintln!(
                                "hutch: interrupted {interrupts} times; giving up on the guest"
                            );
                            std::process::exit(128 + libc::SIGINT);
                        }
                    }
                    send(&w, &Msg::Signal(sig))
                };
                if !ok {
                    return;
                }
            }
        });
}
