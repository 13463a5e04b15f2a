use super::*;
use crate::fuse::{ENTRY_OUT_LEN, WRITE_OUT_LEN};
use crate::vring::{F_NEXT, F_WRITE};

fn shape(d: &[Desc]) -> Vec<(u32, bool)> {
    d.iter().map(|d| (d.len, d.flags & F_WRITE != 0)).collect()
}

#[test]
fn lookup_has_header_args_then_reply_header_and_entry() {
    let s = Slots::new(8192, 3, 1 << 20, true);
    let d = s.descs(1, &Request::lookup(1, "abc")).unwrap();
    assert_eq!(
        shape(&d),
        [
            (40, false),
            (4, false),
            (16, true),
            (ENTRY_OUT_LEN as u32, true)
        ]
    );
    assert_eq!(d[1].addr, d[0].addr + ARGS_AT);
}

#[test]
fn payloads_are_split_in_pages_only_with_indirect_tables() {
    let ind = Slots::new(0, 1, 1 << 20, true);
    let d = ind.descs(0, &Request::read(2, 3, 0, 1 << 20)).unwrap();
    assert_eq!(d.len(), 2 + 1 + 256);
    assert!(d[3..]
        .iter()
        .all(|d| d.len == 4096 && d.flags & F_WRITE != 0));
    assert_eq!(d[3].addr, ind.data_in(0));
    let w = ind.descs(0, &Request::write(2, 3, 0, 8192)).unwrap();
    assert_eq!(
        shape(&w),
        [
            (40, false),
            (40, false),
            (4096, false),
            (4096, false),
            (16, true),
            (WRITE_OUT_LEN as u32, true)
        ]
    );
    let direct = Slots::new(0, 1, 1 << 20, false);
    let d = direct.descs(0, &Request::read(2, 3, 0, 1 << 20)).unwrap();
    assert_eq!(
        shape(&d),
        [(40, false), (40, false), (16, true), (1 << 20, true)]
    );
    assert!(d.len() <= usize::from(DIRECT_DESCS));
}

#[test]
fn forgets_have_no_writable_part_and_oversize_is_refused() {
    let s = Slots::new(0, 1, 4096, true);
    let d = s.descs(0, &Request::batch_forget(&[(5, 1)])).unwrap();
    assert!(d.iter().all(|d| d.flags & F_WRITE == 0));
    assert!(matches!(
        s.descs(0, &Request::read(1, 1, 0, 8192)),
        Err(SlotError::TooBig {
            what: "reply payload",
            ..
        })
    ));
    let long = "x".repeat(9000);
    assert!(matches!(
        s.descs(0, &Request::lookup(1, &long)),
        Err(SlotError::TooBig {
            what: "arguments",
            ..
        })
    ));
}

#[test]
fn heads_map_back_to_slots() {
    let ind = Slots::new(0, 4, 4096, true);
    assert_eq!((ind.head(3), ind.slot_of(3)), (3, Some(3)));
    assert_eq!(ind.slot_of(4), None);
    let direct = Slots::new(0, 4, 4096, false);
    assert_eq!(direct.head(2), 2 * DIRECT_DESCS);
    assert_eq!(direct.slot_of(u32::from(2 * DIRECT_DESCS)), Some(2));
    assert_eq!(direct.slot_of(1), None, "not a chain head");
}

#[test]
fn submit_writes_a_chained_indirect_table() {
    let rings = 8192;
    let s = Slots::new(rings, 2, 4096, true);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), s.end() as usize)]).unwrap();
    let mut vq = SplitQueue::new(0, 16, true);
    let req = Request::getattr(9);
    s.submit(&mem, &mut vq, 1, &req.header(1, 0, 0, 1), &req)
        .unwrap();
    let raw = |addr: u64| {
        let mut b = [0u8; 16];
        mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    };
    let ring = raw(vq.desc + 16);
    assert_eq!(u16::from_le_bytes([ring[12], ring[13]]), F_INDIRECT);
    assert_eq!(u32::from_le_bytes(ring[8..12].try_into().unwrap()), 4 * 16);
    let table = u64::from_le_bytes(ring[..8].try_into().unwrap());
    for i in 0..4u64 {
        let e = raw(table + 16 * i);
        let (flags, next) = (
            u16::from_le_bytes([e[12], e[13]]),
            u16::from_le_bytes([e[14], e[15]]),
        );
        if i < 3 {
            assert_eq!((flags & F_NEXT, next), (F_NEXT, i as u16 + 1));
        } else {
            assert_eq!(flags & F_NEXT, 0);
        }
    }
    let opcode: u32 = mem.read_obj(GuestAddress(s.request(1) + 4)).unwrap();
    assert_eq!(opcode, crate::fuse::op::GETATTR);
}
