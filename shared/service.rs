//! What a program tells systemd when it runs as a `Type=notify` unit (packaging/systemd):
//! ready once it listens, the watchdog pinged from its async runtime (a runtime that stops
//! polling stops the pings, and systemd restarts the program), and stopping. Outside
//! systemd (no `NOTIFY_SOCKET`) each call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// Startup is done: the program listens (or runs). `status` is what `systemctl status`
/// shows beside it.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A new line for `systemctl status`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// The program is stopping (a drain may take a while: systemd shows "deactivating").
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// When the unit has `WatchdogSec=`, pings the watchdog from a task of this runtime at
/// half its period.
pub fn spawn_watchdog() {
    let Some(period) = watchdog_period() else {
        return;
    };
    let every = period / 2;
    debug!(?every, "pinging systemd's watchdog");
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
}

/// The watchdog's period, when it applies to this process: `WATCHDOG_USEC` set, and
/// `WATCHDOG_PID` naming this process or absent (as libsystemd reads them; the processes
/// this one starts inherit both, and the PID keeps them from pinging).
fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(err) = sd_notify::notify(false, states) {
        warn!(%err, "cannot notify systemd");
    }
}
