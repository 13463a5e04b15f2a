//! What every vhost-user device server here shares: serving exactly one
//! frontend connection (QEMU) and telling a normal disconnect from a failure.

use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::bitmap::BitmapReplace;
use vhost_user_backend::{Error as DaemonError, VhostUserBackend, VhostUserDaemon};
use vm_memory::bitmap::NewBitmap;

/// Accepts one frontend on `listener` and serves it until it goes away;
/// then stops the daemon's workers and closes the listener (removing its
/// socket file). A disconnect is a normal end (`Ok`).
pub fn serve_one<T>(
    mut daemon: VhostUserDaemon<T>,
    mut listener: Listener,
) -> Result<(), DaemonError>
where
    T: VhostUserBackend + Clone + 'static,
    T::Bitmap: BitmapReplace + NewBitmap + Clone + Send + Sync,
    T::Vring: Clone + Send + Sync,
{
    daemon.start(&mut listener)?;
    let result = daemon.wait();
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
    drop(listener);
    match result {
        Ok(())
        | Err(DaemonError::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) => Ok(()),
        Err(e) => Err(e),
    }
}
