//! The host's TSC frequency, for guests that cannot calibrate theirs.
//!
//! Under TCG, QEMU's `rdtsc` returns the host's TSC, but the microvm machine
//! has no PIT or HPET for the guest kernel to calibrate it against, so Linux
//! falls back to the jiffies clocksource: `clock_gettime` then moves in 4 ms
//! steps, and every timing taken inside the guest is that coarse. Measuring
//! the host's TSC against `CLOCK_MONOTONIC_RAW` for a few milliseconds and
//! passing it as `tsc_early_khz` gives the guest a nanosecond clock.
//!
//! The same measurement spares each secondary vCPU its delay-loop
//! calibration. The boot CPU derives `loops_per_jiffy` from the TSC rate,
//! but a secondary CPU reuses it only when the CPU reports a constant TSC,
//! which QEMU's TCG CPU does not: each one then timed its delay loop against
//! the tick (`calibrate_delay_direct`), about 70 ms per vCPU under TCG.
//! `lpj=` presets the value for every CPU: TSC cycles per tick, the rate
//! divided by the kernel's `CONFIG_HZ`.

use std::path::Path;
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

/// `CONFIG_HZ` of the kernel at `kernel`, from the `config` beside it
/// (hutch's kernel cache keeps `vmlinux`, `bzImage` and `config` together).
/// `None` for a kernel without one, such as a `--kernel` built elsewhere.
pub fn kernel_hz(kernel: &Path) -> Option<u64> {
    let config = std::fs::read_to_string(kernel.with_file_name("config")).ok()?;
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
        .filter(|hz| (24..=10_000).contains(hz))
}

/// The kernel parameters that give a guest the host's TSC rate `khz`:
/// the early TSC calibration, and with the kernel's tick rate `hz`, every
/// CPU's delay-loop value (`lpj`).
pub fn guest_clock_args(khz: u64, hz: Option<u64>) -> String {
    let mut args = format!("tsc_early_khz={khz} tsc=reliable");
    if let Some(hz) = hz {
        args.push_str(&format!(" lpj={}", khz * 1000 / hz));
    }
    args
}

/// Measures the host's TSC and returns [`guest_clock_args`] for `kernel`.
pub fn measure_guest_clock_args(kernel: &Path) -> Option<String> {
    let khz = host_tsc_khz()?;
    Some(guest_clock_args(khz, kernel_hz(kernel)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lpj_is_tsc_cycles_per_tick() {
        assert_eq!(
            guest_clock_args(2_596_068, Some(250)),
            "tsc_early_khz=2596068 tsc=reliable lpj=10384272"
        );
        assert_eq!(
            guest_clock_args(3_000_000, Some(1000)),
            "tsc_early_khz=3000000 tsc=reliable lpj=3000000"
        );
        assert_eq!(
            guest_clock_args(2_596_068, None),
            "tsc_early_khz=2596068 tsc=reliable",
            "no tick rate, no lpj"
        );
    }

    #[test]
    fn the_tick_rate_comes_from_the_config_beside_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"elf").unwrap();
        assert_eq!(kernel_hz(&kernel), None, "no config");
        let config = dir.path().join("config");
        std::fs::write(
            &config,
            "# CONFIG_HZ_100 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n",
        )
        .unwrap();
        assert_eq!(kernel_hz(&kernel), Some(250));
        std::fs::write(&config, "CONFIG_HZ=0\n").unwrap();
        assert_eq!(kernel_hz(&kernel), None, "a zero rate is no rate");
        std::fs::write(&config, "CONFIG_HZ=fast\n").unwrap();
        assert_eq!(kernel_hz(&kernel), None);
    }

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
