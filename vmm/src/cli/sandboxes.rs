//! `hutch ls`, `hutch stop NAME...`, `hutch rm NAME...`.

use std::time::{Duration, Instant};

use hutch_proto::Msg;

use super::run::EXIT_HUTCH_ERROR;
use crate::agent::client;
use crate::sandbox::state::now;
use crate::sandbox::{Record, SandboxError, Status, Store};

/// How long a graceful stop may take before the VMM is terminated.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

fn store() -> Result<Store, i32> {
    Store::open().map_err(|e: SandboxError| {
        eprintln!("hutch: {e}");
        EXIT_HUTCH_ERROR
    })
}

/// `hutch ls`: one line per sandbox.
pub fn ls() -> i32 {
    let store = match store() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let rows: Vec<[String; 8]> = store
        .list()
        .into_iter()
        .map(|r| match r {
            Ok(r) => row(&r),
            Err(e) => {
                eprintln!("hutch: {e}");
                Default::default()
            }
        })
        .filter(|r| !r[0].is_empty())
        .collect();
    print!("{}", table(&rows));
    0
}

fn row(r: &Record) -> [String; 8] {
    let status = r.shown_status();
    let uptime = if status == "running" || status == "starting" {
        human_duration(now().saturating_sub(r.created))
    } else {
        "-".into()
    };
    let ports = if r.ports.is_empty() || status != "running" {
        "-".into()
    } else {
        r.ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    [
        r.name.clone(),
        status.into(),
        r.engine.clone(),
        r.workspace.display().to_string(),
        format!("{}M", r.memory >> 20),
        r.cpus.to_string(),
        uptime,
        ports,
    ]
}

/// Aligns rows under the header.
pub fn table(rows: &[[String; 8]]) -> String {
    let head = [
        "NAME",
        "STATUS",
        "ENGINE",
        "WORKSPACE",
        "MEMORY",
        "CPUS",
        "UPTIME",
        "PORTS",
    ];
    let mut width = head.map(str::len);
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(head.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn human_duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// `hutch stop NAME...`.
pub fn stop(names: &[String]) -> i32 {
    let store = match store() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let mut code = 0;
    for n in names {
        match stop_one(&store, n) {
            Ok(msg) => eprintln!("hutch: {msg}"),
            Err(e) => {
                eprintln!("hutch: {e}");
                code = 1;
            }
        }
    }
    code
}

/// Stops sandbox `name`: asks its agent to shut the guest down, waits for
/// the VMM to exit, and terminates it if it does not.
pub fn stop_one(store: &Store, name: &str) -> Result<String, String> {
    let mut r = store.load(name).map_err(|e| e.to_string())?;
    if r.status == Status::Stopped {
        return Ok(format!("{name} is already stopped"));
    }
    if !r.alive() {
        r.status = Status::Stopped;
        r.ports.clear();
        store.save(&r).map_err(|e| e.to_string())?;
        return Ok(format!(
            "{name} was stale (its VMM had died); marked stopped"
        ));
    }
    let graceful = client::request(&store.vsock_path(name), &Msg::Shutdown).is_ok();
    if !graceful || !wait_gone(&r, STOP_TIMEOUT) {
        // SAFETY: kill only sends a signal, to the pid the record names
        // (its start time checked just above, in alive()).
        unsafe { libc::kill(r.pid as libc::pid_t, libc::SIGTERM) };
        if !wait_gone(&r, Duration::from_secs(5)) {
            // SAFETY: as above.
            unsafe { libc::kill(r.pid as libc::pid_t, libc::SIGKILL) };
            wait_gone(&r, Duration::from_secs(5));
        }
    }
    // The VMM marks itself stopped on a clean exit; a killed one cannot.
    if let Ok(mut now) = store.load(name) {
        if now.status != Status::Stopped {
            now.status = Status::Stopped;
            now.ports.clear();
            store.save(&now).map_err(|e| e.to_string())?;
        }
    }
    Ok(format!("stopped {name}"))
}

fn wait_gone(r: &Record, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if crate::sandbox::state::process_start(r.pid) != Some(r.pid_start) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// `hutch rm NAME...`: stops running ones, then removes their folders.
pub fn rm(names: &[String]) -> i32 {
    let store = match store() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let mut code = 0;
    for n in names {
        let res = match store.load(n) {
            Ok(r) if r.alive() => stop_one(&store, n).map(|_| ()),
            Ok(_) => Ok(()),
            // A folder without a readable record can still be removed.
            Err(SandboxError::Corrupt { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
        .and_then(|()| store.remove(n).map_err(|e| e.to_string()));
        match res {
            Ok(()) => eprintln!("hutch: removed {n}"),
            Err(e) => {
                eprintln!("hutch: {e}");
                code = 1;
            }
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let r = |n: &str, s: &str| -> [String; 8] {
            [n, s, "qemu (tcg)", "/w", "512M", "1", "5s", "-"].map(String::from)
        };
        let t = table(&[r("a", "running"), r("longer-name", "stale")]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NAME         STATUS   ENGINE"), "{t}");
        assert!(
            lines[2].starts_with("longer-name  stale    qemu (tcg)"),
            "{t}"
        );
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(61), "1m1s");
        assert_eq!(human_duration(7300), "2h1m");
    }

    #[test]
    fn stopping_a_stale_record_marks_it_stopped() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::at(d.path().to_path_buf());
        s.create("x").unwrap();
        let mut rec = crate::sandbox::state::test_record("x", Status::Running);
        rec.pid_start += 1;
        s.save(&rec).unwrap();
        assert!(stop_one(&s, "x").unwrap().contains("stale"));
        assert_eq!(s.load("x").unwrap().shown_status(), "stopped");
        assert!(stop_one(&s, "x").unwrap().contains("already stopped"));
        assert!(stop_one(&s, "y")
            .unwrap_err()
            .contains("no sandbox named y"));
    }
}
