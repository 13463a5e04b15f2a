//! `--memory` and `--cpus`: parsing, sbx's defaults and limits against this host.

use thiserror::Error;

/// Smallest guest hutch boots.
pub const MIN_MEMORY: u64 = 128 << 20;
/// Cap of the default memory size.
pub const DEFAULT_MEMORY_CAP: u64 = 32 << 30;

/// Errors in `--memory` / `--cpus`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("--memory {0:?}: not a size (use e.g. 512M, 4G)")]
    NotASize(String),
    #[error("--memory {given}: below the minimum of 128M")]
    TooSmall { given: String },
    #[error("--memory {given}: more than this host's {host_mib} MiB of memory")]
    TooLarge { given: String, host_mib: u64 },
    #[error("--cpus 0: a guest needs at least one CPU")]
    ZeroCpus,
    #[error("--cpus {given}: this host has {host} CPUs")]
    TooManyCpus { given: u32, host: u32 },
}

/// Parses `512M`, `4G`, `1.5G`, `2048MiB`, `1073741824` (bytes).
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let bad = || SizeError::NotASize(s.to_string());
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(bad());
    }
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    let bytes = v * mult as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    // Round down to whole pages.
    Ok((bytes as u64) & !0xfff)
}

/// Validates a parsed `--memory` against the host.
pub fn check_memory(given: &str, host_total: u64) -> Result<u64, SizeError> {
    let bytes = parse_size(given)?;
    if bytes < MIN_MEMORY {
        return Err(SizeError::TooSmall {
            given: given.into(),
        });
    }
    if bytes > host_total {
        return Err(SizeError::TooLarge {
            given: given.into(),
            host_mib: host_total >> 20,
        });
    }
    Ok(bytes)
}

/// sbx's default: half the host's memory, at most 32 GiB, whole MiB.
pub fn default_memory(host_total: u64) -> u64 {
    (host_total / 2).clamp(MIN_MEMORY, DEFAULT_MEMORY_CAP) & !((1 << 20) - 1)
}

/// Validates `--cpus` against the host.
/// Guest memory above which the kernel's own sizing of the dentry and inode
/// cache hash tables passes [`hash_table_caps`]'s.
const HASH_CAPS_ABOVE: u64 = 4 << 30;

/// Kernel parameters that cap the dentry and inode cache hash tables of a
/// guest of `memory` bytes, or `None` where the kernel's own sizing is
/// smaller. The kernel sizes them by memory: a 12 GiB guest zeroed 24 MiB
/// of them at boot (~40 ms under TCG), memory the host then keeps resident.
/// The caps, 512Ki and 256Ki buckets (6 MiB), keep chains about two long
/// at a million cached names.
pub fn hash_table_caps(memory: u64) -> Option<&'static str> {
    (memory > HASH_CAPS_ABOVE).then_some("dhash_entries=524288 ihash_entries=262144")
}

pub fn check_cpus(given: u32, host: u32) -> Result<u8, SizeError> {
    if given == 0 {
        return Err(SizeError::ZeroCpus);
    }
    if given > host || given > u32::from(crate::arch::x86_64::layout::MAX_VCPUS) {
        return Err(SizeError::TooManyCpus { given, host });
    }
    Ok(given as u8)
}

/// sbx's default: all CPUs but one, at least one.
pub fn default_cpus(host: u32) -> u8 {
    host.saturating_sub(1)
        .clamp(1, u32::from(crate::arch::x86_64::layout::MAX_VCPUS)) as u8
}

/// This host's memory in bytes.
pub fn host_memory() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages.max(0) as u64) * (size.max(0) as u64)
}

/// This host's CPUs.
pub fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tables_are_capped_only_above_4_gib() {
        assert_eq!(hash_table_caps(512 << 20), None);
        assert_eq!(hash_table_caps(4 << 30), None);
        assert_eq!(
            hash_table_caps(12 << 30),
            Some("dhash_entries=524288 ihash_entries=262144")
        );
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("2048MiB"), Ok(2 << 30));
        assert_eq!(parse_size("1073741824"), Ok(1 << 30));
        for bad in ["lots", "", "M", "12Q", "1.2.3G", "-5G"] {
            assert!(
                matches!(parse_size(bad), Err(SizeError::NotASize(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn memory_limits() {
        let host = 24u64 << 30;
        assert_eq!(
            check_memory("0", host),
            Err(SizeError::TooSmall { given: "0".into() })
        );
        assert!(matches!(
            check_memory("64M", host),
            Err(SizeError::TooSmall { .. })
        ));
        assert!(matches!(
            check_memory("25G", host),
            Err(SizeError::TooLarge {
                host_mib: 24576,
                ..
            })
        ));
        assert_eq!(check_memory("4G", host), Ok(4 << 30));
    }

    #[test]
    fn defaults_follow_sbx() {
        assert_eq!(default_memory(24 << 30), 12 << 30);
        assert_eq!(default_memory(128 << 30), 32 << 30);
        assert_eq!(default_memory(200 << 20), MIN_MEMORY);
        assert_eq!(default_cpus(2), 1);
        assert_eq!(default_cpus(1), 1);
        assert_eq!(default_cpus(16), 15);
    }

    #[test]
    fn cpu_limits() {
        assert_eq!(check_cpus(0, 2), Err(SizeError::ZeroCpus));
        assert_eq!(
            check_cpus(999, 2),
            Err(SizeError::TooManyCpus {
                given: 999,
                host: 2
            })
        );
        assert_eq!(check_cpus(2, 2), Ok(2));
    }
}
