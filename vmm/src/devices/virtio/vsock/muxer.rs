//! The connection muxer: guest packets in, guest packets out, host sockets.
//!
//! Everything here runs under the device's one mutex, from the queue
//! workers and from the host event loop; all socket I/O is non-blocking.
//! Limits: at most `max_connections` connections (established, connecting
//! and host clients still sending their `CONNECT` line); more are refused
//! (RST to the guest, closed on the host). Replies without a connection
//! (RSTs) wait in a queue of at most [`MAX_CTRL`]; beyond that they are
//! dropped, and the guest's connect times out.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::conn::{pending, Conn, HostIo, State};
use super::packet::*;
use super::HOST_CID;

/// Replies waiting without a connection, at most.
pub const MAX_CTRL: usize = 1024;
/// How long a host client has for its `CONNECT` line, and the guest for its RESPONSE.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `CONNECT <port>\n` line accepted.
const MAX_LINE: usize = 64;
/// First host port handed out for host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// epoll token of the listening socket (0 is the host loop's stop event).
pub const LISTENER_TOKEN: u64 = 1;

type Key = (u32, u32);

/// Counters, for tests and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MuxStats {
    /// Packets dropped: wrong cids, or a reply queue overflow.
    pub dropped: u64,
    /// Connections refused because of the cap.
    pub refused: u64,
    /// RSTs sent.
    pub resets: u64,
}

/// A host client that has not finished its `CONNECT` line.
struct HostClient {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// All connections of one device.
pub struct Muxer {
    cid: u64,
    path: PathBuf,
    max_conns: usize,
    epoll: Arc<Epoll>,
    listener: UnixListener,
    conns: HashMap<Key, Conn>,
    tokens: HashMap<u64, Key>,
    clients: HashMap<u64, HostClient>,
    ready: VecDeque<Key>,
    ctrl: VecDeque<Hdr>,
    next_token: u64,
    next_port: u32,
    pub stats: MuxStats,
}

fn bits(e: EventSet) -> u32 {
    e.bits()
}

impl Muxer {
    /// A muxer for guest `cid`, serving `listener` (bound at `path`), with
    /// `epoll` the host loop waits on (the listener is added to it here).
    pub fn new(
        cid: u64,
        path: PathBuf,
        listener: UnixListener,
        epoll: Arc<Epoll>,
        max_conns: usize,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )?;
        Ok(Self {
            cid,
            path,
            max_conns,
            epoll,
            listener,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            clients: HashMap::new(),
            ready: VecDeque::new(),
            ctrl: VecDeque::new(),
            next_token: LISTENER_TOKEN + 1,
            next_port: FIRST_LOCAL_PORT,
            stats: MuxStats::default(),
        })
    }

    /// Connections (any state) and host clients still sending `CONNECT`.
    pub fn connections(&self) -> usize {
        self.conns.len() + self.clients.len()
    }

    /// The guest reset the device: every connection ends at once (its host
    /// stream is closed, so the peer sees EOF) and nothing queued for the
    /// old driver is delivered to the new one. Returns how many ended.
    pub fn reset(&mut self) -> usize {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        let tokens: Vec<u64> = self.clients.keys().copied().collect();
        let ended = keys.len() + tokens.len();
        for key in keys {
            self.close(key);
        }
        for token in tokens {
            self.drop_client(token);
        }
        self.ready.clear();
        self.ctrl.clear();
        ended
    }

    /// Whether a packet may be waiting for the receive queue.
    pub fn has_rx(&self) -> bool {
        !self.ctrl.is_empty() || !self.ready.is_empty()
    }

    fn push_ctrl(&mut self, h: Hdr) {
        if h.op == OP_RST {
            self.stats.resets += 1;
        }
        if self.ctrl.len() < MAX_CTRL {
            self.ctrl.push_back(h);
        } else {
            self.stats.dropped += 1;
        }
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    /// Removes a connection without telling the guest.
    fn close(&mut self, key: Key) -> Option<Conn> {
        let c = self.conns.remove(&key)?;
        self.tokens.remove(&c.token);
        if !c.hup {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        Some(c)
    }

    /// Removes a connection and sends the guest an RST for it.
    fn kill(&mut self, key: Key) {
        if let Some(mut c) = self.close(key) {
            let h = c.hdr(OP_RST);
            self.push_ctrl(h);
        }
    }

    /// After any change to a connection: finish it if it is done, keep its
    /// epoll interest right, and queue it when it has a packet for the guest.
    fn touch(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.state == State::Closing && c.to_host.is_empty() {
            self.kill(key);
            return;
        }
        if c.hup && c.wants_read() && c.read_host() == HostIo::Broken {
            self.kill(key);
            return;
        }
        if !c.hup {
            let mut want = EventSet::empty();
            if c.wants_read() {
                want |= EventSet::IN;
            }
            if !c.to_host.is_empty() {
                want |= EventSet::OUT;
            }
            if bits(want) != c.interest {
                c.interest = bits(want);
                let ev = EpollEvent::new(want, c.token);
                if self
                    .epoll
                    .ctl(ControlOperation::Modify, c.stream.as_raw_fd(), ev)
                    .is_err()
                {
                    self.kill(key);
                    return;
                }
            }
        }
        if !c.queued && c.has_rx() {
            c.queued = true;
            self.ready.push_back(key);
        }
    }

    /// One packet from the guest (`data` is its payload, `hdr.len` bytes).
    pub fn handle_tx(&mut self, hdr: &Hdr, data: &[u8]) {
        if hdr.src_cid != self.cid || hdr.dst_cid != HOST_CID {
            debug!("vsock: dropping packet {}->{}", hdr.src_cid, hdr.dst_cid);
            self.stats.dropped += 1;
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            if hdr.op != OP_RST {
                self.push_ctrl(Hdr::reply(hdr, OP_RST));
            }
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        let Some(c) = self.conns.get_mut(&key) else {
            match hdr.op {
                OP_REQUEST => self.connect_guest(hdr),
                OP_RST => {}
                _ => self.push_ctrl(Hdr::reply(hdr, OP_RST)),
            }
            return;
        };
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = hdr.fwd_cnt;
        let ok = match hdr.op {
            OP_RESPONSE if c.state == State::Connecting => {
                let line = format!("OK {}\n", c.local_port);
                c.state = State::Established;
                c.deadline = None;
                // A fresh stream's send buffer takes a short line whole.
                matches!(c.stream.write(line.as_bytes()), Ok(n) if n == line.len())
            }
            OP_RW if c.state == State::Established && !c.guest_shut_send => {
                c.push_to_host(data) == HostIo::Ok
            }
            OP_CREDIT_UPDATE => true,
            OP_CREDIT_REQUEST => {
                c.pending |= pending::CREDIT_UPDATE;
                true
            }
            OP_SHUTDOWN => {
                if hdr.flags & SHUTDOWN_RCV != 0 {
                    c.guest_shut_rcv = true;
                }
                if hdr.flags & SHUTDOWN_SEND != 0 {
                    c.guest_shut_send = true;
                }
                if c.guest_shut_rcv && c.guest_shut_send {
                    c.state = State::Closing;
                } else if c.guest_shut_send && c.to_host.is_empty() {
                    let _ = c.stream.shutdown(std::net::Shutdown::Write);
                }
                true
            }
            OP_RST => {
                self.close(key);
                return;
            }
            _ => false,
        };
        if ok {
            self.touch(key);
        } else {
            self.kill(key);
        }
    }

    /// A guest REQUEST to host port `hdr.dst_port`: connect to `PATH_<port>`.
    fn connect_guest(&mut self, hdr: &Hdr) {
        if self.connections() >= self.max_conns {
            self.stats.refused += 1;
            self.push_ctrl(Hdr::reply(hdr, OP_RST));
            return;
        }
        let mut path = self.path.clone().into_os_string();
        path.push(format!("_{}", hdr.dst_port));
        let stream = match super::host::connect_nonblocking(path.as_ref()) {
            Ok(s) => s,
            Err(e) => {
                debug!("vsock: guest connect to {path:?}: {e}");
                self.push_ctrl(Hdr::reply(hdr, OP_RST));
                return;
            }
        };
        let token = self.token();
        if self
            .epoll
            .ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(EventSet::empty(), token),
            )
            .is_err()
        {
            self.push_ctrl(Hdr::reply(hdr, OP_RST));
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        let mut c = Conn::new(stream, token, hdr.dst_port, hdr.src_port, self.cid);
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = hdr.fwd_cnt;
        c.pending |= pending::RESPONSE;
        self.conns.insert(key, c);
        self.tokens.insert(token, key);
        self.touch(key);
    }

    /// The next packet for the guest, with at most `room` bytes of payload.
    pub fn pop_rx(&mut self, room: usize) -> Option<(Hdr, Vec<u8>)> {
        if let Some(h) = self.ctrl.pop_front() {
            return Some((h, Vec::new()));
        }
        while let Some(key) = self.ready.pop_front() {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            c.queued = false;
            let credit = c.peer_credit() as usize;
            let out = if c.pending & pending::REQUEST != 0 {
                c.pending &= !pending::REQUEST;
                Some((c.hdr(OP_REQUEST), Vec::new()))
            } else if c.pending & pending::RESPONSE != 0 {
                c.pending &= !pending::RESPONSE;
                Some((c.hdr(OP_RESPONSE), Vec::new()))
            } else if c.host_data_left() > 0 && credit > 0 && room > 0 {
                let n = c.host_data_left().min(room).min(credit);
                let data = c.from_host[c.from_host_off..c.from_host_off + n].to_vec();
                c.from_host_off += n;
                c.rx_cnt = c.rx_cnt.wrapping_add(n as u32);
                if c.host_data_left() == 0 {
                    c.from_host.clear();
                    c.from_host_off = 0;
                }
                let mut h = c.hdr(OP_RW);
                h.len = n as u32;
                Some((h, data))
            } else if c.pending & pending::CREDIT_UPDATE != 0 {
                Some((c.hdr(OP_CREDIT_UPDATE), Vec::new()))
            } else if c.pending & pending::SHUTDOWN != 0 && c.host_data_left() == 0 {
                c.pending &= !pending::SHUTDOWN;
                let mut h = c.hdr(OP_SHUTDOWN);
                h.flags = SHUTDOWN_SEND;
                Some((h, Vec::new()))
            } else {
                None
            };
            if out.is_some() {
                // Every packet carries fwd_cnt: no separate update is due.
                c.pending &= !pending::CREDIT_UPDATE;
            }
            self.touch(key);
            if out.is_some() {
                return out;
            }
        }
        None
    }

    /// Handles readiness of the listener, a host client or a connection.
    pub fn handle_event(&mut self, token: u64, ev: EventSet) {
        if token == LISTENER_TOKEN {
            self.accept();
        } else if self.clients.contains_key(&token) {
            self.read_connect_line(token);
        } else if let Some(&key) = self.tokens.get(&token) {
            self.conn_event(key, ev);
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("vsock: accept on {}: {e}", self.path.display());
                    return;
                }
            };
            if self.connections() >= self.max_conns {
                self.stats.refused += 1;
                continue; // dropped: the client sees the connection closed
            }
            let token = self.token();
            if stream.set_nonblocking(true).is_err()
                || self
                    .epoll
                    .ctl(
                        ControlOperation::Add,
                        stream.as_raw_fd(),
                        EpollEvent::new(EventSet::IN, token),
                    )
                    .is_err()
            {
                continue;
            }
            let deadline = Instant::now() + CONNECT_TIMEOUT;
            self.clients.insert(
                token,
                HostClient {
                    stream,
                    line: Vec::new(),
                    deadline,
                },
            );
        }
    }

    fn drop_client(&mut self, token: u64) -> Option<HostClient> {
        let c = self.clients.remove(&token)?;
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            c.stream.as_raw_fd(),
            EpollEvent::default(),
        );
        Some(c)
    }

    fn read_connect_line(&mut self, token: u64) {
        let Some(cl) = self.clients.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; MAX_LINE];
        let room = MAX_LINE - cl.line.len();
        match cl.stream.read(&mut buf[..room]) {
            Ok(0) => {
                self.drop_client(token);
                return;
            }
            Ok(n) => cl.line.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => return,
            Err(_) => {
                self.drop_client(token);
                return;
            }
        }
        let Some(nl) = cl.line.iter().position(|b| *b == b'\n') else {
            if cl.line.len() >= MAX_LINE {
                self.drop_client(token);
            }
            return;
        };
        let Some(cl) = self.drop_client(token) else {
            return;
        };
        let port = parse_connect(&cl.line[..nl]);
        let Some(port) = port else {
            let mut s = cl.stream;
            let _ = s.write(b"ERR invalid command\n");
            return;
        };
        let local = self.alloc_port(port);
        let token = self.token();
        if self
            .epoll
            .ctl(
                ControlOperation::Add,
                cl.stream.as_raw_fd(),
                EpollEvent::new(EventSet::empty(), token),
            )
            .is_err()
        {
            return;
        }
        let mut c = Conn::new(cl.stream, token, local, port, self.cid);
        c.state = State::Connecting;
        c.pending |= pending::REQUEST;
        c.deadline = Some(Instant::now() + CONNECT_TIMEOUT);
        c.from_host = cl.line[nl + 1..].to_vec();
        let key = (local, port);
        self.conns.insert(key, c);
        self.tokens.insert(token, key);
        self.touch(key);
    }

    fn alloc_port(&mut self, peer: u32) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(p, peer)) {
                return p;
            }
        }
    }

    fn conn_event(&mut self, key: Key, ev: EventSet) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let gone = ev.intersects(EventSet::HANG_UP | EventSet::ERROR);
        if c.state == State::Connecting {
            if gone {
                self.kill(key); // the client gave up: cancel the request
            }
            return;
        }
        if (ev.contains(EventSet::OUT) || gone)
            && !c.to_host.is_empty()
            && c.flush() == HostIo::Broken
        {
            self.kill(key);
            return;
        }
        if ev.contains(EventSet::IN) && c.read_host() == HostIo::Broken {
            self.kill(key);
            return;
        }
        if gone {
            // Level-triggered HUP would wake the loop forever: leave the set,
            // and read what is left as the guest's credit allows (`touch`).
            c.hup = true;
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
            if !c.to_host.is_empty() {
                self.kill(key);
                return;
            }
        }
        self.touch(key);
    }

    /// Gives up on host clients and guest RESPONSEs that took too long.
    pub fn sweep(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in late {
            self.drop_client(t);
        }
        let late: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for k in late {
            self.kill(k);
        }
    }
}

/// `CONNECT <port>` (without the newline; a trailing `\r` is allowed).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let rest = line.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    rest.trim().parse().ok()
}
