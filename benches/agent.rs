//! Agent benchmarks for issue 4, measured in one run against one running
//! sandbox (qemu engine here), with medians:
//!
//! 1. `hutch exec NAME -- true` round trip (target <= 20 ms median), the
//!    whole client included: process start, CONNECT, exec, exit status;
//! 2. stdout throughput guest to host through vsock (target >= 200 MiB/s),
//!    against the serial console (the guest writing to /dev/ttyS0);
//! 3. stdin throughput host to guest through vsock.
//!
//! Usage: hutch-bench-agent PATH/TO/hutch [RUNS]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn hutch(bin: &Path, state: &Path) -> Command {
    let mut c = Command::new(bin);
    c.env("HUTCH_STATE_DIR", state);
    c
}

/// Runs `exec` with stdout read (and counted) by this process; seconds.
fn timed_exec(bin: &Path, state: &Path, args: &[&str], stdin: Option<usize>) -> (f64, usize) {
    let t = Instant::now();
    let mut child = hutch(bin, state)
        .arg("exec")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn hutch exec");
    if let Some(n) = stdin {
        let mut si = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let buf = vec![0x5au8; 1 << 20];
            for _ in 0..n >> 20 {
                if si.write_all(&buf).is_err() {
                    return;
                }
            }
        });
    }
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    while let Ok(k) = out.read(&mut buf) {
        if k == 0 {
            break;
        }
        total += k;
    }
    let st = child.wait().unwrap();
    assert!(st.success(), "hutch exec {args:?}: {st}");
    (t.elapsed().as_secs_f64(), total)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let bin = args
        .next()
        .expect("usage: hutch-bench-agent PATH/TO/hutch [RUNS]");
    let bin = Path::new(&bin);
    let runs: usize = args.next().map(|r| r.parse().expect("RUNS")).unwrap_or(21);
    let state = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let st = state.path();
    let out = hutch(bin, st)
        .args([
            "run", "-d", "--name", "bench", "--engine", "qemu", "--memory", "1G", "--cpus", "1",
        ])
        .arg(ws.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Warm the caches (first exec of sh, head, cat).
    for _ in 0..3 {
        timed_exec(
            bin,
            st,
            &[
                "bench",
                "--",
                "sh",
                "-c",
                "head -c 1 /dev/zero; cat </dev/null",
            ],
            None,
        );
    }
    let lat: Vec<f64> = (0..runs)
        .map(|_| timed_exec(bin, st, &["bench", "--", "true"], None).0 * 1e3)
        .collect();
    let lat_med = median(lat.clone());
    let lat_min = lat.iter().cloned().fold(f64::MAX, f64::min);

    // The floor: what starting /bin/true costs inside this guest, measured
    // by the guest itself (no agent, no vsock).
    let floor_py = "import os,time\nts=[]\nfor i in range(15):\n    t=time.perf_counter(); os.spawnv(os.P_WAIT, '/bin/true', ['true']); ts.append(time.perf_counter()-t)\nts.sort(); print(ts[7]*1e3)\n";
    let floor_out = hutch(bin, st)
        .args(["exec", "bench", "--", "python3", "-c", floor_py])
        .output()
        .unwrap();
    let floor: f64 = String::from_utf8_lossy(&floor_out.stdout)
        .trim()
        .parse()
        .unwrap_or(f64::NAN);

    let size = 256usize << 20;
    let cmd = format!("head -c {size} /dev/zero");
    let out_runs: Vec<f64> = (0..5)
        .map(|_| {
            let (s, n) = timed_exec(bin, st, &["bench", "--", "sh", "-c", &cmd], None);
            assert_eq!(n, size);
            n as f64 / s / (1 << 20) as f64
        })
        .collect();
    let in_runs: Vec<f64> = (0..5)
        .map(|_| {
            let (s, _) = timed_exec(
                bin,
                st,
                &["-i", "bench", "--", "sh", "-c", "cat > /dev/null"],
                Some(size),
            );
            size as f64 / s / (1 << 20) as f64
        })
        .collect();
    // The serial console: 256 KiB through the guest's ttyS0.
    let ser = 256usize << 10;
    let serial_cmd = format!("stty -F /dev/ttyS0 raw; head -c {ser} /dev/zero > /dev/ttyS0");
    let serial: Vec<f64> = (0..3)
        .map(|_| {
            let (s, _) = timed_exec(bin, st, &["bench", "--", "sh", "-c", &serial_cmd], None);
            ser as f64 / s / (1 << 20) as f64
        })
        .collect();
    let _ = hutch(bin, st).args(["rm", "bench"]).output();

    let (o, i, s) = (median(out_runs), median(in_runs), median(serial));
    println!("agent benchmarks (qemu engine, TCG; {runs} exec runs, medians):");
    println!(
        "  exec -- true round trip     {lat_med:8.1} ms   (min {lat_min:.1} ms; target <= 20 ms)"
    );
    println!(
        "  /bin/true spawned in-guest  {floor:8.1} ms   (the floor under TCG: no agent, no vsock)"
    );
    println!(
        "  agent + vsock + client      {:8.1} ms   (round trip minus the floor)",
        lat_med - floor
    );
    println!("  stdout guest->host (vsock)  {o:8.1} MiB/s (256 MiB; target >= 200 MiB/s)");
    println!("  stdin host->guest (vsock)   {i:8.1} MiB/s (256 MiB)");
    println!("  serial console guest->host  {s:8.3} MiB/s (256 KiB to /dev/ttyS0)");
    println!("  vsock / serial              {:8.0}x", o / s);
}
