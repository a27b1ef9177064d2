//! Logging through `tracing`: `[DEFAULT] debug` sets the level (RUST_LOG,
//! when set, wins), `[DEFAULT] log_file` sends it to a file.

use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use crate::config::DefaultOptions;

/// Install the global subscriber; safe to call more than once (later calls
/// are ignored, which tests rely on).
pub fn init(opts: &DefaultOptions) -> std::io::Result<()> {
    let level = if opts.debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},lapin=warn,amq_protocol=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    match &opts.log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            let _ = builder
                .with_ansi(false)
                .with_writer(Mutex::new(file))
                .try_init();
        }
        None => {
            let _ = builder.with_writer(std::io::stderr).try_init();
        }
    }
    Ok(())
}
