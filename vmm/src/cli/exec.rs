//! `hutch exec [-i] [-t] [-e K=V] [-w DIR] [-u UID[:GID]] NAME -- CMD`.

use std::os::unix::ffi::{OsStrExt, OsStringExt};

use hutch_proto::agent::AGENT_PORT;
use hutch_proto::{ExecRequest, WinSize};

use super::run::{guest_env, with_base_env, EXIT_HUTCH_ERROR};
use super::ExecArgs;
use crate::agent::{connect, run_session, terminal, SessionIo};
use crate::sandbox::{Record, SandboxError, Status, Store};

/// Runs `hutch exec`; returns the command's exit status.
pub fn main(args: ExecArgs) -> i32 {
    match exec(args) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("hutch: {msg}");
            EXIT_HUTCH_ERROR
        }
    }
}

/// A running sandbox's record, or why it cannot take commands.
pub fn running(store: &Store, name: &str) -> Result<Record, String> {
    let r = store.load(name).map_err(|e| e.to_string())?;
    match r.shown_status() {
        "running" => Ok(r),
        "stale" => Err(format!(
            "sandbox {name} is stale: its VMM (pid {}) is gone; hutch rm {name} removes it",
            r.pid
        )),
        "starting" => Err(format!("sandbox {name} is still starting")),
        _ => Err(format!(
            "sandbox {name} is stopped; hutch rm {name}, then hutch run -d --name {name} starts a new one"
        )),
    }
}

fn exec(args: ExecArgs) -> Result<i32, String> {
    let store = Store::open().map_err(|e: SandboxError| e.to_string())?;
    let (uid, gid) = match &args.user {
        Some(u) => parse_user(u)?,
        None => (0, 0),
    };
    let env = guest_env(&args.env)?;
    let rec = running(&store, &args.name)?;
    let base: Vec<Vec<u8>> = rec
        .guest_env
        .iter()
        .map(|e| e.as_bytes().to_vec())
        .collect();
    let env = with_base_env(&base, env);
    debug_assert_eq!(rec.status, Status::Running);
    let cwd = args
        .workdir
        .clone()
        .unwrap_or_else(|| rec.workspace.clone());
    if !cwd.is_absolute() {
        return Err(format!(
            "-w {}: the guest directory must be absolute",
            cwd.display()
        ));
    }
    let tty = args.tty.then(|| {
        terminal::size(0)
            .or_else(|| terminal::size(1))
            .unwrap_or(WinSize { rows: 24, cols: 80 })
    });
    let argv: Vec<Vec<u8>> = if args.cmd.is_empty() {
        vec![b"sh".to_vec()]
    } else {
        args.cmd.iter().map(|a| a.as_bytes().to_vec()).collect()
    };
    let req = ExecRequest {
        argv,
        env,
        cwd: cwd.into_os_string().into_vec(),
        tty,
        uid,
        gid,
    };
    let vsock = store.vsock_path(&args.name);
    let conn = connect(&vsock, AGENT_PORT).map_err(|e| e.to_string())?;
    let io = SessionIo {
        forward_stdin: args.interactive,
        raw_tty: args.tty && args.interactive,
        forward_signals: true,
    };
    run_session(conn, &req, io, &vsock).map_err(|e| e.to_string())
}

/// `UID` or `UID:GID` (numbers: the guest has no user database of its own).
pub fn parse_user(u: &str) -> Result<(u32, u32), String> {
    let num = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("--user {u}: expected UID[:GID] as numbers"))
    };
    match u.split_once(':') {
        Some((a, b)) => Ok((num(a)?, num(b)?)),
        None => {
            let id = num(u)?;
            Ok((id, id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        assert_eq!(parse_user("1000").unwrap(), (1000, 1000));
        assert_eq!(parse_user("1000:50").unwrap(), (1000, 50));
        assert!(parse_user("alice").unwrap_err().contains("UID[:GID]"));
        assert!(parse_user("1:").is_err());
    }

    #[test]
    fn unknown_and_stopped_sandboxes_say_so() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::at(d.path().to_path_buf());
        assert!(running(&s, "nope")
            .unwrap_err()
            .contains("no sandbox named nope"));
        s.create("old").unwrap();
        let mut r = crate::sandbox::state::test_record("old", Status::Stopped);
        s.save(&r).unwrap();
        assert!(running(&s, "old").unwrap_err().contains("is stopped"));
        r.status = Status::Running;
        r.pid_start += 1;
        s.save(&r).unwrap();
        assert!(running(&s, "old").unwrap_err().contains("is stale"));
    }
}
