//! `hutch run -d`: start the sandbox's VMM as a background process and
//! return once its agent is serving.
//!
//! The parent checks the arguments, makes sure the kernel is built (with
//! progress, on this terminal), claims the name, and starts `hutch run
//! --daemon-child` with the same arguments in a session of its own, its
//! output going to the sandbox's `vmm.log`. It then watches the record until
//! it says running, or the child exits (and the log says why).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::RunArgs;
use crate::sandbox::{Status, Store};

/// How long a sandbox may take to boot before `run -d` gives up on it.
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// Starts the background sandbox; returns the exit status for the parent.
pub fn start(args: &RunArgs) -> Result<i32, String> {
    let store = Store::open().map_err(|e| e.to_string())?;
    let ws = super::run::workspace(args.workspace.as_deref())?;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => made_up_name(&ws),
    };
    if args.kernel.is_none() {
        crate::kernel::ensure().map_err(|e| e.to_string())?;
    }
    store.create(&name).map_err(|e| e.to_string())?;
    let log_path = store.log_path(&name);
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
    let log2 = log
        .try_clone()
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("locating hutch itself: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(child_args(&name))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: setsid is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            // Its own session: no terminal, and the terminal's signals do
            // not reach it.
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        let _ = store.remove(&name);
        format!("starting the sandbox's VMM: {e}")
    })?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let _ = store.remove(&name);
            return Err(format!(
                "sandbox {name} did not start ({status}):\n{}",
                log.trim_end()
            ));
        }
        if let Ok(r) = store.load(&name) {
            if r.status == Status::Running {
                println!("{name}");
                for p in &r.ports {
                    eprintln!("hutch: published {p}");
                }
                return Ok(0);
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = store.remove(&name);
            return Err(format!(
                "sandbox {name} did not start within {} s; see {}",
                START_TIMEOUT.as_secs(),
                log_path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// This process's arguments with the daemon flag and the name put in
/// (replacing any `--name`), before any `--`.
fn child_args(name: &str) -> Vec<OsString> {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    rewrite(args, name)
}

fn rewrite(args: Vec<OsString>, name: &str) -> Vec<OsString> {
    let split = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let (head, tail) = args.split_at(split);
    let mut out: Vec<OsString> = Vec::new();
    let mut skip_value = false;
    for a in head {
        if skip_value {
            skip_value = false;
            continue;
        }
        if a == "--name" {
            skip_value = true;
            continue;
        }
        if a.to_string_lossy().starts_with("--name=") {
            continue;
        }
        out.push(a.clone());
    }
    out.extend(["--daemon-child".into(), "--name".into(), name.into()]);
    out.extend(tail.iter().cloned());
    out
}

/// `<workspace name>-<4 hex digits>`, trimmed to a valid name.
fn made_up_name(ws: &std::path::Path) -> String {
    let base: String = ws
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .take(24)
        .collect();
    let base = base.trim_start_matches(['-', '_', '.']);
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id();
    let base = if base.is_empty() { "sandbox" } else { base };
    format!("{base}-{:04x}", nonce & 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_replaced_and_the_command_kept() {
        let v = |s: &[&str]| s.iter().map(OsString::from).collect::<Vec<_>>();
        let got = rewrite(
            v(&[
                "run", "-d", "--name", "old", "-p", "80", "/ws", "--", "sh", "-d", "--name",
            ]),
            "web",
        );
        assert_eq!(
            got,
            v(&[
                "run",
                "-d",
                "-p",
                "80",
                "/ws",
                "--daemon-child",
                "--name",
                "web",
                "--",
                "sh",
                "-d",
                "--name"
            ])
        );
        let got = rewrite(v(&["run", "--detach", "--name=x"]), "x");
        assert_eq!(
            got,
            v(&["run", "--detach", "--daemon-child", "--name", "x"])
        );
    }

    #[test]
    fn made_up_names_are_valid() {
        for ws in ["/home/u/my project!", "/", "/w/--x", "/w/a.b_c"] {
            let n = made_up_name(std::path::Path::new(ws));
            crate::sandbox::state::check_name(&n).unwrap_or_else(|e| panic!("{ws}: {e}"));
        }
        assert!(made_up_name(std::path::Path::new("/w/proj")).starts_with("proj-"));
    }
}
