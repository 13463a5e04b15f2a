//! Starting the user's command, reaping it as PID 1, and mapping its status.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use hutch_proto::ExecRequest;

/// Splits a `KEY=VALUE` entry at the first `=`. Entries without `=` or with an
/// empty key cannot be passed to a command and yield `None`.
pub fn split_env(entry: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = entry.iter().position(|&b| b == b'=')?;
    (eq > 0).then(|| (&entry[..eq], &entry[eq + 1..]))
}

/// Builds the command: exactly the request's argv, env, cwd and ids, in a
/// process group of its own (so signals can reach all of it). With `ctty`,
/// in a session of its own whose controlling terminal is its stdin. With `PATH`
/// in the env, argv\[0\] is looked up in it. The caller sets up stdio.
pub fn command(req: &ExecRequest, ctty: bool) -> Command {
    let (argv0, args) = req
        .argv
        .split_first()
        .map_or((&[][..], &[][..]), |(a, r)| (&a[..], r));
    let mut cmd = Command::new(OsStr::from_bytes(argv0));
    cmd.args(args.iter().map(|a| OsStr::from_bytes(a)))
        .env_clear()
        .envs(
            req.env
                .iter()
                .filter_map(|e| split_env(e))
                .map(|(k, v)| (OsStr::from_bytes(k), OsStr::from_bytes(v))),
        )
        .current_dir(OsStr::from_bytes(&req.cwd));
    if req.uid != 0 || req.gid != 0 {
        cmd.uid(req.uid).gid(req.gid);
    }
    if !ctty {
        // Its own process group, so signals reach everything it starts.
        // Without a pre_exec hook std can start it with posix_spawn (vfork)
        // instead of fork, which matters when init's own memory is large
        // or page tables are emulated. std resets SIGPIPE (ignored by
        // init) to the default in the child either way.
        cmd.process_group(0);
        return cmd;
    }
    // SAFETY: the closure runs in the forked child before exec and calls only
    // setsid and ioctl, which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // A session of its own, with the terminal on stdin as its
            // controlling terminal.
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// What to tell the host when the command could not be started: the text for
/// its stderr and the exit status, as a shell would report them.
pub fn spawn_failure(argv0: &[u8], err: &io::Error) -> (Vec<u8>, i32) {
    let mut msg = b"hutch: ".to_vec();
    msg.extend_from_slice(argv0);
    let status = match err.kind() {
        io::ErrorKind::NotFound => {
            msg.extend_from_slice(b": command not found\n");
            127
        }
        io::ErrorKind::PermissionDenied => {
            msg.extend_from_slice(b": permission denied\n");
            126
        }
        _ => {
            msg.extend_from_slice(format!(": {err}\n").as_bytes());
            126
        }
    };
    (msg, status)
}

/// Maps a raw `waitpid` status to a shell-style exit status: the exit code, or
/// 128 + the signal number.
pub fn exit_status(raw: libc::c_int) -> i32 {
    if libc::WIFEXITED(raw) {
        libc::WEXITSTATUS(raw)
    } else if libc::WIFSIGNALED(raw) {
        128 + libc::WTERMSIG(raw)
    } else {
        // Stopped or continued: not an exit; callers do not ask for these.
        128
    }
}

/// Kills every process but init, at once, so that nothing outlives the
/// run's command.
pub fn kill_leftovers() {
    // SAFETY: kill only sends signals; from PID 1, -1 spares init itself.
    unsafe { libc::kill(-1, libc::SIGKILL) };
}

/// Asks every process but init to stop (SIGTERM), waits up to `grace`, then
/// kills what is left.
pub fn stop_everything(grace: std::time::Duration) {
    // SAFETY: as in kill_leftovers.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        // Signal 0 to -1 fails with ESRCH once no other process is left.
        // SAFETY: as above; signal 0 sends nothing.
        if unsafe { libc::kill(-1, 0) } == -1 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    kill_leftovers();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_splits_at_first_equals() {
        assert_eq!(split_env(b"A=b=c"), Some((&b"A"[..], &b"b=c"[..])));
        assert_eq!(split_env(b"EMPTY="), Some((&b"EMPTY"[..], &b""[..])));
        assert_eq!(
            split_env(b"K=\xff\xfe"),
            Some((&b"K"[..], &b"\xff\xfe"[..]))
        );
        assert_eq!(split_env(b"NOEQ"), None);
        assert_eq!(split_env(b"=x"), None);
    }

    #[test]
    fn status_mapping() {
        assert_eq!(exit_status(0), 0);
        assert_eq!(exit_status(3 << 8), 3);
        assert_eq!(exit_status(255 << 8), 255);
        assert_eq!(exit_status(libc::SIGKILL), 128 + 9);
        assert_eq!(exit_status(libc::SIGSEGV | 0x80), 128 + 11); // core dumped
    }

    #[test]
    fn failure_messages() {
        let nf = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(
            spawn_failure(b"nope", &nf),
            (b"hutch: nope: command not found\n".to_vec(), 127)
        );
        let pd = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(
            spawn_failure(b"./x", &pd),
            (b"hutch: ./x: permission denied\n".to_vec(), 126)
        );
        let (msg, st) = spawn_failure(b"\xffbin", &io::Error::from_raw_os_error(libc::ENOEXEC));
        assert_eq!(st, 126);
        assert!(
            msg.starts_with(b"hutch: \xffbin: Exec format error"),
            "{msg:?}"
        );
    }

    fn spec(argv: &[&[u8]], env: &[&[u8]]) -> ExecRequest {
        ExecRequest {
            argv: argv.iter().map(|a| a.to_vec()).collect(),
            env: env.iter().map(|e| e.to_vec()).collect(),
            cwd: b"/".to_vec(),
            ..ExecRequest::default()
        }
    }

    #[test]
    fn command_gets_exact_env_odd_bytes_path_lookup_and_own_group() {
        let s = spec(
            &[
                b"sh",
                b"-c",
                b"printf '%s|%s|%s|' \"$PWD\" \"$K\" \"$1\"; env | tr '\\n' ' '; \
                  [ \"$(cut -d' ' -f5 /proc/$$/stat)\" = $$ ] && echo leader; \
                  (yes; echo yes=$? >&2) | head -c 2 >/dev/null",
                b"arg0",
                b"\xff two",
            ],
            &[b"PATH=/usr/bin:/bin", b"K=v=w", b"BAD"],
        );
        let out = command(&s, false).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let got = out.stdout;
        assert!(
            got.starts_with(b"/|v=w|\xff two|"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            got.ends_with(b"leader\n"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        // SIGPIPE is back to its default (the test harness, like init,
        // ignores it): `yes` dies of it.
        assert_eq!(String::from_utf8_lossy(&out.stderr), "yes=141\n");
        let env = String::from_utf8_lossy(&got);
        assert!(!env.contains("HOME="), "{env}");
        assert!(env.contains("K=v=w") && !env.contains("BAD"), "{env}");
    }

    #[test]
    fn missing_command_is_not_found() {
        let s = spec(&[b"hutch-no-such-command"], &[b"PATH=/usr/bin:/bin"]);
        let err = command(&s, false).spawn().unwrap_err();
        assert_eq!(spawn_failure(&s.argv[0], &err).1, 127);
    }
}
