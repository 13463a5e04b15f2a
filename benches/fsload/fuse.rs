//! The FUSE wire format as a Linux 6.1 guest speaks it (include/uapi/linux/fuse.h,
//! protocol 7.37): request encoding and reply decoding for the ops the generator sends.
//! Everything is little-endian, the only byte order virtio-fs runs on here.

/// Protocol version Linux 6.1 announces in FUSE_INIT.
pub const KERNEL_MAJOR: u32 = 7;
/// Linux 6.1 is 7.37 (FUSE_TMPFILE); 6.2 moved to 7.38.
pub const KERNEL_MINOR: u32 = 37;
/// The share's root inode.
pub const ROOT_ID: u64 = 1;

/// Opcodes (`enum fuse_opcode`).
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const GETATTR: u32 = 3;
    pub const UNLINK: u32 = 10;
    pub const RENAME: u32 = 12;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const RELEASE: u32 = 18;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const CREATE: u32 = 35;
    pub const BATCH_FORGET: u32 = 42;
    pub const READDIRPLUS: u32 = 44;
}

/// `struct fuse_in_header`.
pub const IN_HEADER_LEN: usize = 40;
/// `struct fuse_out_header`.
pub const OUT_HEADER_LEN: usize = 16;
/// `struct fuse_entry_out` (with its `fuse_attr`).
pub const ENTRY_OUT_LEN: usize = 128;
/// `struct fuse_attr_out`.
pub const ATTR_OUT_LEN: usize = 104;
/// `struct fuse_open_out`.
pub const OPEN_OUT_LEN: usize = 16;
/// `struct fuse_write_out`.
pub const WRITE_OUT_LEN: usize = 8;
/// `struct fuse_init_out` at 7.36+.
pub const INIT_OUT_LEN: usize = 64;

/// `fuse_send_init()` in Linux 6.1's fs/fuse/inode.c, plus FUSE_SUBMOUNTS, which virtio-fs
/// adds (`auto_submounts`). No FUSE_MAP_ALIGNMENT: that is only sent with `-o dax`.
pub const LINUX_6_1_INIT_FLAGS: u64 = (1 << 0) // ASYNC_READ
    | (1 << 1) // POSIX_LOCKS
    | (1 << 3) // ATOMIC_O_TRUNC
    | (1 << 4) // EXPORT_SUPPORT
    | (1 << 5) // BIG_WRITES
    | (1 << 6) // DONT_MASK
    | (1 << 7) // SPLICE_WRITE
    | (1 << 8) // SPLICE_MOVE
    | (1 << 9) // SPLICE_READ
    | (1 << 10) // FLOCK_LOCKS
    | (1 << 11) // HAS_IOCTL_DIR
    | (1 << 12) // AUTO_INVAL_DATA
    | (1 << 13) // DO_READDIRPLUS
    | (1 << 14) // READDIRPLUS_AUTO
    | (1 << 15) // ASYNC_DIO
    | (1 << 16) // WRITEBACK_CACHE
    | (1 << 17) // NO_OPEN_SUPPORT
    | (1 << 18) // PARALLEL_DIROPS
    | (1 << 19) // HANDLE_KILLPRIV
    | (1 << 20) // POSIX_ACL
    | (1 << 21) // ABORT_ERROR
    | (1 << 22) // MAX_PAGES
    | (1 << 23) // CACHE_SYMLINKS
    | (1 << 24) // NO_OPENDIR_SUPPORT
    | (1 << 25) // EXPLICIT_INVAL_DATA
    | (1 << 27) // SUBMOUNTS
    | (1 << 28) // HANDLE_KILLPRIV_V2
    | (1 << 29) // SETXATTR_EXT
    | (1 << 30) // INIT_EXT
    | SECURITY_CTX;
/// The server wants a security context after the name of CREATE and friends.
pub const SECURITY_CTX: u64 = 1 << 32;
/// The server's `max_pages` holds (else 32 pages per request at most).
pub const MAX_PAGES: u64 = 1 << 22;
/// Readahead Linux offers by default (32 pages).
const MAX_READAHEAD: u32 = 128 << 10;

/// The name of an opcode, for tables and errors.
pub fn op_name(opcode: u32) -> &'static str {
    match opcode {
        op::LOOKUP => "LOOKUP",
        op::GETATTR => "GETATTR",
        op::UNLINK => "UNLINK",
        op::RENAME => "RENAME",
        op::OPEN => "OPEN",
        op::READ => "READ",
        op::WRITE => "WRITE",
        op::RELEASE => "RELEASE",
        op::INIT => "INIT",
        op::OPENDIR => "OPENDIR",
        op::READDIR => "READDIR",
        op::RELEASEDIR => "RELEASEDIR",
        op::CREATE => "CREATE",
        op::BATCH_FORGET => "BATCH_FORGET",
        op::READDIRPLUS => "READDIRPLUS",
        _ => "?",
    }
}

/// One request, laid out the way Linux's virtio-fs driver splits it into descriptors:
/// the in header, the arguments (one buffer), the payload pages; then the out header,
/// the reply arguments, the reply pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub opcode: u32,
    pub nodeid: u64,
    /// Everything after the in header but the payload: the fixed struct and names.
    pub args: Vec<u8>,
    /// Bytes of WRITE payload.
    pub data_out: u32,
    /// Size of the reply's fixed struct (0: the header alone).
    pub reply_args: u32,
    /// Size of the reply's pages (READ, READDIR, READDIRPLUS).
    pub data_in: u32,
}

fn put32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn put64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn put_name(v: &mut Vec<u8>, name: &str) {
    v.extend_from_slice(name.as_bytes());
    v.push(0);
}

impl Request {
    fn new(opcode: u32, nodeid: u64, args: Vec<u8>, reply_args: usize) -> Self {
        Self {
            opcode,
            nodeid,
            args,
            data_out: 0,
            reply_args: reply_args as u32,
            data_in: 0,
        }
    }

    /// FORGETs have no reply, so no writable buffers.
    pub fn is_forget(&self) -> bool {
        self.opcode == op::BATCH_FORGET
    }

    /// `struct fuse_in_header` for this request.
    pub fn header(&self, unique: u64, uid: u32, gid: u32, pid: u32) -> [u8; IN_HEADER_LEN] {
        let len = IN_HEADER_LEN as u32 + self.args.len() as u32 + self.data_out;
        let mut h = Vec::with_capacity(IN_HEADER_LEN);
        put32(&mut h, len);
        put32(&mut h, self.opcode);
        put64(&mut h, unique);
        put64(&mut h, self.nodeid);
        put32(&mut h, uid);
        put32(&mut h, gid);
        put32(&mut h, pid);
        put32(&mut h, 0); // padding (total_extlen from 7.38 on)
        h.try_into().expect("40 bytes")
    }

    /// FUSE_INIT with `flags` (`fuse_init_in`, 7.36+: flags2 carries the high half).
    pub fn init(flags: u64) -> Self {
        let mut a = Vec::with_capacity(64);
        put32(&mut a, KERNEL_MAJOR);
        put32(&mut a, KERNEL_MINOR);
        put32(&mut a, MAX_READAHEAD);
        put32(&mut a, flags as u32);
        put32(&mut a, (flags >> 32) as u32);
        a.resize(64, 0);
        Self::new(op::INIT, 0, a, INIT_OUT_LEN)
    }

    pub fn lookup(parent: u64, name: &str) -> Self {
        let mut a = Vec::new();
        put_name(&mut a, name);
        Self::new(op::LOOKUP, parent, a, ENTRY_OUT_LEN)
    }

    /// `stat()` of a path: no file handle.
    pub fn getattr(node: u64) -> Self {
        Self::new(op::GETATTR, node, vec![0; 16], ATTR_OUT_LEN)
    }

    pub fn open(node: u64, flags: u32, dir: bool) -> Self {
        let mut a = Vec::new();
        put32(&mut a, flags);
        put32(&mut a, 0);
        let opcode = if dir { op::OPENDIR } else { op::OPEN };
        Self::new(opcode, node, a, OPEN_OUT_LEN)
    }

    /// `struct fuse_create_in`, the name, and the empty security context header a 6.1
    /// kernel adds when the server asked for FUSE_SECURITY_CTX and no LSM supplies one.
    pub fn create(parent: u64, name: &str, flags: u32, mode: u32, secctx: bool) -> Self {
        let mut a = Vec::new();
        put32(&mut a, flags);
        put32(&mut a, mode);
        put32(&mut a, 0o022); // umask
        put32(&mut a, 0); // open_flags
        put_name(&mut a, name);
        if secctx {
            put32(&mut a, 8); // fuse_secctx_header.size
            put32(&mut a, 0); // nr_secctx
        }
        Self::new(op::CREATE, parent, a, ENTRY_OUT_LEN + OPEN_OUT_LEN)
    }

    pub fn release(node: u64, fh: u64, flags: u32, dir: bool) -> Self {
        let mut a = Vec::new();
        put64(&mut a, fh);
        put32(&mut a, flags);
        put32(&mut a, 0); // release_flags
        put64(&mut a, 0); // lock_owner
        let opcode = if dir { op::RELEASEDIR } else { op::RELEASE };
        Self::new(opcode, node, a, 0)
    }

    /// `struct fuse_read_in`, shared by READ, READDIR and READDIRPLUS.
    fn read_in(opcode: u32, node: u64, fh: u64, offset: u64, size: u32) -> Self {
        let mut a = Vec::new();
        put64(&mut a, fh);
        put64(&mut a, offset);
        put32(&mut a, size);
        put32(&mut a, 0); // read_flags
        put64(&mut a, 0); // lock_owner
        put32(&mut a, 0); // flags
        put32(&mut a, 0);
        let mut r = Self::new(opcode, node, a, 0);
        r.data_in = size;
        r
    }

    pub fn read(node: u64, fh: u64, offset: u64, size: u32) -> Self {
        Self::read_in(op::READ, node, fh, offset, size)
    }

    /// One page of names without attributes, as `getdents64` asks for when the guest
    /// does not use READDIRPLUS (`fuse_use_readdirplus()` says no, or the server lacks it).
    pub fn readdir(node: u64, fh: u64, offset: u64, size: u32) -> Self {
        Self::read_in(op::READDIR, node, fh, offset, size)
    }

    /// One page of entries, as `getdents64` on a FUSE directory asks for.
    pub fn readdirplus(node: u64, fh: u64, offset: u64, size: u32) -> Self {
        Self::read_in(op::READDIRPLUS, node, fh, offset, size)
    }

    /// `struct fuse_write_in`; the payload comes from the slot's data pages.
    pub fn write(node: u64, fh: u64, offset: u64, size: u32) -> Self {
        let mut r = Self::read_in(op::WRITE, node, fh, offset, size);
        r.opcode = op::WRITE;
        r.data_in = 0;
        r.data_out = size;
        r.reply_args = WRITE_OUT_LEN as u32;
        r
    }

    /// FUSE_RENAME (Linux uses RENAME2 only with flags).
    pub fn rename(parent: u64, old: &str, newparent: u64, new: &str) -> Self {
        let mut a = Vec::new();
        put64(&mut a, newparent);
        put_name(&mut a, old);
        put_name(&mut a, new);
        Self::new(op::RENAME, parent, a, 0)
    }

    pub fn unlink(parent: u64, name: &str) -> Self {
        let mut a = Vec::new();
        put_name(&mut a, name);
        Self::new(op::UNLINK, parent, a, 0)
    }

    /// FUSE_BATCH_FORGET of (nodeid, nlookup) pairs; it has no reply.
    pub fn batch_forget(entries: &[(u64, u64)]) -> Self {
        let mut a = Vec::with_capacity(8 + 16 * entries.len());
        put32(&mut a, entries.len() as u32);
        put32(&mut a, 0);
        for &(node, n) in entries {
            put64(&mut a, node);
            put64(&mut a, n);
        }
        Self::new(op::BATCH_FORGET, 0, a, 0)
    }
}

#[cfg(test)]
#[path = "fuse_tests.rs"]
mod tests;
