//! Write-through WRITEs that answer the file's attributes.
//!
//! Without the writeback cache every `write()` is a WRITE, and upstream
//! Linux then marks the file's size and mtime stale. The next `read()`
//! (with AUTO_INVAL_DATA) or `stat()` sends a GETATTR, finds an mtime the
//! guest did not have (its own write's), and drops every cached page of the
//! file, so the guest reads back from the server what it has just written.
//! A linker that writes its output with small writes and reads parts of it
//! back (GNU ld through stdio) sent 4,741 WRITE, 3,866 GETATTR and 3,866
//! READ for one 12 MB binary.
//!
//! hutch's guest kernel (patch 0012) offers the private INIT flag
//! [`FUSE_HUTCH_WRITE_ATTR`]. Granted, a write-through WRITE is marked
//! [`FUSE_WRITE_HUTCH_ATTR`] and carries the mtime (in `lock_owner`, in
//! nanoseconds) and the low 32 bits of the size that the guest holds for the
//! file. The server looks at the file before writing: if it still has that
//! mtime and size, nothing but this guest changed it since the guest last
//! heard, and the answer says so ([`FUSE_WRITE_HUTCH_UNCHANGED`]). Either
//! way the answer carries the attributes after the write (`fuse_attr_out`
//! after `fuse_write_out`). The guest takes them only when unchanged: its
//! pages are then the file's, and neither the next read nor the next stat
//! asks again. Otherwise it marks size and mtime stale as before, and the
//! refresh drops its pages, so a host edit still shows.
//!
//! What stays unseen: a host write that lands between the server's look
//! and its write, with the same size and within the same timestamp tick.
//! A GETATTR-based check misses a host change in the same tick too.

use std::io::{self, Read};
use std::mem::size_of;

use fuse_backend_rs::abi::fuse_abi::{Attr, AttrOut, InHeader, OutHeader, WriteIn, WriteOut};
use fuse_backend_rs::api::filesystem::{FileSystem, ZeroCopyReader};
use fuse_backend_rs::file_traits::FileReadWriteVolatile;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::DescriptorChain;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::GuestMemory;

use super::private_init::read_u32;
use super::ShareFs;

/// INIT flag (bit 25 of `flags2`): write-through WRITEs may ask for the
/// attributes after the write.
pub const FUSE_HUTCH_WRITE_ATTR: u64 = 1 << 57;
/// `fuse_write_in.write_flags`: answer with `fuse_attr_out`; `lock_owner`
/// and `padding` hold the guest's mtime and the low half of its size.
pub const FUSE_WRITE_HUTCH_ATTR: u32 = 1 << 30;
/// `fuse_write_out.padding`: the file had the guest's mtime and size
/// before the write.
pub const FUSE_WRITE_HUTCH_UNCHANGED: u32 = 1;
/// FUSE_WRITE's opcode.
pub const FUSE_WRITE: u32 = 16;

/// `fuse_in_header` (40 bytes), then `fuse_write_in`: fh, offset, size,
/// write_flags (offset 60).
const WRITE_IN_FLAGS: u64 = 60;

/// Whether a WRITE request asks for the attributes.
pub fn is_marked<M: GuestMemory>(mem: &M, chain: &DescriptorChain<&M>) -> bool {
    read_u32(mem, chain, false, WRITE_IN_FLAGS).is_some_and(|f| f & FUSE_WRITE_HUTCH_ATTR != 0)
}

/// The guest's view that a marked WRITE carries: mtime in nanoseconds since
/// the epoch (signed, as the guest sends it) and the low 32 bits of size.
fn unchanged(before: &libc::stat64, mtime_ns: u64, size_low: u32) -> bool {
    nanos(before.st_mtime, before.st_mtime_nsec) == i128::from(mtime_ns as i64)
        && before.st_size as u32 == size_low
}

/// A time in nanoseconds since the epoch, as the guest sends an mtime.
pub(super) fn nanos(sec: i64, nsec: i64) -> i128 {
    i128::from(sec) * 1_000_000_000 + i128::from(nsec)
}

/// The request's data, read straight into the host file.
struct Data<'a, B: BitmapSlice>(Reader<'a, B>);

impl<B: BitmapSlice> ZeroCopyReader for Data<'_, B> {
    fn read_to(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> io::Result<usize> {
        self.0.read_to_at(f, count, off)
    }
}

impl<B: BitmapSlice> Read for Data<'_, B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

/// Serves a marked WRITE: looks at the file, writes through `fs`, and
/// answers `fuse_write_out` (with [`FUSE_WRITE_HUTCH_UNCHANGED`] when it
/// applies) and the attributes after the write, or the error. When the
/// attributes cannot be read after a write that succeeded, the answer is
/// `fuse_write_out` alone, which the guest takes as "ask again".
pub fn serve<B: BitmapSlice>(
    fs: &ShareFs,
    mut reader: Reader<'_, B>,
    mut writer: VirtioFsWriter<'_, B>,
) -> io::Result<usize> {
    let header: InHeader = reader.read_obj()?;
    let args = reader.read_obj::<WriteIn>();
    let ctx = super::device::caller(&header);
    let out = |len: usize, error: i32| OutHeader {
        len: len as u32,
        error,
        unique: header.unique,
    };
    let written = args.and_then(|a| {
        if a.size as usize > reader.available_bytes() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let before = fs.getattr(&ctx, header.nodeid, None).ok();
        let same = before.is_some_and(|(st, _)| unchanged(&st, a.lock_owner, a.padding));
        let n = fs.write(
            &ctx,
            header.nodeid,
            a.fh,
            &mut Data(reader),
            a.size,
            a.offset,
            None,
            false,
            a.flags,
            a.fuse_flags & !FUSE_WRITE_HUTCH_ATTR,
        )?;
        Ok((n, same))
    });
    match written {
        Ok((n, same)) => {
            let write_out = WriteOut {
                size: n as u32,
                padding: if same { FUSE_WRITE_HUTCH_UNCHANGED } else { 0 },
            };
            let after = fs.getattr(&ctx, header.nodeid, None).ok();
            let len = size_of::<OutHeader>()
                + size_of::<WriteOut>()
                + after.map_or(0, |_| size_of::<AttrOut>());
            writer.write_obj(out(len, 0))?;
            writer.write_obj(write_out)?;
            if let Some((st, valid)) = after {
                writer.write_obj(AttrOut {
                    attr_valid: valid.as_secs(),
                    attr_valid_nsec: valid.subsec_nanos(),
                    dummy: 0,
                    attr: Attr::from(st),
                })?;
            }
        }
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            writer.write_obj(out(size_of::<OutHeader>(), -errno))?;
        }
    }
    Ok(writer.bytes_written())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(sec: i64, nsec: i64, size: i64) -> libc::stat64 {
        // SAFETY: stat64 is plain data; all zeroes is a valid value.
        let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
        st.st_mtime = sec;
        st.st_mtime_nsec = nsec;
        st.st_size = size;
        st
    }

    #[test]
    fn unchanged_needs_the_same_mtime_and_size() {
        let st = at(1_700_000_000, 123_456_789, 5 << 32 | 77);
        let ns = 1_700_000_000_123_456_789u64;
        assert!(unchanged(&st, ns, 77), "low 32 bits of the size");
        assert!(!unchanged(&st, ns + 1, 77), "one nanosecond later");
        assert!(!unchanged(&st, ns, 78), "another size");
        let old = at(-2, 500_000_000, 0);
        assert!(
            unchanged(&old, (-1_500_000_000i64) as u64, 0),
            "before 1970"
        );
    }
}
