//! Wire formats shared by the hutch VMM (host) and `hutch-init` (guest PID 1).
//!
//! * the [`RunSpec`]: how to set the guest up (workspace, home, one-shot or
//!   detached). The host writes it as the file [`SPEC_PATH`] inside the
//!   initramfs it generates for every run. Every string is a length-prefixed
//!   byte string, so paths survive spaces, newlines and bytes that are not
//!   UTF-8.
//! * the [`agent`] protocol over vsock: what to run ([`ExecRequest`]), its
//!   stdin, stdout, stderr, window size, signals and exit status, port
//!   forwards and shutdown.
//! * [`Frame`]s on the serial line, which otherwise carries kernel console
//!   text: init's own errors before the agent is up, and the exit status.
//!
//! The boot-timer and exit ports are I/O ports the guest writes to; the
//! native VMM records the time of each write (see [`Milestone`]).

pub mod agent;
mod frame;
mod spec;

pub use agent::{read_msg, write_msg, AgentError, ExecRequest, Msg, WinSize};

pub use frame::{Frame, FrameDecoder, FrameKind, FRAME_MAGIC, MAX_PAYLOAD};
pub use spec::{RunSpec, SpecError};

/// Where init writes the spec's CA bundle in the guest (a tmpfs).
pub const CA_BUNDLE_PATH: &str = "/run/hutch/ca-bundle.pem";
/// Where the run spec lives inside the initramfs.
pub const SPEC_PATH: &str = "/hutch/spec";
/// virtio-fs tag of the read-only view of the host's system directories.
pub const ROOT_TAG: &str = "hutch-root";
/// virtio-fs tag of the read-write workspace.
pub const WORKSPACE_TAG: &str = "hutch-ws";
/// I/O port the guest writes a [`Milestone`] code to (one byte).
pub const BOOT_TIMER_PORT: u16 = 0x440;
/// I/O port the guest writes its exit status to (four bytes, little endian),
/// just before it powers off. Only the native VMM listens on it; under QEMU the
/// status travels as an [`FrameKind::Exit`] frame.
pub const EXIT_PORT: u16 = 0x444;
/// Kernel command-line key that puts init in self-test mode (no spec file:
/// report milestones, then exit 0).
pub const SELFTEST_ARG: &str = "hutch.selftest=1";

/// Boot milestones written to [`BOOT_TIMER_PORT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Milestone {
    /// First instruction of init in user space.
    InitStart = 1,
    /// Shares and tmpfs mounted.
    Mounted = 2,
    /// The user's command was exec'd.
    CommandStart = 3,
    /// The user's command exited.
    CommandExit = 4,
}

impl Milestone {
    /// Decodes a byte written to the boot-timer port.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::InitStart),
            2 => Some(Self::Mounted),
            3 => Some(Self::CommandStart),
            4 => Some(Self::CommandExit),
            _ => None,
        }
    }

    /// Human-readable name, used in timing reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::InitStart => "init start",
            Self::Mounted => "shares mounted",
            Self::CommandStart => "command start",
            Self::CommandExit => "command exit",
        }
    }
}
