//! systemd notification protocol (sd_notify): READY, STOPPING, STATUS and the
//! watchdog. Everything is a no-op when `NOTIFY_SOCKET` is not set, so the daemons
//! behave the same under systemd, in a container or started by hand.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

fn send(states: &[NotifyState]) {
    // A failed notification must not take the daemon down: systemd will time the
    // unit out and say why, which is the better place for that error.
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "sd_notify failed");
    }
}

/// `READY=1` with a `STATUS=` line: call once the service does its job.
pub fn notify_ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STOPPING=1`: shutdown has begun.
pub fn notify_stopping() {
    send(&[NotifyState::Stopping]);
}

/// A `STATUS=` line shown by `systemctl status`.
pub fn notify_status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// The watchdog interval the service manager asked for: `WATCHDOG_USEC`, when
/// `WATCHDOG_PID` is unset or names this process (as sd_watchdog_enabled(3)).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// Sends `WATCHDOG=1` every half of `WATCHDOG_USEC` until `shutdown`, from a task of
/// the current runtime: a wedged runtime stops the pings and systemd restarts the
/// service. Returns `None` (and spawns nothing) when no watchdog is configured.
pub fn spawn_watchdog(shutdown: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let period = watchdog_interval()? / 2;
    debug!(?period, "systemd watchdog enabled");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => send(&[NotifyState::Watchdog]),
            }
        }
    }))
}

/// Cancels `token` on the first SIGTERM or SIGINT: the shutdown signal both daemons
/// pass into their `run`. Must be called inside a tokio runtime.
pub fn cancel_on_signals(token: tokio_util::sync::CancellationToken) -> Result<(), std::io::Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
        token.cancel();
    });
    Ok(())
}
