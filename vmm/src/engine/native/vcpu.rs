//! vCPU creation and the run loop.
//!
//! [`handle_exit`] is the whole state machine: an exit either continues the
//! loop or stops the VM with a [`StopReason`]. It is a pure function so it is
//! tested without a hypervisor.

use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::x86_64::regs::{self, Entry};
use crate::arch::x86_64::{cpuid, gdt, layout, msr};
use crate::control::{Phase, RunControl, StopReason};
use crate::devices::bus::Buses;
use crate::hypervisor::x86_64::{DescriptorTable, VcpuX86_64, VmX86_64};
use crate::hypervisor::{HvError, Vcpu, VcpuExit, Vm};

/// Signal used to kick a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

/// What the loop does after an exit.
pub fn handle_exit(id: u8, exit: Result<VcpuExit, HvError>) -> Option<StopReason> {
    match exit {
        Ok(VcpuExit::Io | VcpuExit::Mmio | VcpuExit::Interrupted) => None,
        Ok(VcpuExit::Hlt) => Some(StopReason::GuestShutdown("vCPU halted")),
        Ok(VcpuExit::Shutdown) => Some(StopReason::GuestShutdown("shutdown (triple fault)")),
        Ok(VcpuExit::SystemReset) => Some(StopReason::GuestShutdown("reset")),
        Ok(VcpuExit::SystemShutdown) => Some(StopReason::GuestShutdown("power off")),
        Ok(VcpuExit::FailEntry { reason }) => Some(StopReason::Error(format!(
            "vCPU {id}: the hypervisor could not enter the guest (hardware reason {reason:#x})"
        ))),
        Ok(VcpuExit::InternalError { suberror, rip }) => Some(StopReason::Error(format!(
            "vCPU {id}: hypervisor internal error (suberror {suberror}) at guest RIP {rip:#x}; on a PVM host this is an instruction it cannot emulate"
        ))),
        Ok(VcpuExit::Unhandled(what)) => Some(StopReason::Error(format!("vCPU {id}: unhandled exit {what}"))),
        Err(e) => Some(StopReason::Error(e.to_string())),
    }
}

/// Runs one vCPU until a stop is requested or its exit stops the VM.
pub fn run_loop<V: Vcpu>(vcpu: &mut V, io: &Buses, ctl: &RunControl) {
    if vcpu.id() == 0 {
        ctl.mark(Phase::FirstRun);
    }
    while !ctl.should_stop() {
        if let Some(reason) = handle_exit(vcpu.id(), vcpu.run(io)) {
            ctl.request_stop(reason);
        }
    }
}

/// Creates vCPU `id` of `count` and configures it; vCPU 0 gets the boot state.
pub fn configure<V>(vm: &V, id: u8, count: u8, entry: Entry) -> Result<V::Vcpu, HvError>
where
    V: Vm + VmX86_64,
    V::Vcpu: VcpuX86_64,
{
    let vcpu = vm.create_vcpu(id)?;
    let mut leaves = vm.supported_cpuid()?;
    cpuid::patch(&mut leaves, id, count);
    vcpu.set_cpuid(&leaves)?;
    let msrs = msr::boot_msrs();
    let set = vcpu.set_msrs(&msrs)?;
    if set < msrs.len() {
        log::debug!(
            "vCPU {id}: hypervisor took {set} of {} boot MSRs",
            msrs.len()
        );
    }
    vcpu.set_lapic_lints()?;
    vcpu.init_fpu()?;
    if id == 0 {
        let gdtr = DescriptorTable {
            base: layout::GDT_ADDR,
            limit: (gdt::GDT_64.len() * 8 - 1) as u16,
        };
        vcpu.set_sregs(&regs::sregs(entry, gdtr))?;
        vcpu.set_regs(&regs::regs(entry))?;
    }
    Ok(vcpu)
}

/// Runs the VM's `count` vCPUs, each created and configured on its own thread.
pub fn run_all<V>(vm: Arc<V>, count: u8, entry: Entry, io: Arc<Buses>, ctl: Arc<RunControl>)
where
    V: Vm + VmX86_64 + 'static,
    V::Vcpu: VcpuX86_64,
{
    run_threads(
        count,
        move |id| configure(vm.as_ref(), id, count, entry),
        io,
        ctl,
    );
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Runs `count` vCPU threads. Each makes its vCPU with `make`, all wait
/// until every vCPU exists, then run until the VM stops; then every thread is
/// kicked out of the guest and joined.
pub fn run_threads<C, F>(count: u8, make: F, io: Arc<Buses>, ctl: Arc<RunControl>)
where
    C: Vcpu,
    F: Fn(u8) -> Result<C, HvError> + Send + Sync + 'static,
{
    // Registering twice is harmless; the handler does nothing but interrupt KVM_RUN.
    let _ = register_signal_handler(kick_signal(), on_kick);
    let make = Arc::new(make);
    let all_made = Arc::new(Barrier::new(count as usize));
    let handles: Vec<JoinHandle<()>> = (0..count)
        .map(|id| {
            let (io, ctl, make, all_made) =
                (io.clone(), ctl.clone(), make.clone(), all_made.clone());
            std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    let vcpu = make(id);
                    if let Err(e) = &vcpu {
                        ctl.request_stop(StopReason::Error(format!("setting up vCPU {id}: {e}")));
                    }
                    all_made.wait();
                    if let Ok(mut v) = vcpu {
                        run_loop(&mut v, &io, &ctl);
                    }
                })
                .expect("spawning a vCPU thread")
        })
        .collect();
    while !ctl.wait_for_stop(Duration::from_secs(1)) {}
    // A kick can land just before a thread enters KVM_RUN; repeat until all exit.
    loop {
        let running: Vec<&JoinHandle<()>> = handles.iter().filter(|h| !h.is_finished()).collect();
        if running.is_empty() {
            break;
        }
        for h in running {
            let _ = h.kill(kick_signal());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for h in handles {
        let _ = h.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::ExitHandler;
    use std::collections::VecDeque;
    use std::time::Instant;

    /// A vCPU that replays a script of exits, doing one port write per Io exit.
    struct FakeVcpu {
        id: u8,
        script: VecDeque<Result<VcpuExit, HvError>>,
    }

    impl Vcpu for FakeVcpu {
        fn id(&self) -> u8 {
            self.id
        }
        fn run(&mut self, io: &dyn ExitHandler) -> Result<VcpuExit, HvError> {
            let next = self.script.pop_front().unwrap_or(Ok(VcpuExit::Interrupted));
            if matches!(next, Ok(VcpuExit::Io)) {
                io.pio_write(
                    hutch_proto::BOOT_TIMER_PORT,
                    &[hutch_proto::Milestone::InitStart as u8],
                );
            }
            std::thread::sleep(Duration::from_millis(1));
            next
        }
    }

    fn buses(ctl: &Arc<RunControl>) -> Arc<Buses> {
        let mut b = Buses::default();
        b.pio
            .insert(
                u64::from(hutch_proto::BOOT_TIMER_PORT),
                1,
                Arc::new(std::sync::Mutex::new(crate::devices::legacy::BootTimer(
                    ctl.clone(),
                ))),
            )
            .unwrap();
        Arc::new(b)
    }

    #[test]
    fn a_vcpu_that_cannot_be_made_stops_the_vm() {
        let ctl = Arc::new(RunControl::new(Instant::now()));
        let make = |id| {
            if id == 1 {
                Err(HvError::Vcpu {
                    vcpu: 1,
                    op: "create",
                    source: std::io::Error::from_raw_os_error(libc::ENOMEM),
                })
            } else {
                Ok(FakeVcpu {
                    id,
                    script: VecDeque::new(),
                })
            }
        };
        run_threads(2, make, buses(&ctl), ctl.clone());
        assert!(matches!(ctl.reason(), Some(StopReason::Error(m)) if m.contains("vCPU 1")));
    }

    #[test]
    fn exits_map_to_continue_or_stop() {
        assert_eq!(handle_exit(0, Ok(VcpuExit::Io)), None);
        assert_eq!(handle_exit(0, Ok(VcpuExit::Interrupted)), None);
        assert!(matches!(
            handle_exit(0, Ok(VcpuExit::Shutdown)),
            Some(StopReason::GuestShutdown(_))
        ));
        assert!(
            matches!(handle_exit(1, Ok(VcpuExit::FailEntry { reason: 7 })), Some(StopReason::Error(m)) if m.contains("vCPU 1"))
        );
        assert!(matches!(
            handle_exit(
                0,
                Ok(VcpuExit::InternalError {
                    suberror: 1,
                    rip: 0
                })
            ),
            Some(StopReason::Error(_))
        ));
        let err = HvError::Vcpu {
            vcpu: 2,
            op: "KVM_RUN",
            source: std::io::Error::from_raw_os_error(libc::EFAULT),
        };
        assert!(
            matches!(handle_exit(2, Err(err)), Some(StopReason::Error(m)) if m.contains("vCPU 2"))
        );
    }

    #[test]
    fn loop_runs_until_shutdown_and_marks_phases() {
        let ctl = Arc::new(RunControl::new(Instant::now()));
        let mut v = FakeVcpu {
            id: 0,
            script: VecDeque::from(vec![
                Ok(VcpuExit::Io),
                Ok(VcpuExit::Mmio),
                Ok(VcpuExit::Shutdown),
                Ok(VcpuExit::Io),
            ]),
        };
        run_loop(&mut v, &buses(&ctl), &ctl);
        assert!(matches!(ctl.reason(), Some(StopReason::GuestShutdown(_))));
        assert_eq!(v.script.len(), 1, "stopped right after the shutdown exit");
        let phases: Vec<Phase> = ctl.phases().into_iter().map(|p| p.0).collect();
        assert_eq!(
            phases,
            vec![
                Phase::FirstRun,
                Phase::Guest(hutch_proto::Milestone::InitStart)
            ]
        );
    }

    #[test]
    fn every_vcpu_stops_when_one_stops() {
        let ctl = Arc::new(RunControl::new(Instant::now()));
        let make = |id| {
            Ok(FakeVcpu {
                id,
                script: if id == 2 {
                    VecDeque::from(vec![Ok(VcpuExit::Io), Ok(VcpuExit::SystemShutdown)])
                } else {
                    VecDeque::new()
                },
            })
        };
        let t = Instant::now();
        run_threads(3, make, buses(&ctl), ctl.clone());
        assert!(matches!(
            ctl.reason(),
            Some(StopReason::GuestShutdown("power off"))
        ));
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}
