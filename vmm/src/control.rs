//! Run control shared by the VMM's threads: why the guest stopped, and the
//! boot milestones with their times.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use hutch_proto::Milestone;

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Init reported the command's exit status.
    GuestExit(i32),
    /// The guest shut down or reset without reporting a status (panic, or
    /// init died).
    GuestShutdown(&'static str),
    /// The VMM failed.
    Error(String),
    /// The host asked the VM to stop (signal, timeout).
    HostRequest(String),
}

/// One boot-phase timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A step of the VMM's own set-up (native engine), by name.
    Vmm(&'static str),
    /// The first KVM_RUN of the boot vCPU.
    FirstRun,
    /// A milestone the guest wrote to the boot-timer port.
    Guest(Milestone),
}

impl Phase {
    /// Name used in timing reports.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Vmm(step) => step,
            Phase::FirstRun => "first guest instruction (KVM_RUN)",
            Phase::Guest(m) => m.name(),
        }
    }
}

static EARLY: Mutex<Vec<(&'static str, Instant)>> = Mutex::new(Vec::new());

/// Records a host-side start-up step (before any VM exists) for `--timings`.
pub fn mark_early(step: &'static str) {
    EARLY
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((step, Instant::now()));
}

/// Start-up steps recorded with [`mark_early`], as offsets from `started`.
pub fn early_marks(started: Instant) -> Vec<(Phase, Duration)> {
    EARLY
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(s, at)| (Phase::Vmm(s), at.saturating_duration_since(started)))
        .collect()
}

/// Shared between vCPU threads, device threads and the engine.
pub struct RunControl {
    started: Instant,
    stop: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    stopped: Condvar,
    phases: Mutex<Vec<(Phase, Duration)>>,
}

impl RunControl {
    /// `started` is when the VMM process began (for boot timings).
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            stop: AtomicBool::new(false),
            reason: Mutex::new(None),
            stopped: Condvar::new(),
            phases: Mutex::new(Vec::new()),
        }
    }

    /// Asks every thread to stop; the first reason given is kept.
    pub fn request_stop(&self, reason: StopReason) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        self.stop.store(true, Ordering::SeqCst);
        self.stopped.notify_all();
    }

    /// Waits until a stop is requested or `timeout` passes; true if stopped.
    pub fn wait_for_stop(&self, timeout: Duration) -> bool {
        let r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        let (_r, _) = self
            .stopped
            .wait_timeout_while(r, timeout, |_| !self.should_stop())
            .unwrap_or_else(|p| p.into_inner());
        self.should_stop()
    }

    /// True once a stop was requested.
    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The first stop reason, if any.
    pub fn reason(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records `phase` now (only its first occurrence).
    pub fn mark(&self, phase: Phase) {
        let mut p = self.phases.lock().unwrap_or_else(|p| p.into_inner());
        if !p.iter().any(|(q, _)| *q == phase) {
            p.push((phase, self.started.elapsed()));
        }
    }

    /// Phases reached so far (with the early start-up steps), in order, as
    /// offsets from hutch's start.
    pub fn phases(&self) -> Vec<(Phase, Duration)> {
        let mut all = early_marks(self.started);
        all.extend(
            self.phases
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .copied(),
        );
        all.sort_by_key(|p| p.1);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_stop_reason_wins_and_phases_are_recorded_once() {
        let c = RunControl::new(Instant::now());
        assert!(!c.should_stop());
        c.mark(Phase::FirstRun);
        c.mark(Phase::FirstRun);
        c.mark(Phase::Guest(Milestone::InitStart));
        c.request_stop(StopReason::GuestExit(7));
        c.request_stop(StopReason::GuestShutdown("triple fault"));
        assert!(c.should_stop());
        assert_eq!(c.reason(), Some(StopReason::GuestExit(7)));
        let p = c.phases();
        assert_eq!(p.len(), 2);
        assert!(p[0].1 <= p[1].1);
    }
}
