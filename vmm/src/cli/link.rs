//! The host side of one run's guest: its vsock socket, the listener the
//! agent says hello on, its published ports, and, for a named sandbox, its
//! record and control socket in the state directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use super::RunArgs;
use crate::agent::ready::ReadyListener;
use crate::engine::{Resolved, VmSpec};
use crate::sandbox::ports::{self, Forwarder, Published};
use crate::sandbox::state::{now, process_start};
use crate::sandbox::{ctl, Record, Status, Store};

struct Registration {
    store: Store,
    record: Mutex<Record>,
    /// Kept as stopped at the end (`run -d`), else removed.
    keep: bool,
}

impl Registration {
    fn update(&self, f: impl FnOnce(&mut Record)) {
        let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut r);
        if let Err(e) = self.store.save(&r) {
            log::warn!("{e}");
        }
    }
}

struct Inner {
    vsock: PathBuf,
    ready: ReadyListener,
    fwd: Arc<Forwarder>,
    reg: Option<Registration>,
}

/// See the module docs; cheap to clone.
#[derive(Clone)]
pub struct GuestLink(Arc<Inner>);

impl GuestLink {
    /// Sets up the host side before the guest boots: claims the name (a
    /// foreground named run; `run -d`'s parent claimed it already), binds
    /// the ready listener, publishes `-p` ports and serves the control
    /// socket.
    pub fn open(args: &RunArgs, engine: Resolved, vm: &VmSpec) -> Result<GuestLink, String> {
        let mut reg = None;
        let vsock = match &args.name {
            Some(name) => {
                let store = Store::open().map_err(|e| e.to_string())?;
                if !args.daemon_child {
                    store.create(name).map_err(|e| e.to_string())?;
                }
                let pid = std::process::id();
                let record = Record {
                    name: name.clone(),
                    status: Status::Starting,
                    pid,
                    pid_start: process_start(pid).unwrap_or(0),
                    engine: engine.name().into(),
                    workspace: super::run::workspace(args.workspace.as_deref())?,
                    memory: vm.memory,
                    cpus: vm.cpus,
                    created: now(),
                    detached: args.detach,
                    ports: Vec::new(),
                };
                let path = store.vsock_path(name);
                reg = Some(Registration {
                    store,
                    record: Mutex::new(record),
                    keep: args.detach,
                });
                path
            }
            None => match &args.vsock {
                Some(v) => v.clone(),
                None => {
                    // Directly in the runtime directory, not in a folder of
                    // its own: socket guards remove the files even if hutch
                    // is killed, and nothing would remove a folder.
                    let base = std::env::var_os("XDG_RUNTIME_DIR")
                        .map(PathBuf::from)
                        .filter(|p| p.is_dir())
                        .unwrap_or_else(std::env::temp_dir);
                    let nonce = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.subsec_nanos())
                        .unwrap_or(0);
                    base.join(format!("hutch-{}-{nonce:x}.vsock", std::process::id()))
                }
            },
        };
        let link = GuestLink(Arc::new(Inner {
            ready: ReadyListener::bind(&vsock).map_err(|e| e.to_string())?,
            fwd: Arc::new(Forwarder::new(vsock.clone())),
            vsock,
            reg,
        }));
        let fail = |e: String| {
            link.finish();
            e
        };
        for spec in &args.publish {
            let p = ports::parse(spec).map_err(|e| fail(e.to_string()))?;
            let published = link.0.fwd.publish(&p).map_err(|e| fail(e.to_string()))?;
            if !args.daemon_child {
                eprintln!("hutch: published {published}");
            }
        }
        if let Some(reg) = &link.0.reg {
            reg.update(|r| r.ports = link.0.fwd.list());
            let name = reg
                .record
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .name
                .clone();
            let weak = Arc::downgrade(&link.0);
            ctl::serve(
                &reg.store.ctl_path(&name),
                link.0.fwd.clone(),
                Box::new(move |list: &[Published]| {
                    if let Some(reg) = weak.upgrade().as_ref().and_then(|i| i.reg.as_ref()) {
                        reg.update(|r| r.ports = list.to_vec());
                    }
                }),
            )
            .map_err(|e| fail(e.to_string()))?;
        }
        Ok(link)
    }

    /// The hybrid vsock socket path.
    pub fn vsock(&self) -> &Path {
        &self.0.vsock
    }

    /// Waits for the agent's hello (see [`ReadyListener::accept_hello`]).
    pub fn accept_hello(&self, stop: &AtomicBool) -> Option<std::os::unix::net::UnixStream> {
        self.0.ready.accept_hello(stop)
    }

    /// Records the sandbox's status (named sandboxes only).
    pub fn mark(&self, status: Status) {
        if let Some(reg) = &self.0.reg {
            reg.update(|r| r.status = status);
        }
    }

    /// At the end of the run: a `run -d` sandbox is kept as stopped, a
    /// foreground named one is removed.
    pub fn finish(&self) {
        let Some(reg) = &self.0.reg else { return };
        if reg.keep {
            reg.update(|r| {
                r.status = Status::Stopped;
                r.ports.clear();
            });
            let name = reg
                .record
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .name
                .clone();
            let _ = std::fs::remove_file(reg.store.ctl_path(&name));
        } else {
            let name = reg
                .record
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .name
                .clone();
            let _ = reg.store.remove(&name);
        }
    }
}
