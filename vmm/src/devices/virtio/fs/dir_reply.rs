//! READDIR and READDIRPLUS answers built in one buffer (lever `flat_readdir`).
//!
//! fuse-backend-rs writes a listing into guest memory an entry at a time: a
//! `fuse_entry_out` (READDIRPLUS), a `fuse_dirent`, the name and its padding,
//! each a separate write through the descriptor chain (a space check, a walk
//! of the chain's slices, a volatile copy). With the directory read ahead
//! (dir_stream.rs) that encoding was what remained of the server's time in a
//! big listing. Here the answer is laid out in a local buffer and copied
//! into the chain in one write. The entries and their limits are
//! fuse-backend-rs's: each 8-byte aligned, none once the next would not fit
//! in the size the guest asked for.

use std::io::{self, Write};
use std::mem::size_of;

use fuse_backend_rs::abi::fuse_abi::{Dirent, EntryOut, InHeader, OutHeader, ReadIn};
use fuse_backend_rs::api::filesystem::{DirEntry, Entry, FileSystem};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use vm_memory::ByteValued;

/// FUSE_READDIR's opcode.
pub const FUSE_READDIR: u32 = 28;
/// FUSE_READDIRPLUS's opcode.
pub const FUSE_READDIRPLUS: u32 = 44;

/// Appends one entry to `buf` if it fits in `max` bytes in all; returns
/// the bytes it took, 0 when it does not fit (the answer is full).
fn push(buf: &mut Vec<u8>, max: usize, d: &DirEntry, entry: Option<Entry>) -> io::Result<usize> {
    let name_len =
        u32::try_from(d.name.len()).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    let dirent_len = size_of::<Dirent>() + d.name.len();
    let padded = (dirent_len + 7) & !7;
    let total = padded + entry.map_or(0, |_| size_of::<EntryOut>());
    if max.saturating_sub(buf.len()) < total {
        return Ok(0);
    }
    if let Some(entry) = entry {
        buf.extend_from_slice(EntryOut::from(entry).as_slice());
    }
    let dirent = Dirent {
        ino: d.ino,
        off: d.offset,
        namelen: name_len,
        type_: d.type_,
    };
    buf.extend_from_slice(dirent.as_slice());
    buf.extend_from_slice(d.name);
    buf.resize(buf.len() + (padded - dirent_len), 0);
    Ok(total)
}

/// Answers the READDIR (READDIRPLUS if `plus`) request in `reader` from
/// `fs`, the answer laid out in one buffer and written once.
pub fn serve<F, B>(
    fs: &F,
    plus: bool,
    mut reader: Reader<'_, B>,
    mut writer: VirtioFsWriter<'_, B>,
) -> io::Result<usize>
where
    F: FileSystem<Inode = u64, Handle = u64>,
    B: vm_memory::bitmap::BitmapSlice,
{
    let header: InHeader = reader.read_obj()?;
    let out = |len: usize, error: i32| OutHeader {
        len: len as u32,
        error,
        unique: header.unique,
    };
    let answer = match reader.read_obj::<ReadIn>() {
        // As fuse-backend-rs: a chain with less room than asked for is ENOMEM.
        Ok(args) if writer.available_bytes() < args.size as usize => Err(libc::ENOMEM),
        Ok(args) => {
            let ctx = super::device::caller(&header);
            let max = args.size as usize;
            let mut buf = Vec::with_capacity(max);
            let res = if plus {
                fs.readdirplus(
                    &ctx,
                    header.nodeid,
                    args.fh,
                    args.size,
                    args.offset,
                    &mut |d, e| push(&mut buf, max, &d, Some(e)),
                )
            } else {
                fs.readdir(
                    &ctx,
                    header.nodeid,
                    args.fh,
                    args.size,
                    args.offset,
                    &mut |d| push(&mut buf, max, &d, None),
                )
            };
            res.map(|()| buf)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
        }
        Err(_) => Err(libc::EINVAL),
    };
    match answer {
        Ok(buf) => {
            writer.write_obj(out(size_of::<OutHeader>() + buf.len(), 0))?;
            writer.write_all(&buf)?;
        }
        Err(errno) => writer.write_obj(out(size_of::<OutHeader>(), -errno))?,
    }
    Ok(writer.bytes_written())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_stop_when_full() {
        let d = DirEntry {
            ino: 7,
            offset: 1,
            type_: libc::DT_REG as u32,
            name: b"abc",
        };
        let mut buf = Vec::new();
        // 24 bytes of dirent and 3 of name, padded to 32.
        assert_eq!(push(&mut buf, 64, &d, None).unwrap(), 32);
        assert_eq!(buf.len(), 32);
        assert_eq!(&buf[24..27], b"abc");
        assert_eq!(&buf[27..32], &[0; 5]);
        assert_eq!(u64::from_ne_bytes(buf[0..8].try_into().unwrap()), 7);
        assert_eq!(u32::from_ne_bytes(buf[16..20].try_into().unwrap()), 3);
        assert_eq!(push(&mut buf, 64, &d, None).unwrap(), 32);
        assert_eq!(push(&mut buf, 64, &d, None).unwrap(), 0, "full at 64");
        assert_eq!(buf.len(), 64);
        // With an entry: fuse_entry_out first, then the dirent.
        let mut plus = Vec::new();
        let entry = Entry {
            inode: 9,
            generation: 0,
            // SAFETY: `stat64` is plain integers; all zeroes is a valid value.
            attr: unsafe { std::mem::zeroed() },
            attr_flags: 0,
            attr_timeout: std::time::Duration::ZERO,
            entry_timeout: std::time::Duration::ZERO,
        };
        let n = push(&mut plus, 4096, &d, Some(entry)).unwrap();
        assert_eq!(n, size_of::<EntryOut>() + 32);
        assert_eq!(u64::from_ne_bytes(plus[0..8].try_into().unwrap()), 9);
        assert_eq!(&plus[size_of::<EntryOut>() + 24..][..3], b"abc");
    }
}
