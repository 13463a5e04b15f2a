//! The host side of one run's guest: its vsock socket, the listener the
//! agent says hello on, its published ports, and, for a named sandbox, its
//! record and control socket in the state directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use hutch_proto::agent::PROXY_PORT;
use hutch_proto::CA_BUNDLE_PATH;
use hutch_proxy::Preset;

use super::RunArgs;
use crate::agent::ready::ReadyListener;
use crate::devices::virtio::vsock::SocketGuard;
use crate::engine::Resolved;
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
    egress: Egress,
}

/// The egress proxy of this guest, on `<vsock>_3128`.
struct Egress {
    _handle: hutch_proxy::unix::ProxyHandle,
    _guard: SocketGuard,
    /// The variables the guest's processes get (proxy, CA bundle, sentinels).
    env: Vec<Vec<u8>>,
    /// The PEM bundle the guest trusts, when the proxy intercepts TLS.
    bundle: Option<String>,
}

/// Starts the egress proxy for sandbox `name` with its policy (or the
/// override), credentials and CA, listening where the guest's vsock
/// connections to host port 3128 arrive.
fn start_egress(vsock: &Path, name: &str, preset: Option<Preset>) -> Result<Egress, String> {
    use hutch_proxy::{guest, paths, tls, Config, Secrets};
    let store =
        hutch_proxy::store::Store::load(&paths::policy_file()).map_err(|e| e.to_string())?;
    let policy = store.policy_for(name, preset).map_err(|e| e.to_string())?;
    let mut config = Config::new(name, policy);
    config.credentials = Secrets::load(&paths::secrets_file())
        .map_err(|e| e.to_string())?
        .credentials_for(name);
    if !config.credentials.is_empty() {
        config.ca_dir = Some(paths::ca_dir(name));
    }
    config.log_file = Some(paths::log_file(name));
    let mut path = vsock.as_os_str().to_owned();
    path.push(format!("_{PROXY_PORT}"));
    let path = PathBuf::from(path);
    let handle = hutch_proxy::spawn_unix(&path, config).map_err(|e| e.to_string())?;
    let guard = SocketGuard::new(&path);
    let bundle = handle.proxy().ca().map(tls::guest_bundle);
    let env = guest::env(
        PROXY_PORT as u16,
        bundle.as_ref().map(|_| CA_BUNDLE_PATH),
        &handle.proxy().config().credentials,
    )
    .into_iter()
    .map(|(k, v)| format!("{k}={v}").into_bytes())
    .collect();
    Ok(Egress {
        _handle: handle,
        _guard: guard,
        env,
        bundle,
    })
}

/// See the module docs; cheap to clone.
#[derive(Clone)]
pub struct GuestLink(Arc<Inner>);

impl GuestLink {
    /// Sets up the host side before the guest boots: claims the name (a
    /// foreground named run; `run -d`'s parent claimed it already), binds
    /// the ready listener, publishes `-p` ports and serves the control
    /// socket.
    pub fn open(
        args: &RunArgs,
        engine: Resolved,
        memory: u64,
        cpus: u8,
    ) -> Result<GuestLink, String> {
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
                    memory,
                    cpus,
                    created: now(),
                    detached: args.detach,
                    ports: Vec::new(),
                    guest_env: Vec::new(),
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
        let proxy_name = args.name.as_deref().unwrap_or("run");
        let egress = start_egress(&vsock, proxy_name, args.policy).map_err(|e| {
            // A foreground run claimed the name above; `run -d`'s parent
            // removes what its child leaves.
            if let (Some(r), Some(n), false) = (&reg, &args.name, args.daemon_child) {
                let _ = r.store.remove(n);
            }
            format!("egress proxy: {e}")
        })?;
        if let Some(r) = &reg {
            r.record.lock().unwrap_or_else(|p| p.into_inner()).guest_env = egress
                .env
                .iter()
                .map(|e| String::from_utf8_lossy(e).into_owned())
                .collect();
        }
        let link = GuestLink(Arc::new(Inner {
            egress,
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

    /// Environment entries every guest process gets (the proxy's).
    pub fn guest_env(&self) -> &[Vec<u8>] {
        &self.0.egress.env
    }

    /// The CA bundle for the guest, when the proxy intercepts TLS.
    pub fn ca_bundle(&self) -> Option<&str> {
        self.0.egress.bundle.as_deref()
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
