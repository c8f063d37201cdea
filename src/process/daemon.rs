//! Living under systemd: readiness, status, watchdog and signals.
//!
//! Every call is a no-op without `NOTIFY_SOCKET`, so the same binary runs the
//! same way from a terminal, a test or a unit with `Type=notify`.

use crate::process::telemetry::LogHandle;
use sd_notify::NotifyState;
use std::path::PathBuf;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

pub fn ready() {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

pub fn status(msg: &str) {
    let _ = sd_notify::notify(&[NotifyState::Status(msg)]);
}

pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Pings the watchdog at half of `WATCHDOG_USEC` until shutdown. The pings come
/// from a task on the same runtime as the service's work: a wedged runtime (a
/// blocked worker thread, a deadlock) stops them, and systemd restarts us.
pub fn spawn_watchdog(shutdown: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (period / 2).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => { let _ = sd_notify::notify(&[NotifyState::Watchdog]); }
            }
        }
    });
}

/// SIGINT and SIGTERM cancel `shutdown`; SIGHUP re-reads the log level from the
/// config file (the one thing that can change without a restart).
pub fn spawn_signal_handler(
    shutdown: CancellationToken,
    log: LogHandle,
    config_file: Option<PathBuf>,
) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => reload(&log, config_file.as_deref()),
            }
        }
        tracing::info!(action = "graceful_shutdown", "Shutdown signal received");
        stopping();
        shutdown.cancel();
    });
    Ok(())
}

fn reload(log: &LogHandle, file: Option<&std::path::Path>) {
    match crate::process::config::Config::load(file) {
        Ok(cfg) => match log.set_level(&cfg.log.level) {
            Ok(()) => tracing::info!(
                action = "config_reloaded",
                level = %cfg.log.level,
                "Reloaded log level"
            ),
            Err(e) => {
                tracing::error!(action = "config_reload_failed", error = %e, "Could not apply log level")
            }
        },
        Err(e) => tracing::error!(
            action = "config_reload_failed",
            error = %e,
            "Config reload failed; keeping the running settings"
        ),
    }
}
