//! Serving a sandbox over a Unix socket from synchronous code: the guest's
//! vsock connections to host port 3128 arrive as Unix-socket connections
//! on `<vsock-path>_3128`. [`spawn_unix`] runs the proxy on its own
//! runtime thread; dropping the handle stops it and removes the socket.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::net::UnixListener;
use tokio::sync::oneshot;

use crate::resolve::{Resolver, SystemResolver};
use crate::server::{Config, Proxy, ServerError};

/// A proxy running on its own thread. Dropping it stops the proxy (open
/// connections are cut) and removes the socket file.
pub struct ProxyHandle {
    proxy: Arc<Proxy>,
    path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ProxyHandle {
    /// The running proxy: its decision log, config and CA.
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// The socket it listens on.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts a proxy for `config` listening on the Unix socket `path` (a
/// stale socket there is replaced), resolving names with the system
/// resolver. Returns once it is listening.
pub fn spawn_unix(path: &Path, config: Config) -> Result<ProxyHandle, ServerError> {
    spawn_unix_with(path, config, Arc::new(SystemResolver))
}

/// [`spawn_unix`] with a given resolver (tests use a `FakeResolver`).
pub fn spawn_unix_with(
    path: &Path,
    config: Config,
    resolver: Arc<dyn Resolver>,
) -> Result<ProxyHandle, ServerError> {
    let bind_err = |source| ServerError::BindUnix {
        path: path.into(),
        source,
    };
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let proxy = Proxy::new(config, resolver, Vec::new())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hutch-proxy")
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    let listener = {
        let _guard = runtime.enter();
        UnixListener::bind(path).map_err(bind_err)?
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = proxy.clone();
    let thread = std::thread::Builder::new()
        .name("hutch-proxy".into())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    _ = serving.run_unix(listener) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime cancels every connection task.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        })
        .map_err(ServerError::Runtime)?;
    Ok(ProxyHandle {
        proxy,
        path: path.into(),
        stop: Some(stop),
        thread: Some(thread),
    })
}
