//! The egress proxy from inside a guest: the guest's only network is
//! `127.0.0.1:3128`, relayed over vsock to hutch's proxy, which applies the
//! policy. All traffic stays on this host's loopback: the upstream is a small
//! HTTP server here, reached as `host.hutch.internal:PORT` under an explicit
//! rule. Config and state live in temporary directories.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use hutch_e2e::{hutch_bin, per_engine, Engine};

/// Serves `body` to every request on a loopback port; returns the port.
fn upstream(body: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

fn hutch(cfg: &Path, state: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(hutch_bin());
    cmd.args(args)
        .env("HUTCH_CONFIG_DIR", cfg)
        .env("HUTCH_STATE_DIR", state);
    hutch_e2e::output_with_stdin(&mut cmd, stdin)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

per_engine!(
    guest_traffic_follows_the_policy_and_never_sees_secrets,
    |e: Engine| {
        let (cfg, state, ws) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            hutch_e2e::workspace(),
        );
        let h = |args: &[&str], stdin: Option<&[u8]>| hutch(cfg.path(), state.path(), args, stdin);
        let port = upstream("hello through the proxy\n");
        let allowed = format!("host.hutch.internal:{port}");
        let o = h(&["policy", "allow", "-g", &allowed], None);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        let o = h(&["policy", "allow", "-g", "not a rule!"], None);
        assert_ne!(o.status.code(), Some(0), "a bad rule is refused");
        let secret = "sk-ant-test-0123456789abcdef";
        let o = h(
            &["secret", "set", "-g", "anthropic"],
            Some(secret.as_bytes()),
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));

        let script = format!(
        "curl -sS -m 30 http://{allowed}/; \
         curl -sS -m 30 -o /dev/null -w 'denied=%{{http_code}}\\n' http://example.com/; \
         curl -sS -m 30 http://example.com/; echo; \
         curl -sS -m 30 -o /dev/null -w 'connect=%{{http_connect}}\\n' https://pypi.org/ 2>/dev/null; echo; \
         echo key=$ANTHROPIC_API_KEY; \
         test -s \"$SSL_CERT_FILE\" && echo bundle=yes; \
         cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c '{secret}' || true"
    );
        let run = |policy: &str| {
            h(
                &[
                    "run",
                    "--engine",
                    e.flag(),
                    "--memory",
                    "512M",
                    "--cpus",
                    "1",
                    "--policy",
                    policy,
                    ws.path().to_str().unwrap(),
                    "--",
                    "sh",
                    "-c",
                    &script,
                ],
                None,
            )
        };
        let o = run("balanced");
        let out = text(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "{out}\n{}", text(&o.stderr));
        assert!(out.starts_with("hello through the proxy\n"), "{out}");
        assert!(out.contains("denied=403"), "{out}");
        assert!(
            out.contains("example.com:80: no rule allows it"),
            "the 403 says why: {out}"
        );
        // pypi.org is in the balanced list: the policy lets it through (what
        // happens next depends on this host's DNS; here it may resolve to an
        // address the SSRF guard refuses, which the log says apart).
        let pypi = |log: &str| -> Vec<String> {
            log.lines()
                .filter(|l| l.contains("pypi.org"))
                .map(String::from)
                .collect()
        };
        let log = text(&h(&["policy", "log", "--limit", "50"], None).stdout);
        let first = pypi(&log);
        assert_eq!(first.len(), 1, "{log}");
        assert!(
            !first[0].contains("no rule allows it"),
            "balanced allows pypi.org: {log}"
        );
        assert!(out.contains("key=hutch-managed-secret"), "{out}");
        assert!(out.contains("bundle=yes"), "{out}");
        assert!(
            out.trim_end().ends_with("\n0"),
            "the secret is in no guest environment: {out}"
        );
        assert!(!out.contains(secret));

        let o = run("locked-down");
        let out = text(&o.stdout);
        assert!(
            out.contains("connect=403"),
            "locked-down refuses pypi.org: {out}"
        );
        let log = text(&h(&["policy", "log", "--limit", "50"], None).stdout);
        let all = pypi(&log);
        assert!(
            all.iter()
                .any(|l| l.contains("pypi.org:443: no rule allows it")),
            "{log}"
        );
        assert!(
            out.starts_with("hello through the proxy\n"),
            "explicit rules still apply: {out}"
        );

        let log = text(&h(&["policy", "log", "--limit", "50"], None).stdout);
        assert!(log.contains(&allowed) && log.contains("allow"), "{log}");
        assert!(log.contains("DENY") && log.contains("example.com"), "{log}");
        assert!(!log.contains(secret));
    }
);

/// A free loopback port (bound, then released for a server to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the server child on drop.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

per_engine!(
    git_clones_through_the_proxy_only_when_allowed,
    |e: Engine| {
        let (cfg, state, ws) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            hutch_e2e::workspace(),
        );
        let h = |args: &[&str]| hutch(cfg.path(), state.path(), args, None);
        // A bare repository served over HTTP (git's "dumb" protocol) on loopback.
        let srv = tempfile::tempdir().unwrap();
        let git = hutch_e2e::git;
        let src = srv.path().join("src");
        std::fs::create_dir(&src).unwrap();
        git(&src, &["init", "-q"]);
        std::fs::write(src.join("a.txt"), "cloned through the proxy\n").unwrap();
        git(&src, &["add", "a.txt"]);
        git(&src, &["commit", "-qm", "init"]);
        git(srv.path(), &["clone", "-q", "--bare", "src", "repo.git"]);
        git(&srv.path().join("repo.git"), &["update-server-info"]);
        let port = free_port();
        let _server = Server(
            Command::new("python3")
                .args([
                    "-m",
                    "http.server",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--directory",
                ])
                .arg(srv.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let url = format!("http://host.hutch.internal:{port}/repo.git");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the git server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let script =
            format!("cd /tmp && git clone -q {url} r 2>&1; cat r/a.txt 2>/dev/null; echo rc=$?");
        let run = || {
            let o = h(&[
                "run",
                "--engine",
                e.flag(),
                "--memory",
                "512M",
                "--cpus",
                "1",
                ws.path().to_str().unwrap(),
                "--",
                "sh",
                "-c",
                &script,
            ]);
            text(&o.stdout)
        };
        let refused = run();
        assert!(
            refused.contains("403") && !refused.contains("cloned through"),
            "no rule, no clone: {refused}"
        );
        let o = h(&[
            "policy",
            "allow",
            "-g",
            &format!("host.hutch.internal:{port}"),
        ]);
        assert_eq!(o.status.code(), Some(0));
        let out = run();
        assert!(out.contains("cloned through the proxy\nrc=0"), "{out}");
    }
);
