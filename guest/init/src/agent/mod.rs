//! The guest agent: serves the host's connections over vsock (see
//! [`hutch_proto::agent`]). Each connection runs on its own thread and
//! carries one request; a bad one is answered with an error and closed, and
//! the others go on.

pub mod exec;
pub mod forward;
pub mod pty;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use hutch_proto::{read_msg, write_msg, Msg};

use crate::{console, vsock};

/// Connections served at once; more are refused with an error.
pub const MAX_CONNECTIONS: usize = 128;
/// Time allowed for the first message of a connection.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the agent tells init's main thread.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// The run's own command exited with this status (one-shot runs).
    MainExited(i32),
    /// The host asked for a shutdown.
    Shutdown,
}

/// Answers `conn` with an error message and closes it.
pub fn refuse(mut conn: UnixStream, msg: &str) {
    let _ = write_msg(&mut conn, &Msg::Error(format!("hutch-init: {msg}")));
    let _ = conn.flush();
    let _ = conn.shutdown(std::net::Shutdown::Write);
    // Closing with unread input would reset the connection and could lose
    // the message: read (a little, briefly) what the host still sends.
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match std::io::Read::read(&mut conn, &mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// The agent's shared state.
#[derive(Clone)]
pub struct Agent {
    events: Sender<Event>,
    live: Arc<AtomicUsize>,
}

impl Agent {
    pub fn new(events: Sender<Event>) -> Self {
        Self {
            events,
            live: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Accepts connections on `listener` forever, each on its own thread.
    pub fn serve(&self, listener: OwnedFd) {
        loop {
            let conn = match vsock::accept(&listener) {
                Ok(c) => c,
                Err(e) => {
                    console::say(&format!("agent: accept: {e}"));
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            self.spawn_conn(conn, false);
        }
    }

    /// Serves one connection on a new thread. `main`: its exec is the run's
    /// own command.
    pub fn spawn_conn(&self, conn: UnixStream, main: bool) {
        if self.live.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            self.live.fetch_sub(1, Ordering::SeqCst);
            refuse(
                conn,
                &format!("too many sessions (at most {MAX_CONNECTIONS})"),
            );
            return;
        }
        let agent = self.clone();
        let started = thread::Builder::new()
            .name("session".into())
            .spawn(move || {
                agent.serve_conn(conn, main);
                agent.live.fetch_sub(1, Ordering::SeqCst);
            });
        if started.is_err() {
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn serve_conn(&self, mut conn: UnixStream, main: bool) {
        let _ = conn.set_read_timeout(Some(REQUEST_TIMEOUT));
        let first = read_msg(&mut conn);
        let _ = conn.set_read_timeout(None);
        match first {
            Ok(Some(Msg::Exec(req))) => {
                let status = exec::run(conn, &req);
                if main {
                    let _ = self.events.send(Event::MainExited(status.unwrap_or(126)));
                }
            }
            Ok(Some(Msg::Forward(port))) => forward::to_guest_port(conn, port),
            Ok(Some(Msg::Ping)) => {
                let _ = write_msg(&mut conn, &Msg::Ok);
            }
            Ok(Some(Msg::Shutdown)) => {
                let _ = write_msg(&mut conn, &Msg::Ok);
                let _ = self.events.send(Event::Shutdown);
            }
            Ok(Some(other)) => refuse(conn, &format!("unexpected first message {other:?}")),
            Ok(None) => {}
            Err(e) => refuse(conn, &format!("bad request: {e}")),
        }
    }
}
