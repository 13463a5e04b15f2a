//! Directory listings read 32 KiB at a time.
//!
//! A FUSE client asks for a listing one page per READDIR, although callers
//! hand `getdents64` at least 32 KiB (glibc's opendir buffer): a
//! 10,000-entry directory cost about 80 round trips. hutch's guest kernel
//! (patch 0009) offers the private INIT flag [`FUSE_HUTCH_BIG_READDIR`];
//! when the workspace grants it, the guest asks for 32 KiB per READDIR (and
//! per READDIRPLUS that follows lookups in the directory), and the
//! workspace's directory streams (dirs.rs) already read the host 32 KiB at a
//! time. Nothing else changes on the server: a request of any size is
//! filled from the stream, and entries the guest could not take are asked
//! for again from their offset.

/// INIT flag (bit 28 of `flags2`): READDIR of 32 KiB are welcome.
pub const FUSE_HUTCH_BIG_READDIR: u64 = 1 << 60;
