//! The control socket a sandbox's VMM process serves, so other hutch
//! commands can change what it owns (published ports). One request line,
//! one answer line: `ok TEXT` or `err MESSAGE`.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use thiserror::Error;

use super::ports::{self, Forwarder, Published};

/// Errors talking to a control socket, naming it.
#[derive(Debug, Error)]
pub enum CtlError {
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Refused(String),
}

/// Called with the full list after every change (to save the record).
pub type OnChange = Box<dyn Fn(&[Published]) + Send + Sync>;

/// Serves `path` on a thread: `publish SPEC`, `unpublish SPEC`, `ls`.
pub fn serve(path: &Path, fwd: Arc<Forwarder>, on_change: OnChange) -> Result<(), CtlError> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(|source| CtlError::Io {
        path: path.into(),
        source,
    })?;
    let on_change = Arc::new(on_change);
    thread::Builder::new()
        .name("ctl".into())
        .spawn(move || {
            for conn in l.incoming().flatten() {
                let (fwd, on_change) = (fwd.clone(), on_change.clone());
                let _ = thread::spawn(move || answer(conn, &fwd, &on_change));
            }
        })
        .map_err(|source| CtlError::Io {
            path: path.into(),
            source,
        })?;
    Ok(())
}

fn answer(conn: UnixStream, fwd: &Forwarder, on_change: &OnChange) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut line = String::new();
    let Ok(mut w) = conn.try_clone() else { return };
    if BufReader::new(io::Read::take(conn, 4096))
        .read_line(&mut line)
        .is_err()
    {
        return;
    }
    let reply = handle(line.trim_end(), fwd, on_change);
    let text = match reply {
        Ok(t) => format!("ok {t}\n"),
        Err(e) => format!("err {}\n", e.replace('\n', " ")),
    };
    let _ = w.write_all(text.as_bytes());
}

/// Runs one request against `fwd`.
pub fn handle(line: &str, fwd: &Forwarder, on_change: &OnChange) -> Result<String, String> {
    let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
    match verb {
        "publish" => {
            let spec = ports::parse(arg).map_err(|e| e.to_string())?;
            let p = fwd.publish(&spec).map_err(|e| e.to_string())?;
            on_change(&fwd.list());
            Ok(p.to_string())
        }
        "unpublish" => {
            let spec = ports::parse(arg).map_err(|e| e.to_string())?;
            let gone = fwd.unpublish(&spec, arg).map_err(|e| e.to_string())?;
            on_change(&fwd.list());
            Ok(gone
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "))
        }
        "ls" => Ok(fwd
            .list()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")),
        other => Err(format!("unknown request {other:?}")),
    }
}

/// Sends one request line; returns the `ok` text.
pub fn call(path: &Path, request: &str) -> Result<String, CtlError> {
    let io_err = |source| CtlError::Io {
        path: path.into(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(io_err)?;
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(io_err)?;
    s.write_all(format!("{request}\n").as_bytes())
        .map_err(io_err)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(io_err)?;
    let line = line.trim_end();
    match line.split_once(' ').unwrap_or((line, "")) {
        ("ok", t) => Ok(t.to_string()),
        ("err", m) => Err(CtlError::Refused(m.to_string())),
        _ => Err(CtlError::Refused(format!(
            "unexpected answer {line:?} from {}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn requests_over_the_socket() {
        let d = tempfile::tempdir().unwrap();
        let fwd = Arc::new(Forwarder::new(d.path().join("vsock")));
        let saved = Arc::new(Mutex::new(Vec::new()));
        let s2 = saved.clone();
        let ctl = d.path().join("ctl");
        serve(
            &ctl,
            fwd.clone(),
            Box::new(move |l: &[Published]| *s2.lock().unwrap() = l.to_vec()),
        )
        .unwrap();
        let got = call(&ctl, "publish 80").unwrap();
        assert!(
            got.starts_with("127.0.0.1:") && got.ends_with("->80/tcp"),
            "{got}"
        );
        assert_eq!(saved.lock().unwrap().len(), 1);
        assert_eq!(call(&ctl, "ls").unwrap(), got);
        let e = call(&ctl, "publish 80/udp").unwrap_err().to_string();
        assert!(e.contains("only tcp"), "{e}");
        assert!(call(&ctl, "frobnicate")
            .unwrap_err()
            .to_string()
            .contains("unknown request"));
        assert_eq!(call(&ctl, "unpublish 80").unwrap(), got);
        assert!(saved.lock().unwrap().is_empty());
        assert!(call(&ctl, "unpublish 80")
            .unwrap_err()
            .to_string()
            .contains("no published port"));
        let e = call(&d.path().join("nope"), "ls").unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }
}
