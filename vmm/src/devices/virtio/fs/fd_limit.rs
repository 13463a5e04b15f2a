//! The descriptor limit a share needs. PassthroughFs keeps one O_PATH
//! descriptor per inode the guest holds, so a guest that walks a large tree
//! (a `git status`, a `node_modules`) needs tens of thousands; the usual soft
//! limit of 1024 would fail its lookups with EMFILE. Like virtiofsd, hutch
//! raises the soft limit to the hard one, once per process.

use std::sync::Once;

use log::warn;

/// Below this many descriptors a large workspace can run out.
const ENOUGH: u64 = 8_192;

static RAISED: Once = Once::new();

/// Raises RLIMIT_NOFILE's soft limit to its hard limit (once).
pub fn raise() {
    RAISED.call_once(raise_now);
}

fn raise_now() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `want` is a valid rlimit; raising the soft limit up to
        // the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
            warn!(
                "virtio-fs: raising the open-file limit to {}: {}",
                lim.rlim_max,
                std::io::Error::last_os_error()
            );
            return;
        }
    }
    if lim.rlim_max < ENOUGH {
        warn!(
            "virtio-fs: the hard open-file limit is {}; a large workspace may hit EMFILE",
            lim.rlim_max
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The current soft and hard RLIMIT_NOFILE.
    fn current() -> (u64, u64) {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid, writable rlimit.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        (lim.rlim_cur, lim.rlim_max)
    }

    #[test]
    fn soft_limit_reaches_the_hard_limit() {
        let (_, hard) = current();
        // One below the hard limit, so the test shows a raise without
        // starving other tests of descriptors.
        let lower = libc::rlimit {
            rlim_cur: hard - 1,
            rlim_max: hard,
        };
        // SAFETY: `lower` is a valid rlimit; lowering needs no privilege.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lower) }, 0);
        assert_eq!(current(), (hard - 1, hard));
        raise_now();
        assert_eq!(current(), (hard, hard));
    }
}
