//! The VMM's own resident memory: the process's RSS minus guest RAM.

use vm_memory::{GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

/// Resident memory of this process outside guest RAM, in KiB:
/// (total, anonymous).
pub fn vmm_rss_kib(mem: &GuestMemoryMmap) -> Option<(u64, u64)> {
    let guest: Vec<(u64, u64)> = mem
        .iter()
        .map(|r| (r.as_ptr() as u64, r.as_ptr() as u64 + r.len()))
        .collect();
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    Some(sum_outside(&smaps, &guest))
}

/// The mappings outside guest RAM with the most resident memory, for
/// `HUTCH_BENCH_VERBOSE`: (KiB, mapping line).
pub fn top_mappings(mem: &GuestMemoryMmap, n: usize) -> Vec<(u64, String)> {
    let guest: Vec<(u64, u64)> = mem
        .iter()
        .map(|r| (r.as_ptr() as u64, r.as_ptr() as u64 + r.len()))
        .collect();
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                current = (!guest.iter().any(|(s, e)| a < *e && *s < b)).then(|| line.to_string());
                continue;
            }
        }
        if let (Some(m), true) = (&current, line.starts_with("Rss:")) {
            let kib = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            out.push((kib, m.clone()));
        }
    }
    out.sort_by_key(|m| std::cmp::Reverse(m.0));
    out.truncate(n);
    out
}

/// Sums `Rss:` and `Anonymous:` of the mappings in `smaps` that do not
/// overlap any of `exclude` (host address ranges).
pub fn sum_outside(smaps: &str, exclude: &[(u64, u64)]) -> (u64, u64) {
    let (mut rss, mut anon) = (0, 0);
    let mut counted = true;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                counted = !exclude.iter().any(|(s, e)| a < *e && *s < b);
                continue;
            }
        }
        if !counted {
            continue;
        }
        let kib = || {
            line.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if line.starts_with("Rss:") {
            rss += kib();
        } else if line.starts_with("Anonymous:") {
            anon += kib();
        }
    }
    (rss, anon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_guest_mappings() {
        let smaps = "\
55d0-55e0 r-xp 00000000 08:01 1 /usr/bin/hutch
Rss:                 100 kB
Anonymous:             0 kB
7f00-7f80 rw-p 00000000 00:00 0
Rss:               50000 kB
Anonymous:         50000 kB
7f90-7fa0 rw-p 00000000 00:00 0 [heap]
Rss:                  30 kB
Anonymous:            30 kB
";
        assert_eq!(sum_outside(smaps, &[(0x7f00, 0x7f80)]), (130, 30));
        assert_eq!(sum_outside(smaps, &[]), (50130, 50030));
    }

    #[test]
    fn reads_this_process() {
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        let (rss, anon) = vmm_rss_kib(&mem).unwrap();
        assert!(rss > 0 && anon <= rss);
    }
}
