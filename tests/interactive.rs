//! An interactive session in a real terminal: tmux (Debian package) runs
//! `hutch run` and `hutch exec -it` in a pane; the test types with
//! send-keys and reads the screen with capture-pane.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hutch_e2e::{hutch_bin, per_engine, Engine};

/// A tmux server of the test's own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(test: &str) -> Tmux {
        Tmux {
            socket: format!("hutch-{test}-{}", std::process::id()),
        }
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux (Debian package tmux)")
    }

    /// Starts `command` in a 100x30 pane that stays after it exits.
    fn start(&self, command: &str) {
        let o = self.cmd(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "100",
            "-y",
            "30",
            command,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        self.cmd(&["set-option", "-t", "t", "remain-on-exit", "on"]);
    }

    fn keys(&self, keys: &[&str]) {
        let mut a = vec!["send-keys", "-t", "t"];
        a.extend(keys);
        assert!(self.cmd(&a).status.success());
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    /// Waits until the screen shows `what` (capture-pane drops trailing
    /// spaces, so a shell prompt is `#`); returns the screen.
    fn wait_for(&self, what: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.screen();
            if s.contains(what) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("waiting for {what:?}; screen:\n{s}\n{}", diagnostics());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Every hutch and QEMU process with the kernel wait channel of each thread,
/// to show where a hang is.
fn diagnostics() -> String {
    let mut out = String::from("processes:\n");
    for pid in hutch_e2e::processes_mentioning("hutch") {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        out.push_str(&format!("{pid} {cmd}\n"));
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten();
        for t in tasks.flatten() {
            let p = t.path();
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            let wchan = std::fs::read_to_string(p.join("wchan")).unwrap_or_default();
            out.push_str(&format!("    {} {}\n", comm.trim(), wchan.trim()));
        }
    }
    out
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

fn session_checks(t: &Tmux) {
    // Type a command, see its output (and the guest's echo of it).
    t.keys(&["echo hello-$((6*7))", "Enter"]);
    t.wait_for("hello-42", 60);
    t.keys(&["stty size", "Enter"]);
    t.wait_for("30 100", 30);
    // Ctrl-C interrupts a sleep: the shell reports 130.
    t.keys(&["sleep 100", "Enter"]);
    std::thread::sleep(Duration::from_millis(500));
    t.keys(&["C-c"]);
    t.keys(&["echo status=$?", "Enter"]);
    t.wait_for("status=130", 30);
    // Resizing the pane resizes the guest's terminal.
    t.cmd(&["resize-window", "-t", "t", "-x", "120", "-y", "40"]);
    std::thread::sleep(Duration::from_millis(500));
    t.keys(&["stty size", "Enter"]);
    t.wait_for("40 120", 30);
    t.keys(&["exit 5", "Enter"]);
}

fn quoted(p: &Path) -> String {
    format!("'{}'", p.display())
}

per_engine!(interactive_run_in_a_terminal, |e: Engine| {
    let ws = hutch_e2e::workspace();
    let t = Tmux::new("run");
    let cmd = format!(
        "cd {} && {} run --engine {} --memory 512M --cpus 1 -- sh",
        quoted(ws.path()),
        quoted(&hutch_bin()),
        e.flag()
    );
    t.start(&format!("{cmd}; echo EXITED=$?"));
    t.wait_for("#", 120);
    session_checks(&t);
    t.wait_for("EXITED=5", 60);
});

per_engine!(interactive_exec_into_a_running_sandbox, |e: Engine| {
    let ws = hutch_e2e::workspace();
    let state = tempfile::tempdir().unwrap();
    let hutch = |args: &[&str]| {
        Command::new(hutch_bin())
            .args(args)
            .env("HUTCH_STATE_DIR", state.path())
            .output()
            .unwrap()
    };
    let o = hutch(&[
        "run",
        "-d",
        "--name",
        "tty",
        "--engine",
        e.flag(),
        "--memory",
        "512M",
        "--cpus",
        "1",
        ws.path().to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let t = Tmux::new("exec");
    let cmd = format!(
        "HUTCH_STATE_DIR={} {} exec -it tty -- sh",
        quoted(state.path()),
        quoted(&hutch_bin())
    );
    t.start(&format!("{cmd}; echo EXITED=$?"));
    t.wait_for("#", 60);
    session_checks(&t);
    t.wait_for("EXITED=5", 60);
    let o = hutch(&["rm", "tty"]);
    assert_eq!(o.status.code(), Some(0));
});
