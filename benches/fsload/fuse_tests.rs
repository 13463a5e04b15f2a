use super::*;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn in_header_counts_arguments_and_payload() {
    let r = Request::write(7, 3, 8192, 4096);
    let h = r.header(42, 1000, 100, 9);
    assert_eq!(u32_at(&h, 0), 40 + 40 + 4096, "len");
    assert_eq!(u32_at(&h, 4), op::WRITE);
    assert_eq!(u64_at(&h, 8), 42, "unique");
    assert_eq!(u64_at(&h, 16), 7, "nodeid");
    assert_eq!(
        (u32_at(&h, 24), u32_at(&h, 28), u32_at(&h, 32)),
        (1000, 100, 9)
    );
    assert_eq!(u32_at(&h, 36), 0);
}

#[test]
fn init_is_what_linux_6_1_sends() {
    let r = Request::init(LINUX_6_1_INIT_FLAGS);
    assert_eq!(r.opcode, op::INIT);
    assert_eq!(r.args.len(), 64, "fuse_init_in at 7.36+");
    assert_eq!((u32_at(&r.args, 0), u32_at(&r.args, 4)), (7, 37));
    assert_eq!(u32_at(&r.args, 12), LINUX_6_1_INIT_FLAGS as u32);
    assert_eq!(u32_at(&r.args, 16), 1, "flags2 carries FUSE_SECURITY_CTX");
    assert_eq!(r.reply_args as usize, INIT_OUT_LEN);
    let has = |bit: u32| LINUX_6_1_INIT_FLAGS & (1 << bit) != 0;
    // DO_READDIRPLUS, PARALLEL_DIROPS, MAX_PAGES, SUBMOUNTS, INIT_EXT are in; FILE_OPS,
    // MAP_ALIGNMENT (dax only) and CREATE_SUPP_GROUP (6.2) are not.
    for bit in [0, 13, 16, 18, 22, 27, 28, 30, 32] {
        assert!(has(bit), "bit {bit}");
    }
    for bit in [2, 26, 31, 33, 34] {
        assert!(!has(bit), "bit {bit}");
    }
}

#[test]
fn create_lays_out_create_in_name_and_security_context() {
    let r = Request::create(5, "n1", 0o101, 0o100644, false);
    assert_eq!(r.nodeid, 5);
    assert_eq!(u32_at(&r.args, 0), 0o101);
    assert_eq!(u32_at(&r.args, 4), 0o100644);
    assert_eq!(u32_at(&r.args, 8), 0o022);
    assert_eq!(&r.args[16..], b"n1\0");
    assert_eq!(r.reply_args as usize, ENTRY_OUT_LEN + OPEN_OUT_LEN);
    let s = Request::create(5, "n1", 0o101, 0o100644, true);
    assert_eq!(&s.args[..19], &r.args[..]);
    assert_eq!((u32_at(&s.args, 19), u32_at(&s.args, 23)), (8, 0));
}

#[test]
fn names_are_nul_terminated() {
    let r = Request::rename(2, "a", 3, "bc");
    assert_eq!(u64_at(&r.args, 0), 3, "newdir");
    assert_eq!(&r.args[8..], b"a\0bc\0");
    assert_eq!(Request::lookup(1, "x").args, b"x\0");
    assert_eq!(Request::unlink(1, "yz").args, b"yz\0");
}

#[test]
fn fixed_argument_sizes() {
    assert_eq!(Request::getattr(1).args.len(), 16);
    assert_eq!(Request::open(1, 0, false).args.len(), 8);
    assert_eq!(Request::open(1, 0, true).opcode, op::OPENDIR);
    let rel = Request::release(9, 77, 1, true);
    assert_eq!(
        (rel.opcode, rel.args.len(), u64_at(&rel.args, 0)),
        (op::RELEASEDIR, 24, 77)
    );
    let rd = Request::read(9, 77, 4096, 8192);
    assert_eq!(rd.args.len(), 40);
    assert_eq!(
        (
            u64_at(&rd.args, 0),
            u64_at(&rd.args, 8),
            u32_at(&rd.args, 16)
        ),
        (77, 4096, 8192)
    );
    assert_eq!((rd.data_in, rd.data_out, rd.reply_args), (8192, 0, 0));
    let wr = Request::write(9, 77, 0, 8192);
    assert_eq!(
        (wr.data_in, wr.data_out, wr.reply_args as usize),
        (0, 8192, WRITE_OUT_LEN)
    );
    assert_eq!(Request::readdirplus(9, 1, 0, 4096).opcode, op::READDIRPLUS);
    let rdd = Request::readdir(9, 77, 12, 4096);
    assert_eq!((rdd.opcode, op_name(rdd.opcode)), (28, "READDIR"));
    assert_eq!(rdd.args, Request::readdirplus(9, 77, 12, 4096).args);
    assert_eq!((rdd.data_in, rdd.data_out, rdd.reply_args), (4096, 0, 0));
}

#[test]
fn batch_forget_lists_pairs() {
    let r = Request::batch_forget(&[(10, 1), (11, 3)]);
    assert!(r.is_forget());
    assert_eq!(r.args.len(), 8 + 32);
    assert_eq!(u32_at(&r.args, 0), 2);
    assert_eq!((u64_at(&r.args, 24), u64_at(&r.args, 32)), (11, 3));
}
