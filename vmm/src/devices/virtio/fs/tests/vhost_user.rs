//! The vhost-user server: protocol handshake with vhost's frontend, then a FUSE request
//! through a vring in memory shared over the socket, the way QEMU drives it.

use std::fs;
use std::mem::size_of;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{EntryOut, ForgetIn, Opcode, OutHeader, ROOT_ID};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{
    ByteValued, FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap, GuestRegionMmap, MmapRegion,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::fuse_driver::{Driver, MEM_SIZE, QUEUE_LEN};
use crate::devices::virtio::fs::{
    serve_vhost_user, FsDevice, ShareConfig, SharePolicy, VhostUserHandle,
};

const DEADLINE: Duration = Duration::from_secs(10);

fn device(dir: &Path) -> Arc<FsDevice> {
    Arc::new(
        FsDevice::new(ShareConfig {
            tag: "vufs".into(),
            source: dir.into(),
            policy: SharePolicy::Workspace,
        })
        .unwrap(),
    )
}

fn join_within_deadline(handle: VhostUserHandle) {
    let start = Instant::now();
    while !handle.is_finished() {
        assert!(start.elapsed() < DEADLINE, "vhost-user thread did not end");
        thread::sleep(Duration::from_millis(10));
    }
    handle.join().unwrap();
}

/// GET_FEATURES, SET_OWNER, SET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM.
fn handshake(fe: &mut Frontend, dev: &FsDevice) {
    let features = fe.get_features().unwrap();
    assert_eq!(features & dev.device_features(), dev.device_features());
    assert_ne!(
        features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
        0
    );
    fe.set_owner().unwrap();
    fe.set_features(features).unwrap();
    let proto = fe.get_protocol_features().unwrap();
    assert!(proto.contains(VhostUserProtocolFeatures::MQ), "{proto:?}");
    fe.set_protocol_features(proto).unwrap();
    assert_eq!(fe.get_queue_num().unwrap(), FsDevice::NUM_QUEUES as u64);
}

#[test]
fn socket_is_bound_on_return_and_speaks_vhost_user() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fs.sock");
    let dev = device(dir.path());
    let handle = serve_vhost_user(dev.clone(), &socket).unwrap();
    assert!(socket.exists());

    let mut fe = Frontend::connect(&socket, FsDevice::NUM_QUEUES as u64).unwrap();
    handshake(&mut fe, &dev);
    drop(fe);
    join_within_deadline(handle);
    assert!(!socket.exists(), "socket file left behind");
}

#[test]
fn fuse_request_through_a_shared_memory_vring() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("hello.txt"), b"hi").unwrap();
    let (_dev, handle, mut fe, mem) = connected(dir.path());
    let mut drv = Driver::new(&mem);
    let (call, kick) = enable_vring(&mut fe, &mem, &drv, FsDevice::REQUEST_QUEUE);

    let init = drv.init();
    let name = c"hello.txt";
    let look = drv.request(
        Opcode::Lookup,
        ROOT_ID,
        name.to_bytes_with_nul(),
        &[(size_of::<OutHeader>() + size_of::<EntryOut>()) as u32],
    );
    kick.write(1).unwrap();
    let start = Instant::now();
    while call.read().is_err() {
        assert!(start.elapsed() < DEADLINE, "no used-buffer notification");
        thread::sleep(Duration::from_millis(5));
    }
    // Both chains may take more than one notification to show up.
    let mut used = drv.used();
    while used.len() < 2 {
        assert!(start.elapsed() < DEADLINE, "only {used:?} used");
        thread::sleep(Duration::from_millis(5));
        used.extend(drv.used());
    }
    assert_eq!(used[0].0, u32::from(init.head));
    assert_eq!(used[1].0, u32::from(look.head));
    let (header, _) = drv.reply(&init);
    assert_eq!(header.error, 0);
    let (header, body) = drv.reply(&look);
    assert_eq!(header.error, 0);
    let entry: EntryOut = Driver::parse(&body);
    assert_eq!(entry.attr.size, 2);

    drop(fe);
    join_within_deadline(handle);
}

/// A workspace share of `dir` served on a socket in it, a frontend connected
/// and past the handshake (EVENT_IDX acked), and guest memory shared with
/// the backend: (device, server thread, frontend, memory).
fn connected(dir: &Path) -> (Arc<FsDevice>, VhostUserHandle, Frontend, GuestMemoryMmap) {
    let socket = dir.join("fs.sock");
    let dev = device(dir);
    let handle = serve_vhost_user(dev.clone(), &socket).unwrap();
    let (mem, info) = shared_memory();
    let mut fe = Frontend::connect(&socket, FsDevice::NUM_QUEUES as u64).unwrap();
    handshake(&mut fe, &dev);
    fe.set_mem_table(&[info]).unwrap();
    (dev, handle, fe, mem)
}

/// Guest memory backed by a file, shared with the backend like QEMU's memfd.
fn shared_memory() -> (GuestMemoryMmap, VhostUserMemoryRegionInfo) {
    let file = tempfile::tempfile().unwrap();
    file.set_len(MEM_SIZE).unwrap();
    let region = MmapRegion::from_file(FileOffset::new(file, 0), MEM_SIZE as usize).unwrap();
    let region = GuestRegionMmap::new(region, GuestAddress(0)).unwrap();
    let info = VhostUserMemoryRegionInfo::from_guest_region(&region).unwrap();
    (GuestMemoryMmap::from_regions(vec![region]).unwrap(), info)
}

/// Points vring `index` at `drv`'s rings and enables it; returns its (call, kick).
fn enable_vring(
    fe: &mut Frontend,
    mem: &GuestMemoryMmap,
    drv: &Driver<'_>,
    index: usize,
) -> (EventFd, EventFd) {
    let host = |gpa: GuestAddress| mem.get_host_address(gpa).unwrap() as u64;
    fe.set_vring_num(index, QUEUE_LEN).unwrap();
    fe.set_vring_addr(
        index,
        &VringConfigData {
            queue_max_size: FsDevice::QUEUE_SIZE,
            queue_size: QUEUE_LEN,
            flags: 0,
            desc_table_addr: host(drv.vq.desc_table_addr()),
            used_ring_addr: host(drv.vq.used_addr()),
            avail_ring_addr: host(drv.vq.avail_addr()),
            log_addr: None,
        },
    )
    .unwrap();
    fe.set_vring_base(index, 0).unwrap();
    let call = EventFd::new(EFD_NONBLOCK).unwrap();
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    fe.set_vring_call(index, &call).unwrap();
    fe.set_vring_kick(index, &kick).unwrap();
    fe.set_vring_enable(index, true).unwrap();
    (call, kick)
}

/// Waits (10 s at most) until `what` holds.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "{what}");
        thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn forgets_are_batched_and_the_stragglers_drained_by_a_timer() {
    let dir = tempfile::tempdir().unwrap();
    // The handshake acks EVENT_IDX, which batching needs.
    let (_dev, handle, mut fe, mem) = connected(dir.path());
    let mut drv = Driver::new(&mem);
    let (call, kick) = enable_vring(&mut fe, &mem, &drv, FsDevice::HIPRIO_QUEUE);
    let forget = ForgetIn { nlookup: 1 };
    let forgets = |drv: &mut Driver<'_>, n: usize| {
        for _ in 0..n {
            drv.request(Opcode::Forget, ROOT_ID, forget.as_slice(), &[]);
        }
    };

    // A first FORGET, kicked: answered, and the driver may now queue 31
    // more (batch_for(256) = 32) before it kicks again.
    forgets(&mut drv, 1);
    kick.write(1).unwrap();
    let mut used = 0;
    eventually("the kicked FORGET is answered", || {
        used += drv.used().len();
        used == 1
    });
    eventually("avail_event is a batch ahead", || drv.avail_event() == 32);
    assert!(call.read().is_ok(), "the driver asked to hear of it");

    // Three more, not kicked (below the batch): the timer drains them.
    drv.set_used_event(1);
    let queued = Instant::now();
    forgets(&mut drv, 3);
    eventually("the timer drains the unkicked FORGETs", || {
        used += drv.used().len();
        used == 4
    });
    eprintln!("drained after {:?}", queued.elapsed());
    eventually("and interrupts for them", || call.read().is_ok());
    // Once FORGETs stop, a quiet timer period makes the next one kick again.
    eventually("avail_event back at the next chain", || {
        drv.avail_event() == 4
    });

    drop(fe);
    join_within_deadline(handle);
}
