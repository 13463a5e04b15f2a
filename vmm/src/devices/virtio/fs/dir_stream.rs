//! One open directory of the workspace, read with `getdents64` a batch at a
//! time, and the entries read but not yet sent to the guest.
//!
//! A READDIR reply holds fewer entries than a `getdents64` returns, so the
//! next request starts in the middle of what was read. Seeking back there
//! makes ext4 rebuild its hash-order cursor for the directory, which cost
//! more than the read; serving the rest from the buffer when the guest asks
//! for exactly the next offset avoids both the seek and the read.
//!
//! Reading ahead (lever `dir_prefetch`): in a big listing the guest asks for
//! the next chunk as soon as it has parsed the last one, and the host's
//! `getdents64` was about half of a READDIR's service time (a 6.18 host's
//! tmpfs: `offset_readdir` walks its maple tree and takes a lock per
//! entry). So once a listing has shown itself big (a batch more than half
//! full) and the unsent entries would not fill the next reply, the stream
//! says so ([`Stream::wants_more`]) and the worker reads the next batch
//! after it has answered, while the guest is parsing.
//!
//! Looking up ahead: READDIRPLUS looks every name up (an `openat`, a
//! `statx`, a `listxattrat`), about 0.5–1 ms of each 32 KiB answer, while
//! the guest spends a few ms instantiating and stat-ing the entries of the
//! last one. So in a big listing the guest reads with READDIRPLUS (past the
//! speculative first chunk at offset 0), the worker also looks up as many
//! of the unsent names as the last answer held, after answering. Each such
//! entry holds a lookup count on the server: it is handed to the request
//! that sends its name, and any the guest never gets (a seek, a plain
//! READDIR, RELEASEDIR, a full answer) become `orphans` for the owner to
//! forget. Looked-up entries older than [`AHEAD_TTL`] are dropped, so an
//! answer never carries attributes much older than the request.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use fuse_backend_rs::api::filesystem::{DirEntry, Entry};

/// Header of a `linux_dirent64` before its name.
const DIRENT_HEADER: usize = 19;

/// How much one `getdents64` reads: several READDIR replies' worth.
pub const BATCH: usize = 32 * 1024;

/// How long an entry looked up ahead may wait for the request that sends it.
pub const AHEAD_TTL: Duration = Duration::from_millis(100);

/// Looks a name of a directory up for READDIRPLUS: (the directory's node
/// id, its descriptor, the name) to an entry holding one lookup count, or
/// `None` to leave it to the request.
pub type LookUp<'a> = dyn FnMut(u64, BorrowedFd<'_>, &[u8]) -> Option<Entry> + 'a;

/// Takes one name of a listing for the reply: the entry, the directory's
/// descriptor, and the entry looked up ahead for the name if any (it holds
/// a lookup count: the callee sends it or forgets it). Returns what
/// `fuse-backend-rs`'s `add_entry` does: 0 when the reply is full.
pub type AddEntry<'a> =
    dyn FnMut(DirEntry, BorrowedFd<'_>, Option<Entry>) -> io::Result<usize> + 'a;

/// One unsent entry of a listing: its `linux_dirent64` fields.
struct Dirent<'a> {
    ino: u64,
    off: u64,
    type_: u8,
    name: &'a [u8],
    reclen: usize,
}

/// The `linux_dirent64` at the start of `rest`.
fn parse(rest: &[u8]) -> io::Result<Dirent<'_>> {
    let eio = || io::Error::from_raw_os_error(libc::EIO);
    if rest.len() < DIRENT_HEADER {
        return Err(eio());
    }
    let reclen = u16::from_ne_bytes([rest[16], rest[17]]) as usize;
    if reclen < DIRENT_HEADER || reclen > rest.len() {
        return Err(eio());
    }
    let name = std::ffi::CStr::from_bytes_until_nul(&rest[DIRENT_HEADER..reclen])
        .map_err(|_| eio())?
        .to_bytes();
    Ok(Dirent {
        ino: u64::from_ne_bytes(rest[0..8].try_into().unwrap_or_default()),
        off: u64::from_ne_bytes(rest[8..16].try_into().unwrap_or_default()),
        type_: rest[18],
        name,
        reclen,
    })
}

/// One open directory and the entries read from it but not yet sent.
#[derive(Debug)]
pub struct Stream {
    file: File,
    /// The directory's node id.
    dir: u64,
    /// Entries as `getdents64` wrote them; `buf[at..]` are not sent yet.
    buf: Vec<u8>,
    /// Start of the first unsent entry in `buf`.
    at: usize,
    /// The directory offset that entry sits at (what the guest asks for next).
    next_off: u64,
    /// The last `getdents64`, at the end of `buf`, returned nothing. Answers
    /// one request at `next_off`; the one after reads again, so a listing
    /// kept open still sees names created since.
    eof: bool,
    /// The last answer was the end of the listing: nothing to read ahead
    /// until the guest asks again.
    ended: bool,
    /// A batch of this listing came back more than half full: a big
    /// directory, worth reading ahead.
    big: bool,
    /// Bytes the last reply asked for: how much the next one will want.
    last_size: usize,
    /// Entries the last reply held.
    last_count: usize,
    /// The last request was a READDIRPLUS past the listing's first chunk.
    plus: bool,
    /// Entries looked up ahead: `ahead[i]` is the `i`th unsent name's
    /// (`None`: the request looks it up).
    ahead: VecDeque<Option<Entry>>,
    /// When the oldest of `ahead` was looked up.
    ahead_since: Option<Instant>,
    /// Node ids looked up ahead that no request will send: the owner
    /// forgets them.
    pub orphans: Vec<u64>,
    /// RELEASEDIR came: nothing more to read or look up.
    closed: bool,
    /// Look names up ahead for READDIRPLUS (lever `lookup_ahead`).
    look_ahead: bool,
}

impl Stream {
    pub fn new(file: File, dir: u64, look_ahead: bool) -> Self {
        Self {
            file,
            dir,
            buf: Vec::new(),
            at: 0,
            next_off: 0,
            eof: false,
            ended: false,
            big: false,
            last_size: 0,
            last_count: 0,
            plus: false,
            ahead: VecDeque::new(),
            ahead_since: None,
            orphans: Vec::new(),
            closed: false,
            look_ahead,
        }
    }

    /// Gives up every entry looked up ahead (to `orphans`).
    fn orphan_ahead(&mut self) {
        self.orphans
            .extend(self.ahead.drain(..).flatten().map(|e| e.inode));
        self.ahead_since = None;
    }

    /// RELEASEDIR: the node ids the owner must forget.
    pub fn close(&mut self) -> Vec<u64> {
        self.closed = true;
        self.orphan_ahead();
        std::mem::take(&mut self.orphans)
    }

    /// Reads the next batch from the file's position after the unsent
    /// entries; false at the end of the directory.
    pub fn fill(&mut self) -> io::Result<bool> {
        self.buf.drain(..self.at);
        self.at = 0;
        let kept = self.buf.len();
        self.buf.resize(kept + BATCH, 0);
        // SAFETY: getdents64 writes at most BATCH bytes at `buf[kept..]`,
        // which the resize above made that long.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                self.file.as_raw_fd(),
                self.buf.as_mut_ptr().add(kept),
                BATCH,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            self.buf.clear();
            self.orphan_ahead();
            self.eof = false;
            // The file position is unknown now: the next read seeks.
            self.next_off = u64::MAX;
            return Err(e);
        }
        let n = n as usize;
        self.buf.truncate(kept + n);
        self.eof = n == 0;
        self.big |= n > BATCH / 2;
        Ok(n > 0)
    }

    /// Whether reading the next batch now would spare the next request the
    /// read: a big listing, not at its end, whose unsent entries might not
    /// fill the next reply. A reply entry is never smaller than its
    /// `linux_dirent64` (24 bytes and the name against 19, the name and a
    /// NUL, both 8-byte aligned), so a reply of the last one's size uses
    /// at most that many bytes of the buffer, and one entry more (at most
    /// 280 bytes) tells it that it is full.
    pub fn wants_more(&self) -> bool {
        !self.closed
            && self.big
            && !self.eof
            && !self.ended
            && self.next_off != u64::MAX
            && self.buf.len() - self.at < self.last_size + 512
    }

    /// Whether the worker should read or look up ahead after answering.
    pub fn wants_ahead(&self) -> bool {
        self.wants_more() || self.wants_lookups()
    }

    fn wants_lookups(&self) -> bool {
        self.look_ahead
            && !self.closed
            && self.plus
            && self.big
            && !self.ended
            && self.next_off != u64::MAX
            && self.ahead.len() < self.last_count
    }

    /// Reads the next batch if [`Self::wants_more`], then looks up as many
    /// unsent names as the last READDIRPLUS answer held. Returns whether a
    /// batch was read.
    pub fn read_ahead(&mut self, look_up: &mut LookUp<'_>) -> bool {
        let read = self.wants_more() && self.fill().is_ok();
        if !self.wants_lookups() {
            return read;
        }
        // Skip the names already looked up, then look up the next ones.
        let mut at = self.at;
        for _ in 0..self.ahead.len() {
            match parse(&self.buf[at..]) {
                Ok(d) => at += d.reclen,
                Err(_) => return read,
            }
        }
        let started = self.ahead.is_empty();
        while self.ahead.len() < self.last_count && at < self.buf.len() {
            let Ok(d) = parse(&self.buf[at..]) else {
                break;
            };
            let entry = match d.name {
                b"." | b".." => None,
                name => look_up(self.dir, self.file.as_fd(), name),
            };
            self.ahead.push_back(entry);
            at += d.reclen;
        }
        if started && !self.ahead.is_empty() {
            self.ahead_since = Some(Instant::now());
        }
        read
    }

    /// Entries from directory offset `offset` until `add_entry` is full;
    /// `add_entry` also gets the directory, to look names up in, and the
    /// entry looked up ahead for the name if there is one (it holds a
    /// lookup count: `add_entry` sends it or forgets it). `plus`: a
    /// READDIRPLUS request.
    pub fn read(
        &mut self,
        size: u32,
        offset: u64,
        plus: bool,
        add_entry: &mut AddEntry<'_>,
    ) -> io::Result<()> {
        if size == 0 {
            return Ok(());
        }
        self.last_size = size as usize;
        self.ended = false;
        self.plus = plus && offset != 0;
        if self
            .ahead_since
            .is_some_and(|since| since.elapsed() > AHEAD_TTL)
        {
            self.orphan_ahead();
        }
        if offset != self.next_off {
            // SAFETY: plain lseek on our own descriptor; checked.
            let r = unsafe {
                libc::lseek64(
                    self.file.as_raw_fd(),
                    offset as libc::off64_t,
                    libc::SEEK_SET,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            self.buf.clear();
            self.orphan_ahead();
            self.at = 0;
            self.eof = false;
            self.next_off = offset;
        }
        let mut added = 0;
        let res = loop {
            if self.at >= self.buf.len() {
                // The end (read ahead or now) answers this request; the
                // next one reads again.
                if self.eof || !self.fill()? {
                    (self.eof, self.ended) = (false, true);
                    break Ok(());
                }
            }
            let d = parse(&self.buf[self.at..])?;
            // "." and ".." too, as the host lists them (READDIRPLUS on the
            // workspace reads this same stream: one listing for both).
            let entry = DirEntry {
                ino: d.ino,
                offset: d.off,
                type_: u32::from(d.type_),
                name: d.name,
            };
            let (reclen, off) = (d.reclen, d.off);
            let popped = self.ahead.pop_front();
            if self.ahead.is_empty() {
                self.ahead_since = None;
            }
            let sent = add_entry(entry, self.file.as_fd(), popped.flatten());
            if !matches!(sent, Ok(n) if n > 0) && popped.is_some() {
                // Not sent: its entry was handed over (and forgotten); the
                // next request looks the name up again.
                self.ahead.push_front(None);
                self.ahead_since.get_or_insert_with(Instant::now);
            }
            match sent {
                Ok(0) => break Ok(()),
                Ok(_) => added += 1,
                Err(e) if added == 0 => break Err(e),
                Err(_) => break Ok(()),
            }
            self.at += reclen;
            self.next_off = off;
        };
        self.last_count = added;
        res
    }
}
