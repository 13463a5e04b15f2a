//! The agent protocol: what the host and `hutch-init`'s agent say to each
//! other over vsock.
//!
//! Every connection carries one thing: an exec session, a port forward, a
//! shutdown or a ping, named by the first message the host sends. After that,
//! an exec session carries stdin, window sizes and signals one way and
//! stdout, stderr and the exit status the other, each as its own message, so
//! the streams never mix. A message is a kind byte, a little-endian `u32`
//! payload length and the payload; anything else ends the connection with an
//! [`Msg::Error`], and the agent goes on serving the others.

use std::io::{self, Read, Write};

use thiserror::Error;

use crate::spec::{put_bytes, put_list, put_u32, Reader, SpecError};

/// Guest port the agent listens on for host-initiated connections.
pub const AGENT_PORT: u32 = 1024;
/// Host port the guest connects to once it is ready (`<socket>_1025`).
pub const READY_PORT: u32 = 1025;
/// Host port of the egress proxy (`<socket>_3128`); in the guest the agent
/// listens on `127.0.0.1:3128` and forwards each connection there.
pub const PROXY_PORT: u32 = 3128;
/// Largest payload of one message.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Version sent in [`Msg::Hello`].
pub const PROTOCOL_VERSION: u32 = 1;
const HEADER: usize = 5;

/// A terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WinSize {
    pub rows: u16,
    pub cols: u16,
}

/// A process to start.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecRequest {
    /// argv\[0\] is looked up in `PATH` (from `env`) when it has no slash.
    pub argv: Vec<Vec<u8>>,
    /// `KEY=VALUE` entries, exactly as the process will see them.
    pub env: Vec<Vec<u8>>,
    /// Working directory (absolute).
    pub cwd: Vec<u8>,
    /// Run on a new pseudo-terminal of this size; `None`: on pipes.
    pub tty: Option<WinSize>,
    /// User and group ids to run as.
    pub uid: u32,
    pub gid: u32,
}

impl ExecRequest {
    fn encode(&self, out: &mut Vec<u8>) {
        put_list(out, &self.argv);
        put_list(out, &self.env);
        put_bytes(out, &self.cwd);
        let ws = self.tty.unwrap_or_default();
        put_u32(out, usize::from(self.tty.is_some()));
        put_u32(out, usize::from(ws.rows));
        put_u32(out, usize::from(ws.cols));
        put_u32(out, self.uid as usize);
        put_u32(out, self.gid as usize);
    }

    fn decode(buf: &[u8]) -> Result<Self, SpecError> {
        let mut r = Reader { buf, pos: 0 };
        let argv = r.list()?;
        let env = r.list()?;
        let cwd = r.bytes()?;
        let tty = r.flag("tty")?;
        let rows = size(r.u32()?, "rows")?;
        let cols = size(r.u32()?, "cols")?;
        let uid = r.u32()?;
        let gid = r.u32()?;
        r.finish()?;
        if argv.is_empty() {
            return Err(SpecError::EmptyArgv);
        }
        Ok(Self {
            argv,
            env,
            cwd,
            tty: tty.then_some(WinSize { rows, cols }),
            uid,
            gid,
        })
    }
}

fn size(v: u32, field: &'static str) -> Result<u16, SpecError> {
    u16::try_from(v).map_err(|_| SpecError::BadValue { field, value: v })
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    // Guest to host.
    /// Bytes the process wrote to stdout (or to its terminal).
    Stdout(Vec<u8>),
    /// Bytes the process wrote to stderr.
    Stderr(Vec<u8>),
    /// The exit status, shell style (128 + signal); the last message.
    Exit(i32),
    /// The request failed; a UTF-8 message. The last message.
    Error(String),
    /// The request succeeded (forward open, shutdown under way, pong).
    Ok,
    /// The process started with this pid.
    Started(u32),
    /// First message on the ready connection: the agent is serving.
    Hello(u32),
    // Host to guest, during a session.
    /// Bytes for the process's stdin.
    Stdin(Vec<u8>),
    /// stdin reached end of file.
    StdinEof,
    /// The terminal changed size.
    Resize(WinSize),
    /// Send this signal to the process's foreground process group.
    Signal(i32),
    // Host to guest, first on a connection.
    /// Start a process.
    Exec(ExecRequest),
    /// Connect to this TCP port on the guest's loopback and relay bytes.
    Forward(u16),
    /// Stop every process, sync and power off.
    Shutdown,
    /// Answered with [`Msg::Ok`].
    Ping,
}

/// Wire codes of the message kinds.
mod kind {
    pub const STDOUT: u8 = 0x01;
    pub const STDERR: u8 = 0x02;
    pub const EXIT: u8 = 0x03;
    pub const ERROR: u8 = 0x04;
    pub const OK: u8 = 0x05;
    pub const STARTED: u8 = 0x06;
    pub const HELLO: u8 = 0x07;
    pub const STDIN: u8 = 0x10;
    pub const STDIN_EOF: u8 = 0x11;
    pub const RESIZE: u8 = 0x12;
    pub const SIGNAL: u8 = 0x13;
    pub const EXEC: u8 = 0x20;
    pub const FORWARD: u8 = 0x21;
    pub const SHUTDOWN: u8 = 0x22;
    pub const PING: u8 = 0x23;
}

/// Why a message could not be read.
#[derive(Debug, Error)]
pub enum AgentError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    #[error("message of {0} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("message kind {kind:#04x}: {reason}")]
    BadPayload { kind: u8, reason: String },
}

impl Msg {
    /// Encodes the message, header and payload, as one buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::new();
        let k = match self {
            Msg::Stdout(d) => return encode_data(kind::STDOUT, d),
            Msg::Stderr(d) => return encode_data(kind::STDERR, d),
            Msg::Stdin(d) => return encode_data(kind::STDIN, d),
            Msg::Exit(s) => {
                p.extend_from_slice(&s.to_le_bytes());
                kind::EXIT
            }
            Msg::Error(m) => {
                p.extend_from_slice(m.as_bytes());
                kind::ERROR
            }
            Msg::Ok => kind::OK,
            Msg::Started(pid) => {
                p.extend_from_slice(&pid.to_le_bytes());
                kind::STARTED
            }
            Msg::Hello(v) => {
                p.extend_from_slice(&v.to_le_bytes());
                kind::HELLO
            }
            Msg::StdinEof => kind::STDIN_EOF,
            Msg::Resize(ws) => {
                p.extend_from_slice(&ws.rows.to_le_bytes());
                p.extend_from_slice(&ws.cols.to_le_bytes());
                kind::RESIZE
            }
            Msg::Signal(s) => {
                p.extend_from_slice(&s.to_le_bytes());
                kind::SIGNAL
            }
            Msg::Exec(req) => {
                req.encode(&mut p);
                kind::EXEC
            }
            Msg::Forward(port) => {
                p.extend_from_slice(&port.to_le_bytes());
                kind::FORWARD
            }
            Msg::Shutdown => kind::SHUTDOWN,
            Msg::Ping => kind::PING,
        };
        encode_data(k, &p)
    }

    /// Decodes one message from its kind and payload.
    pub fn decode(k: u8, p: Vec<u8>) -> Result<Msg, AgentError> {
        let bad = |reason: String| AgentError::BadPayload { kind: k, reason };
        let fixed = |n: usize| -> Result<&[u8], AgentError> {
            if p.len() == n {
                Ok(&p)
            } else {
                Err(bad(format!("{} payload bytes, expected {n}", p.len())))
            }
        };
        let word = |b: &[u8]| [b[0], b[1], b[2], b[3]];
        Ok(match k {
            kind::STDOUT => Msg::Stdout(p),
            kind::STDERR => Msg::Stderr(p),
            kind::STDIN => Msg::Stdin(p),
            kind::EXIT => Msg::Exit(i32::from_le_bytes(word(fixed(4)?))),
            kind::ERROR => Msg::Error(String::from_utf8_lossy(&p).into_owned()),
            kind::OK => {
                fixed(0)?;
                Msg::Ok
            }
            kind::STARTED => Msg::Started(u32::from_le_bytes(word(fixed(4)?))),
            kind::HELLO => Msg::Hello(u32::from_le_bytes(word(fixed(4)?))),
            kind::STDIN_EOF => {
                fixed(0)?;
                Msg::StdinEof
            }
            kind::RESIZE => {
                let b = fixed(4)?;
                Msg::Resize(WinSize {
                    rows: u16::from_le_bytes([b[0], b[1]]),
                    cols: u16::from_le_bytes([b[2], b[3]]),
                })
            }
            kind::SIGNAL => Msg::Signal(i32::from_le_bytes(word(fixed(4)?))),
            kind::EXEC => Msg::Exec(ExecRequest::decode(&p).map_err(|e| bad(e.to_string()))?),
            kind::FORWARD => {
                let b = fixed(2)?;
                Msg::Forward(u16::from_le_bytes([b[0], b[1]]))
            }
            kind::SHUTDOWN => {
                fixed(0)?;
                Msg::Shutdown
            }
            kind::PING => {
                fixed(0)?;
                Msg::Ping
            }
            other => return Err(AgentError::UnknownKind(other)),
        })
    }
}

/// Encodes a data message of kind `k` without building a [`Msg`].
pub fn encode_data(k: u8, data: &[u8]) -> Vec<u8> {
    assert!(data.len() <= MAX_MESSAGE, "agent message over the limit");
    let mut out = Vec::with_capacity(HEADER + data.len());
    out.push(k);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Wire kinds for [`encode_data`], for the output pumps.
pub const STDOUT_KIND: u8 = kind::STDOUT;
/// See [`STDOUT_KIND`].
pub const STDERR_KIND: u8 = kind::STDERR;

/// Writes one message.
pub fn write_msg(w: &mut impl Write, m: &Msg) -> io::Result<()> {
    w.write_all(&m.encode())
}

/// Reads one message; `Ok(None)` at end of stream between messages.
pub fn read_msg(r: &mut impl Read) -> Result<Option<Msg>, AgentError> {
    let mut head = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(AgentError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !(kind::STDOUT..=kind::HELLO).contains(&head[0])
        && !(kind::STDIN..=kind::SIGNAL).contains(&head[0])
        && !(kind::EXEC..=kind::PING).contains(&head[0])
    {
        return Err(AgentError::UnknownKind(head[0]));
    }
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_MESSAGE {
        return Err(AgentError::TooLarge(len));
    }
    let mut p = vec![0u8; len];
    r.read_exact(&mut p).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => AgentError::Truncated,
        _ => AgentError::Io(e),
    })?;
    Msg::decode(head[0], p).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Msg> {
        vec![
            Msg::Stdout(b"out\xff".to_vec()),
            Msg::Stderr(vec![]),
            Msg::Exit(-3),
            Msg::Error("nope \u{e9}".into()),
            Msg::Ok,
            Msg::Started(42),
            Msg::Hello(PROTOCOL_VERSION),
            Msg::Stdin(vec![0; 1000]),
            Msg::StdinEof,
            Msg::Resize(WinSize { rows: 24, cols: 80 }),
            Msg::Signal(2),
            Msg::Exec(ExecRequest {
                argv: vec![b"sh".to_vec(), b"-c".to_vec(), b"a b\n\xfe".to_vec()],
                env: vec![b"K=v".to_vec()],
                cwd: b"/w".to_vec(),
                tty: Some(WinSize {
                    rows: 50,
                    cols: 200,
                }),
                uid: 1000,
                gid: 100,
            }),
            Msg::Exec(ExecRequest {
                argv: vec![b"true".to_vec()],
                ..Default::default()
            }),
            Msg::Forward(8080),
            Msg::Shutdown,
            Msg::Ping,
        ]
    }

    #[test]
    fn every_message_round_trips_through_a_stream_in_any_split() {
        let wire: Vec<u8> = all().iter().flat_map(Msg::encode).collect();
        // A reader that hands out 3 bytes at a time.
        struct Dribble<'a>(&'a [u8]);
        impl Read for Dribble<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(3).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut r = Dribble(&wire);
        let mut got = Vec::new();
        while let Some(m) = read_msg(&mut r).unwrap() {
            got.push(m);
        }
        assert_eq!(got, all());
    }

    #[test]
    fn malformed_input_is_an_error_naming_the_problem() {
        let err = |b: &[u8]| read_msg(&mut &b[..]).unwrap_err().to_string();
        assert_eq!(err(&[0x7f, 0, 0, 0, 0]), "unknown message kind 0x7f");
        assert!(err(&[0x01, 0, 0, 0x20, 0]).contains("over the"));
        assert_eq!(
            err(&[0x01, 5, 0, 0, 0, b'a']),
            "connection closed in the middle of a message"
        );
        assert_eq!(
            err(&[0x01, 5]),
            "connection closed in the middle of a message"
        );
        assert!(err(&[kind::EXIT, 1, 0, 0, 0, 9]).contains("expected 4"));
        assert!(err(&[kind::OK, 1, 0, 0, 0, 9]).contains("expected 0"));
        // An exec request with an empty argv, and one cut short.
        let mut empty = Msg::Exec(ExecRequest {
            argv: vec![b"x".to_vec()],
            ..Default::default()
        })
        .encode();
        empty[5..9].copy_from_slice(&0u32.to_le_bytes()); // argv count 0
        empty.drain(9..13); // drop the one argv entry's length...
        empty.drain(9..10); // ...and its byte
        let n = (empty.len() - HEADER) as u32;
        empty[1..5].copy_from_slice(&n.to_le_bytes());
        assert!(err(&empty).contains("empty argv"), "{}", err(&empty));
        let mut cut = Msg::Exec(ExecRequest::default()).encode();
        cut.truncate(12);
        cut[1..5].copy_from_slice(&7u32.to_le_bytes());
        assert!(err(&cut).contains("truncated"), "{}", err(&cut));
        // Rows beyond u16.
        let mut big = Msg::Exec(ExecRequest {
            argv: vec![b"x".to_vec()],
            tty: Some(WinSize { rows: 1, cols: 1 }),
            ..Default::default()
        })
        .encode();
        let rows_at = big.len() - 16;
        big[rows_at..rows_at + 4].copy_from_slice(&70_000u32.to_le_bytes());
        assert!(
            err(&big).contains("bad value 70000 for rows"),
            "{}",
            err(&big)
        );
    }

    #[test]
    fn clean_end_of_stream_is_none() {
        assert!(read_msg(&mut &b""[..]).unwrap().is_none());
    }
}
