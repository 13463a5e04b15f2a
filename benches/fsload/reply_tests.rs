use super::*;
use crate::fuse::{op, LINUX_6_1_INIT_FLAGS};

fn out_header(len: u32, error: i32, unique: u64) -> Vec<u8> {
    let mut b = len.to_le_bytes().to_vec();
    b.extend_from_slice(&error.to_le_bytes());
    b.extend_from_slice(&unique.to_le_bytes());
    b
}

#[test]
fn out_header_checks_unique_and_gives_errno() {
    let h = OutHeader::parse(&out_header(16, -2, 5), op::LOOKUP, 5).unwrap();
    assert_eq!((h.errno(), h.body_len()), (Some(2), 0));
    let ok = OutHeader::parse(&out_header(144, 0, 5), op::LOOKUP, 5).unwrap();
    assert_eq!((ok.errno(), ok.body_len()), (None, 128));
    assert!(matches!(
        OutHeader::parse(&out_header(16, 0, 6), op::LOOKUP, 5),
        Err(ReplyError::Unique {
            got: 6,
            want: 5,
            ..
        })
    ));
    assert!(matches!(
        OutHeader::parse(&[0; 8], op::GETATTR, 1),
        Err(ReplyError::Short {
            len: 8,
            need: 16,
            ..
        })
    ));
}

fn init_out(flags: u64, max_write: u32, max_pages: u16) -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[0..4].copy_from_slice(&7u32.to_le_bytes());
    b[4..8].copy_from_slice(&38u32.to_le_bytes());
    b[12..16].copy_from_slice(&(flags as u32).to_le_bytes());
    b[20..24].copy_from_slice(&max_write.to_le_bytes());
    b[28..30].copy_from_slice(&max_pages.to_le_bytes());
    b[32..36].copy_from_slice(&((flags >> 32) as u32).to_le_bytes());
    b
}

#[test]
fn init_reply_fields_at_their_offsets() {
    let flags = MAX_PAGES | (1 << 13) | (1 << 32);
    let i = InitOut::parse(&init_out(flags, 1 << 20, 256)).unwrap();
    assert_eq!((i.major, i.minor, i.flags), (7, 38, flags));
    assert_eq!(
        (i.max_write, i.max_pages, i.max_io()),
        (1 << 20, 256, 1 << 20)
    );
    // Without MAX_PAGES a request carries 32 pages at most.
    let old = InitOut::parse(&init_out(1 << 5, 1 << 20, 0)).unwrap();
    assert_eq!(old.max_io(), 128 << 10);
    // A 7.22 server's 24-byte reply has no max_pages nor flags2.
    let short = InitOut::parse(&init_out(LINUX_6_1_INIT_FLAGS, 4096, 9)[..24]).unwrap();
    assert_eq!(
        (short.max_pages, short.flags >> 32, short.max_io()),
        (0, 0, 4096)
    );
}

fn direntplus(nodeid: u64, off: u64, name: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; ENTRY_OUT_LEN];
    b[..8].copy_from_slice(&nodeid.to_le_bytes());
    b.extend_from_slice(&nodeid.to_le_bytes()); // ino
    b.extend_from_slice(&off.to_le_bytes());
    b.extend_from_slice(&(name.len() as u32).to_le_bytes());
    b.extend_from_slice(&8u32.to_le_bytes()); // DT_REG
    b.extend_from_slice(name);
    b.resize((b.len() + 7) & !7, 0);
    b
}

#[test]
fn direntplus_records_are_walked_with_padding() {
    let mut b = direntplus(0, 1, b".");
    b.extend(direntplus(12, 2, b"entry-name"));
    let e = parse_direntplus(&b).unwrap();
    assert_eq!(e.len(), 2);
    assert!(e[0].is_dot());
    assert_eq!(
        (e[1].nodeid, e[1].off, &e[1].name[..]),
        (12, 2, &b"entry-name"[..])
    );
    assert!(!e[1].is_dot());
    assert_eq!(parse_direntplus(&[]).unwrap(), vec![]);
    let cut = b.len() - 8;
    assert_eq!(
        parse_direntplus(&b[..cut]),
        Err(ReplyError::Dirent {
            op: "READDIRPLUS",
            at: 160
        })
    );
}

fn dirent(ino: u64, off: u64, typ: u32, name: &[u8]) -> Vec<u8> {
    let mut b = ino.to_le_bytes().to_vec();
    b.extend_from_slice(&off.to_le_bytes());
    b.extend_from_slice(&(name.len() as u32).to_le_bytes());
    b.extend_from_slice(&typ.to_le_bytes());
    b.extend_from_slice(name);
    b.resize((b.len() + 7) & !7, 0);
    b
}

#[test]
fn dirent_records_are_walked_with_padding() {
    let mut b = dirent(2, 1, 4, b".");
    b.extend(dirent(1, 2, 4, b".."));
    // 24 + 8 bytes: a name that fills its padding exactly.
    b.extend(dirent(77, 3, 8, b"e1234567"));
    b.extend(dirent(78, 4, 8, b"entry-name"));
    assert_eq!(b.len(), 32 + 32 + 32 + 40);
    let e = parse_dirent(&b).unwrap();
    assert_eq!(e.len(), 4);
    assert_eq!(
        (e[0].ino, e[0].off, e[0].typ, &e[0].name[..]),
        (2, 1, 4, &b"."[..])
    );
    assert_eq!(&e[1].name[..], b"..");
    assert!(e[0].is_dot() && e[1].is_dot() && !e[2].is_dot() && !e[3].is_dot());
    assert_eq!(
        (e[2].ino, e[2].off, &e[2].name[..]),
        (77, 3, &b"e1234567"[..])
    );
    assert_eq!(
        (e[3].ino, e[3].off, e[3].typ, &e[3].name[..]),
        (78, 4, 8, &b"entry-name"[..])
    );
    // The end of the directory: an empty page.
    assert_eq!(parse_dirent(&[]).unwrap(), vec![]);
    // The longest name Linux accepts.
    let long = vec![b'x'; 1024];
    assert_eq!(parse_dirent(&dirent(5, 9, 8, &long)).unwrap()[0].name, long);
}

#[test]
fn malformed_dirent_records_are_refused() {
    let bad = |at| Err(ReplyError::Dirent { op: "READDIR", at });
    let two = [dirent(2, 1, 4, b"."), dirent(9, 2, 8, b"entry-name")].concat();
    // A record cut in its fixed part, in its name, in its padding.
    assert_eq!(parse_dirent(&two[..32 + 20]), bad(32));
    assert_eq!(parse_dirent(&two[..32 + 28]), bad(32));
    assert_eq!(parse_dirent(&two[..two.len() - 1]), bad(32));
    // Trailing bytes too few for a record.
    let mut tail = two.clone();
    tail.extend_from_slice(&[0; 8]);
    assert_eq!(parse_dirent(&tail), bad(72));
    // An empty name, a name past FUSE_NAME_MAX, a name with a '/'.
    assert_eq!(parse_dirent(&dirent(3, 1, 8, b"")), bad(0));
    assert_eq!(parse_dirent(&dirent(3, 1, 8, &[b'x'; 1025])), bad(0));
    let slash = [dirent(2, 1, 4, b"."), dirent(3, 2, 8, b"a/b")].concat();
    assert_eq!(parse_dirent(&slash), bad(32));
    // A namelen far past the page.
    let mut huge = dirent(3, 1, 8, b"abc");
    huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(parse_dirent(&huge), bad(0));
    assert_eq!(
        parse_dirent(&two[..8]).unwrap_err().to_string(),
        "READDIR reply: malformed record at byte 0"
    );
}

#[test]
fn fixed_structs_are_length_checked() {
    let mut entry = vec![0u8; ENTRY_OUT_LEN + OPEN_OUT_LEN];
    entry[..8].copy_from_slice(&99u64.to_le_bytes());
    entry[ENTRY_OUT_LEN..ENTRY_OUT_LEN + 8].copy_from_slice(&5u64.to_le_bytes());
    assert_eq!(entry_nodeid(&entry, op::CREATE), Ok(99));
    assert_eq!(open_fh(&entry, ENTRY_OUT_LEN, op::CREATE), Ok(5));
    assert!(entry_nodeid(&entry[..100], op::LOOKUP).is_err());
    assert!(open_fh(&entry[..ENTRY_OUT_LEN + 4], ENTRY_OUT_LEN, op::CREATE).is_err());
    assert_eq!(written(&4096u64.to_le_bytes()), Ok(4096));
}
