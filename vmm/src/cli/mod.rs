//! The command line: `hutch run | exec | ls | stop | rm | ports | kernel | doctor | selftest`.

pub mod bench;
pub mod daemon;
pub mod doctor;
pub mod exec;
#[cfg(feature = "aarch64")]
pub mod fdt;
pub mod fs_backend;
pub mod kernel;
pub mod link;
pub mod policy;
pub mod ports;
pub mod run;
pub mod sandboxes;
pub mod secret;
pub mod selftest;
pub mod size;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::engine::EngineKind;

/// hutch: run a command in a microVM with your workspace shared in.
#[derive(Debug, Parser)]
#[command(name = "hutch", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run CMD in a new microVM with WORKSPACE (default: the current directory) shared read-write at the same path.
    Run(RunArgs),
    /// Run CMD in a running sandbox (see run -d).
    Exec(ExecArgs),
    /// List sandboxes: name, status, engine, workspace, memory, cpus, uptime, ports.
    Ls,
    /// Stop running sandboxes (their records stay until rm).
    Stop {
        /// Sandbox names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove sandboxes, stopping them first if they run.
    Rm {
        /// Sandbox names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Publish, list or unpublish a running sandbox's ports.
    Ports(PortsArgs),
    /// Network policy: ls | allow | deny | rm | reset | set-default | log.
    Policy(policy::PolicyArgs),
    /// Credentials the proxy adds for a sandbox: set | ls | rm (values never in argv).
    Secret(secret::SecretArgs),
    /// Build or locate the guest kernel.
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// Report what this host can run and which engine `auto` picks.
    Doctor,
    /// Boot a guest whose root the kernel mounts itself through hutch's virtio-fs, and report each milestone.
    Selftest(SelftestArgs),
    /// Benchmark probe: boot the native VM, stop after --guest-ms, print start-up time and VMM RSS.
    #[command(hide = true)]
    BenchBoot(BenchBootArgs),
    /// One virtio-fs share served over vhost-user in a process of its own (the qemu engine starts it).
    #[command(hide = true)]
    FsBackend(fs_backend::FsBackendArgs),
    /// Test probe: write hutch's generated arm64 device tree to a file.
    #[cfg(feature = "aarch64")]
    #[command(hide = true)]
    Fdt(fdt::FdtArgs),
}

/// `hutch bench-boot`.
#[derive(Debug, Args)]
pub struct BenchBootArgs {
    /// Milliseconds to let the guest run before stopping it.
    #[arg(long, default_value_t = 0)]
    pub guest_ms: u64,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `hutch run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Directory shared read-write at its own path (default: current directory).
    pub workspace: Option<PathBuf>,
    /// Command and arguments (default: sh).
    #[arg(last = true)]
    pub cmd: Vec<OsString>,
    /// Guest memory, e.g. 512M or 4G (default: half the host's memory, at most 32G).
    #[arg(long, short = 'm')]
    pub memory: Option<String>,
    /// vCPUs (default: the host's CPUs minus one, at least 1).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Engine: native where the host can run a guest, else qemu.
    #[arg(long, value_enum, default_value = "auto")]
    pub engine: EngineKind,
    /// Set an environment variable in the guest (KEY=VALUE, or KEY to copy the host's value).
    #[arg(long = "env", short = 'e')]
    pub env: Vec<OsString>,
    /// Kernel image to boot instead of the cached build (vmlinux or bzImage).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Show the guest kernel's console on stderr.
    #[arg(long)]
    pub console: bool,
    /// Extra guest kernel command-line argument (repeatable).
    #[arg(long = "kernel-arg", value_name = "ARG")]
    pub kernel_args: Vec<String>,
    /// Print boot-phase timings to stderr at exit.
    #[arg(long)]
    pub timings: bool,
    /// Print each virtio-fs device's counters at exit: requests by FUSE
    /// opcode, bytes, notifications, interrupts, service-time histogram.
    #[arg(long)]
    pub stats: bool,
    /// Give the guest a virtio-vsock device (CID 3) whose host side is the
    /// Unix socket PATH: send `CONNECT <port>\n` to reach a guest port;
    /// guest connections to host port P reach PATH_P. PATH is removed at exit.
    #[arg(long, value_name = "PATH")]
    pub vsock: Option<PathBuf>,
    /// Start the sandbox and leave it running in the background (use exec, stop, rm).
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Name the sandbox, so exec, ls, stop, rm and ports can find it (run -d makes one up if not given).
    #[arg(long)]
    pub name: Option<String>,
    /// Publish a guest port on the host: [[HOST_IP:]HOST_PORT:]GUEST_PORT[/tcp] (loopback and a free port by default).
    #[arg(long = "publish", short = 'p', value_name = "SPEC")]
    pub publish: Vec<String>,
    /// Network policy for this run only: open, balanced or locked-down (default: the configured one, see hutch policy).
    #[arg(long, value_name = "PRESET")]
    pub policy: Option<hutch_proxy::Preset>,
    /// Internal: this process is the background VMM of `run -d`.
    #[arg(long, hide = true)]
    pub daemon_child: bool,
}

/// `hutch exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Keep stdin open and send it to the command.
    #[arg(long, short = 'i')]
    pub interactive: bool,
    /// Give the command a terminal.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to copy the host's value).
    #[arg(long = "env", short = 'e')]
    pub env: Vec<OsString>,
    /// Working directory in the guest (default: the workspace).
    #[arg(long = "workdir", short = 'w')]
    pub workdir: Option<PathBuf>,
    /// Run as UID[:GID] (default: root in the guest).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// The sandbox.
    pub name: String,
    /// Command and arguments (default: sh).
    #[arg(last = true)]
    pub cmd: Vec<OsString>,
}

/// `hutch ports`.
#[derive(Debug, Args)]
pub struct PortsArgs {
    /// The sandbox.
    pub name: String,
    #[command(subcommand)]
    pub action: PortsAction,
}

/// What `hutch ports NAME` does.
#[derive(Debug, Subcommand)]
pub enum PortsAction {
    /// Forward host connections to guest ports: [[HOST_IP:]HOST_PORT:]GUEST_PORT[/tcp].
    Publish {
        #[arg(required = true)]
        specs: Vec<String>,
    },
    /// List published ports.
    Ls,
    /// Stop forwarding: GUEST_PORT or HOST_PORT:GUEST_PORT.
    Unpublish {
        #[arg(required = true)]
        specs: Vec<String>,
    },
}

/// `hutch kernel`.
#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Build the guest kernel into the cache (skipped when already built).
    Build {
        /// Parallel make jobs (default: number of CPUs).
        #[arg(long, short = 'j')]
        jobs: Option<usize>,
        /// Rebuild even if the cache has this kernel.
        #[arg(long)]
        force: bool,
        /// Guest architecture (arm64 is cross-built with gcc-aarch64-linux-gnu).
        #[arg(long, value_enum, default_value = "x86_64")]
        arch: crate::kernel::Arch,
    },
    /// Print the cached kernel's directory (exit 1 if it is not built).
    Path {
        /// Guest architecture.
        #[arg(long, value_enum, default_value = "x86_64")]
        arch: crate::kernel::Arch,
    },
}

/// `hutch selftest`.
#[derive(Debug, Args)]
pub struct SelftestArgs {
    /// Engine to test.
    #[arg(long, value_enum, default_value = "native")]
    pub engine: EngineKind,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub time_limit: u64,
    /// Kernel image to boot instead of the cached build.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Show the guest kernel's console on stderr.
    #[arg(long)]
    pub console: bool,
}

/// Runs the parsed command; returns the process exit status.
pub fn dispatch(cli: Cli, started: std::time::Instant) -> i32 {
    match cli.command {
        Command::Run(a) => run::main(a, started),
        Command::Exec(a) => exec::main(a),
        Command::Ls => sandboxes::ls(),
        Command::Stop { names } => sandboxes::stop(&names),
        Command::Rm { names } => sandboxes::rm(&names),
        Command::Ports(a) => ports::main(a),
        Command::Policy(a) => policy::main(a),
        Command::Secret(a) => secret::main(a),
        Command::Kernel(k) => kernel::main(k),
        Command::Doctor => doctor::main(),
        Command::Selftest(a) => selftest::main(a, started),
        Command::BenchBoot(a) => bench::main(a, started),
        Command::FsBackend(a) => fs_backend::main(a),
        #[cfg(feature = "aarch64")]
        Command::Fdt(a) => fdt::main(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hutch").chain(args.iter().copied()))
    }

    #[test]
    fn run_takes_workspace_and_command_after_dashes() {
        let Command::Run(a) = parse(&["run", "/ws", "--", "sh", "-c", "echo 'a b'"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(a.workspace, Some(PathBuf::from("/ws")));
        assert_eq!(a.cmd, vec!["sh", "-c", "echo 'a b'"]);
        assert_eq!(a.engine, EngineKind::Auto);
    }

    #[test]
    fn run_without_workspace() {
        let Command::Run(a) = parse(&[
            "run", "--memory", "1G", "--cpus", "2", "-e", "A=1", "--", "ls", "--help",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!(a.workspace, None);
        assert_eq!(a.memory.as_deref(), Some("1G"));
        assert_eq!(a.cpus, Some(2));
        assert_eq!(a.env, vec!["A=1"]);
        assert_eq!(
            a.cmd,
            vec!["ls", "--help"],
            "flags after -- belong to the command"
        );
    }

    #[test]
    fn sandbox_verbs() {
        let Command::Run(a) = parse(&[
            "run", "-d", "--name", "web", "-p", "8080:80", "-p", "9", "/ws",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert!(a.detach);
        assert_eq!(a.name.as_deref(), Some("web"));
        assert_eq!(a.publish, ["8080:80", "9"]);
        let Command::Exec(e) = parse(&[
            "exec", "-it", "-e", "A=1", "-w", "/tmp", "web", "--", "ls", "-l",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert!(e.interactive && e.tty);
        assert_eq!(e.name, "web");
        assert_eq!(e.workdir, Some(PathBuf::from("/tmp")));
        assert_eq!(e.cmd, ["ls", "-l"]);
        assert!(parse(&["exec"]).is_err(), "exec needs a name");
        assert!(parse(&["stop"]).is_err());
        assert!(matches!(
            parse(&["ports", "web", "publish", "80"]).unwrap().command,
            Command::Ports(PortsArgs {
                action: PortsAction::Publish { .. },
                ..
            })
        ));
        assert!(parse(&["ports", "web", "publish"]).is_err());
        assert!(matches!(parse(&["ls"]).unwrap().command, Command::Ls));
    }

    #[test]
    fn bad_input_is_rejected() {
        assert!(parse(&["run", "--engine", "vmware"]).is_err());
        assert!(parse(&["run", "--cpus", "many"]).is_err());
        assert!(parse(&["frobnicate"]).is_err());
        assert!(parse(&["kernel"]).is_err());
    }

    #[test]
    fn engines_and_subcommands() {
        let Command::Selftest(s) = parse(&["selftest", "--engine", "native"]).unwrap().command
        else {
            panic!()
        };
        assert_eq!(s.engine, EngineKind::Native);
        assert_eq!(s.time_limit, 300);
        assert!(matches!(
            parse(&["kernel", "path"]).unwrap().command,
            Command::Kernel(KernelCommand::Path {
                arch: crate::kernel::Arch::X86_64
            })
        ));
        assert!(matches!(
            parse(&["kernel", "build", "--arch", "arm64", "-j", "2"])
                .unwrap()
                .command,
            Command::Kernel(KernelCommand::Build {
                arch: crate::kernel::Arch::Arm64,
                jobs: Some(2),
                force: false
            })
        ));
        assert!(parse(&["kernel", "path", "--arch", "mips"]).is_err());
        assert!(matches!(
            parse(&["doctor"]).unwrap().command,
            Command::Doctor
        ));
    }
}
