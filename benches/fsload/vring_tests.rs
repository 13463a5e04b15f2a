use super::*;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

#[test]
fn need_event_matches_virtio_ring() {
    // The device asked to hear when index 5 is passed.
    assert!(need_event(5, 6, 5));
    assert!(need_event(5, 9, 3));
    assert!(!need_event(5, 5, 3), "index 5 not passed yet");
    assert!(!need_event(5, 8, 6), "already passed before this batch");
    // Across the u16 wrap.
    assert!(need_event(u16::MAX, 0, u16::MAX));
    assert!(need_event(u16::MAX, 2, 65534));
    assert!(!need_event(1, 0, 65534));
}

#[test]
fn descriptors_encode_and_chain() {
    let mut d = [Desc::new(0x1000, 40, false), Desc::new(0x2000, 16, true)];
    chain(&mut d, 7);
    assert_eq!((d[0].flags, d[0].next), (F_NEXT, 8));
    assert_eq!((d[1].flags, d[1].next), (F_WRITE, 0));
    let b = d[0].encode();
    assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), 0x1000);
    assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), 40);
    assert_eq!(u16::from_le_bytes([b[12], b[13]]), F_NEXT);
    assert_eq!(u16::from_le_bytes([b[14], b[15]]), 8);
}

#[test]
fn rings_are_laid_out_in_order() {
    let q = SplitQueue::new(0x4000, 128, true);
    assert_eq!((q.desc, q.avail), (0x4000, 0x4000 + 16 * 128));
    assert_eq!(q.used, 0x4000 + 4096, "used ring page-aligned");
    assert_eq!(queue_bytes(128), 8192);
    assert_eq!(align(4097, 4096), 8192);
}

#[test]
fn publish_kicks_only_when_the_device_asks() {
    let mem = memory();
    let mut q = SplitQueue::new(0, 8, true);
    q.push(&mem, 3).unwrap();
    // avail_event 0 (zeroed): moving 0 -> 1 crosses it.
    assert!(q.publish(&mem).unwrap());
    let idx: u16 = mem
        .load(GuestAddress(q.avail + 2), Ordering::Acquire)
        .unwrap();
    let head: u16 = mem.read_obj(GuestAddress(q.avail + 4)).unwrap();
    assert_eq!((idx, head), (1, 3));
    assert!(!q.publish(&mem).unwrap(), "nothing new");
    // The device is busy and asked for avail_event 5: 1 -> 3 does not cross it.
    mem.write_obj(5u16, GuestAddress(q.used + 4 + 8 * 8))
        .unwrap();
    q.push(&mem, 0).unwrap();
    q.push(&mem, 1).unwrap();
    assert!(!q.publish(&mem).unwrap());

    let mut plain = SplitQueue::new(0x8000, 8, false);
    plain.push(&mem, 0).unwrap();
    assert!(plain.publish(&mem).unwrap());
    mem.write_obj(1u16, GuestAddress(plain.used)).unwrap(); // VRING_USED_F_NO_NOTIFY
    plain.push(&mem, 1).unwrap();
    assert!(!plain.publish(&mem).unwrap());
}

#[test]
fn used_entries_are_read_in_order_and_arm_sets_used_event() {
    let mem = memory();
    let mut q = SplitQueue::new(0, 8, true);
    assert_eq!(q.pop_used(&mem).unwrap(), None);
    assert!(!q.arm(&mem).unwrap());
    for (i, (id, len)) in [(4u32, 100u32), (2, 16)].into_iter().enumerate() {
        let at = q.used + 4 + 8 * i as u64;
        mem.write_obj(id, GuestAddress(at)).unwrap();
        mem.write_obj(len, GuestAddress(at + 4)).unwrap();
    }
    mem.store(2u16, GuestAddress(q.used + 2), Ordering::Release)
        .unwrap();
    assert!(q.arm(&mem).unwrap(), "entries pending");
    assert_eq!(q.pop_used(&mem).unwrap(), Some((4, 100)));
    assert_eq!(q.pop_used(&mem).unwrap(), Some((2, 16)));
    assert_eq!(q.pop_used(&mem).unwrap(), None);
    assert!(!q.arm(&mem).unwrap());
    let used_event: u16 = mem.read_obj(GuestAddress(q.avail + 4 + 2 * 8)).unwrap();
    assert_eq!(used_event, 2, "interrupt at the next used entry");
}
