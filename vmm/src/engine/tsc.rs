//! The host's TSC frequency, for guests that cannot calibrate theirs.
//!
//! Under TCG, QEMU's `rdtsc` returns the host's TSC, but the microvm machine
//! has no PIT or HPET for the guest kernel to calibrate it against, so Linux
//! falls back to the jiffies clocksource: `clock_gettime` then moves in 4 ms
//! steps, and every timing taken inside the guest is that coarse. Measuring
//! the host's TSC against `CLOCK_MONOTONIC_RAW` for a few milliseconds and
//! passing it as `tsc_early_khz` gives the guest a nanosecond clock.

use std::time::Duration;

/// How long the measurement runs: about 1 µs of error (clock reads) over
/// this window is well under 0.1 %.
const WINDOW: Duration = Duration::from_millis(4);

fn raw_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_RAW, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

#[cfg(target_arch = "x86_64")]
fn ticks() -> u64 {
    // SAFETY: RDTSC has no preconditions on x86_64 and touches no memory.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The host's TSC frequency in kHz, or `None` where there is no TSC or the
/// reading makes no sense.
pub fn host_tsc_khz() -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        let (t0, c0) = (raw_ns(), ticks());
        std::thread::sleep(WINDOW);
        let (t1, c1) = (raw_ns(), ticks());
        khz(c1.checked_sub(c0)?, t1.checked_sub(t0)?)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// kHz from `cycles` over `ns` nanoseconds, if plausible (10 MHz to 10 GHz).
fn khz(cycles: u64, ns: u128) -> Option<u64> {
    if ns == 0 {
        return None;
    }
    let khz = u64::try_from(u128::from(cycles) * 1_000_000 / ns).ok()?;
    (10_000..=10_000_000).contains(&khz).then_some(khz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn khz_from_cycles_and_time() {
        assert_eq!(khz(2_596_128, 1_000_000), Some(2_596_128));
        assert_eq!(khz(10_384_512, 4_000_000), Some(2_596_128));
        assert_eq!(khz(5, 1_000_000), None, "5 kHz is no TSC");
        assert_eq!(khz(1, 0), None);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn host_tsc_is_measured_consistently() {
        let a = host_tsc_khz().expect("x86_64 hosts have a TSC");
        let b = host_tsc_khz().expect("x86_64 hosts have a TSC");
        let diff = a.abs_diff(b) as f64 / a as f64;
        assert!(diff < 0.05, "two readings {a} and {b} kHz differ by {diff}");
    }
}
