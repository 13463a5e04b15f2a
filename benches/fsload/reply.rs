//! Decoding the replies of a FUSE server (see `fuse.rs` for the layout source).

use thiserror::Error;

use crate::fuse::{
    op, op_name, ENTRY_OUT_LEN, MAX_PAGES, OPEN_OUT_LEN, OUT_HEADER_LEN, WRITE_OUT_LEN,
};

/// `struct fuse_dirent` without its name.
const DIRENT_LEN: usize = 24;
/// `FUSE_NAME_MAX`: Linux fails a READDIR reply with a longer name with EIO.
const NAME_MAX: usize = 1024;

/// Errors decoding a reply.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReplyError {
    #[error("{op} reply is {len} bytes, shorter than {need}")]
    Short {
        op: &'static str,
        len: usize,
        need: usize,
    },
    #[error("{op} reply carries unique {got}, the request had {want}")]
    Unique {
        op: &'static str,
        got: u64,
        want: u64,
    },
    #[error("{op} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Errno { op: &'static str, errno: i32 },
    #[error("{op}: {what}")]
    Unexpected { op: &'static str, what: String },
    #[error("{op} reply: malformed record at byte {at}")]
    Dirent { op: &'static str, at: usize },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// `struct fuse_out_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutHeader {
    pub len: u32,
    pub error: i32,
    pub unique: u64,
}

impl OutHeader {
    /// Decodes the header of a reply to `opcode` and checks it answers `unique`.
    pub fn parse(b: &[u8], opcode: u32, unique: u64) -> Result<Self, ReplyError> {
        need(b, OUT_HEADER_LEN, opcode)?;
        let h = Self {
            len: u32_at(b, 0),
            error: u32_at(b, 4) as i32,
            unique: u64_at(b, 8),
        };
        if h.unique != unique {
            return Err(ReplyError::Unique {
                op: op_name(opcode),
                got: h.unique,
                want: unique,
            });
        }
        Ok(h)
    }

    /// The positive errno, if the server failed the request.
    pub fn errno(&self) -> Option<i32> {
        (self.error != 0).then(|| -self.error)
    }

    /// Bytes after the header.
    pub fn body_len(&self) -> usize {
        (self.len as usize).saturating_sub(OUT_HEADER_LEN)
    }
}

fn need(b: &[u8], n: usize, opcode: u32) -> Result<(), ReplyError> {
    if b.len() < n {
        return Err(ReplyError::Short {
            op: op_name(opcode),
            len: b.len(),
            need: n,
        });
    }
    Ok(())
}

/// What the server answered to FUSE_INIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitOut {
    pub major: u32,
    pub minor: u32,
    pub flags: u64,
    pub max_write: u32,
    pub max_pages: u16,
}

impl InitOut {
    pub fn parse(b: &[u8]) -> Result<Self, ReplyError> {
        need(b, 24, op::INIT)?;
        let flags = u64::from(u32_at(b, 12));
        // max_pages (7.28+) at 28, flags2 (7.36+) at 32.
        let max_pages = if b.len() >= 30 {
            u16::from_le_bytes([b[28], b[29]])
        } else {
            0
        };
        let flags2 = if b.len() >= 36 { u32_at(b, 32) } else { 0 };
        Ok(Self {
            major: u32_at(b, 0),
            minor: u32_at(b, 4),
            flags: flags | (u64::from(flags2) << 32),
            max_write: u32_at(b, 20),
            max_pages,
        })
    }

    /// The largest READ or WRITE payload a 6.1 guest would send this server.
    pub fn max_io(&self) -> u32 {
        let pages = if self.flags & MAX_PAGES != 0 {
            u32::from(self.max_pages.max(1))
        } else {
            32
        };
        self.max_write.min(pages * 4096)
    }
}

/// `fuse_entry_out.nodeid` (LOOKUP, CREATE).
pub fn entry_nodeid(b: &[u8], opcode: u32) -> Result<u64, ReplyError> {
    need(b, ENTRY_OUT_LEN, opcode)?;
    Ok(u64_at(b, 0))
}

/// `fuse_open_out.fh`, at `at` (0 for OPEN, after the entry for CREATE).
pub fn open_fh(b: &[u8], at: usize, opcode: u32) -> Result<u64, ReplyError> {
    need(b, at + OPEN_OUT_LEN, opcode)?;
    Ok(u64_at(b, at))
}

/// `fuse_write_out.size`.
pub fn written(b: &[u8]) -> Result<u32, ReplyError> {
    need(b, WRITE_OUT_LEN, op::WRITE)?;
    Ok(u32_at(b, 0))
}

/// One `fuse_direntplus` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirentPlus {
    /// The inode the server counted a lookup for (0: none).
    pub nodeid: u64,
    /// Offset to continue from.
    pub off: u64,
    pub name: Vec<u8>,
}

impl DirentPlus {
    /// "." and "..": Linux does not link them, so it keeps no lookup count for them.
    pub fn is_dot(&self) -> bool {
        self.name == b"." || self.name == b".."
    }
}

/// Decodes a READDIRPLUS reply body.
pub fn parse_direntplus(b: &[u8]) -> Result<Vec<DirentPlus>, ReplyError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let fixed = ENTRY_OUT_LEN + DIRENT_LEN;
        if b.len() - at < fixed {
            return Err(ReplyError::Dirent {
                op: "READDIRPLUS",
                at,
            });
        }
        let nodeid = u64_at(b, at);
        let off = u64_at(b, at + ENTRY_OUT_LEN + 8);
        let namelen = u32_at(b, at + ENTRY_OUT_LEN + 16) as usize;
        let name_at = at + fixed;
        if namelen == 0 || namelen > b.len() - name_at {
            return Err(ReplyError::Dirent {
                op: "READDIRPLUS",
                at,
            });
        }
        out.push(DirentPlus {
            nodeid,
            off,
            name: b[name_at..name_at + namelen].to_vec(),
        });
        at = name_at + ((namelen + 7) & !7);
    }
    Ok(out)
}

/// One `fuse_dirent` record (READDIR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirent {
    /// What `getdents` reports as `d_ino`; no lookup is counted for it.
    pub ino: u64,
    /// Offset to continue from.
    pub off: u64,
    /// `d_type` (`DT_*`).
    pub typ: u32,
    pub name: Vec<u8>,
}

impl Dirent {
    /// "." or "..".
    pub fn is_dot(&self) -> bool {
        self.name == b"." || self.name == b".."
    }
}

/// Decodes a READDIR reply body: `fuse_dirent` records, each padded to 8 bytes. Refuses
/// what Linux's `parse_dirfile()` refuses (an empty or over-long name, a '/' in it) and,
/// where Linux would silently drop the rest of the page, a record cut short.
pub fn parse_dirent(b: &[u8]) -> Result<Vec<Dirent>, ReplyError> {
    let bad = |at| ReplyError::Dirent { op: "READDIR", at };
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        if b.len() - at < DIRENT_LEN {
            return Err(bad(at));
        }
        let namelen = u32_at(b, at + 16) as usize;
        let reclen = (DIRENT_LEN + namelen + 7) & !7;
        if namelen == 0 || namelen > NAME_MAX || reclen > b.len() - at {
            return Err(bad(at));
        }
        let name = &b[at + DIRENT_LEN..at + DIRENT_LEN + namelen];
        if name.contains(&b'/') {
            return Err(bad(at));
        }
        out.push(Dirent {
            ino: u64_at(b, at),
            off: u64_at(b, at + 8),
            typ: u32_at(b, at + 20),
            name: name.to_vec(),
        });
        at += reclen;
    }
    Ok(out)
}

#[cfg(test)]
#[path = "reply_tests.rs"]
mod tests;
