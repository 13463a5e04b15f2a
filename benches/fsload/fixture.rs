//! The directory each server shares: made fresh on the host before the servers start.
//!
//! ```text
//! files/f0..f{files-1}   small files (LOOKUP, GETATTR, OPEN)
//! big/e0..e{entries-1}   empty files (READDIR, READDIRPLUS)
//! work/                  CREATE, RENAME, UNLINK
//! read.dat, write.dat    READ and WRITE
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

pub const FILES_DIR: &str = "files";
pub const BIG_DIR: &str = "big";
pub const WORK_DIR: &str = "work";
pub const READ_FILE: &str = "read.dat";
pub const WRITE_FILE: &str = "write.dat";

/// The fixture could not be made.
#[derive(Debug, Error)]
#[error("fixture {path}: {source}")]
pub struct FixtureError {
    path: PathBuf,
    source: io::Error,
}

/// How big the fixture is.
#[derive(Debug, Clone, Copy)]
pub struct FixtureSpec {
    /// Files under `files/`.
    pub files: usize,
    /// Entries under `big/`.
    pub entries: usize,
    /// Size of `read.dat` and `write.dat` (a multiple of every READ and WRITE size).
    pub file_len: u64,
}

/// Fills the empty directory `root`.
pub fn make(root: &Path, spec: &FixtureSpec) -> Result<(), FixtureError> {
    let at = |path: PathBuf| move |source| FixtureError { path, source };
    for d in [FILES_DIR, BIG_DIR, WORK_DIR] {
        let p = root.join(d);
        fs::create_dir(&p).map_err(at(p.clone()))?;
    }
    let body = vec![b'x'; 1024];
    for i in 0..spec.files {
        let p = root.join(FILES_DIR).join(format!("f{i}"));
        fs::write(&p, &body).map_err(at(p.clone()))?;
    }
    for i in 0..spec.entries {
        let p = root.join(BIG_DIR).join(format!("e{i}"));
        fs::File::create(&p).map_err(at(p.clone()))?;
    }
    let chunk = vec![0x5a; 1 << 20];
    for name in [READ_FILE, WRITE_FILE] {
        let p = root.join(name);
        let mut data = Vec::with_capacity(spec.file_len as usize);
        while (data.len() as u64) < spec.file_len {
            let n = (spec.file_len as usize - data.len()).min(chunk.len());
            data.extend_from_slice(&chunk[..n]);
        }
        fs::write(&p, &data).map_err(at(p.clone()))?;
    }
    Ok(())
}
