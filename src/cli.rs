//! The command lines: what every binary shares (reading the configuration,
//! starting logging, waiting for SIGTERM/SIGINT, progress bars), and the
//! `ekko` ([`operator`]), `ekko-manage` ([`manage`]) and `ekko-status`
//! ([`status`]) commands.

pub mod manage;
pub mod operator;
pub mod status;

use crate::config::{ConfigArgs, EkkoConfig};

/// Load and validate the configuration, then start logging.
pub fn start(args: &ConfigArgs) -> anyhow::Result<EkkoConfig> {
    tune_allocator();
    install_crypto_provider();
    let config = args.load()?;
    crate::telemetry::init(&config.default)
        .map_err(|e| anyhow::anyhow!("cannot open log file: {e}"))?;
    tracing::info!(
        version = crate::VERSION,
        files = ?config.loaded_files,
        host = %config.default.host,
        "configuration loaded"
    );
    for line in &config.ignored {
        tracing::warn!("{line}");
    }
    Ok(config)
}

pub use crate::tls::install_crypto_provider;

/// Keep big buffers (segments, a restore's ranged GETs: MiBs each) out of
/// the allocator's arenas. glibc raises its mmap threshold to 32 MiB after
/// the first large free, so later 8 MiB buffers are carved from per-thread
/// arenas (up to 8 per core) and stay resident once freed. With a fixed
/// 1 MiB threshold they are mapped and unmapped, and at most 4 arenas are
/// made (measured with `cargo bench --bench memory`: a 10 GiB restore's
/// peak RSS 175 → 87 MiB, no slower).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // this process allocates anything large.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
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

/// A terminal progress bar following a [`Progress`](crate::backup::Progress)
/// (drawn on stderr, hidden when stderr is not a terminal). It stops when
/// dropped.
pub struct ProgressBar {
    progress: std::sync::Arc<crate::backup::Progress>,
    ticker: tokio::task::JoinHandle<()>,
    bar: indicatif::ProgressBar,
}

impl ProgressBar {
    pub fn start(what: &str) -> ProgressBar {
        let progress = std::sync::Arc::new(crate::backup::Progress::default());
        let bar = indicatif::ProgressBar::new(0);
        let style = indicatif::ProgressStyle::with_template(
            "{msg:>9} [{bar:40}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(what.to_string());
        let (p, b) = (progress.clone(), bar.clone());
        let ticker = tokio::spawn(async move {
            loop {
                let (done, total) = p.get();
                b.set_length(total);
                b.set_position(done);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
        ProgressBar {
            progress,
            ticker,
            bar,
        }
    }

    pub fn progress(&self) -> std::sync::Arc<crate::backup::Progress> {
        self.progress.clone()
    }
}

impl Drop for ProgressBar {
    fn drop(&mut self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}
