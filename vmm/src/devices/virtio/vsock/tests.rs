//! The device over test guest memory: a mock driver puts packets on the
//! transmit queue and receive buffers on the receive queue, real Unix
//! sockets play the host side.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::conn::BUF_ALLOC;
use super::packet::*;
use super::{VsockConfig, VsockDevice, GUEST_CID, HOST_CID};

const QLEN: u16 = 64;
const SLOT: u64 = 0x1_1000;

/// One mock queue: descriptor slot `i` (mod QLEN) owns the buffer at `base + i * SLOT`.
struct MockQ<'a> {
    vq: MockSplitQueue<'a, GuestMemoryMmap>,
    q: Queue,
    base: u64,
    next: u16,
    used_seen: u16,
}

impl<'a> MockQ<'a> {
    fn new(mem: &'a GuestMemoryMmap, ring: u64, base: u64) -> Self {
        let vq = MockSplitQueue::create(mem, GuestAddress(ring), QLEN);
        let q = vq.create_queue().unwrap();
        Self {
            vq,
            q,
            base,
            next: 0,
            used_seen: 0,
        }
    }

    /// Adds a chain of (len, writable) descriptors, each with its own buffer.
    fn add(&mut self, mem: &GuestMemoryMmap, descs: &[(u32, bool)]) -> Vec<u64> {
        let head = self.next;
        let mut addrs = Vec::new();
        for (i, (len, write)) in descs.iter().enumerate() {
            let slot = (head + i as u16) % QLEN;
            let addr = self.base + u64::from(slot) * SLOT;
            let mut flags = if *write { VRING_DESC_F_WRITE as u16 } else { 0 };
            let mut next = 0;
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
                next = (slot + 1) % QLEN;
            }
            let d = RawDescriptor::from(SplitDescriptor::new(addr, *len, flags, next));
            self.vq.desc_table().store(slot, d).unwrap();
            addrs.push(addr);
        }
        self.next = (head + descs.len() as u16) % QLEN;
        let idx: u16 = self.vq.avail().idx().load();
        let at = self
            .vq
            .avail_addr()
            .unchecked_add(4 + 2 * u64::from(idx % QLEN));
        mem.write_obj(head, at).unwrap();
        self.vq.avail().idx().store(idx.wrapping_add(1));
        addrs
    }

    /// Used elements since the last call: (head, len).
    fn used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u16, u32)> {
        let idx: u16 = self.vq.used().idx().load();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = self
                .vq
                .used_addr()
                .unchecked_add(4 + 8 * u64::from(self.used_seen % QLEN));
            let id: u32 = mem.read_obj(at).unwrap();
            let len: u32 = mem.read_obj(at.unchecked_add(4)).unwrap();
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

struct Guest<'a> {
    mem: &'a GuestMemoryMmap,
    dev: VsockDevice,
    rx: MockQ<'a>,
    tx: MockQ<'a>,
    _dir: tempfile::TempDir,
    path: PathBuf,
    rx_outstanding: usize,
    rx_addrs: std::collections::HashMap<u16, Vec<u64>>,
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x200_0000)]).unwrap()
}

fn stream_hdr(src_port: u32, dst_port: u32, op: u16) -> Hdr {
    Hdr {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: BUF_ALLOC,
        ..Default::default()
    }
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemoryMmap, max_connections: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let mut cfg = VsockConfig::new(path.clone());
        cfg.max_connections = max_connections;
        let dev = VsockDevice::new(cfg).unwrap();
        Self {
            mem,
            dev,
            rx: MockQ::new(mem, 0x1000, 0x10_0000),
            tx: MockQ::new(mem, 0x8000, 0x90_0000),
            _dir: dir,
            path,
            rx_outstanding: 0,
            rx_addrs: Default::default(),
        }
    }

    fn port_path(&self, port: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!("_{port}"));
        p.into()
    }

    /// Sends one packet (header and payload in separate descriptors).
    fn send(&mut self, hdr: Hdr, data: &[u8]) {
        let mut h = hdr;
        h.len = data.len() as u32;
        let descs: Vec<(u32, bool)> = if data.is_empty() {
            vec![(HDR_LEN as u32, false)]
        } else {
            vec![(HDR_LEN as u32, false), (data.len() as u32, false)]
        };
        let addrs = self.tx.add(self.mem, &descs);
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(addrs[0]))
            .unwrap();
        if !data.is_empty() {
            self.mem.write_slice(data, GuestAddress(addrs[1])).unwrap();
        }
        self.dev.process_tx(self.mem, &mut self.tx.q).unwrap();
        assert_eq!(self.tx.used(self.mem).len(), 1, "the chain is given back");
    }

    /// Offers receive buffers (header + 4 KiB), processes the queue, returns packets.
    fn recv(&mut self, buffers: usize) -> Vec<(Hdr, Vec<u8>)> {
        let mut addrs = std::mem::take(&mut self.rx_addrs);
        for _ in 0..buffers {
            let head = self.rx.next;
            let a = self
                .rx
                .add(self.mem, &[(HDR_LEN as u32, true), (4096, true)]);
            addrs.insert(head, a);
        }
        self.dev.process_rx(self.mem, &mut self.rx.q).unwrap();
        let used = self.rx.used(self.mem);
        self.rx_outstanding = self.rx_outstanding + buffers - used.len();
        // Buffers not used stay available for the next call.
        let mut out = Vec::new();
        for (head, len) in used {
            let a = addrs.remove(&head).expect("a buffer the driver offered");
            let mut hb = [0u8; HDR_LEN];
            self.mem.read_slice(&mut hb, GuestAddress(a[0])).unwrap();
            let h = Hdr::from_bytes(&hb);
            assert_eq!(len as usize, HDR_LEN + h.len as usize);
            let mut data = vec![0u8; h.len as usize];
            self.mem.read_slice(&mut data, GuestAddress(a[1])).unwrap();
            out.push((h, data));
        }
        self.rx_addrs = addrs;
        out
    }

    /// Polls the receive queue until `pred` holds for what arrived, or panics.
    fn recv_until(
        &mut self,
        what: &str,
        pred: impl Fn(&[(Hdr, Vec<u8>)]) -> bool,
    ) -> Vec<(Hdr, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        loop {
            let top_up = 8usize.saturating_sub(self.rx_outstanding);
            got.extend(self.recv(top_up));
            if pred(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {got:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn ops(pkts: &[(Hdr, Vec<u8>)]) -> Vec<u16> {
    pkts.iter().map(|(h, _)| h.op).collect()
}

fn listen(path: &Path) -> UnixListener {
    UnixListener::bind(path).unwrap()
}

#[test]
fn guest_request_to_a_listening_host_socket_gets_a_response_and_data_flows() {
    let mem = memory();
    let mut g = Guest::new(&mem, 16);
    let listener = listen(&g.port_path(6000));
    g.send(stream_hdr(1234, 6000, OP_REQUEST), &[]);
    let got = g.recv_until("RESPONSE", |p| !p.is_empty());
    assert_eq!(ops(&got), vec![OP_RESPONSE]);
    let h = got[0].0;
    assert_eq!(
        (h.src_cid, h.dst_cid, h.src_port, h.dst_port),
        (HOST_CID, GUEST_CID, 6000, 1234)
    );
    assert_eq!(h.buf_alloc, BUF_ALLOC);
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    // Guest to host.
    g.send(stream_hdr(1234, 6000, OP_RW), b"hello host");
    let mut buf = [0u8; 10];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello host");

    // Host to guest, split across 4 KiB receive buffers.
    let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    host.write_all(&data).unwrap();
    let got = g.recv_until("10000 bytes", |p| {
        p.iter().map(|(_, d)| d.len()).sum::<usize>() >= 10_000
    });
    assert!(got.iter().all(|(h, _)| h.op == OP_RW && h.dst_port == 1234));
    let joined: Vec<u8> = got.iter().flat_map(|(_, d)| d.clone()).collect();
    assert_eq!(joined, data);

    // Host EOF reaches the guest as SHUTDOWN(SEND); the guest's close gets an RST.
    drop(host);
    let got = g.recv_until("SHUTDOWN", |p| !p.is_empty());
    assert_eq!(ops(&got), vec![OP_SHUTDOWN]);
    assert_eq!(got[0].0.flags, SHUTDOWN_SEND);
    let mut sd = stream_hdr(1234, 6000, OP_SHUTDOWN);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(sd, &[]);
    let got = g.recv_until("RST", |p| !p.is_empty());
    assert_eq!(ops(&got), vec![OP_RST]);
    assert_eq!(g.dev.connections(), 0);
}

#[test]
fn credit_is_respected_and_announced() {
    let mem = memory();
    let mut g = Guest::new(&mem, 16);
    let listener = listen(&g.port_path(7000));
    // The guest announces only 8 KiB of receive buffer.
    let mut req = stream_hdr(99, 7000, OP_REQUEST);
    req.buf_alloc = 8192;
    g.send(req, &[]);
    assert_eq!(
        ops(&g.recv_until("RESPONSE", |p| !p.is_empty())),
        vec![OP_RESPONSE]
    );
    let (mut host, _) = listener.accept().unwrap();
    host.write_all(&vec![7u8; 20_000]).unwrap();
    let got = g.recv_until("8 KiB", |p| {
        p.iter().map(|(_, d)| d.len()).sum::<usize>() >= 8192
    });
    std::thread::sleep(Duration::from_millis(100));
    let more = g.recv(4);
    let total: usize = got.iter().chain(more.iter()).map(|(_, d)| d.len()).sum();
    assert_eq!(total, 8192, "no byte past the guest's credit");
    // The guest consumed it all: a CREDIT_UPDATE lets the rest through.
    let mut cu = stream_hdr(99, 7000, OP_CREDIT_UPDATE);
    cu.buf_alloc = 8192;
    cu.fwd_cnt = 8192;
    g.send(cu, &[]);
    let got = g.recv_until("the next 8 KiB", |p| {
        p.iter().map(|(_, d)| d.len()).sum::<usize>() >= 8192
    });
    assert!(got.iter().all(|(h, _)| h.op == OP_RW));
    cu.fwd_cnt = 16384;
    g.send(cu, &[]);
    g.recv_until("the last 3616 bytes", |p| {
        p.iter().map(|(_, d)| d.len()).sum::<usize>() >= 3616
    });

    // Guest to host: forwarding a quarter of BUF_ALLOC triggers a CREDIT_UPDATE.
    let chunk = vec![1u8; 32 * 1024];
    for _ in 0..2 {
        g.send(stream_hdr(99, 7000, OP_RW), &chunk);
    }
    let mut sink = vec![0u8; 64 * 1024];
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    host.read_exact(&mut sink).unwrap();
    let got = g.recv_until("credit update", |p| {
        p.iter().any(|(h, _)| h.fwd_cnt >= 64 * 1024)
    });
    assert_eq!(ops(&got), vec![OP_CREDIT_UPDATE]);
    // A CREDIT_REQUEST is answered.
    g.send(stream_hdr(99, 7000, OP_CREDIT_REQUEST), &[]);
    let got = g.recv_until("credit update", |p| {
        p.iter().any(|(h, _)| h.op == OP_CREDIT_UPDATE)
    });
    assert_eq!(got.last().unwrap().0.fwd_cnt, 64 * 1024);
    // Sending past what the host takes plus BUF_ALLOC resets the connection.
    for _ in 0..20 {
        g.send(stream_hdr(99, 7000, OP_RW), &vec![2u8; 64 * 1024]);
    }
    assert!(ops(&g.recv_until("RST", |p| p.iter().any(|(h, _)| h.op == OP_RST))).contains(&OP_RST));
}

#[test]
fn unknown_ports_and_unknown_connections_get_rst() {
    let mem = memory();
    let mut g = Guest::new(&mem, 16);
    g.send(stream_hdr(5, 4444, OP_REQUEST), &[]); // nobody listens on PATH_4444
    g.send(stream_hdr(5, 4445, OP_RW), b"x"); // no such connection
    let mut dgram = stream_hdr(5, 4446, OP_REQUEST);
    dgram.type_ = 2; // SEQPACKET: not served
    g.send(dgram, &[]);
    g.send(stream_hdr(5, 4447, OP_RST), &[]); // an RST is never answered
    let got = g.recv_until("3 RSTs", |p| p.len() >= 3);
    assert_eq!(ops(&got), vec![OP_RST; 3]);
    assert_eq!(got[0].0.dst_port, 5);
    assert_eq!(got[0].0.src_port, 4444);
    std::thread::sleep(Duration::from_millis(50));
    assert!(g.recv(4).is_empty());
}

#[test]
fn malformed_packets_are_dropped_without_panic() {
    let mem = memory();
    let mut g = Guest::new(&mem, 16);
    // A header descriptor shorter than the header.
    g.tx.add(&mem, &[(HDR_LEN as u32 - 4, false)]);
    // A header announcing more payload than one packet may carry.
    let addrs = g.tx.add(&mem, &[(HDR_LEN as u32, false), (4096, false)]);
    let mut h = stream_hdr(1, 2, OP_RW);
    h.len = MAX_PKT_DATA + 1;
    mem.write_slice(&h.to_bytes(), GuestAddress(addrs[0]))
        .unwrap();
    // A payload descriptor shorter than `len`.
    let addrs = g.tx.add(&mem, &[(HDR_LEN as u32, false), (16, false)]);
    h.len = 4096;
    mem.write_slice(&h.to_bytes(), GuestAddress(addrs[0]))
        .unwrap();
    // A writable (device-to-driver) transmit descriptor.
    g.tx.add(&mem, &[(HDR_LEN as u32, true)]);
    // Wrong cids are dropped silently.
    let mut wrong = stream_hdr(1, 2, OP_REQUEST);
    wrong.src_cid = 77;
    let addrs = g.tx.add(&mem, &[(HDR_LEN as u32, false)]);
    mem.write_slice(&wrong.to_bytes(), GuestAddress(addrs[0]))
        .unwrap();
    g.dev.process_tx(&mem, &mut g.tx.q).unwrap();
    assert_eq!(g.tx.used(&mem).len(), 5, "every chain is given back");
    assert_eq!(g.dev.malformed_chains(), 4);
    assert_eq!(g.dev.stats().dropped, 1);
    // A read-only receive buffer is given back empty, and the device goes on.
    g.rx.add(&mem, &[(HDR_LEN as u32, false), (4096, false)]);
    g.send(stream_hdr(5, 4444, OP_REQUEST), &[]);
    g.dev.process_rx(&mem, &mut g.rx.q).unwrap();
    assert_eq!(g.rx.used(&mem), vec![(0, 0)]);
    let got = g.recv_until("RST", |p| !p.is_empty());
    assert_eq!(ops(&got), vec![OP_RST]);
}

#[test]
fn connections_past_the_cap_are_refused() {
    let mem = memory();
    let mut g = Guest::new(&mem, 4);
    let _l = listen(&g.port_path(8000));
    for port in 0..10 {
        g.send(stream_hdr(100 + port, 8000, OP_REQUEST), &[]);
    }
    let got = g.recv_until("10 replies", |p| p.len() >= 10);
    let responses = got.iter().filter(|(h, _)| h.op == OP_RESPONSE).count();
    let resets = got.iter().filter(|(h, _)| h.op == OP_RST).count();
    assert_eq!((responses, resets), (4, 6));
    assert_eq!(g.dev.connections(), 4);
    assert_eq!(g.dev.stats().refused, 6);
    // Host clients past the cap are closed at once.
    let mut c = UnixStream::connect(&g.path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(c.read(&mut b).unwrap(), 0);
}

#[test]
fn host_connect_gets_ok_or_is_closed() {
    let mem = memory();
    let mut g = Guest::new(&mem, 16);
    let mut c = UnixStream::connect(&g.path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"CONNECT 5000\n").unwrap();
    let got = g.recv_until("REQUEST", |p| !p.is_empty());
    let req = got[0].0;
    assert_eq!(
        (req.op, req.dst_port, req.dst_cid),
        (OP_REQUEST, 5000, GUEST_CID)
    );
    let mut resp = stream_hdr(5000, req.src_port, OP_RESPONSE);
    resp.buf_alloc = BUF_ALLOC;
    g.send(resp, &[]);
    let mut line = [0u8; 14];
    c.read_exact(&mut line).unwrap();
    assert_eq!(&line, format!("OK {}\n", req.src_port).as_bytes());
    c.write_all(b"ping").unwrap();
    let got = g.recv_until("ping", |p| !p.is_empty());
    assert_eq!(got[0].1, b"ping");

    // A guest that refuses: the client's connection is closed.
    let mut c2 = UnixStream::connect(&g.path).unwrap();
    c2.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c2.write_all(b"CONNECT 5001\n").unwrap();
    let got = g.recv_until("REQUEST", |p| !p.is_empty());
    g.send(stream_hdr(5001, got[0].0.src_port, OP_RST), &[]);
    let mut b = [0u8; 16];
    assert_eq!(c2.read(&mut b).unwrap(), 0);
    // Garbage instead of CONNECT gets an error line and a close.
    let mut c3 = UnixStream::connect(&g.path).unwrap();
    c3.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c3.write_all(b"HELLO\n").unwrap();
    let mut s = String::new();
    c3.read_to_string(&mut s).unwrap();
    assert!(s.starts_with("ERR"), "{s:?}");
    assert_eq!(super::muxer::parse_connect(b"CONNECT 42"), Some(42));
    assert_eq!(super::muxer::parse_connect(b"CONNECT x"), None);
}

#[test]
fn the_socket_file_is_removed_and_a_stale_one_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    // A stale socket (nobody listens) is replaced.
    drop(UnixListener::bind(&path).unwrap());
    let dev = VsockDevice::new(VsockConfig::new(path.clone())).unwrap();
    assert!(path.exists());
    // A live one is not taken over.
    assert!(matches!(
        VsockDevice::new(VsockConfig::new(path.clone())),
        Err(super::VsockError::InUse { .. })
    ));
    assert_eq!(dev.config_space(), 3u64.to_le_bytes());
    drop(dev);
    assert!(!path.exists(), "removed when the device ends");
    std::fs::write(&path, b"not a socket").unwrap();
    assert!(matches!(
        VsockDevice::new(VsockConfig::new(path.clone())),
        Err(super::VsockError::NotSocket { .. })
    ));
}

#[test]
fn a_file_at_the_path_after_a_clean_end_is_left_alone() {
    // The guard's drop removes the socket file; its watcher process must not
    // then unlink whatever comes next at the path, even a file with the
    // socket's inode number (ext4 reuses them): here, the very same inode,
    // linked back from a second name.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let keep = dir.path().join("keep");
    let _listener = UnixListener::bind(&path).unwrap();
    std::fs::hard_link(&path, &keep).unwrap();
    let guard = super::SocketGuard::new(&path);
    drop(guard);
    assert!(!path.exists(), "the drop removes the socket file");
    std::fs::rename(&keep, &path).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        path.exists(),
        "the watcher unlinked a file made after the drop"
    );
}

#[test]
fn a_device_reset_ends_every_connection() {
    let mem = memory();
    let mut g = Guest::new(&mem, 16);
    // One guest-initiated connection, established.
    let listener = listen(&g.port_path(6000));
    g.send(stream_hdr(1234, 6000, OP_REQUEST), &[]);
    g.recv_until("RESPONSE", |p| !p.is_empty());
    let (mut from_guest, _) = listener.accept().unwrap();
    // One host client that has not sent CONNECT yet.
    let mut pending = UnixStream::connect(&g.path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.dev.connections() < 2 {
        assert!(
            Instant::now() < deadline,
            "the host client was never accepted"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    crate::devices::virtio::VirtioDevice::reset(&g.dev);

    assert_eq!(g.dev.connections(), 0);
    for s in [&mut from_guest, &mut pending] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).unwrap(), 0, "the host side sees EOF");
    }
    // Nothing queued for the old driver reaches the new one, and the device
    // still serves new connections.
    assert!(g.recv(4).is_empty());
    g.send(stream_hdr(1235, 6000, OP_REQUEST), &[]);
    let got = g.recv_until("RESPONSE after reset", |p| !p.is_empty());
    assert_eq!(ops(&got), vec![OP_RESPONSE]);
}
