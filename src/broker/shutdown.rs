//! The shutdown signal. The server owns a broadcast sender; every connection task
//! holds a `Shutdown` and stops reading when it fires.

use tokio::sync::broadcast;

#[derive(Debug)]
pub struct Shutdown {
    is_shutdown: bool,
    notify: broadcast::Receiver<()>,
}

impl Shutdown {
    pub fn new(notify: broadcast::Receiver<()>) -> Shutdown {
        Shutdown { is_shutdown: false, notify }
    }

    /// Waits for the signal. A dropped sender counts as the signal too, so a broker
    /// whose server task is gone never leaves connections behind.
    pub async fn recv(&mut self) {
        if self.is_shutdown {
            return;
        }
        let _ = self.notify.recv().await;
        self.is_shutdown = true;
    }
}
