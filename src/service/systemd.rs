//! systemd integration: `READY=1` once the pipelines run, `WATCHDOG=1` while every camera loop
//! is alive, `STOPPING=1` on shutdown, `STATUS=` lines for `systemctl status`. Every call is a
//! no-op when the daemon does not run under systemd (no `NOTIFY_SOCKET`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use super::capture_task::{CameraHealth, STALL_TIMEOUT};

/// A camera loop that has not woken for this long is hung (it wakes at least every
/// [`STALL_TIMEOUT`], and restarts a pipeline that stops delivering).
pub const LIVENESS_LIMIT: Duration = Duration::from_secs(2 * STALL_TIMEOUT.as_secs());

fn notify(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "systemd notification failed");
    }
}

/// Tells systemd the daemon is ready.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the daemon is stopping (the stop timeout applies from here).
pub fn stopping(status: &str) {
    notify(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// Updates the status line.
pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// The ping interval systemd asks for (half of `WATCHDOG_USEC`), if it asks.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}

/// Pings the watchdog every `interval` while every camera loop is alive; stops pinging (so
/// systemd restarts the daemon) when one hangs. Runs until cancelled.
pub async fn watchdog(cameras: Vec<(String, Arc<CameraHealth>)>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = false;
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let hung: Vec<&str> = cameras
            .iter()
            .filter(|(_, health)| !health.is_alive(now, LIVENESS_LIMIT))
            .map(|(name, _)| name.as_str())
            .collect();
        if hung.is_empty() {
            notify(&[NotifyState::Watchdog]);
            reported = false;
        } else if !reported {
            reported = true;
            tracing::error!(cameras = ?hung, "camera loop not responding; withholding the watchdog ping");
        }
    }
}
