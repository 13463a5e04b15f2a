//! Real clients in a guest through the egress proxy: git over the smart HTTP
//! protocol, `pip download` from a PEP 503 index and `npm install` from a
//! registry, each allowed under an explicit rule and refused without one;
//! and a credential the proxy injects that never reaches the guest's
//! environment, files or memory (read from the running QEMU process).
//!
//! Every upstream is `tests/guest/egress_upstream.py` (or a thread here) on
//! this host's loopback, which a guest reaches as `host.hutch.internal:PORT`
//! only under a rule. Config and state live in temporary directories.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hutch_e2e::{hutch_bin, per_engine, Engine};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One test's hutch configuration and state (policy, secrets, log) and
/// workspace, all temporary.
struct Sandbox {
    cfg: tempfile::TempDir,
    state: tempfile::TempDir,
    ws: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox {
            cfg: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
            ws: hutch_e2e::workspace(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(hutch_bin());
        c.args(args)
            .env("HUTCH_CONFIG_DIR", self.cfg.path())
            .env("HUTCH_STATE_DIR", self.state.path());
        c
    }

    fn hutch(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        hutch_e2e::output_with_stdin(&mut self.command(args), stdin)
    }

    fn allow(&self, rule: &str) {
        let o = self.hutch(&["policy", "allow", "-g", rule], None);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    }

    fn run_args<'a>(&'a self, e: Engine, policy: &'a str, script: &'a str) -> Vec<&'a str> {
        vec![
            "run",
            "--engine",
            e.flag(),
            "--memory",
            "512M",
            "--cpus",
            "1",
            "--policy",
            policy,
            self.ws.path().to_str().unwrap(),
            "--",
            "sh",
            "-c",
            script,
        ]
    }

    /// Runs `script` in a guest under `policy`; returns its stdout (and
    /// stderr after a marker line, for failure messages).
    fn run(&self, e: Engine, policy: &str, script: &str) -> String {
        let o = self.hutch(&self.run_args(e, policy, script), None);
        format!(
            "{}\n--- hutch stderr (status {:?}) ---\n{}",
            text(&o.stdout),
            o.status.code(),
            text(&o.stderr)
        )
    }

    fn log(&self) -> String {
        text(&self.hutch(&["policy", "log", "--limit", "50"], None).stdout)
    }
}

/// `tests/guest/egress_upstream.py` on a loopback port: the git, PEP 503
/// and npm fixtures under `root`, each request line in `log`. Killed on drop.
struct Upstream {
    child: Child,
    root: tempfile::TempDir,
    log: PathBuf,
    port: u16,
}

impl Upstream {
    /// Starts the server; `prepare` fills its root first (e.g. a git repo).
    fn start(prepare: impl FnOnce(&Path)) -> Upstream {
        let root = tempfile::tempdir().unwrap();
        prepare(root.path());
        let log = root.path().join("requests.log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/egress_upstream.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(root.path())
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 (Debian package python3)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the upstream did not start: {line:?}")
        });
        Upstream {
            child,
            root,
            log,
            port,
        }
    }

    /// `host.hutch.internal:PORT`, the rule that lets a guest reach it.
    fn rule(&self) -> String {
        format!("host.hutch.internal:{}", self.port)
    }

    fn url(&self) -> String {
        format!("http://{}", self.rule())
    }

    /// The request lines it has served.
    fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts the refused run reached nothing and `policy log` says why.
fn assert_refused(sb: &Sandbox, up: &Upstream, out: &str) {
    assert_eq!(up.requests(), "", "no request got through: {out}");
    let log = sb.log();
    let why = format!("{}: no rule allows it", up.rule());
    assert!(
        log.lines().any(|l| l.contains(&why) && l.contains("DENY")),
        "policy log names the refusal ({why}): {log}\n{out}"
    );
}

per_engine!(git_smart_http_clones_only_when_allowed, |e: Engine| {
    let sb = Sandbox::new();
    let git = hutch_e2e::git;
    // A bare repository with no info/refs file: only the smart protocol
    // (git http-backend) can serve it.
    let up = Upstream::start(|root| {
        let src = root.join("src");
        std::fs::create_dir(&src).unwrap();
        git(&src, &["init", "-q"]);
        std::fs::write(src.join("a.txt"), "cloned over smart http\n").unwrap();
        git(&src, &["add", "a.txt"]);
        git(&src, &["commit", "-qm", "init"]);
        std::fs::create_dir(root.join("git")).unwrap();
        git(root, &["clone", "-q", "--bare", "src", "git/repo.git"]);
    });
    assert!(!up.root.path().join("git/repo.git/info/refs").exists());
    let script = format!(
        "cd /tmp && git clone -q {}/git/repo.git r 2>&1; echo rc=$?; cat r/a.txt 2>/dev/null",
        up.url()
    );

    let out = sb.run(e, "locked-down", &script);
    assert!(
        out.contains("403") && !out.contains("rc=0") && !out.contains("cloned over"),
        "locked-down, no rule: refused with a 403 in the guest: {out}"
    );
    assert_refused(&sb, &up, &out);

    sb.allow(&up.rule());
    let out = sb.run(e, "balanced", &script);
    assert!(out.contains("rc=0\ncloned over smart http\n"), "{out}");
    let reqs = up.requests();
    assert!(
        reqs.contains("GET /git/repo.git/info/refs?service=git-upload-pack\n")
            && reqs.contains("POST /git/repo.git/git-upload-pack\n"),
        "the clone used the smart protocol: {reqs}"
    );
});

per_engine!(pip_downloads_only_when_allowed, |e: Engine| {
    let sb = Sandbox::new();
    let up = Upstream::start(|_| {});
    let script = format!(
        "cd /tmp && python3 -m pip download -vv --disable-pip-version-check --no-cache-dir \
         --trusted-host host.hutch.internal --index-url {}/simple/ --no-deps -d out \
         hutch-demo > pip.log 2>&1; echo rc=$?; ls out; grep -E 'Client Error|^ERROR' pip.log",
        up.url()
    );

    let out = sb.run(e, "locked-down", &script);
    assert!(
        !out.contains("rc=0") && out.contains("403 Client Error: Forbidden"),
        "locked-down, no rule: pip is refused with a 403: {out}"
    );
    assert!(!out.contains("hutch_demo-1.0.0"), "{out}");
    assert_refused(&sb, &up, &out);

    sb.allow(&up.rule());
    let out = sb.run(e, "balanced", &script);
    assert!(
        out.contains("rc=0\nhutch_demo-1.0.0-py3-none-any.whl\n"),
        "{out}"
    );
    let reqs = up.requests();
    assert!(
        reqs.contains("GET /simple/hutch-demo/\n")
            && reqs.contains("GET /files/hutch_demo-1.0.0-py3-none-any.whl\n"),
        "{reqs}"
    );
});

per_engine!(npm_installs_only_when_allowed, |e: Engine| {
    let sb = Sandbox::new();
    let up = Upstream::start(|_| {});
    // npm reads the proxy from the guest's npm_config_proxy (and
    // HTTP_PROXY); the registry is the loopback one.
    let script = format!(
        "mkdir -p /tmp/n && cd /tmp/n && npm_config_registry={}/npm/ \
         npm install --no-audit --no-fund --no-update-notifier hutch-demo 2>&1; echo rc=$?; \
         node -e 'console.log(require(\"hutch-demo\"))' 2>/dev/null",
        up.url()
    );

    let out = sb.run(e, "locked-down", &script);
    assert!(
        !out.contains("rc=0") && out.contains("403"),
        "locked-down, no rule: npm is refused with a 403: {out}"
    );
    assert_refused(&sb, &up, &out);

    sb.allow(&up.rule());
    let out = sb.run(e, "balanced", &script);
    assert!(out.contains("rc=0\nhutch-demo fixture payload\n"), "{out}");
    let reqs = up.requests();
    assert!(
        reqs.contains("GET /npm/hutch-demo\n")
            && reqs.contains("GET /npm/hutch-demo/-/hutch-demo-1.0.0.tgz\n"),
        "{reqs}"
    );
});

/// Serves one response per request: `marker`, then the request's headers
/// echoed back (as a careless upstream might); records each request head.
fn echo_upstream(marker: String, seen: Arc<Mutex<Vec<String>>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = text(&head);
            seen.lock().unwrap().push(head.clone());
            let body = format!("{marker}\n{head}");
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    // SAFETY: both pointers come from live slices and the lengths are
    // theirs; memmem only reads within them and returns null or a pointer
    // into `hay`.
    let p = unsafe {
        libc::memmem(
            hay.as_ptr().cast(),
            hay.len(),
            needle.as_ptr().cast(),
            needle.len(),
        )
    };
    (!p.is_null()).then(|| p as usize - hay.as_ptr() as usize)
}

/// Which of `needles` occur in the guest RAM of the QEMU process `pid`: the
/// largest memfd mapping in /proc/PID/maps (QEMU's memory-backend-memfd),
/// read through /proc/PID/mem. Also returns the bytes scanned.
fn scan_guest_ram(pid: u32, needles: &[&[u8]]) -> (Vec<bool>, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let (start, end) = maps
        .lines()
        .filter(|l| l.contains("memfd:"))
        .filter_map(|l| {
            let (s, e) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
            ))
        })
        .max_by_key(|(s, e)| e - s)
        .unwrap_or_else(|| panic!("no memfd mapping in QEMU's maps:\n{maps}"));
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let overlap = needles.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut found = vec![false; needles.len()];
    let mut buf = vec![0u8; 4 << 20];
    let mut tail: Vec<u8> = Vec::new();
    let mut at = start;
    while at < end {
        let n = buf.len().min((end - at) as usize);
        mem.read_exact_at(&mut buf[..n], at)
            .unwrap_or_else(|e| panic!("reading guest RAM at {at:#x}: {e}"));
        // Scan the end of the previous chunk with this one, so a needle
        // across the boundary is found.
        tail.extend_from_slice(&buf[..overlap.min(n)]);
        for (i, nd) in needles.iter().enumerate() {
            found[i] |= find(&buf[..n], nd).is_some() || find(&tail, nd).is_some();
        }
        tail.clear();
        tail.extend_from_slice(&buf[n.saturating_sub(overlap)..n]);
        at += n as u64;
    }
    (found, end - start)
}

/// A server process, killed on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Ends a memory-test guest however the test ends: `done` lets its script
/// finish; the child is killed if it is still there after that.
struct Guest {
    child: Child,
    done: PathBuf,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.done, "");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test CA and a leaf for `host.hutch.internal` signed by it, made with
/// the openssl command (Debian package openssl): (ca.pem, leaf.pem, leaf.key).
fn test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (Debian package openssl)");
        assert!(o.status.success(), "openssl {args:?}: {}", text(&o.stderr));
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat()
        .into_iter()
        .chain([
            "-subj",
            "/CN=hutch-e2e-test-ca",
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ])
        .collect::<Vec<_>>(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-keyout", "leaf.key", "-out", "leaf.csr"],
        ]
        .concat()
        .into_iter()
        .chain(["-subj", "/CN=host.hutch.internal"])
        .collect::<Vec<_>>(),
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:host.hutch.internal\nbasicConstraints=CA:FALSE\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    )
}

/// `tests/guest/egress_tls_echo.py`: HTTPS with `cert`, answering `marker`
/// and the request head; the heads it got go to `heads`. Killed on drop.
fn tls_echo(cert: &Path, key: &Path, marker: &str, heads: &Path) -> (Child, u16) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/egress_tls_echo.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(cert)
        .arg(key)
        .arg(marker)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(heads).unwrap())
        .spawn()
        .expect("python3 (Debian package python3)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    match line.trim().parse() {
        Ok(port) => (child, port),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the TLS upstream did not start: {line:?}");
        }
    }
}

per_engine!(injected_secret_stays_out_of_guest_memory, |e: Engine| {
    let sb = Sandbox::new();
    let nonce = format!(
        "{:x}{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
        std::process::id()
    );
    // None of these strings is in the guest's command line: the secret
    // reaches only the host proxy, the markers only the upstreams' responses.
    let secret = format!("sk-e2e-{nonce}-9f3c");
    let marker = format!("guest-ram-marker-{nonce}");
    let tls_marker = format!("guest-ram-tls-marker-{nonce}");
    // Plain HTTP (the proxy sets the header) and HTTPS (the proxy
    // terminates the guest's TLS with the sandbox CA, checks the upstream
    // against the test CA, and sets the header); both upstreams echo it.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let port = echo_upstream(marker.clone(), seen.clone());
    let rule = format!("host.hutch.internal:{port}");
    sb.allow(&rule);
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca(pki.path());
    let heads_file = pki.path().join("heads.txt");
    let (tls_child, tls_port) = tls_echo(&cert, &key, &tls_marker, &heads_file);
    let _tls = KillOnDrop(tls_child);
    let tls_rule = format!("host.hutch.internal:{tls_port}");
    sb.allow(&tls_rule);
    let o = sb.hutch(
        &["secret", "set", "-g", "host.hutch.internal:X-Hutch-Token"],
        Some(format!("{secret}\n").as_bytes()),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));

    let ws = sb.ws.path().to_str().unwrap();
    let script = format!(
        "r=$(curl -sS -m 30 http://{rule}/token); printf '%s\\n' \"$r\" > /tmp/got; \
         printf '%s\\n' \"$r\"; \
         t=$(curl -sS -m 30 https://{tls_rule}/tls); printf '%s\\n' \"$t\" > /tmp/got-tls; \
         printf '%s\\n' \"$t\"; \
         env > {ws}/env.txt; cat /proc/[0-9]*/environ > {ws}/environ.bin 2>/dev/null; \
         find /run /tmp /etc /root -xdev -type f -size -4M -exec cat {{}} + \
           > {ws}/files.bin 2>/dev/null; \
         touch {ws}/ready; i=0; \
         while [ ! -e {ws}/done ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; \
         echo finished"
    );
    // Its own runtime directory, to find its QEMU process by.
    let runtime = tempfile::tempdir().unwrap();
    let child = sb
        .command(&sb.run_args(e, "balanced", &script))
        .env("XDG_RUNTIME_DIR", runtime.path())
        // hutch's proxy trusts the test CA for upstream TLS
        // (rustls-native-certs reads SSL_CERT_FILE); the guest never sees it.
        .env("SSL_CERT_FILE", &ca)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guest = Guest {
        child,
        done: sb.ws.path().join("done"),
    };
    let ready = sb.ws.path().join("ready");
    let deadline = Instant::now() + Duration::from_secs(180);
    while !ready.exists() {
        if let Ok(Some(st)) = guest.child.try_wait() {
            let (_, out, err) = hutch_e2e::collect(&mut guest.child);
            panic!("the guest ended before the dump ({st}): {out}\n{err}");
        }
        assert!(Instant::now() < deadline, "the guest never got ready");
        std::thread::sleep(Duration::from_millis(100));
    }

    let qemu: Vec<u32> = hutch_e2e::processes_mentioning(&runtime.path().to_string_lossy())
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| text(&c).contains("qemu-system"))
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(qemu.len(), 1, "one QEMU process for this guest: {qemu:?}");
    let (found, scanned) = scan_guest_ram(
        qemu[0],
        &[marker.as_bytes(), tls_marker.as_bytes(), secret.as_bytes()],
    );
    eprintln!(
        "[e2e] scanned {} MiB of guest RAM (QEMU pid {})",
        scanned >> 20,
        qemu[0]
    );
    assert!(scanned >= 512 << 20, "the whole guest RAM: {scanned}");
    assert!(
        found[0] && found[1],
        "the markers the guest received are in the dump (so the dump is real): {found:?}"
    );
    assert!(!found[2], "the secret is nowhere in guest RAM");

    std::fs::write(&guest.done, "").unwrap();
    let (status, out, err) = hutch_e2e::collect(&mut guest.child);
    assert_eq!(status, Some(0), "{out}\n{err}");
    assert!(out.ends_with("finished\n"), "{out}\n{err}");

    // Both upstreams got the header; the guest saw it masked in both echoes.
    let want = format!("x-hutch-token: {secret}");
    let heads = seen.lock().unwrap().join("\n");
    assert!(
        heads.to_ascii_lowercase().contains(&want),
        "the proxy injected the header over plain HTTP: {heads}"
    );
    let tls_heads = std::fs::read_to_string(&heads_file).unwrap();
    assert!(
        tls_heads.to_ascii_lowercase().contains(&want),
        "the proxy injected the header inside TLS: {tls_heads}"
    );
    assert!(out.starts_with(&format!("{marker}\n")), "{out}");
    assert!(out.contains(&format!("\n{tls_marker}\n")), "{out}");
    let masked = format!("x-hutch-token: {}", "*".repeat(secret.len()));
    assert_eq!(
        out.to_ascii_lowercase().matches(&masked).count(),
        2,
        "both echoed headers reached the guest masked: {out}"
    );
    assert!(!out.contains(&secret), "{out}");
    for f in ["env.txt", "environ.bin", "files.bin"] {
        let data = std::fs::read(sb.ws.path().join(f)).unwrap();
        assert!(!data.is_empty(), "{f} is empty");
        assert!(
            find(&data, secret.as_bytes()).is_none(),
            "the secret is in the guest's {f}"
        );
    }
    let env = std::fs::read_to_string(sb.ws.path().join("env.txt")).unwrap();
    assert!(env.contains("HTTP_PROXY=http://127.0.0.1:3128"), "{env}");
    let files = std::fs::read(sb.ws.path().join("files.bin")).unwrap();
    assert!(
        find(&files, marker.as_bytes()).is_some(),
        "the file scan read the guest's /tmp"
    );
});
