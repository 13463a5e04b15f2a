//! `hutch kernel build | path [--arch x86_64|arm64]`.

use super::KernelCommand;
use crate::kernel::{self, Arch};

/// Runs a kernel subcommand.
pub fn main(cmd: KernelCommand) -> i32 {
    match cmd {
        KernelCommand::Build { jobs, force, arch } => match kernel::build(arch, jobs, force) {
            Ok(k) => {
                println!("{}", k.dir.display());
                0
            }
            Err(e) => {
                eprintln!("hutch: {e}");
                1
            }
        },
        KernelCommand::Path { arch } => match kernel::cached_for(arch) {
            Ok(Some(k)) => {
                println!("{}", k.dir.display());
                0
            }
            Ok(None) => {
                let e = match arch {
                    Arch::X86_64 => kernel::KernelError::NotBuilt,
                    Arch::Arm64 => kernel::KernelError::NotBuiltArm64,
                };
                eprintln!("hutch: {e}");
                1
            }
            Err(e) => {
                eprintln!("hutch: {e}");
                1
            }
        },
    }
}
