//! `netmon watch`: follow a running netmon and print its events.

use std::io::Write;
use std::path::Path;

use ipc::{Client, ClientConfig, ClientEvent, Event, EventKind, Interface};
use tokio_util::sync::CancellationToken;

fn describe(i: &Interface) -> String {
    let addrs: Vec<String> = i
        .ipv4_addresses
        .iter()
        .map(|a| format!("{}/{}", a.address, a.prefixlen))
        .collect();
    let status = match i.status {
        Some(s) => format!("{s:?}").to_lowercase(),
        None => format!("{:?}", i.effective_status()).to_lowercase(),
    };
    format!(
        "{} status={} ipv4=[{}] gateway={}",
        i.interface,
        status,
        addrs.join(","),
        i.gateway
            .map(|g| g.to_string())
            .unwrap_or_else(|| "-".into())
    )
}

/// One or more lines for an event, human-readable.
pub fn format_event(ev: &Event) -> Vec<String> {
    let time = ipc::timestamp_now();
    let seq = ev.seq.map(|s| format!(" #{s}")).unwrap_or_default();
    match &ev.kind {
        EventKind::NetworkDiscovery(d) => {
            let mut out = vec![format!(
                "{time} network_discovery{seq} {} interfaces",
                d.interfaces.len()
            )];
            out.extend(
                d.interfaces
                    .iter()
                    .map(|i| format!("{time}   {}", describe(i))),
            );
            out
        }
        EventKind::NetworkChange(i) => vec![format!("{time} network_change{seq} {}", describe(i))],
        EventKind::Other(t, _) => vec![format!("{time} {t}{seq}")],
    }
}

/// Prints events until `shutdown` (or stdout closes).
pub async fn run(path: &Path, json: bool, shutdown: CancellationToken) -> anyhow::Result<()> {
    // A person is watching: retry at most every second, so the first event
    // follows soon after netmon starts.
    let mut config = ClientConfig::new(path);
    config.max_backoff = std::time::Duration::from_secs(1);
    let (_client, mut rx) = Client::spawn(config, shutdown.clone());
    if path.exists() {
        eprintln!("watching {}", path.display());
    } else {
        // Otherwise nothing would be printed until netmon starts.
        eprintln!(
            "waiting for {} to appear (is netmon running with --socket {}?)",
            path.display(),
            path.display()
        );
    }
    let mut out = std::io::stdout().lock();
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            ev = rx.recv() => ev,
        };
        let Some(ev) = ev else { return Ok(()) };
        let lines = match ev {
            ClientEvent::Connected => {
                eprintln!("connected to {}", path.display());
                continue;
            }
            ClientEvent::Disconnected { reason } => {
                eprintln!(
                    "disconnected: {reason}; waiting for {} again",
                    path.display()
                );
                continue;
            }
            ClientEvent::Event(e) if json => vec![serde_json::to_string(&e)?],
            ClientEvent::Event(e) => format_event(&e),
        };
        for l in lines {
            if writeln!(out, "{l}").is_err() {
                return Ok(());
            }
        }
        let _ = out.flush();
    }
}
