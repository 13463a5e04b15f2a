//! Starting and stopping a vhost-user-fs server process: hutch's (`hutch-bench-fsserve`)
//! or virtiofsd, both as `PROGRAM --socket-path S --shared-dir D [ARGS]`.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;

/// How long a server may take to exit once its frontend disconnects.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// Errors running a server; each names the program and its log.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("{name} server {program}: cannot start: {source}")]
    Spawn {
        name: String,
        program: PathBuf,
        source: io::Error,
    },
    #[error("{name} server: cannot create its log {log}: {source}")]
    Log {
        name: String,
        log: PathBuf,
        source: io::Error,
    },
    #[error("{name} server exited with {status} (log: {log})")]
    Exited {
        name: String,
        status: ExitStatus,
        log: PathBuf,
    },
}

/// Which server and how to start it.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub program: PathBuf,
    /// Arguments after `--socket-path S --shared-dir D`.
    pub args: Vec<String>,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    name: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// Starts `spec` serving `shared` on `socket`, its output going to `log`.
    pub fn start(
        spec: &Spec,
        socket: &Path,
        shared: &Path,
        log: &Path,
    ) -> Result<Self, ServerError> {
        let out = File::create(log).map_err(|source| ServerError::Log {
            name: spec.name.clone(),
            log: log.to_path_buf(),
            source,
        })?;
        let err = out.try_clone().map_err(|source| ServerError::Log {
            name: spec.name.clone(),
            log: log.to_path_buf(),
            source,
        })?;
        let child = Command::new(&spec.program)
            .arg("--socket-path")
            .arg(socket)
            .arg("--shared-dir")
            .arg(shared)
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| ServerError::Spawn {
                name: spec.name.clone(),
                program: spec.program.clone(),
                source,
            })?;
        Ok(Self {
            name: spec.name.clone(),
            log: log.to_path_buf(),
            child: Some(child),
        })
    }

    /// An error if the server has already exited (to explain a failed connection).
    pub fn check(&mut self) -> Result<(), ServerError> {
        if let Some(child) = &mut self.child {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(ServerError::Exited {
                    name: self.name.clone(),
                    status,
                    log: self.log.clone(),
                });
            }
        }
        Ok(())
    }

    /// Waits for the server to exit after the frontend disconnected; kills it if slow.
    pub fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let start = Instant::now();
        while start.elapsed() < EXIT_WAIT {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        eprintln!(
            "{} server did not exit on disconnect; killing it",
            self.name
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
