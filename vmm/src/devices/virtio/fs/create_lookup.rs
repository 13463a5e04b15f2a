//! One request per O_CREAT open of a name the guest has not looked up.
//!
//! Linux's FUSE client looks a name up before it creates it, so every new
//! file cost a LOOKUP ("no such entry") and then a CREATE. hutch's guest
//! kernel (patch 0004) offers the private INIT flag
//! [`FUSE_HUTCH_CREATE_LOOKUP`]; when the server grants it, the guest sends
//! the CREATE at once, marked [`FUSE_OPEN_HUTCH_LOOKUP`]. The server then
//! creates the file exclusively, and when the name exists (and the caller
//! did not ask for O_EXCL) answers with the existing entry, flagged
//! [`FOPEN_HUTCH_EXISTS`], without opening it: the guest finishes the open as
//! after a positive LOOKUP (following a symlink, truncating, checking
//! permissions). A directory is answered EEXIST, and the guest looks it up.
//!
//! The flag is granted like the other private ones (private_init.rs).

/// INIT flag (bit 31 of `flags2`): CREATE may answer an existing name.
pub const FUSE_HUTCH_CREATE_LOOKUP: u64 = 1 << 63;
/// `fuse_create_in.open_flags`: this CREATE comes without a LOOKUP first.
pub const FUSE_OPEN_HUTCH_LOOKUP: u32 = 1 << 31;
/// `fuse_open_out.open_flags`: the name existed; the entry is a LOOKUP's.
pub const FOPEN_HUTCH_EXISTS: u32 = 1 << 31;
