//! A rename without a LOOKUP of its target: the server reports what it replaced.
//!
//! Linux looks a rename's target name up before renaming, so every rename to
//! a name the guest has not cached (a temporary file renamed into place by an
//! editor, a package manager, a build tool) cost a LOOKUP and then the
//! RENAME. hutch's guest kernel (patch 0006) offers the private INIT flag
//! [`FUSE_HUTCH_RENAME_REPORT`]; when the workspace grants it, the guest
//! leaves the target unlooked-up and sends each rename (other than
//! RENAME_EXCHANGE) as RENAME2 marked [`FUSE_RENAME_HUTCH_REPORT`]. The host's
//! `renameat2` answers EISDIR, ENOTDIR, ENOTEMPTY or EEXIST itself; on
//! success the reply carries the node id of the inode the rename replaced
//! (0 if none), so the guest can mark that inode's attributes stale when it
//! holds it under another name or through an open file, as it would have
//! after a LOOKUP. fuse-backend-rs knows neither the flag nor the reply, so
//! the device serves a marked RENAME2 here.

use std::ffi::CStr;
use std::io::{self, Read};

use fuse_backend_rs::abi::fuse_abi::{InHeader, OutHeader, Rename2In};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;

use super::private_init::read_u32;
use super::ShareFs;

/// INIT flag (bit 30 of `flags2`): RENAME2 may ask which inode it replaced.
pub const FUSE_HUTCH_RENAME_REPORT: u64 = 1 << 62;
/// `fuse_rename2_in.flags`: answer with the replaced node id.
pub const FUSE_RENAME_HUTCH_REPORT: u32 = 1 << 31;
/// FUSE_RENAME2's opcode.
pub const FUSE_RENAME2: u32 = 45;

/// `fuse_in_header` (40 bytes), then `fuse_rename2_in`: newdir, flags.
const RENAME2_IN_FLAGS: u64 = 48;
/// Two names of at most NAME_MAX bytes, each with its NUL.
const MAX_NAMES: usize = 2 * 256;

/// Whether a RENAME2 request asks for the report.
pub fn is_marked<M: GuestMemory>(mem: &M, chain: &DescriptorChain<&M>) -> bool {
    read_u32(mem, chain, false, RENAME2_IN_FLAGS).is_some_and(|f| f & FUSE_RENAME_HUTCH_REPORT != 0)
}

/// The two NUL-terminated names that follow `fuse_rename2_in`.
fn names(body: &[u8]) -> Option<(&CStr, &CStr)> {
    let old = CStr::from_bytes_until_nul(body).ok()?;
    let new = CStr::from_bytes_until_nul(&body[old.to_bytes_with_nul().len()..]).ok()?;
    (!old.is_empty() && !new.is_empty()).then_some((old, new))
}

/// Serves a marked RENAME2: renames through `fs` and answers with the
/// replaced node id (8 bytes after the header), or with the error.
pub fn serve<B: vm_memory::bitmap::BitmapSlice>(
    fs: &ShareFs,
    mut reader: Reader<'_, B>,
    mut writer: VirtioFsWriter<'_, B>,
) -> io::Result<usize> {
    let header: InHeader = reader.read_obj()?;
    let args = reader.read_obj::<Rename2In>();
    let fixed = std::mem::size_of::<InHeader>() + std::mem::size_of::<Rename2In>();
    let len = (header.len as usize).saturating_sub(fixed);
    let mut body = vec![0u8; len.min(MAX_NAMES + 1)];
    let read = reader.read_exact(&mut body);
    let reply = match (args, read, names(&body)) {
        (Ok(args), Ok(()), Some((old, new))) if len <= MAX_NAMES => {
            let ctx = super::device::caller(&header);
            let flags = args.flags & !FUSE_RENAME_HUTCH_REPORT;
            fs.rename_reporting(&ctx, header.nodeid, old, args.newdir, new, flags)
        }
        (Ok(_), Ok(()), _) if len > MAX_NAMES => {
            Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG))
        }
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    let out = |len: usize, error: i32| OutHeader {
        len: len as u32,
        error,
        unique: header.unique,
    };
    match reply {
        Ok(replaced) => {
            writer.write_obj(out(std::mem::size_of::<OutHeader>() + 8, 0))?;
            writer.write_obj(replaced)?;
        }
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            writer.write_obj(out(std::mem::size_of::<OutHeader>(), -errno))?;
        }
    }
    Ok(writer.bytes_written())
}
