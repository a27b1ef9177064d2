//! What every binary shares: reading the configuration, starting logging,
//! and waiting for SIGTERM/SIGINT.

use crate::config::{ConfigArgs, EkkoConfig};

/// Load and validate the configuration, then start logging.
pub fn start(args: &ConfigArgs) -> anyhow::Result<EkkoConfig> {
    let config = args.load()?;
    crate::telemetry::init(&config.default)
        .map_err(|e| anyhow::anyhow!("cannot open log file: {e}"))?;
    tracing::info!(
        version = crate::VERSION,
        files = ?config.loaded_files,
        host = %config.default.host,
        "configuration loaded"
    );
    Ok(config)
}

/// Resolves on SIGTERM or SIGINT (what systemd and operators send).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown requested");
}
