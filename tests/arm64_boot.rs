//! The arm64 guest kernel (`hutch kernel build --arch arm64`) boots under
//! `qemu-system-aarch64 -M virt,gic-version=3` (TCG) with the device tree
//! hutch itself generates (`hutch fdt`, feature `aarch64`) passed as `-dtb`,
//! reaches user space (a static arm64 C `/init` from `arm64/init.c`) and
//! powers off through PSCI. The console shows that the kernel accepted each
//! node: CPUs, memory, GICv3, the timer, PSCI, the PL011 and virtio-mmio.
//!
//! Skipped, with the reason, when `qemu-system-aarch64`, the cross compiler
//! `aarch64-linux-gnu-gcc`, the arm64 kernel or `hutch fdt` (a `hutch`
//! built without `--features aarch64`) is missing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hutch_e2e::{hutch_bin, report};

const TEST: &str = "arm64_boot::fdt_boot";
const CPUS: u32 = 2;
const MEMORY_MIB: u64 = 512;
/// Two of QEMU virt's virtio-mmio windows (0x0a000000 + 0x200*i, SPI 16+i);
/// the first has a virtio-rng device behind it, the second is empty.
const VIRTIO_MMIO: [(u64, u32); 2] = [(0x0a00_0000, 16), (0x0a00_0200, 17)];
/// Given only through the FDT's /chosen/bootargs (QEMU keeps it without -append).
const CMDLINE: &str = "console=ttyAMA0 earlycon panic=-1 hutch.arm64test=fdt-bootargs";
const QEMU_TIMEOUT: Duration = Duration::from_secs(240);

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The arm64 kernel `Image`, or why there is none.
fn arm64_image() -> Result<PathBuf, String> {
    let out = Command::new(hutch_bin())
        .args(["kernel", "path", "--arch", "arm64"])
        .output()
        .map_err(|e| format!("hutch kernel path: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "no arm64 kernel ({}); build it with `hutch kernel build --arch arm64`",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok(dir.join("Image"))
}

/// Why this test cannot run here, if it cannot; else (qemu, Image).
fn prerequisites() -> Result<(PathBuf, PathBuf), String> {
    let qemu = on_path("qemu-system-aarch64")
        .ok_or("qemu-system-aarch64 is not installed (apt-get install -y qemu-system-arm)")?;
    on_path("aarch64-linux-gnu-gcc").ok_or(
        "aarch64-linux-gnu-gcc is not installed \
         (apt-get install -y gcc-aarch64-linux-gnu libc6-dev-arm64-cross)",
    )?;
    let fdt_help = Command::new(hutch_bin())
        .args(["fdt", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("hutch fdt --help: {e}"))?;
    if !fdt_help.success() {
        return Err("`hutch fdt` is missing: build hutch with `--features aarch64`".into());
    }
    Ok((qemu, arm64_image()?))
}

/// Appends one `newc` cpio entry.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        data.len() as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// An uncompressed initramfs: /dev/console, /init.
fn initramfs(init: &[u8]) -> Vec<u8> {
    let mut c = Vec::new();
    cpio_entry(&mut c, 1, "dev", 0o040755, (0, 0), &[]);
    cpio_entry(&mut c, 2, "dev/console", 0o020600, (5, 1), &[]);
    cpio_entry(&mut c, 3, "init", 0o100755, (0, 0), init);
    cpio_entry(&mut c, 4, "TRAILER!!!", 0, (0, 0), &[]);
    c.resize(c.len().next_multiple_of(512), 0);
    c
}

/// Compiles arm64/init.c into a static arm64 executable.
fn build_init(dir: &Path) -> Vec<u8> {
    let src = dir.join("init.c");
    let exe = dir.join("init");
    std::fs::write(&src, include_str!("arm64/init.c")).unwrap();
    let out = Command::new("aarch64-linux-gnu-gcc")
        .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("run aarch64-linux-gnu-gcc");
    assert!(
        out.status.success(),
        "aarch64-linux-gnu-gcc -static failed (is libc6-dev-arm64-cross installed?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(exe).unwrap()
}

/// Runs QEMU to completion or until [`QEMU_TIMEOUT`] (then kills it);
/// returns its exit status (None when killed) and its console output.
fn run_qemu(mut cmd: Command) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qemu-system-aarch64");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait qemu") {
            break st.code();
        }
        if started.elapsed() > QEMU_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    let mut text = String::from_utf8_lossy(&out.join().unwrap()).into_owned();
    text.push_str(&String::from_utf8_lossy(&err.join().unwrap()));
    (status, text, elapsed)
}

#[test]
fn fdt_boot() {
    let (qemu, image) = match prerequisites() {
        Ok(p) => p,
        Err(why) => {
            report(TEST, &format!("qemu-system-aarch64 (tcg) SKIPPED ({why})"));
            return;
        }
    };
    report(
        TEST,
        "engine qemu-system-aarch64 (tcg), -M virt,gic-version=3, hutch's FDT",
    );
    let tmp = tempfile::tempdir().unwrap();
    let cpio = initramfs(&build_init(tmp.path()));
    let initrd = tmp.path().join("initramfs.cpio");
    std::fs::write(&initrd, &cpio).unwrap();

    let dtb = tmp.path().join("hutch.dtb");
    let mut fdt = Command::new(hutch_bin());
    fdt.args(["fdt", "--arch", "arm64", "--cpus", &CPUS.to_string()])
        .args(["--memory", &format!("{MEMORY_MIB}M"), "--cmdline", CMDLINE])
        .args(["--initrd-size", &cpio.len().to_string(), "-o"])
        .arg(&dtb);
    for (addr, spi) in VIRTIO_MMIO {
        fdt.args(["--virtio-mmio", &format!("{addr:#x}:{spi}")]);
    }
    let out = fdt.output().expect("run hutch fdt");
    assert!(
        out.status.success(),
        "hutch fdt failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut cmd = Command::new(qemu);
    cmd.args(["-M", "virt,gic-version=3", "-cpu", "cortex-a57"])
        .args(["-m", &format!("{MEMORY_MIB}M"), "-smp", &CPUS.to_string()])
        .args(["-nographic", "-no-reboot"])
        // On virtio-mmio-bus.0, the transport at 0x0a000000 (SPI 16).
        .args(["-device", "virtio-rng-device,bus=virtio-mmio-bus.0"])
        .arg("-kernel")
        .arg(&image)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-dtb")
        .arg(&dtb);
    let (status, console, took) = run_qemu(cmd);
    eprintln!(
        "---- console ({:.1}s) ----\n{console}---- end ----",
        took.as_secs_f64()
    );
    assert_eq!(
        status,
        Some(0),
        "qemu-system-aarch64 did not power off cleanly within {QEMU_TIMEOUT:?} (None: killed)"
    );

    let has = |what: &str, needle: &str| {
        let line = console.lines().find(|l| l.contains(needle));
        assert!(line.is_some(), "{what}: no console line with {needle:?}");
        eprintln!("ok: {what}: {}", line.unwrap().trim_end());
    };
    has("hutch's FDT was booted", "Machine model: hutch");
    has("/chosen/bootargs taken", "hutch.arm64test=fdt-bootargs");
    has("PSCI node", "psci: PSCIv");
    has(
        "both CPUs online",
        &format!("SMP: Total of {CPUS} processors activated"),
    );
    has("memory size", &format!("/{}K available", MEMORY_MIB * 1024));
    has("GICv3 node", "GICv3: ");
    has("GICv3 redistributors", "CPU1: found redistributor 1 region");
    has("arch timer node", "arch_timer: cp15 timer(s) running");
    has("PL011 node", "9000000.pl011: ttyAMA0 at MMIO 0x9000000");
    has("console on ttyAMA0", "printk: console [ttyAMA0] enabled");
    has("user space reached", "hutch-arm64-init: user space reached");
    has(
        "user space sees both CPUs",
        &format!("hutch-arm64-init: online cpus: {CPUS}"),
    );
    has(
        "both virtio_mmio nodes in the live tree",
        &format!(
            "hutch-arm64-init: dt virtio_mmio nodes: {}",
            VIRTIO_MMIO.len()
        ),
    );
    has(
        "virtio-mmio node probed (virtio-rng, id 4)",
        "id 0x0004 at ../../../devices/platform/a000000.virtio_mmio/",
    );
    has("init asked to power off", "hutch-arm64-init: powering off");
    has("powered off via PSCI SYSTEM_OFF", "reboot: Power down");
}
