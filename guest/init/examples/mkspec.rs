//! Writes an encoded run spec to stdout, for building test initramfs images.
//!
//! `mkspec [--env K=V]... [--cwd DIR] [--workspace DIR] [--home DIR] -- ARGV...`
//!
//! Defaults: cwd `/`, workspace `/workspace`, home `/root`, and
//! `PATH=/usr/local/bin:/usr/bin:/bin` when no `--env` is given.

use std::io::Write;
use std::os::unix::ffi::OsStringExt;

use hutch_proto::RunSpec;

fn main() {
    let mut args = std::env::args_os().skip(1).map(OsStringExt::into_vec);
    let mut spec = RunSpec {
        cwd: b"/".to_vec(),
        workspace: b"/workspace".to_vec(),
        home: b"/root".to_vec(),
        ..RunSpec::default()
    };
    while let Some(arg) = args.next() {
        let slot = match arg.as_slice() {
            b"--" => break,
            b"--env" => None,
            b"--cwd" => Some(&mut spec.cwd),
            b"--workspace" => Some(&mut spec.workspace),
            b"--home" => Some(&mut spec.home),
            other => usage(&format!(
                "unknown option {}",
                String::from_utf8_lossy(other)
            )),
        };
        let value = args.next().unwrap_or_else(|| usage("option needs a value"));
        match slot {
            Some(s) => *s = value,
            None => spec.env.push(value),
        }
    }
    spec.argv = args.collect();
    if spec.argv.is_empty() {
        usage("no command after --");
    }
    if spec.env.is_empty() {
        spec.env.push(b"PATH=/usr/local/bin:/usr/bin:/bin".to_vec());
    }
    std::io::stdout()
        .write_all(&spec.encode())
        .expect("write spec to stdout");
}

fn usage(why: &str) -> ! {
    eprintln!("mkspec: {why}");
    eprintln!("usage: mkspec [--env K=V]... [--cwd DIR] [--workspace DIR] [--home DIR] -- ARGV...");
    std::process::exit(2);
}
