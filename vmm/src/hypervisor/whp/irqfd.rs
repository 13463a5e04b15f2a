//! irqfds without a kernel: one thread per interrupt line waits on the
//! line's EventFd and asserts the GSI on the user-space IOAPIC.
//!
//! hutch's device eventfds are non-blocking, so each thread `poll`s the
//! line's fd together with a shared stop eventfd; dropping
//! [`IrqfdThreads`] writes the stop fd and joins every thread. On Windows
//! the EventFds would be event objects and `poll` a
//! `WaitForMultipleObjects` (see docs/porting/whp.md).

use std::io;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

/// The forwarding threads of one VM.
pub struct IrqfdThreads {
    stop: EventFd,
    threads: Vec<JoinHandle<()>>,
}

impl IrqfdThreads {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            stop: EventFd::new(0)?,
            threads: Vec::new(),
        })
    }

    /// Calls `fire` on a new thread each time `evt` is written.
    pub fn spawn(
        &mut self,
        gsi: u32,
        evt: &EventFd,
        fire: impl Fn() + Send + 'static,
    ) -> io::Result<()> {
        let evt = evt.try_clone()?;
        let stop = self.stop.try_clone()?;
        let handle = std::thread::Builder::new()
            .name(format!("irqfd-gsi{gsi}"))
            .spawn(move || forward(gsi, &evt, &stop, fire))?;
        self.threads.push(handle);
        Ok(())
    }
}

impl Drop for IrqfdThreads {
    fn drop(&mut self) {
        // The stop fd is never read, so it stays readable for every thread.
        if let Err(e) = self.stop.write(1) {
            log::warn!("stopping irqfd threads: {e}");
            return;
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn forward(gsi: u32, evt: &EventFd, stop: &EventFd, fire: impl Fn()) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: evt.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a live array of two pollfds for the whole call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::warn!("irqfd for GSI {gsi}: poll: {e}; line no longer forwarded");
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents & libc::POLLNVAL != 0 {
            log::warn!("irqfd for GSI {gsi}: eventfd closed; line no longer forwarded");
            return;
        }
        if fds[0].revents & libc::POLLIN != 0 && evt.read().is_ok() {
            fire();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn each_write_fires_and_drop_joins() {
        let count = Arc::new(AtomicUsize::new(0));
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut t = IrqfdThreads::new().unwrap();
        let c = count.clone();
        t.spawn(3, &evt, move || {
            c.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        assert_eq!(t.threads.len(), 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        for want in 1..=3 {
            evt.write(1).unwrap();
            while count.load(Ordering::SeqCst) < want {
                assert!(Instant::now() < deadline, "irqfd thread did not fire");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        drop(t);
        evt.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(count.load(Ordering::SeqCst), 3, "stopped after drop");
    }
}
