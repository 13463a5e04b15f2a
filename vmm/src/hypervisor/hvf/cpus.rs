//! VM-wide vCPU state the HVF backend keeps because the hypervisor does
//! not: PSCI power states (with the `CPU_ON` requests the VMM can inspect),
//! parking for WFI and powered-off vCPUs, and kicks.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::psci;

/// A PSCI `CPU_ON` a vCPU made for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuOnRequest {
    /// The vCPU to start.
    pub vcpu: u8,
    /// Where it starts (PC).
    pub entry: u64,
    /// What it finds in x0.
    pub context_id: u64,
}

/// A vCPU's PSCI power state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// Not started (every vCPU but 0 at boot) or after `CPU_OFF`.
    Off,
    /// `CPU_ON` was called; the vCPU starts at its next `run`.
    OnPending(CpuOnRequest),
    /// Running guest code.
    On,
}

/// Why [`Cpus::park`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// An interrupt was raised or a `CPU_ON` arrived.
    Woken,
    /// Someone wants the vCPU out of `run`.
    Kicked,
    /// The timeout passed.
    TimedOut,
}

#[derive(Debug)]
struct Slot {
    handle: u64,
    power: Power,
    kicked: bool,
    /// Bumped by every wake-up; a parked vCPU waits for it to change.
    generation: u64,
}

#[derive(Debug, Default)]
struct State {
    slots: BTreeMap<u8, Slot>,
    /// Ever created a vCPU (HVF's GIC must come before the first).
    any_created: bool,
}

/// The VM's vCPU table.
#[derive(Debug, Default)]
pub struct Cpus {
    state: Mutex<State>,
    changed: Condvar,
}

impl Cpus {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds vCPU `id` with `hv_vcpu_t` `handle`: vCPU 0 powered on (it
    /// boots), the others off until a `CPU_ON`.
    pub fn register(&self, id: u8, handle: u64) {
        let mut s = self.lock();
        s.any_created = true;
        let power = if id == 0 { Power::On } else { Power::Off };
        s.slots.insert(
            id,
            Slot {
                handle,
                power,
                kicked: false,
                generation: 0,
            },
        );
    }

    /// Removes vCPU `id` (its thread destroyed it).
    pub fn unregister(&self, id: u8) {
        self.lock().slots.remove(&id);
    }

    /// Whether any vCPU was ever created.
    pub fn any_created(&self) -> bool {
        self.lock().any_created
    }

    /// vCPU `id`'s power state, if it exists.
    pub fn power(&self, id: u8) -> Option<Power> {
        self.lock().slots.get(&id).map(|s| s.power)
    }

    /// Every `CPU_ON` not yet taken by its vCPU.
    pub fn pending_cpu_on(&self) -> Vec<CpuOnRequest> {
        self.lock()
            .slots
            .values()
            .filter_map(|s| match s.power {
                Power::OnPending(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// PSCI `CPU_ON` for vCPU `target` (None: no vCPU has that MPIDR);
    /// returns the PSCI status for the caller's x0.
    pub fn cpu_on(&self, target: Option<u8>, entry: u64, context_id: u64) -> i64 {
        let mut s = self.lock();
        let Some(slot) = target.and_then(|t| s.slots.get_mut(&t)) else {
            return psci::INVALID_PARAMETERS;
        };
        match slot.power {
            Power::On => psci::ALREADY_ON,
            Power::OnPending(_) => psci::ON_PENDING,
            Power::Off => {
                slot.power = Power::OnPending(CpuOnRequest {
                    vcpu: target.unwrap_or_default(),
                    entry,
                    context_id,
                });
                slot.generation += 1;
                drop(s);
                self.changed.notify_all();
                psci::SUCCESS
            }
        }
    }

    /// Takes vCPU `id`'s pending `CPU_ON`, marking it on.
    pub fn take_cpu_on(&self, id: u8) -> Option<CpuOnRequest> {
        let mut s = self.lock();
        let slot = s.slots.get_mut(&id)?;
        match slot.power {
            Power::OnPending(r) => {
                slot.power = Power::On;
                Some(r)
            }
            _ => None,
        }
    }

    /// PSCI `CPU_OFF` by vCPU `id`.
    pub fn cpu_off(&self, id: u8) {
        if let Some(slot) = self.lock().slots.get_mut(&id) {
            slot.power = Power::Off;
        }
    }

    /// PSCI `AFFINITY_INFO` for vCPU `target`.
    pub fn affinity_info(&self, target: Option<u8>) -> i64 {
        match target.and_then(|t| self.power(t)) {
            None => psci::INVALID_PARAMETERS,
            Some(Power::On) => psci::AFFINITY_ON,
            Some(Power::Off) => psci::AFFINITY_OFF,
            Some(Power::OnPending(_)) => psci::AFFINITY_ON_PENDING,
        }
    }

    /// Wakes every parked vCPU (an interrupt was raised; the GIC knows
    /// where it goes, we do not).
    pub fn wake_all(&self) {
        for slot in self.lock().slots.values_mut() {
            slot.generation += 1;
        }
        self.changed.notify_all();
    }

    /// Marks vCPU `id` (or all, with `None`) kicked and wakes it; returns the
    /// `hv_vcpu_t`s to pass to `hv_vcpus_exit`.
    pub fn kick(&self, id: Option<u8>) -> Vec<u64> {
        let mut handles = Vec::new();
        for (_, slot) in self
            .lock()
            .slots
            .iter_mut()
            .filter(|(i, _)| id.is_none_or(|id| **i == id))
        {
            slot.kicked = true;
            slot.generation += 1;
            handles.push(slot.handle);
        }
        self.changed.notify_all();
        handles
    }

    /// Clears and returns vCPU `id`'s kick.
    pub fn take_kick(&self, id: u8) -> bool {
        self.lock()
            .slots
            .get_mut(&id)
            .is_some_and(|s| std::mem::take(&mut s.kicked))
    }

    /// vCPU `id`'s wake-up generation, to pass to [`park`](Self::park).
    pub fn generation(&self, id: u8) -> u64 {
        self.lock().slots.get(&id).map_or(0, |s| s.generation)
    }

    /// Parks vCPU `id` until its generation moves past `seen` (a wake-up
    /// since the caller read it), it is kicked, or `timeout` passes.
    pub fn park(&self, id: u8, seen: u64, timeout: Duration) -> Wake {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            match s.slots.get(&id) {
                None => return Wake::Kicked,
                Some(slot) if slot.kicked => return Wake::Kicked,
                Some(slot) if slot.generation != seen => return Wake::Woken,
                Some(_) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Wake::TimedOut;
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn cpu_on_walks_off_pending_on() {
        let c = Cpus::default();
        c.register(0, 100);
        c.register(1, 101);
        assert_eq!(c.power(1), Some(Power::Off));
        assert_eq!(c.cpu_on(Some(1), 0x4000_0000, 7), psci::SUCCESS);
        assert_eq!(c.affinity_info(Some(1)), psci::AFFINITY_ON_PENDING);
        assert_eq!(c.cpu_on(Some(1), 0x4000_0000, 7), psci::ON_PENDING);
        assert_eq!(c.cpu_on(Some(0), 0, 0), psci::ALREADY_ON);
        assert_eq!(c.cpu_on(Some(9), 0, 0), psci::INVALID_PARAMETERS);
        assert_eq!(c.cpu_on(None, 0, 0), psci::INVALID_PARAMETERS);
        let req = CpuOnRequest {
            vcpu: 1,
            entry: 0x4000_0000,
            context_id: 7,
        };
        assert_eq!(c.pending_cpu_on(), vec![req]);
        assert_eq!(c.take_cpu_on(1), Some(req));
        assert_eq!(c.take_cpu_on(1), None);
        assert_eq!(c.affinity_info(Some(1)), psci::AFFINITY_ON);
        c.cpu_off(1);
        assert_eq!(c.affinity_info(Some(1)), psci::AFFINITY_OFF);
    }

    #[test]
    fn park_returns_on_wake_kick_or_timeout() {
        let c = Arc::new(Cpus::default());
        c.register(0, 100);
        let seen = c.generation(0);
        assert_eq!(c.park(0, seen, Duration::from_millis(5)), Wake::TimedOut);

        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.park(0, seen, Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        c.wake_all();
        assert_eq!(t.join().unwrap(), Wake::Woken);

        let seen = c.generation(0);
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.park(0, seen, Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(c.kick(Some(0)), vec![100]);
        assert_eq!(t.join().unwrap(), Wake::Kicked);
        assert!(c.take_kick(0));
        assert!(!c.take_kick(0));
    }

    #[test]
    fn a_wake_before_parking_is_not_lost() {
        let c = Cpus::default();
        c.register(0, 100);
        let seen = c.generation(0);
        c.wake_all();
        let t = Instant::now();
        assert_eq!(c.park(0, seen, Duration::from_secs(30)), Wake::Woken);
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
