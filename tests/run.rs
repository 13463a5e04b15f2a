//! `hutch run` end to end: a real guest, the real workspace share, real
//! processes. Each test runs on the qemu engine, and on the native engine
//! where this host's KVM can run guest user space.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use hutch_e2e::{per_engine, run, run_args, Engine, Hutch};

per_engine!(
    reads_and_writes_host_files_and_keeps_exit_status,
    |e: Engine| {
        let ws = hutch_e2e::workspace();
        std::fs::write(ws.path().join("in.txt"), "hello from the host\n").unwrap();
        let o = run(
            e,
            ws.path(),
            &["sh", "-c", "cat in.txt; echo ok > out.txt; exit 7"],
            None,
        );
        assert_eq!(o.status, 7, "stderr: {}", o.stderr);
        assert_eq!(o.stdout_str(), "hello from the host\n");
        assert_eq!(
            std::fs::read_to_string(ws.path().join("out.txt")).unwrap(),
            "ok\n"
        );
    }
);

per_engine!(exit_statuses, |e: Engine| {
    let ws = hutch_e2e::workspace();
    assert_eq!(run(e, ws.path(), &["true"], None).status, 0);
    assert_eq!(run(e, ws.path(), &["sh", "-c", "exit 7"], None).status, 7);
    let nf = run(e, ws.path(), &["no-such-command-xyz"], None);
    assert_eq!(nf.status, 127);
    assert!(
        nf.stderr.contains("no-such-command-xyz: command not found"),
        "{}",
        nf.stderr
    );
    assert_eq!(
        run(e, ws.path(), &["sh", "-c", "kill -9 $$"], None).status,
        128 + 9
    );
    assert_eq!(
        run(e, ws.path(), &["sh", "-c", "kill -TERM $$"], None).status,
        128 + 15
    );
});

per_engine!(
    argv_survives_spaces_quotes_unicode_and_raw_bytes,
    |e: Engine| {
        let ws = hutch_e2e::workspace();
        let args: Vec<&OsStr> = vec![
            OsStr::new("printf"),
            OsStr::new("[%s]\\n"),
            OsStr::new("a b  c"),
            OsStr::new("it's \"quoted\""),
            OsStr::new("ünïcödé 😀"),
            OsStr::new("new\nline"),
            OsStr::new(""),
            OsStr::from_bytes(b"raw\xff\xfebytes"),
        ];
        let o = Hutch::new(run_args(e, ws.path(), &args)).output(None);
        assert_eq!(o.status, 0, "{}", o.stderr);
        let mut want = b"[a b  c]\n[it's \"quoted\"]\n[\xc3\xbcn\xc3\xafc\xc3\xb6d\xc3\xa9 \xf0\x9f\x98\x80]\n[new\nline]\n[]\n".to_vec();
        want.extend_from_slice(b"[raw\xff\xfebytes]\n");
        assert_eq!(o.stdout, want);
    }
);

per_engine!(env_and_cwd, |e: Engine| {
    let ws = hutch_e2e::workspace();
    let sub = ws.path().join("sub dir");
    std::fs::create_dir(&sub).unwrap();
    let argv: Vec<&OsStr> = ["sh", "-c", "pwd; printf '%s|' \"$GREETING\" \"$HOME\"; echo; env | grep -c '^SECRET_HOST_VAR=' || true"]
        .iter()
        .map(OsStr::new)
        .collect();
    let mut args = run_args(e, ws.path(), &argv);
    args.splice(1..1, ["-e".into(), "GREETING=hi there 'x'".into()]);
    let mut h = Hutch::new(args);
    h.cmd.current_dir(&sub).env("SECRET_HOST_VAR", "leak");
    let o = h.output(None);
    assert_eq!(o.status, 0, "{}", o.stderr);
    let canon = sub.canonicalize().unwrap();
    assert_eq!(
        o.stdout_str(),
        format!("{}\nhi there 'x'|/root|\n0\n", canon.display()),
        "cwd follows the host into the workspace; only chosen env passes"
    );
});

per_engine!(
    ten_mib_of_output_arrive_intact_and_streams_stay_apart,
    |e: Engine| {
        let ws = hutch_e2e::workspace();
        // Every byte value, frame-magic bytes included.
        let data: Vec<u8> = (0..10 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(ws.path().join("big.bin"), &data).unwrap();
        let o = run(
            e,
            ws.path(),
            &["sh", "-c", "cat big.bin; echo to-stderr >&2"],
            None,
        );
        assert_eq!(o.status, 0, "{}", o.stderr);
        assert_eq!(o.stdout.len(), data.len());
        assert!(o.stdout == data, "10 MiB differ");
        assert!(o.stderr.contains("to-stderr"));
        assert!(!String::from_utf8_lossy(&o.stdout).contains("to-stderr"));
    }
);

per_engine!(stdin_is_passed_through, |e: Engine| {
    let ws = hutch_e2e::workspace();
    let input: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let o = run(
        e,
        ws.path(),
        &["sh", "-c", "cat > got.bin; wc -c < got.bin"],
        Some(&input),
    );
    assert_eq!(o.status, 0, "{}", o.stderr);
    assert_eq!(o.stdout_str().trim(), "100000");
    assert_eq!(std::fs::read(ws.path().join("got.bin")).unwrap(), input);
});

per_engine!(private_directories_are_not_visible, |e: Engine| {
    let ws = hutch_e2e::workspace();
    let o = run(
        e,
        ws.path(),
        &["sh", "-c", "ls /home; ls -A /root | wc -l; cat /etc/shadow; ls /etc/ssh 2>/dev/null | grep -c _key$; cat /etc/passwd | head -1"],
        None,
    );
    assert!(o.stderr.contains("/home"), "{}", o.stderr);
    assert!(o.stderr.contains("/etc/shadow"), "{}", o.stderr);
    let out = o.stdout_str();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("0"), "guest /root is an empty tmpfs");
    assert_eq!(lines.next(), Some("0"), "no ssh host keys");
    assert!(
        lines.next().unwrap_or("").starts_with("root:"),
        "the rest of /etc is there"
    );
});

per_engine!(root_writes_stay_in_the_guest_and_tmp_works, |e: Engine| {
    // The root is an overlay over the read-only root view (tests/root_overlay.rs
    // covers it in depth): writes succeed in the guest and never reach the host.
    let ws = hutch_e2e::workspace();
    let probe = format!("hutch-probe-{}", std::process::id());
    let script = format!(
        "touch /usr/{probe} /etc/{probe} && mkdir /{probe} && ls -d /usr/{probe} /etc/{probe} /{probe}; \
         echo x > /tmp/t && cat /tmp/t; echo $((6*7))"
    );
    let o = run(e, ws.path(), &["sh", "-c", &script], None);
    assert_eq!(
        o.stdout_str(),
        format!("/etc/{probe}\n/{probe}\n/usr/{probe}\nx\n42\n"),
        "{}",
        o.stderr
    );
    for host in [
        format!("/usr/{probe}"),
        format!("/etc/{probe}"),
        format!("/{probe}"),
    ] {
        assert!(
            !std::path::Path::new(&host).exists(),
            "{host} reached the host"
        );
    }
});

#[test]
fn runs_on_the_cached_kernel_once_the_source_is_removed() {
    // A user who built the kernel and then removed `linux-source-6.1` keeps
    // running on the kernel this recipe built (vmm/src/kernel/without_source.rs).
    hutch_e2e::on_engine(
        "run::runs_on_the_cached_kernel_once_the_source_is_removed",
        Engine::Qemu,
        |e| {
            let out = Hutch::new(["kernel", "path"]).output(None);
            assert_eq!(out.status, 0, "{}", out.stderr);
            let built = std::path::PathBuf::from(out.stdout_str().trim());
            let cache = tempfile::tempdir().unwrap();
            std::fs::create_dir(cache.path().join("kernel")).unwrap();
            let linked = cache.path().join("kernel").join(built.file_name().unwrap());
            std::os::unix::fs::symlink(&built, &linked).unwrap();
            let env = [
                ("HUTCH_CACHE_DIR", cache.path().as_os_str()),
                (
                    "HUTCH_KERNEL_SOURCE",
                    OsStr::new("/nonexistent/linux-source.tar.xz"),
                ),
            ];
            let mut path = Hutch::new(["kernel", "path"]);
            path.cmd.envs(env);
            let path = path.output(None);
            assert_eq!(path.status, 0, "{}", path.stderr);
            assert_eq!(path.stdout_str().trim(), linked.to_str().unwrap());

            let ws = hutch_e2e::workspace();
            let words = [
                OsStr::new("sh"),
                OsStr::new("-c"),
                OsStr::new("echo booted"),
            ];
            let mut h = Hutch::new(run_args(e, ws.path(), &words));
            h.cmd.envs(env);
            let o = h.output(None);
            assert_eq!(o.status, 0, "{}", o.stderr);
            assert_eq!(o.stdout_str(), "booted\n");
        },
    );
}

per_engine!(
    the_guest_keeps_time_without_calibrating_its_apic_timer,
    |e: Engine| {
        // With apic=verbose the kernel says "calibrating APIC timer" when it
        // times the timer against the tick (about 220 ms under TCG). The qemu
        // engine's TCG guest is told the clock (hutch_apic_khz, patch 0014);
        // the native engine's CPU has a TSC-deadline timer. A clock given too
        // high makes every timer late in proportion: 50 ms sleeps must not.
        let ws = hutch_e2e::workspace();
        let script = r#"dmesg | grep -i 'apic timer'; python3 -c '
import select, time
d = []
for _ in range(5):
    a = time.monotonic(); select.select([], [], [], 0.05); d.append(time.monotonic() - a)
print("median_ms", round(sorted(d)[2] * 1000, 1))'"#;
        let argv = [OsStr::new("sh"), OsStr::new("-c"), OsStr::new(script)];
        let mut args = run_args(e, ws.path(), &argv);
        args.splice(1..1, ["--kernel-arg".into(), "apic=verbose".into()]);
        let o = Hutch::new(args).output(None);
        assert_eq!(o.status, 0, "{}", o.stderr);
        let out = o.stdout_str();
        eprintln!("{out}");
        assert!(!out.contains("calibrating APIC timer"), "{out}");
        let ms: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("median_ms "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no median in {out}"));
        assert!((49.0..90.0).contains(&ms), "a 50 ms sleep took {ms} ms");
    }
);

per_engine!(
    a_guest_above_4_gib_keeps_no_bounce_buffer_or_outsized_hashes,
    |e: Engine| {
        // With memory above 4 GiB and no IOMMU the guest kernel would zero a
        // 64 MiB software-IOTLB bounce buffer at boot (~115 ms under TCG).
        // hutch's devices never bounce (swiotlb=noforce): file data above
        // 4 GiB still travels through virtio-fs, both ways. The dentry and
        // inode hash tables are capped (cli/size.rs).
        let ws = hutch_e2e::workspace();
        let data: Vec<u8> = (0..48u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(ws.path().join("in.bin"), &data).unwrap();
        let script = "dmesg | grep -iE 'software io tlb|(dentry|inode).cache hash'; \
                      cat in.bin > /tmp/copy.bin && cat /tmp/copy.bin > out.bin && \
                      cmp in.bin out.bin && echo same; \
                      grep MemTotal /proc/meminfo";
        let out = hutch_e2e::run_sh(e, ws.path(), script, &[("--memory", "5G")]);
        assert!(
            !out.contains("mapped ["),
            "a bounce buffer was set up:\n{out}"
        );
        assert!(out.contains("same"), "{out}");
        // The kernel would give a 5 GiB guest 1Mi dentry buckets.
        assert!(
            out.contains("Dentry cache hash table entries: 524288 "),
            "{out}"
        );
        assert!(
            out.contains("Inode-cache hash table entries: 262144 "),
            "{out}"
        );
        let kib: u64 = out
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no MemTotal in:\n{out}"));
        assert!(kib > 4 << 20, "the guest has {kib} KiB, not above 4 GiB");
        assert_eq!(std::fs::read(ws.path().join("out.bin")).unwrap(), data);
    }
);

#[test]
fn qemu_maps_guest_memory_from_hutchs_memfd() {
    // hutch makes the guest-memory memfd (so that it can allocate its tail
    // ahead of the guest, engine/guest_ram.rs) and QEMU maps it through
    // /proc/self/fd/N: the descriptor there is hutch's memfd, of the
    // guest's size. A helper of hutch's, `hutch-ram-free`, holds a copy
    // (so the pages are freed after hutch returns) and ends with hutch.
    hutch_e2e::on_engine(
        "run::qemu_maps_guest_memory_from_hutchs_memfd",
        Engine::Qemu,
        |e| {
            let ws = hutch_e2e::workspace();
            let script = "touch ready; while [ ! -e done ]; do sleep 0.05; done";
            let (h, mut child) = hutch_e2e::start_until_ready(e, ws.path(), script);
            let runtime = h.runtime.path().to_string_lossy().to_string();
            let qemu = hutch_e2e::processes_mentioning(&runtime)
                .into_iter()
                .find(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("memory-backend"))
                });
            let found = qemu.and_then(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                let fd = cmdline
                    .split("mem-path=/proc/self/fd/")
                    .nth(1)?
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .to_string();
                let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
                let size = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
                    .ok()?
                    .len();
                Some((cmdline, target, size))
            });
            let helper = ram_helper_of(child.id());
            std::fs::write(ws.path().join("done"), "").unwrap();
            let (code, out, err) = hutch_e2e::collect(&mut child);
            assert_eq!(code, Some(0), "{out}\n{err}");
            let helper = helper.unwrap_or_else(|| panic!("no hutch-ram-free holding the memfd"));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while running(helper) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "hutch-ram-free {helper} outlived hutch by 10 s"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let (cmdline, target, size) =
                found.unwrap_or_else(|| panic!("no QEMU mapping a memfd of hutch's ({qemu:?})"));
            assert!(
                target
                    .to_string_lossy()
                    .starts_with("/memfd:hutch-guest-ram"),
                "{target:?} in {cmdline}"
            );
            assert_eq!(size, 512 << 20, "the guest's memory, run_args' 512M");
            assert!(
                cmdline.contains("memory-backend-file,id=mem,size=512M,"),
                "{cmdline}"
            );
            hutch_e2e::assert_no_leftovers(h.runtime.path());
        },
    );
}

/// The `hutch-ram-free` child of `hutch` holding the guest-memory memfd.
fn ram_helper_of(hutch: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (comm, rest) = stat.split_once(") ")?;
        let ppid: u32 = rest.split(' ').nth(1)?.parse().ok()?;
        if !comm.ends_with("(hutch-ram-free") || ppid != hutch {
            return None;
        }
        let holds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.any(|f| {
            f.ok()
                .and_then(|f| std::fs::read_link(f.path()).ok())
                .is_some_and(|t| t.to_string_lossy().starts_with("/memfd:hutch-guest-ram"))
        });
        holds.then_some(pid)
    })
}

/// Whether `pid` is alive (a zombie waiting to be reaped counts as ended).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn secondary_vcpus_take_the_preset_delay_loop() {
    // The qemu engine passes lpj= (TSC cycles per tick, from the host's TSC
    // and the kernel's CONFIG_HZ). Without it each secondary vCPU of the TCG
    // guest timed its delay loop against the tick, about 70 ms each, and
    // came out with a BogoMIPS of its own.
    hutch_e2e::on_engine(
        "run::secondary_vcpus_take_the_preset_delay_loop",
        Engine::Qemu,
        |e| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            if cpus < 2 {
                hutch_e2e::report(
                    "run::secondary_vcpus_take_the_preset_delay_loop",
                    "SKIPPED (this host has one CPU; the test needs a guest of two)",
                );
                return;
            }
            let kernel = Hutch::new(["kernel", "path"]).output(None);
            assert_eq!(kernel.status, 0, "{}", kernel.stderr);
            let config = std::path::Path::new(kernel.stdout_str().trim()).join("config");
            let config = std::fs::read_to_string(&config).unwrap();
            let hz: u64 = config
                .lines()
                .find_map(|l| l.strip_prefix("CONFIG_HZ="))
                .and_then(|v| v.parse().ok())
                .expect("CONFIG_HZ in the kernel's config");

            let ws = hutch_e2e::workspace();
            let script = "cat /proc/cmdline; dmesg | grep -i 'calibrating delay'; \
                          grep -i '^bogomips' /proc/cpuinfo";
            let out = hutch_e2e::run_sh(e, ws.path(), script, &[("--cpus", "2")]);
            let param = |name: &str| -> u64 {
                out.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no {name} on the command line:\n{out}"))
            };
            assert!(out.contains("(skipped) preset value"), "{out}");
            let bogomips: Vec<&str> = out.lines().filter(|l| l.starts_with("bogomips")).collect();
            assert_eq!(bogomips.len(), 2, "two vCPUs:\n{out}");
            assert_eq!(
                bogomips[0], bogomips[1],
                "each vCPU calibrated its own:\n{out}"
            );
            assert_eq!(param("lpj="), param("tsc_early_khz=") * 1000 / hz, "{out}");
        },
    );
}

#[test]
fn timings_show_the_qemu_engines_steps_in_order() {
    // `--timings` on the qemu engine: hutch's own start-up, QEMU, the guest's
    // first frame and exit status, and the teardown, in the order they happen.
    hutch_e2e::on_engine(
        "run::timings_show_the_qemu_engines_steps_in_order",
        Engine::Qemu,
        |e| {
            let ws = hutch_e2e::workspace();
            let argv = [OsStr::new("true")];
            let mut args = run_args(e, ws.path(), &argv);
            args.insert(1, "--timings".into());
            let o = Hutch::new(args).output(None);
            assert_eq!(o.status, 0, "{}", o.stderr);
            let steps = [
                "command line parsed",
                "fs backends serving",
                "QEMU started",
                "guest init's first frame",
                "guest's exit status",
                "QEMU exited",
                "fs backends finished",
                "end",
            ];
            let mut last = 0.0;
            for step in steps {
                let ms: f64 = o
                    .stderr
                    .lines()
                    .find_map(|l| l.trim().strip_suffix(step)?.trim().strip_suffix("ms"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| panic!("no `{step}` in:\n{}", o.stderr));
                assert!(
                    ms >= last,
                    "`{step}` at {ms} ms, before {last}:\n{}",
                    o.stderr
                );
                last = ms;
            }
        },
    );
}
