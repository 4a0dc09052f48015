//! The link to netmon: `ipc`'s reconnecting client, its events forwarded to the
//! daemon's state task. Waiting for the socket, backoff and reconnects are the
//! client's; a fresh `network_discovery` follows every (re)connect.

use std::path::PathBuf;

use ipc::{Client, ClientConfig, ClientEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Starts the client; every [`ClientEvent`] is passed to `forward` as `wrap(event)`.
/// Returns the client handle (for requests) once the forwarding task runs.
pub fn spawn<M: Send + 'static>(
    socket: PathBuf,
    to_state: mpsc::Sender<M>,
    wrap: fn(ClientEvent) -> M,
    shutdown: CancellationToken,
) -> Client {
    let (client, mut events) = Client::spawn(ClientConfig::new(socket), shutdown.clone());
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = events.recv() => e,
            };
            let Some(ev) = ev else { return };
            // Bounded: a busy state task slows the client down, which netmon answers
            // by disconnecting us, after which a fresh discovery resynchronises.
            if to_state.send(wrap(ev)).await.is_err() {
                return;
            }
        }
    });
    client
}
