//! The measured operations, each as the requests a Linux guest sends for it, and the
//! state one stream of them keeps (file handles, directory offsets, names made).

use std::collections::HashMap;

use crate::fixture::{FixtureSpec, BIG_DIR, FILES_DIR, READ_FILE, WORK_DIR, WRITE_FILE};
use crate::fuse::{op, Request, ROOT_ID};
use crate::reply::{entry_nodeid, open_fh, parse_dirent, parse_direntplus, written, ReplyError};
use crate::session::{Reply, Session, SessionError};

/// Files one CREATE phase makes at most: every server then does the same work, and the
/// descriptors a server keeps per known inode stay well under RLIMIT_NOFILE.
pub const MAX_CREATE: usize = 5000;

/// What one op sends. Payload sizes are in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// LOOKUP of an existing file (a `stat` with a cold dentry).
    Lookup,
    /// LOOKUP of a missing name.
    LookupMissing,
    /// GETATTR without a file handle.
    Getattr,
    /// OPEN + RELEASE of an existing file, read-only.
    OpenRelease,
    /// CREATE + RELEASE of a new file (`touch`).
    CreateRelease,
    /// RENAME of each created file.
    Rename,
    /// UNLINK of each renamed file.
    Unlink,
    /// READDIR of one page, over a directory of many entries: names only, no lookups.
    Readdir,
    /// READDIRPLUS of one page, over a directory of many entries.
    Readdirplus,
    Read(u32),
    Write(u32),
}

/// The order ops run in: create, rename and unlink work on the same names.
pub fn all_ops(small: u32, big: u32) -> Vec<Op> {
    vec![
        Op::Lookup,
        Op::LookupMissing,
        Op::Getattr,
        Op::OpenRelease,
        Op::CreateRelease,
        Op::Rename,
        Op::Unlink,
        Op::Readdir,
        Op::Readdirplus,
        Op::Read(small),
        Op::Read(big),
        Op::Write(small),
        Op::Write(big),
    ]
}

fn size_name(n: u32) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{} KiB", n >> 10)
    }
}

impl Op {
    pub fn name(&self) -> String {
        match self {
            Op::Lookup => "LOOKUP".into(),
            Op::LookupMissing => "LOOKUP missing".into(),
            Op::Getattr => "GETATTR".into(),
            Op::OpenRelease => "OPEN+RELEASE".into(),
            Op::CreateRelease => "CREATE+RELEASE".into(),
            Op::Rename => "RENAME".into(),
            Op::Unlink => "UNLINK".into(),
            Op::Readdir => "READDIR 4 KiB".into(),
            Op::Readdirplus => "READDIRPLUS 4 KiB".into(),
            Op::Read(n) => format!("READ {}", size_name(*n)),
            Op::Write(n) => format!("WRITE {}", size_name(*n)),
        }
    }

    /// Rename and unlink work through what create made, however long that takes.
    pub fn timed(&self) -> bool {
        !matches!(self, Op::Rename | Op::Unlink)
    }

    /// The op walks `big/` through a directory handle.
    fn lists_dir(&self) -> bool {
        matches!(self, Op::Readdir | Op::Readdirplus)
    }
}

/// The next request of an op, or its end.
#[derive(Debug)]
pub enum Next {
    Send(Request),
    Done,
}

/// One stream's state: ops on a stream run one after another.
#[derive(Debug, Default, Clone)]
pub struct Stream {
    index: usize,
    fh: u64,
    node: u64,
    dir_off: u64,
    /// Names READDIR listed since this pass over the directory began at offset 0.
    dir_names: usize,
}

/// What a session knows of its fixture, and the names the phases made.
#[derive(Debug)]
pub struct Ctx {
    files_dir: u64,
    files: Vec<u64>,
    big_dir: u64,
    /// Names in `big/`, what each full READDIR pass must list.
    entries: usize,
    work_dir: u64,
    read_file: u64,
    write_file: u64,
    file_len: u64,
    secctx: bool,
    /// `work/n0..n{created}` (or `m...` after the rename phase) exist.
    created: usize,
    created_nodes: Vec<u64>,
    forgets: HashMap<u64, u64>,
    next: usize,
    /// The server answered OPEN with ENOSYS: like Linux's client, send no
    /// OPEN or RELEASE from then on, and READ and WRITE with handle 0.
    pub no_open: bool,
}

fn lookup(s: &mut Session, parent: u64, name: &str) -> Result<u64, SessionError> {
    let r = s.call(&Request::lookup(parent, name))?;
    r.ok()
        .and_then(|r| entry_nodeid(&r.args, op::LOOKUP))
        .map_err(|e| s.reply_err(e))
}

/// Sends one OPEN, as Linux's client does before it knows: ENOSYS means the
/// server wants no OPEN or RELEASE (zero-message open); any handle it gives
/// is released.
fn probe_no_open(s: &mut Session, file: u64) -> Result<bool, SessionError> {
    let r = s.call(&Request::open(file, libc::O_RDONLY as u32, false))?;
    match r.ok() {
        Err(ReplyError::Errno { errno, .. }) if errno == libc::ENOSYS => Ok(true),
        Err(e) => Err(s.reply_err(e)),
        Ok(r) => {
            let fh = open_fh(&r.args, 0, op::OPEN).map_err(|e| s.reply_err(e))?;
            s.call(&Request::release(file, fh, 0, false))?
                .ok()
                .map_err(|e| s.reply_err(e))?;
            Ok(false)
        }
    }
}

impl Ctx {
    /// Looks up the fixture's names (not measured).
    pub fn prepare(s: &mut Session, fixture: &FixtureSpec) -> Result<Self, SessionError> {
        let files_dir = lookup(s, ROOT_ID, FILES_DIR)?;
        let read_file = lookup(s, ROOT_ID, READ_FILE)?;
        let no_open = probe_no_open(s, read_file)?;
        let nodes = (0..fixture.files)
            .map(|i| lookup(s, files_dir, &format!("f{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            files_dir,
            files: nodes,
            big_dir: lookup(s, ROOT_ID, BIG_DIR)?,
            entries: fixture.entries,
            work_dir: lookup(s, ROOT_ID, WORK_DIR)?,
            read_file,
            write_file: lookup(s, ROOT_ID, WRITE_FILE)?,
            file_len: fixture.file_len,
            secctx: s.secctx(),
            created: 0,
            created_nodes: Vec::new(),
            forgets: HashMap::new(),
            next: 0,
            no_open,
        })
    }

    /// Claims the next op of a phase; `None` when `op` has nothing left to work on.
    pub fn claim(&mut self, op: Op, st: &mut Stream) -> Option<()> {
        if !op.timed() && self.next >= self.created {
            return None;
        }
        if op == Op::CreateRelease && self.next >= MAX_CREATE {
            return None;
        }
        if op == Op::OpenRelease && self.no_open {
            // open() and close() send nothing to such a server.
            return None;
        }
        st.index = self.next;
        self.next += 1;
        Some(())
    }

    /// The request opening what a stream works on (not measured).
    pub fn setup(&self, op: Op) -> Option<Request> {
        match op {
            Op::Readdir | Op::Readdirplus => {
                Some(Request::open(self.big_dir, libc::O_RDONLY as u32, true))
            }
            Op::Read(_) if !self.no_open => {
                Some(Request::open(self.read_file, libc::O_RDONLY as u32, false))
            }
            Op::Write(_) if !self.no_open => {
                Some(Request::open(self.write_file, libc::O_RDWR as u32, false))
            }
            _ => None,
        }
    }

    pub fn on_setup(&self, op: Op, st: &mut Stream, r: &Reply) -> Result<(), ReplyError> {
        st.fh = open_fh(&r.ok()?.args, 0, r.opcode)?;
        st.node = match op {
            Op::Readdir | Op::Readdirplus => self.big_dir,
            Op::Read(_) => self.read_file,
            _ => self.write_file,
        };
        st.dir_off = 0;
        st.dir_names = 0;
        Ok(())
    }

    /// Closes what `setup` opened (not measured).
    pub fn teardown(&self, op: Op, st: &Stream) -> Option<Request> {
        self.setup(op)?;
        Some(Request::release(st.node, st.fh, 0, op.lists_dir()))
    }

    fn file(&self, i: usize) -> u64 {
        self.files[i % self.files.len()]
    }

    fn offset(&self, i: usize, size: u32) -> u64 {
        (i as u64 * u64::from(size)) % self.file_len
    }

    /// The first request of the op `st` claimed.
    pub fn first(&self, op: Op, st: &Stream) -> Request {
        let i = st.index;
        match op {
            Op::Lookup => Request::lookup(self.files_dir, &format!("f{}", i % self.files.len())),
            Op::LookupMissing => Request::lookup(self.files_dir, &format!("missing{i}")),
            Op::Getattr => Request::getattr(self.file(i)),
            Op::OpenRelease => Request::open(self.file(i), libc::O_RDONLY as u32, false),
            Op::CreateRelease => {
                let flags = (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u32;
                let mode = libc::S_IFREG | 0o644;
                Request::create(self.work_dir, &format!("n{i}"), flags, mode, self.secctx)
            }
            Op::Rename => Request::rename(
                self.work_dir,
                &format!("n{i}"),
                self.work_dir,
                &format!("m{i}"),
            ),
            Op::Unlink => Request::unlink(self.work_dir, &format!("m{i}")),
            Op::Readdir => Request::readdir(st.node, st.fh, st.dir_off, 4096),
            Op::Readdirplus => Request::readdirplus(st.node, st.fh, st.dir_off, 4096),
            // Handle 0 where the server takes no OPEN (no setup ran).
            Op::Read(n) => Request::read(self.read_file, st.fh, self.offset(i, n), n),
            Op::Write(n) => Request::write(self.write_file, st.fh, self.offset(i, n), n),
        }
    }

    /// What follows `r`, the reply to the op's last request.
    pub fn next(&mut self, op: Op, st: &mut Stream, r: &Reply) -> Result<Next, ReplyError> {
        if op == Op::LookupMissing {
            // ENOENT, or a negative entry (nodeid 0) the guest may cache.
            return match r.ok() {
                Err(ReplyError::Errno { errno, .. }) if errno == libc::ENOENT => Ok(Next::Done),
                Err(e) => Err(e),
                Ok(r) => match entry_nodeid(&r.args, op::LOOKUP)? {
                    0 => Ok(Next::Done),
                    n => Err(ReplyError::Unexpected {
                        op: "LOOKUP of a missing name",
                        what: format!("found node {n}"),
                    }),
                },
            };
        }
        let r = r.ok()?;
        match (op, r.opcode) {
            (Op::Lookup, _) => {
                *self
                    .forgets
                    .entry(entry_nodeid(&r.args, op::LOOKUP)?)
                    .or_default() += 1;
            }
            (Op::OpenRelease, op::OPEN) => {
                let fh = open_fh(&r.args, 0, op::OPEN)?;
                return Ok(Next::Send(Request::release(
                    self.file(st.index),
                    fh,
                    0,
                    false,
                )));
            }
            (Op::CreateRelease, op::CREATE) => {
                let node = entry_nodeid(&r.args, op::CREATE)?;
                let fh = open_fh(&r.args, crate::fuse::ENTRY_OUT_LEN, op::CREATE)?;
                self.created_nodes.push(node);
                if self.no_open {
                    return Ok(Next::Done);
                }
                let flags = libc::O_WRONLY as u32;
                return Ok(Next::Send(Request::release(node, fh, flags, false)));
            }
            (Op::Readdir, _) => self.next_page(st, &r.data)?,
            (Op::Readdirplus, _) => {
                let entries = parse_direntplus(&r.data)?;
                for e in entries.iter().filter(|e| e.nodeid != 0 && !e.is_dot()) {
                    *self.forgets.entry(e.nodeid).or_default() += 1;
                }
                st.dir_off = entries.last().map_or(0, |e| e.off);
            }
            (Op::Read(n), _) if r.header.body_len() != n as usize => {
                return Err(ReplyError::Unexpected {
                    op: "READ",
                    what: format!("{} bytes instead of {n}", r.header.body_len()),
                });
            }
            (Op::Write(n), _) if written(&r.args)? != n => {
                return Err(ReplyError::Unexpected {
                    op: "WRITE",
                    what: format!("{} bytes written instead of {n}", written(&r.args)?),
                });
            }
            _ => {}
        }
        Ok(Next::Done)
    }

    /// Follows one READDIR page: on to its last offset, or back to offset 0 at the end of
    /// the directory, once the pass listed every name in `big/`.
    fn next_page(&self, st: &mut Stream, page: &[u8]) -> Result<(), ReplyError> {
        let entries = parse_dirent(page)?;
        if let Some(last) = entries.last() {
            st.dir_names += entries.iter().filter(|e| !e.is_dot()).count();
            st.dir_off = last.off;
            return Ok(());
        }
        if st.dir_names != self.entries {
            return Err(ReplyError::Unexpected {
                op: "READDIR",
                what: format!(
                    "a pass over {BIG_DIR}/ listed {} names, not {}",
                    st.dir_names, self.entries
                ),
            });
        }
        st.dir_off = 0;
        st.dir_names = 0;
        Ok(())
    }

    /// Ends a phase: the lookup counts the guest would now drop.
    pub fn end_phase(&mut self, op: Op) -> Vec<(u64, u64)> {
        match op {
            Op::CreateRelease => self.created = self.next,
            Op::Unlink => {
                self.created = 0;
                for n in self.created_nodes.drain(..) {
                    *self.forgets.entry(n).or_default() += 1;
                }
            }
            _ => {}
        }
        self.next = 0;
        self.forgets.drain().collect()
    }
}
