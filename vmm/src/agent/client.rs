//! Connecting to a guest port through the hybrid vsock socket:
//! `CONNECT <port>\n`, answered by `OK <hostport>\n`.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hutch_proto::agent::AGENT_PORT;
use hutch_proto::{read_msg, write_msg, AgentError, Msg};
use thiserror::Error;

/// How long the handshake and a one-shot request may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors reaching the agent, naming the socket involved.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot reach the sandbox's vsock socket {path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("guest port {port} behind {path} refused the connection (nothing listens there, or the sandbox is at its limit of 256 vsock connections)")]
    Refused { path: PathBuf, port: u32 },
    #[error("unexpected answer {answer:?} from {path} to CONNECT {port}")]
    Handshake {
        path: PathBuf,
        port: u32,
        answer: String,
    },
    #[error("guest agent at {path}: {source}")]
    Protocol { path: PathBuf, source: AgentError },
    #[error("guest agent at {path}: {message}")]
    Guest { path: PathBuf, message: String },
    #[error("guest agent at {path} closed the connection without an answer")]
    Closed { path: PathBuf },
}

/// Connects to guest `port` through the hybrid socket at `path`.
pub fn connect(path: &Path, port: u32) -> Result<UnixStream, ClientError> {
    let sock_err = |source| ClientError::Socket {
        path: path.into(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(sock_err)?;
    s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(sock_err)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(sock_err)?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => {
                return Err(ClientError::Refused {
                    path: path.into(),
                    port,
                })
            }
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) if line.len() < 64 => line.push(b[0]),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(sock_err(e)),
        }
    }
    let answer = String::from_utf8_lossy(&line).into_owned();
    if !answer.starts_with("OK ") {
        return Err(ClientError::Handshake {
            path: path.into(),
            port,
            answer,
        });
    }
    s.set_read_timeout(None).map_err(sock_err)?;
    Ok(s)
}

/// Sends a one-message request (ping, shutdown, forward) to the agent and
/// waits for its `Ok`; returns the connection for what follows.
pub fn request(path: &Path, msg: &Msg) -> Result<UnixStream, ClientError> {
    let mut s = connect(path, AGENT_PORT)?;
    let proto = |source| ClientError::Protocol {
        path: path.into(),
        source,
    };
    write_msg(&mut s, msg).map_err(|e| proto(e.into()))?;
    let _ = s.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    match read_msg(&mut s).map_err(proto)? {
        Some(Msg::Ok) => {
            let _ = s.set_read_timeout(None);
            Ok(s)
        }
        Some(Msg::Error(message)) => Err(ClientError::Guest {
            path: path.into(),
            message,
        }),
        Some(other) => Err(ClientError::Guest {
            path: path.into(),
            message: format!("unexpected answer {other:?}"),
        }),
        None => Err(ClientError::Closed { path: path.into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake hybrid socket that answers each connection with `answer`.
    fn fake(answer: &'static [u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let mut buf = [0u8; 64];
                let n = c.read(&mut buf).unwrap();
                assert!(buf[..n].starts_with(b"CONNECT "));
                let _ = c.write_all(answer);
            }
        });
        (dir, path)
    }

    #[test]
    fn handshake_outcomes_name_the_socket_and_port() {
        let (_d, ok) = fake(b"OK 1073741824\n");
        assert!(connect(&ok, 5).is_ok());
        let (_d, closed) = fake(b"");
        let e = connect(&closed, 1024).unwrap_err().to_string();
        assert!(e.contains("guest port 1024") && e.contains("v.sock"), "{e}");
        let (_d, odd) = fake(b"NO\n");
        assert!(connect(&odd, 1).unwrap_err().to_string().contains("\"NO\""));
        let e = connect(Path::new("/nonexistent/v.sock"), 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/v.sock"), "{e}");
    }
}
