//! Landlock for a file system backend: the kernel itself refuses any path
//! outside what the share may reach, whatever the server's own checks do.
//!
//! A workspace backend may do everything beneath its directory except make
//! device nodes or execute; a system-root backend may only read files beneath
//! the allowlisted top-level names, and list directories beneath its root
//! (its root itself must be listable, and Landlock cannot grant a directory
//! without what is beneath it: a bug could show a name elsewhere, never a
//! file's content); both may read their own `/proc/self` (PassthroughFs reopens files
//! through `/proc/self/fd`, where Landlock checks the file's own path).
//! Where the kernel's Landlock ABI allows, TCP bind and connect, abstract
//! Unix sockets and signals to processes outside the backend are refused too.
//! Raw syscalls (the numbers are the same on x86_64 and arm64), applied by
//! the calling thread to itself and every thread it starts later; it needs
//! no privilege, only no-new-privileges. A kernel without Landlock leaves
//! the backend as it was, and says so.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const SYS_CREATE_RULESET: libc::c_long = 444;
const SYS_ADD_RULE: libc::c_long = 445;
const SYS_RESTRICT_SELF: libc::c_long = 446;
const CREATE_RULESET_VERSION: u32 = 1;
const RULE_PATH_BENEATH: libc::c_int = 1;

const EXECUTE: u64 = 1 << 0;
const READ_FILE: u64 = 1 << 2;
const READ_DIR: u64 = 1 << 3;
const MAKE_CHAR: u64 = 1 << 6;
const MAKE_BLOCK: u64 = 1 << 11;
/// LANDLOCK_ACCESS_FS_REFER (ABI 2), TRUNCATE (ABI 3), IOCTL_DEV (ABI 5).
const REFER: u64 = 1 << 13;
const TRUNCATE: u64 = 1 << 14;
const IOCTL_DEV: u64 = 1 << 15;

/// What a rule allows beneath its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read files and list directories.
    Read,
    /// List directories only.
    List,
    /// Everything a read-write share needs: no device nodes, no execution.
    ReadWrite,
}

/// The access rights this kernel's Landlock ABI knows.
fn handled(abi: i64) -> u64 {
    let mut all = (1 << 13) - 1;
    if abi >= 2 {
        all |= REFER;
    }
    if abi >= 3 {
        all |= TRUNCATE;
    }
    if abi >= 5 {
        all |= IOCTL_DEV;
    }
    all
}

impl Access {
    fn rights(self, handled: u64) -> u64 {
        match self {
            Access::Read => READ_FILE | READ_DIR,
            Access::List => READ_DIR,
            Access::ReadWrite => handled & !(MAKE_CHAR | MAKE_BLOCK | EXECUTE | IOCTL_DEV),
        }
    }
}

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    /// ABI 4: TCP bind and connect; handled with no rule, both are refused.
    handled_access_net: u64,
    /// ABI 6: abstract Unix sockets and signals outside the domain.
    scoped: u64,
}

/// LANDLOCK_ACCESS_NET_BIND_TCP | LANDLOCK_ACCESS_NET_CONNECT_TCP.
const NET_TCP: u64 = (1 << 0) | (1 << 1);
/// LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL.
const SCOPES: u64 = (1 << 0) | (1 << 1);

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The rules for a share at `source`: (directory, access).
pub fn share_rules(source: &Path, read_write: bool, top_level: &[&str]) -> Vec<(PathBuf, Access)> {
    // `/proc/self` opens as `/proc/<this process>`: its own fds and mount
    // table, not other processes' (Landlock also keeps ptrace-like access to
    // processes outside the domain from it).
    let mut rules = vec![(PathBuf::from("/proc/self"), Access::Read)];
    if read_write {
        rules.push((source.to_path_buf(), Access::ReadWrite));
    } else {
        rules.push((source.to_path_buf(), Access::List));
        rules.extend(
            top_level
                .iter()
                .map(|name| source.join(name))
                .filter(|p| p.exists())
                .map(|p| (p, Access::Read)),
        );
    }
    rules
}

/// This kernel's Landlock ABI version, or `None` without Landlock.
pub fn abi() -> Option<i64> {
    let abi = version();
    (abi >= 1).then_some(abi)
}

/// landlock_create_ruleset's version query: the ABI, or -1 with errno set.
fn version() -> i64 {
    // SAFETY: with a null attribute and the VERSION flag the call only
    // returns the ABI version.
    unsafe {
        libc::syscall(
            SYS_CREATE_RULESET,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    }
}

/// Restricts the calling thread (and the threads it starts) to `rules`.
/// Returns the Landlock ABI version applied, or `None` when the kernel has
/// no Landlock.
pub fn restrict(rules: &[(PathBuf, Access)]) -> io::Result<Option<i64>> {
    let abi = version();
    if abi < 1 {
        return match io::Error::last_os_error().raw_os_error() {
            Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => Ok(None),
            _ => Err(io::Error::last_os_error()),
        };
    }
    let handled = handled(abi);
    // A backend needs no network and signals no one: what the ABI can
    // refuse, it refuses. Older ABIs get the prefix of the struct they know.
    let attr = RulesetAttr {
        handled_access_fs: handled,
        handled_access_net: if abi >= 4 { NET_TCP } else { 0 },
        scoped: if abi >= 6 { SCOPES } else { 0 },
    };
    let size = match abi {
        1..=3 => 8,
        4 | 5 => 16,
        _ => std::mem::size_of::<RulesetAttr>(),
    };
    // SAFETY: `attr` is a valid ruleset attribute at least `size` bytes long;
    // the returned descriptor is checked.
    let fd = unsafe { libc::syscall(SYS_CREATE_RULESET, &attr as *const RulesetAttr, size, 0u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ruleset descriptor was just created and is ours alone.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    for (dir, access) in rules {
        let c = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
        // SAFETY: a NUL-terminated path; the descriptor is checked.
        let dfd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if dfd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display())));
        }
        // SAFETY: `dfd` was just opened and is ours alone.
        let dir_fd = unsafe { OwnedFd::from_raw_fd(dfd) };
        let rule = PathBeneathAttr {
            allowed_access: access.rights(handled),
            parent_fd: dir_fd.as_raw_fd(),
        };
        // SAFETY: `rule` is a path-beneath attribute as the rule type says;
        // the result is checked.
        let rc = unsafe {
            libc::syscall(
                SYS_ADD_RULE,
                ruleset.as_raw_fd(),
                RULE_PATH_BENEATH,
                &rule as *const PathBeneathAttr,
                0u32,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display())));
        }
    }
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers; Landlock requires it.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: restrict_self takes the ruleset descriptor and flags.
    if unsafe { libc::syscall(SYS_RESTRICT_SELF, ruleset.as_raw_fd(), 0u32) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Some(abi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restricted_thread_reaches_only_its_rules() {
        let inside = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        std::fs::write(inside.path().join("f"), "f").unwrap();
        let (inn, out) = (inside.path().to_path_buf(), outside.path().to_path_buf());
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let sleeper_pid = sleeper.id() as libc::pid_t;
        // Landlock binds the thread that asks: do it in one of our own.
        let r = std::thread::spawn(move || {
            let rules = share_rules(&inn, true, &[]);
            let abi = restrict(&rules).unwrap()?;
            let read_out = std::fs::read(out.join("secret")).map_err(|e| e.kind());
            let write_out = std::fs::write(out.join("new"), "x").map_err(|e| e.kind());
            let read_in = std::fs::read(inn.join("f")).map_err(|e| e.kind());
            std::fs::write(inn.join("g"), "g").unwrap();
            std::fs::create_dir(inn.join("d")).unwrap();
            std::fs::rename(inn.join("g"), inn.join("d/g")).unwrap();
            let proc = std::fs::read_to_string("/proc/self/status").is_ok()
                && std::fs::read_to_string(format!("/proc/{sleeper_pid}/status")).is_err();
            let connect = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.kind());
            // SAFETY: signal 0 only checks whether a signal could be sent.
            let signal = unsafe { libc::kill(sleeper_pid, 0) };
            Some((
                abi,
                read_out,
                write_out,
                read_in,
                proc,
                connect.err(),
                signal,
            ))
        })
        .join()
        .unwrap();
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        let Some((abi, read_out, write_out, read_in, proc, connect, signal)) = r else {
            eprintln!("no Landlock in this kernel: nothing to check");
            return;
        };
        if abi >= 4 {
            assert_eq!(
                connect,
                Some(io::ErrorKind::PermissionDenied),
                "TCP connect"
            );
        }
        if abi >= 6 {
            assert_eq!(signal, -1, "a signal left the backend");
        }
        eprintln!("Landlock ABI {abi}");
        assert_eq!(read_out, Err(io::ErrorKind::PermissionDenied));
        assert_eq!(write_out, Err(io::ErrorKind::PermissionDenied));
        assert_eq!(read_in, Ok(b"f".to_vec()));
        assert!(proc);
        assert!(!outside.path().join("new").exists());
        assert!(inside.path().join("d/g").exists());
        // This thread was never restricted.
        assert!(std::fs::read(outside.path().join("secret")).is_ok());
    }

    #[test]
    fn a_read_only_root_reaches_only_its_top_level_names() {
        let root = tempfile::tempdir().unwrap();
        for d in ["usr/bin", "home/u"] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        std::fs::write(root.path().join("usr/bin/tool"), "t").unwrap();
        std::fs::write(root.path().join("home/u/key"), "k").unwrap();
        let rules = share_rules(root.path(), false, &["usr", "lib", "home-not-listed"]);
        assert_eq!(
            rules.len(),
            3,
            "/proc, the root listed, usr (lib does not exist): {rules:?}"
        );
        let base = root.path().to_path_buf();
        let r = std::thread::spawn(move || {
            restrict(&rules).unwrap()?;
            Some((
                std::fs::read(base.join("usr/bin/tool")).map_err(|e| e.kind()),
                std::fs::read(base.join("home/u/key")).map_err(|e| e.kind()),
                std::fs::write(base.join("usr/bin/new"), "x").map_err(|e| e.kind()),
                std::fs::read_dir(&base)
                    .map(|d| d.count())
                    .map_err(|e| e.kind()),
            ))
        })
        .join()
        .unwrap();
        let Some((tool, key, write, listed)) = r else {
            return;
        };
        assert_eq!(listed, Ok(2));
        assert_eq!(tool, Ok(b"t".to_vec()));
        assert_eq!(key, Err(io::ErrorKind::PermissionDenied));
        assert_eq!(write, Err(io::ErrorKind::PermissionDenied));
    }
}
