//! `hutch kernel build | path`.

use super::KernelCommand;
use crate::kernel;

/// Runs a kernel subcommand.
pub fn main(cmd: KernelCommand) -> i32 {
    match cmd {
        KernelCommand::Build { jobs, force } => match kernel::build(jobs, force) {
            Ok(k) => {
                println!("{}", k.dir.display());
                0
            }
            Err(e) => {
                eprintln!("hutch: {e}");
                1
            }
        },
        KernelCommand::Path => match kernel::cached() {
            Ok(Some(k)) => {
                println!("{}", k.dir.display());
                0
            }
            Ok(None) => {
                eprintln!("hutch: {}", kernel::KernelError::NotBuilt);
                1
            }
            Err(e) => {
                eprintln!("hutch: {e}");
                1
            }
        },
    }
}
