//! The native engine: hutch's own VMM on KVM.
//!
//! [`run`] builds the VM in the order of `docs/architecture.md`: memory,
//! VM and irqchip, kernel and boot structures, devices, vCPUs; then runs the
//! vCPU threads until the guest reports its exit or stops.

mod boot;
mod devices;
pub mod elf_map;
pub mod rss;
pub mod vcpu;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::console::HostConsole;
use super::{EngineError, VmOutcome, VmSpec};
use crate::arch::x86_64::layout;
use crate::control::{Phase, RunControl, StopReason};
use crate::hypervisor::kvm::KvmHypervisor;
use crate::hypervisor::x86_64::VmX86_64;
use crate::hypervisor::Hypervisor;

/// Boots `spec` on KVM and runs it to the end.
pub fn run(mut spec: VmSpec) -> Result<VmOutcome, EngineError> {
    let ctl = Arc::new(RunControl::new(spec.started));
    let regions: Vec<(GuestAddress, usize)> = layout::ram_regions(spec.memory)
        .into_iter()
        .map(|(a, s)| (a, s as usize))
        .collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&regions).map_err(|e| EngineError::Memory {
        bytes: spec.memory,
        reason: e.to_string(),
    })?;

    ctl.mark(Phase::Vmm("guest memory mapped"));
    let hv = KvmHypervisor::new()?;
    let vm = Arc::new(hv.create_vm(&mem)?);
    vm.setup_irqchip()?;
    ctl.mark(Phase::Vmm("VM and irqchip created"));

    let entry = boot::load(&mem, &spec)?;
    // The initramfs now lives in guest memory; free the host copy.
    spec.initrd = None;
    ctl.mark(Phase::Vmm("kernel, initramfs and boot structures loaded"));
    let shares = std::mem::take(&mut spec.shares);
    let vsock = spec.vsock.take();

    let mut console = HostConsole::new(std::io::stdout(), std::io::stderr(), spec.echo_console);
    if let Some(observe) = spec.on_console_line.take() {
        let ctl = ctl.clone();
        let stop =
            move || ctl.request_stop(StopReason::HostRequest("console milestone reached".into()));
        console.set_line_observer(observe, Box::new(stop));
    }
    let gate = console.ready_gate();
    let console = Arc::new(Mutex::new(console));
    let devs = devices::build(
        vm.as_ref(),
        &mem,
        shares,
        vsock,
        ctl.clone(),
        console.clone(),
    )?;

    ctl.mark(Phase::Vmm("devices created"));
    if let Some(limit) = spec.time_limit {
        watchdog(ctl.clone(), limit);
    }
    devs.forward_stdin(ctl.clone(), gate, spec.forward_stdin);
    vcpu::run_all(
        vm.clone(),
        spec.cpus,
        entry,
        devs.buses.clone(),
        ctl.clone(),
    );
    let vmm_rss_kib = spec.measure_rss.then(|| rss::vmm_rss_kib(&mem)).flatten();
    let fs_stats = if spec.fs_stats {
        devs.fs_stats()
    } else {
        Vec::new()
    };
    if spec.measure_rss && std::env::var_os("HUTCH_BENCH_VERBOSE").is_some() {
        for (kib, m) in rss::top_mappings(&mem, 12) {
            eprintln!("  {kib:>6} KiB  {m}");
        }
    }
    drop(devs);

    let _ = std::io::stdout().flush();
    let c = console.lock().unwrap_or_else(|p| p.into_inner());
    Ok(VmOutcome {
        report: c.report(),
        stop: ctl.reason(),
        console_tail: c.console_tail(30),
        panicked: c.saw_panic(),
        phases: ctl.phases(),
        vmm_rss_kib,
        fs_stats,
    })
}

/// Stops the VM after `limit`.
fn watchdog(ctl: Arc<RunControl>, limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        ctl.request_stop(StopReason::HostRequest(format!(
            "time limit of {} s reached",
            limit.as_secs()
        )));
    });
}
