//! Entries that say whether a file has extended attributes.
//!
//! `ls -l` asks for two extended attributes of every file it lists
//! (`security.selinux`, and `system.nfs4_acl` since the guest has no POSIX
//! ACLs), and each was a GETXATTR round trip answered ENODATA: 400 files
//! cost 800 requests, and `ls -la` took over twice as long as on virtiofsd,
//! whose default turns xattrs off (the guest stops asking after one ENOSYS).
//! The workspace keeps xattrs (the conformance suite sets `user.*` ones), so
//! hutch's guest kernel (patch 0008) offers the private INIT flag
//! [`FUSE_HUTCH_NOXATTR`]; when the workspace grants it, `PolicyFs` marks
//! each LOOKUP, READDIRPLUS and CREATE entry with
//! [`FUSE_ATTR_HUTCH_XATTR_KNOWN`], plus [`FUSE_ATTR_HUTCH_NO_XATTR`] when
//! the host file has none (one `listxattr` of size 0), and the guest answers
//! getxattr and listxattr itself until those attributes expire. A host
//! change shows within the attribute timeout; a setxattr from the guest
//! clears the guest's record. Symlinks are not marked (the host call would
//! follow them).

/// INIT flag (bit 29 of `flags2`): entries may say whether there are xattrs.
pub const FUSE_HUTCH_NOXATTR: u64 = 1 << 61;
/// `fuse_attr.flags`: this entry says whether the inode has xattrs.
pub const FUSE_ATTR_HUTCH_XATTR_KNOWN: u32 = 1 << 30;
/// `fuse_attr.flags`: and it has none.
pub const FUSE_ATTR_HUTCH_NO_XATTR: u32 = 1 << 31;
