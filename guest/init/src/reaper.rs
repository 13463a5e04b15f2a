//! Reaping as PID 1, for every session at once: one thread waits for any
//! child and records the status of the ones a session watches; orphans
//! re-parented to init are reaped and forgotten.

use std::collections::{HashMap, HashSet};
use std::io;
use std::process::{Child, Command};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::spawn::exit_status;

#[derive(Default)]
struct State {
    watched: HashSet<libc::pid_t>,
    done: HashMap<libc::pid_t, i32>,
}

/// The reaper; see the module docs.
pub struct Reaper {
    state: Mutex<State>,
    /// Signalled when a watched status arrives.
    exited: Condvar,
    /// Signalled when a child is spawned (the reaper idles without children).
    spawned: Condvar,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

impl Reaper {
    /// The process-wide reaper, started on first use.
    pub fn get() -> &'static Reaper {
        REAPER.get_or_init(|| {
            std::thread::Builder::new()
                .name("reaper".into())
                .spawn(|| Reaper::get().run())
                .expect("start the reaper thread");
            Reaper {
                state: Mutex::new(State::default()),
                exited: Condvar::new(),
                spawned: Condvar::new(),
            }
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawns `cmd` and watches its pid. The lock is held across the spawn,
    /// so the child's status cannot be reaped before it is watched.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Child> {
        let mut st = self.lock();
        let child = cmd.spawn()?;
        st.watched.insert(child.id() as libc::pid_t);
        drop(st);
        self.spawned.notify_all();
        Ok(child)
    }

    /// Waits for watched `pid` to exit; returns its shell-style status.
    pub fn wait(&self, pid: libc::pid_t) -> i32 {
        let mut st = self.lock();
        loop {
            if let Some(s) = st.done.remove(&pid) {
                return s;
            }
            st = self.exited.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn run(&self) {
        loop {
            // Peek at an exited child without reaping it (WNOWAIT), then take
            // the lock: a spawn in progress holds it, and std's spawn reaps a
            // child whose exec failed itself, so that child must not be
            // reaped here first.
            // SAFETY: siginfo_t is plain data; all zeros is valid.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `info` is a valid out pointer for the call.
            let r =
                unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if r == -1 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
                    // No children: sleep until one is spawned (or a second
                    // passes, for orphans that arrive by re-parenting).
                    let st = self.lock();
                    if st.watched.is_empty() {
                        let _ = self.spawned.wait_timeout(st, Duration::from_secs(1));
                    }
                }
                continue;
            }
            // SAFETY: waitid filled `info` for an exited child.
            let pid = unsafe { info.si_pid() };
            let mut st = self.lock();
            let mut raw = 0;
            // SAFETY: `raw` is a valid out pointer; WNOHANG never blocks.
            let got = unsafe { libc::waitpid(pid, &mut raw, libc::WNOHANG) };
            if got == pid && st.watched.remove(&pid) {
                st.done.insert(pid, exit_status(raw));
                drop(st);
                self.exited.notify_all();
            }
        }
    }
}
