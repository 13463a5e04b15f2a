//! The vhost-user server: protocol handshake with vhost's frontend, then a FUSE request
//! through a vring in memory shared over the socket, the way QEMU drives it.

use std::fs;
use std::mem::size_of;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{EntryOut, Opcode, OutHeader, ROOT_ID};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap, GuestRegionMmap, MmapRegion,
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
    let socket = dir.path().join("fs.sock");
    let dev = device(dir.path());
    let handle = serve_vhost_user(dev.clone(), &socket).unwrap();

    // Guest memory backed by a file, shared with the backend like QEMU's memfd.
    let file = tempfile::tempfile().unwrap();
    file.set_len(MEM_SIZE).unwrap();
    let region = MmapRegion::from_file(FileOffset::new(file, 0), MEM_SIZE as usize).unwrap();
    let region = GuestRegionMmap::new(region, GuestAddress(0)).unwrap();
    let info = VhostUserMemoryRegionInfo::from_guest_region(&region).unwrap();
    let mem = GuestMemoryMmap::from_regions(vec![region]).unwrap();
    let mut drv = Driver::new(&mem);

    let mut fe = Frontend::connect(&socket, FsDevice::NUM_QUEUES as u64).unwrap();
    handshake(&mut fe, &dev);
    fe.set_mem_table(&[info]).unwrap();
    let host = |gpa: GuestAddress| mem.get_host_address(gpa).unwrap() as u64;
    let request_queue = 1;
    fe.set_vring_num(request_queue, QUEUE_LEN).unwrap();
    fe.set_vring_addr(
        request_queue,
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
    fe.set_vring_base(request_queue, 0).unwrap();
    let call = EventFd::new(EFD_NONBLOCK).unwrap();
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    fe.set_vring_call(request_queue, &call).unwrap();
    fe.set_vring_kick(request_queue, &kick).unwrap();
    fe.set_vring_enable(request_queue, true).unwrap();

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
