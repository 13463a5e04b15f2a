//! One connection: its host stream, state and both directions' credit.
//!
//! Guest to host: the guest may have at most [`BUF_ALLOC`] bytes in flight
//! beyond `fwd_cnt` (what reached the host stream); bytes the stream does not
//! take at once wait in `to_host`, which therefore never exceeds `BUF_ALLOC`.
//! Host to guest: hutch reads from the stream only while the guest has
//! credit (`peer_buf_alloc - (rx_cnt - peer_fwd_cnt)`) and `from_host` is
//! empty, so at most [`MAX_PKT_DATA`] bytes wait per connection.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::packet::{Hdr, MAX_PKT_DATA, TYPE_STREAM};
use super::HOST_CID;

/// Receive buffer hutch announces to the guest per connection.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Announce freed credit once this much was forwarded since the last announcement.
pub const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent (or to be sent), waiting for the guest's RESPONSE.
    Connecting,
    /// Data flows.
    Established,
    /// The guest closed (SHUTDOWN both ways); flushing `to_host`, then RST.
    Closing,
}

/// Control packets waiting to be sent to the guest.
pub mod pending {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const CREDIT_UPDATE: u8 = 4;
    pub const SHUTDOWN: u8 = 8;
}

/// What the host side of a stream did.
#[derive(Debug, PartialEq, Eq)]
pub enum HostIo {
    /// Nothing changed, or progress was made.
    Ok,
    /// The stream failed or the peer went away: reset the connection.
    Broken,
}

/// One vsock stream connection and its host-side Unix stream.
#[derive(Debug)]
pub struct Conn {
    pub stream: UnixStream,
    pub token: u64,
    /// The host-side port (`PATH_<local_port>`, or the port given in `OK`).
    pub local_port: u32,
    /// The guest's port.
    pub peer_port: u32,
    pub guest_cid: u64,
    pub state: State,
    pub pending: u8,
    /// Whether the connection is in the muxer's ready queue.
    pub queued: bool,
    /// Guest data not yet taken by the host stream.
    pub to_host: Vec<u8>,
    pub fwd_cnt: u32,
    pub fwd_reported: u32,
    /// The guest will send no more: shut the stream's write side once `to_host` drains.
    pub guest_shut_send: bool,
    /// The guest will receive no more.
    pub guest_shut_rcv: bool,
    /// Host data not yet put into receive buffers, and how much of it was sent.
    pub from_host: Vec<u8>,
    pub from_host_off: usize,
    pub rx_cnt: u32,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// The host stream reached end of file.
    pub host_eof: bool,
    /// The host stream hung up (no longer in the epoll set).
    pub hup: bool,
    /// Events the stream is registered for in the muxer's epoll set.
    pub interest: u32,
    /// Give up waiting for the guest's RESPONSE at this instant.
    pub deadline: Option<Instant>,
}

impl Conn {
    pub fn new(stream: UnixStream, token: u64, local_port: u32, peer_port: u32, cid: u64) -> Self {
        Self {
            stream,
            token,
            local_port,
            peer_port,
            guest_cid: cid,
            state: State::Established,
            pending: 0,
            queued: false,
            to_host: Vec::new(),
            fwd_cnt: 0,
            fwd_reported: 0,
            guest_shut_send: false,
            guest_shut_rcv: false,
            from_host: Vec::new(),
            from_host_off: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            host_eof: false,
            hup: false,
            interest: 0,
            deadline: None,
        }
    }

    /// Bytes the guest can still take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Host data waiting for receive buffers.
    pub fn host_data_left(&self) -> usize {
        self.from_host.len() - self.from_host_off
    }

    /// Whether to read more from the host stream now.
    pub fn wants_read(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && !self.guest_shut_rcv
            && self.host_data_left() == 0
            && self.peer_credit() > 0
    }

    /// Whether a packet for the guest is ready now (control or data).
    pub fn has_rx(&self) -> bool {
        self.pending & !pending::SHUTDOWN != 0
            || (self.host_data_left() > 0 && self.peer_credit() > 0)
            || (self.pending & pending::SHUTDOWN != 0 && self.host_data_left() == 0)
    }

    /// A header from this connection to the guest, carrying current credit.
    pub fn hdr(&mut self, op: u16) -> Hdr {
        self.fwd_reported = self.fwd_cnt;
        Hdr {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
            ..Default::default()
        }
    }

    /// Reads host data (up to the guest's credit and one packet's worth).
    pub fn read_host(&mut self) -> HostIo {
        if !self.wants_read() {
            return HostIo::Ok;
        }
        let want = self.peer_credit().min(MAX_PKT_DATA) as usize;
        self.from_host.clear();
        self.from_host_off = 0;
        self.from_host.resize(want, 0);
        loop {
            match self.stream.read(&mut self.from_host) {
                Ok(0) => {
                    self.from_host.clear();
                    self.host_eof = true;
                    self.pending |= pending::SHUTDOWN;
                    return HostIo::Ok;
                }
                Ok(n) => {
                    self.from_host.truncate(n);
                    return HostIo::Ok;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.from_host.clear();
                    return HostIo::Ok;
                }
                Err(_) => {
                    self.from_host.clear();
                    return HostIo::Broken;
                }
            }
        }
    }

    /// Takes guest data for the host stream; `Broken` when the guest
    /// overran its credit or the stream failed.
    pub fn push_to_host(&mut self, data: &[u8]) -> HostIo {
        if self.to_host.len() + data.len() > BUF_ALLOC as usize {
            return HostIo::Broken;
        }
        self.to_host.extend_from_slice(data);
        self.flush()
    }

    /// Writes what `to_host` holds as far as the stream takes it.
    pub fn flush(&mut self) -> HostIo {
        let mut done = 0;
        while done < self.to_host.len() {
            match self.stream.write(&self.to_host[done..]) {
                Ok(0) => return HostIo::Broken,
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return HostIo::Broken,
            }
        }
        self.to_host.drain(..done);
        self.fwd_cnt = self.fwd_cnt.wrapping_add(done as u32);
        if self.fwd_cnt.wrapping_sub(self.fwd_reported) >= CREDIT_UPDATE_THRESHOLD {
            self.pending |= pending::CREDIT_UPDATE;
        }
        if self.to_host.is_empty() && self.guest_shut_send {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        HostIo::Ok
    }
}
