//! `hutch ports NAME publish|ls|unpublish`: requests to the sandbox's VMM
//! over its control socket (it owns the listeners).

use super::exec::running;
use super::run::EXIT_HUTCH_ERROR;
use super::{PortsAction, PortsArgs};
use crate::sandbox::{ctl, ports, Store};

/// Runs `hutch ports`; returns the exit status.
pub fn main(args: PortsArgs) -> i32 {
    match ports_cmd(args) {
        Ok(()) => 0,
        Err(msg) => {
            eprintln!("hutch: {msg}");
            EXIT_HUTCH_ERROR
        }
    }
}

fn ports_cmd(args: PortsArgs) -> Result<(), String> {
    let store = Store::open().map_err(|e| e.to_string())?;
    // Check the specs before bothering the sandbox.
    let specs = match &args.action {
        PortsAction::Publish { specs } | PortsAction::Unpublish { specs } => specs.clone(),
        PortsAction::Ls => Vec::new(),
    };
    for s in &specs {
        ports::parse(s).map_err(|e| e.to_string())?;
    }
    running(&store, &args.name)?;
    let ctl_path = store.ctl_path(&args.name);
    match args.action {
        PortsAction::Ls => {
            for p in store.load(&args.name).map_err(|e| e.to_string())?.ports {
                println!("{p}");
            }
        }
        PortsAction::Publish { .. } => {
            for s in specs {
                let got =
                    ctl::call(&ctl_path, &format!("publish {s}")).map_err(|e| e.to_string())?;
                println!("{got}");
            }
        }
        PortsAction::Unpublish { .. } => {
            for s in specs {
                let got =
                    ctl::call(&ctl_path, &format!("unpublish {s}")).map_err(|e| e.to_string())?;
                eprintln!("hutch: unpublished {got}");
            }
        }
    }
    Ok(())
}
