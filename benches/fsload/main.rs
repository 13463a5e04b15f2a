//! A device-level load generator for virtio-fs (issue 3): a vhost-user frontend that sends
//! the same FUSE request stream to hutch's backend and to virtiofsd, with no guest in the
//! way, and reports per-op throughput and latency percentiles. It isolates the server's
//! cost (request decoding, host syscalls, queue handling, notifications) from the guest's.
//!
//! Each round starts both servers on their own fresh fixture, runs every op phase on each,
//! alternating which server goes first, and stops them; figures are medians over rounds.
//!
//! Usage: hutch-bench-fsload [--hutch BIN] [--virtiofsd BIN] [--virtiofsd-arg ARG]...
//!            [--depth 1,16] [--rounds 5] [--secs 0.5] [--entries 10000] [--files 1000]
//!            [--dir DIR] [--phase-log FILE]
//!
//! `--phase-log` appends each phase's server, op, wall-clock start and end (ns) and op count
//! to FILE, so that a trace of a server (`benches/fssyscalls.sh`) can be cut into phases.
//! `--hutch` defaults to `hutch-bench-fsserve` next to this binary, `--virtiofsd` to
//! `$VIRTIOFSD` (without either, only hutch runs), `--virtiofsd-arg` to `--cache auto`.

mod engine;
mod fixture;
mod frontend;
mod fuse;
mod ops;
mod reply;
mod server;
mod session;
mod slots;
mod stats;
mod vring;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use fixture::FixtureSpec;
use ops::{all_ops, Ctx, Op};
use server::{Server, Spec};
use session::Session;
use stats::{PhaseStats, Row};

/// READ and WRITE sizes.
const SMALL_IO: u32 = 4 << 10;
const BIG_IO: u32 = 1 << 20;
/// How long a server may take to listen.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Args {
    servers: Vec<Spec>,
    depths: Vec<usize>,
    rounds: usize,
    budget: Duration,
    fixture: FixtureSpec,
    dir: Option<PathBuf>,
    /// Where to append `SERVER\tOP\tSTART_NS\tEND_NS\tCOUNT` per phase
    /// (wall-clock ns), so that a trace of a server can be cut into phases.
    phase_log: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut hutch = me.with_file_name("hutch-bench-fsserve");
    let mut virtiofsd = std::env::var_os("VIRTIOFSD").map(PathBuf::from);
    let mut vargs: Option<Vec<String>> = None;
    let mut a = Args {
        servers: Vec::new(),
        depths: vec![1, 16],
        rounds: 5,
        budget: Duration::from_millis(500),
        fixture: FixtureSpec {
            files: 1000,
            entries: 10_000,
            file_len: 16 << 20,
        },
        dir: None,
        phase_log: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--hutch" => hutch = value()?.into(),
            "--virtiofsd" => virtiofsd = Some(value()?.into()),
            "--virtiofsd-arg" => vargs.get_or_insert_with(Vec::new).push(value()?),
            "--depth" => {
                a.depths = value()?
                    .split(',')
                    .map(|d| num(d.to_owned()))
                    .collect::<Result<_, _>>()?
            }
            "--rounds" => a.rounds = num(value()?)?.max(1),
            "--secs" => {
                let v = value()?;
                let s: f64 = v.parse().map_err(|e| format!("--secs {v}: {e}"))?;
                a.budget = Duration::from_secs_f64(s.max(0.001));
            }
            "--entries" => a.fixture.entries = num(value()?)?,
            "--files" => a.fixture.files = num(value()?)?.max(1),
            "--dir" => a.dir = Some(value()?.into()),
            "--phase-log" => a.phase_log = Some(value()?.into()),
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
        }
    }
    a.servers.push(Spec {
        name: "hutch".into(),
        program: hutch,
        args: Vec::new(),
    });
    if let Some(program) = virtiofsd {
        let args = vargs.unwrap_or_else(|| vec!["--cache".into(), "auto".into()]);
        a.servers.push(Spec {
            name: "virtiofsd".into(),
            program,
            args,
        });
    }
    Ok(a)
}

const USAGE: &str = "usage: hutch-bench-fsload [--hutch BIN] [--virtiofsd BIN] \
[--virtiofsd-arg ARG]... [--depth 1,16] [--rounds N] [--secs S] [--entries N] [--files N] [--dir DIR] \
[--phase-log FILE]";

/// Opens a session on `socket` and looks up the fixture (`server` explains a failure).
pub fn open_target(
    socket: &Path,
    depth: usize,
    fixture: &FixtureSpec,
    server: Option<&mut Server>,
) -> Result<(Session, Ctx), String> {
    let opened = Session::open(socket, CONNECT_WAIT, depth, BIG_IO).and_then(|mut s| {
        let ctx = Ctx::prepare(&mut s, fixture)?;
        Ok((s, ctx))
    });
    opened.map_err(|e| match server.map(|s| s.check()) {
        Some(Err(exited)) => format!("{e} ({exited})"),
        _ => e.to_string(),
    })
}

type Results = BTreeMap<(usize, usize, usize), Vec<PhaseStats>>;

/// One round at one depth: both servers up, every phase on each, alternating the order.
fn round(
    a: &Args,
    work: &Path,
    round: usize,
    depth: usize,
    ops: &[Op],
    res: &mut Results,
) -> Result<(), String> {
    let mut targets = Vec::new();
    for (i, spec) in a.servers.iter().enumerate() {
        let socket = work.join(format!("{}.sock", spec.name));
        let log = work.join(format!("{}.log", spec.name));
        let shared = work.join(&spec.name);
        let mut server = Server::start(spec, &socket, &shared, &log).map_err(|e| e.to_string())?;
        let (s, ctx) = open_target(&socket, depth, &a.fixture, Some(&mut server))
            .map_err(|e| format!("{}: {e}", spec.name))?;
        if round == 0 && depth == a.depths[0] {
            let v = s.init;
            eprintln!(
                "{}: virtio features {:#x}; FUSE {}.{}, flags {:#x}, max_write {}, max_pages {}",
                spec.name,
                s.virtio_features(),
                v.major,
                v.minor,
                v.flags,
                v.max_write,
                v.max_pages
            );
        }
        targets.push((i, server, s, ctx));
    }
    for (k, &op) in ops.iter().enumerate() {
        if (round + k) % 2 == 1 {
            targets.reverse();
        }
        for (i, _, s, ctx) in targets.iter_mut() {
            let start = wall_ns();
            let st = engine::run_phase(s, ctx, op, a.budget)
                .map_err(|e| format!("{} {}: {e}", a.servers[*i].name, op.name()))?;
            if let Some(path) = &a.phase_log {
                let line = format!(
                    "{}\t{}\t{start}\t{}\t{}\n",
                    a.servers[*i].name,
                    op.name(),
                    wall_ns(),
                    st.count
                );
                append(path, &line).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            res.entry((depth, k, *i)).or_default().push(st);
        }
        targets.sort_by_key(|t| t.0);
    }
    for (_, server, s, ctx) in targets {
        drop((s, ctx));
        server.stop();
    }
    Ok(())
}

/// Nanoseconds since the epoch: the clock `strace -ttt` stamps lines with.
fn wall_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn append(path: &Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(line.as_bytes())
}

fn run(a: &Args) -> Result<String, String> {
    let tmp = match &a.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    for spec in &a.servers {
        let dir = tmp.path().join(&spec.name);
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        fixture::make(&dir, &a.fixture).map_err(|e| e.to_string())?;
    }
    let ops = all_ops(SMALL_IO, BIG_IO);
    let mut res = Results::new();
    for r in 0..a.rounds {
        for &depth in &a.depths {
            eprintln!("round {}/{} depth {depth}", r + 1, a.rounds);
            round(a, tmp.path(), r, depth, &ops, &mut res)?;
        }
    }
    let mut rows = Vec::new();
    for &depth in &a.depths {
        for (k, op) in ops.iter().enumerate() {
            let servers = (0..a.servers.len())
                .map(|i| PhaseStats::median_of(&res[&(depth, k, i)]))
                .collect();
            rows.push(Row {
                op: op.name(),
                depth,
                servers,
            });
        }
    }
    let names: Vec<String> = a.servers.iter().map(|s| s.name.clone()).collect();
    Ok(stats::table(&names, &rows))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hutch-bench-fsload: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "fsload: {} round(s), {:.2} s per phase, depths {:?}, {} entries in big/",
        args.rounds,
        args.budget.as_secs_f64(),
        args.depths,
        args.fixture.entries
    );
    match run(&args) {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hutch-bench-fsload: {e}");
            ExitCode::FAILURE
        }
    }
}
