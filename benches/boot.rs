//! Boot benchmarks for issue 2, measured in one run and printed with their
//! ratios (these machines are noisy: medians of interleaved runs).
//!
//! 1. native: `hutch` exec to the first `KVM_RUN` (median), against
//!    Firecracker's typical ~12 ms VMM start (target <= 3 ms);
//! 2. native: VMM resident memory outside guest RAM, against Firecracker's
//!    <= 5 MiB (target <= 3 MiB);
//! 3. qemu engine: `hutch run --engine qemu -- true` against plain
//!    `qemu-system-x86_64 -M microvm` booting the same kernel with a trivial
//!    init that powers off at once (target <= 1.05x); and against the same
//!    plain boot given what hutch gives its guest (the vmlinux through its
//!    PVH entry, `hutch_apic_khz`), which leaves hutch's own start-up.
//!
//! Usage: hutch-bench-boot PATH/TO/hutch [RUNS]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hutch::engine::initramfs::CpioWriter;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn probe(hutch: &Path, ws: &Path, guest_ms: u64) -> Result<String, String> {
    let t0 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_nanos();
    let out = Command::new(hutch)
        .args([
            "bench-boot",
            "--guest-ms",
            &guest_ms.to_string(),
            "--memory",
            "512M",
            "--cpus",
            "1",
        ])
        .arg(ws)
        .args(["--", "true"])
        .env("HUTCH_T0_NS", t0.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", hutch.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A static init that powers the VM off at once (reboot with `reboot=t`).
fn trivial_init(dir: &Path) -> Result<PathBuf, String> {
    let src = dir.join("init.c");
    std::fs::write(
        &src,
        "#include <sys/reboot.h>\n#include <unistd.h>\nint main(void){sync();reboot(RB_AUTOBOOT);for(;;)pause();}\n",
    )
    .map_err(|e| e.to_string())?;
    let bin = dir.join("init");
    let st = Command::new("cc")
        .args(["-static", "-Os", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .map_err(|e| format!("cc: {e}"))?;
    if !st.success() {
        return Err("cc failed building the trivial init".into());
    }
    let init: &'static [u8] = Box::leak(
        std::fs::read(&bin)
            .map_err(|e| e.to_string())?
            .into_boxed_slice(),
    );
    let mut w = CpioWriter::new();
    w.dir("dev", 0o755)
        .char_dev("dev/console", 0o600, 5, 1)
        .file("init", 0o755, init);
    let cpio = dir.join("trivial.cpio");
    std::fs::write(&cpio, w.finish()).map_err(|e| e.to_string())?;
    Ok(cpio)
}

fn time_it(cmd: &mut Command) -> Result<f64, String> {
    let t = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        return Err(format!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(ms)
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let hutch = PathBuf::from(
        args.get(1)
            .ok_or("usage: hutch-bench-boot PATH/TO/hutch [RUNS]")?,
    );
    let runs: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(21);
    let tmp = std::env::temp_dir().join(format!("hutch-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    let ws = tmp.join("ws");
    std::fs::create_dir_all(&ws).map_err(|e| e.to_string())?;
    let kdir = Command::new(&hutch)
        .args(["kernel", "path"])
        .output()
        .map_err(|e| e.to_string())?;
    let kdir = PathBuf::from(String::from_utf8_lossy(&kdir.stdout).trim());
    if !kdir.join("bzImage").is_file() {
        return Err("no kernel: run `hutch kernel build` first".into());
    }
    let host = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let doctor = Command::new(&hutch)
        .arg("doctor")
        .output()
        .map_err(|e| e.to_string())?;
    let kvm = String::from_utf8_lossy(&doctor.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    println!(
        "host: {host}; {} CPUs; {kvm}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    // 1 + 2: native start-up and memory.
    let mut first = Vec::new();
    for _ in 0..runs {
        let out = probe(&hutch, &ws, 0)?;
        first.push(field(&out, "first_kvm_run_us").ok_or("no first_kvm_run_us")? / 1e3);
    }
    let mut rss = Vec::new();
    let mut anon = Vec::new();
    for _ in 0..5 {
        let out = probe(&hutch, &ws, 1500)?;
        rss.push(field(&out, "vmm_rss_kib").ok_or("no vmm_rss_kib")? / 1024.0);
        anon.push(field(&out, "vmm_anon_kib").ok_or("no vmm_anon_kib")? / 1024.0);
    }
    let first_ms = median(first);
    let rss_mib = median(rss);
    println!();
    println!("| what | hutch | comparison | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| native: exec to first KVM_RUN (median of {runs}) | {first_ms:.2} ms | Firecracker ~12 ms typical | {:.2}x | <= 3 ms |",
        first_ms / 12.0
    );
    println!(
        "| native: VMM RSS outside guest RAM, guest running 1.5 s (median of 5; anonymous {:.2} MiB) | {rss_mib:.2} MiB | Firecracker <= 5 MiB | {:.2}x | <= 3 MiB |",
        median(anon),
        rss_mib / 5.0
    );

    // Where real KVM runs guests: the whole `hutch run -- true`, natively.
    if kvm.contains("kvm_intel") || kvm.contains("kvm_amd") {
        let mut t = Vec::new();
        for _ in 0..runs {
            t.push(time_it(
                Command::new(&hutch)
                    .args([
                        "run", "--engine", "native", "--memory", "512M", "--cpus", "1",
                    ])
                    .arg(&ws)
                    .args(["--", "true"]),
            )?);
        }
        println!(
            "| native: `hutch run -- true` end to end (median of {runs}) | {:.1} ms | Firecracker: <= 125 ms to init | {:.2}x | - |",
            median(t.clone()),
            median(t) / 125.0
        );
    }

    // 3: qemu engine against plain qemu, interleaved.
    let Some(qemu) = hutch::engine::detect::find_qemu() else {
        println!("| qemu engine | skipped: no qemu-system-x86_64 on this host | | | |");
        let _ = std::fs::remove_dir_all(&tmp);
        return Ok(());
    };
    let cpio = trivial_init(&tmp)?;
    let bz = kdir.join("bzImage");
    let qruns = runs.min(11);
    let (mut h, mut q, mut qa) = (Vec::new(), Vec::new(), Vec::new());
    let vmlinux = kdir.join("vmlinux");
    let plain = |kernel: &Path, append: &str| {
        let mut c = Command::new(&qemu);
        c.args([
            "-M",
            "microvm,acpi=off",
            "-m",
            "512M",
            "-smp",
            "1",
            "-accel",
            "tcg",
            "-cpu",
            "max",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(&cpio)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 reboot=t panic=-1 rdinit=/init loglevel=1{append}"
        ));
        c
    };
    for _ in 0..qruns {
        h.push(time_it(
            Command::new(&hutch)
                .args(["run", "--engine", "qemu", "--memory", "512M", "--cpus", "1"])
                .arg(&ws)
                .args(["--", "true"]),
        )?);
        q.push(time_it(&mut plain(&bz, ""))?);
        // The same guest booted as hutch boots it (the ELF through its PVH
        // entry, no bzImage to unpack; the APIC clock given, patch 0014):
        // what is left is hutch's own start-up.
        qa.push(time_it(&mut plain(&vmlinux, " hutch_apic_khz=1000000"))?);
    }
    let (hm, qm, qam) = (median(h), median(q), median(qa));
    println!(
        "| qemu engine: `hutch run --engine qemu -- true` (median of {qruns}, TCG) | {hm:.0} ms | plain qemu microvm, same kernel, trivial init: {qm:.0} ms | {:.3}x | <= 1.05x |",
        hm / qm
    );
    println!(
        "| qemu engine, the same runs | {hm:.0} ms | plain qemu booted as hutch boots (vmlinux by PVH, hutch_apic_khz=1000000): {qam:.0} ms | {:.3}x | (hutch's own start-up) |",
        hm / qam
    );
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
