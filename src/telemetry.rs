//! Logging through `tracing`, with oslo.log's options: `[DEFAULT] debug`
//! (or `--debug`) sets the level (RUST_LOG, when set, wins); `log_file` (or
//! `--log-file`), relative to `log_dir`, sends the log to a file that
//! SIGHUP reopens (logrotate's `postrotate`); `log_dir` alone writes
//! `<log_dir>/<program>.log`; `use_json` writes one JSON object per line;
//! `use_journal` sends it to journald, with its fields.
//!
//! A request's id follows its work: the API runs each request in a span and
//! a task-local carrying the id ([`with_request_id`]); messages sent from
//! there carry it ([`current_request_id`]), and the conductor and the
//! compute hosts handle them in a span with it. One id finds every line of
//! one backup on every host.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::DefaultOptions;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Run `work` with `id` as the current request id (none: as it is).
pub async fn with_request_id<F: std::future::Future>(id: Option<String>, work: F) -> F::Output {
    match id {
        Some(id) => REQUEST_ID.scope(id, work).await,
        None => work.await,
    }
}

/// The request id of the work this task does, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(|id| id.clone()).ok()
}

/// Where the log goes, from the options.
pub fn log_path(opts: &DefaultOptions, program: &str) -> Option<PathBuf> {
    let dir = opts.log_dir.as_deref().filter(|d| !d.is_empty());
    match (opts.log_file.as_deref().filter(|f| !f.is_empty()), dir) {
        (Some(file), Some(dir)) => Some(Path::new(dir).join(file)),
        (Some(file), None) => Some(PathBuf::from(file)),
        (None, Some(dir)) => Some(Path::new(dir).join(format!("{program}.log"))),
        (None, None) => None,
    }
}

/// Install the global subscriber; safe to call more than once (later calls
/// are ignored, which tests rely on).
pub fn init(opts: &DefaultOptions) -> std::io::Result<()> {
    let level = if opts.debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},lapin=warn,amq_protocol=warn")));
    let program = std::env::args()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "ekko".to_string());
    let output: Box<dyn Layer<_> + Send + Sync> = if opts.use_journal {
        Box::new(tracing_journald::layer()?.with_syslog_identifier(program))
    } else {
        match log_path(opts, &program) {
            Some(path) => format_layer(opts.use_json, ReopeningFile::open(path)?, false),
            // Colours only for a person at a terminal, never into a
            // service manager's log.
            None => {
                use std::io::IsTerminal;
                let ansi = std::io::stderr().is_terminal();
                format_layer(opts.use_json, std::io::stderr, ansi)
            }
        }
    };
    // Always: SIGHUP (logrotate, `systemctl reload`) must never end a
    // daemon, whatever it logs to.
    install_sighup();
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init();
    Ok(())
}

fn format_layer<S, W>(json: bool, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_target(true);
    if json {
        Box::new(
            layer
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(writer),
        )
    } else {
        Box::new(layer.with_ansi(ansi).with_writer(writer))
    }
}

/// Set by SIGHUP: the log file is reopened before the next line.
static REOPEN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sighup(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    REOPEN.store(true, Ordering::Relaxed);
}

fn install_sighup() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGHUP, on_sighup as *const () as libc::sighandler_t);
    }
}

/// A log file opened for appending, reopened (by path) after SIGHUP, so
/// logrotate can move it away and signal the daemon.
struct ReopeningFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl ReopeningFile {
    fn open(path: PathBuf) -> std::io::Result<ReopeningFile> {
        let file = Self::append(&path)?;
        Ok(ReopeningFile {
            path,
            file: Mutex::new(file),
        })
    }

    fn append(path: &Path) -> std::io::Result<File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    }
}

/// One log line's hold on the file.
pub struct LogLine<'a>(MutexGuard<'a, File>);

impl std::io::Write for LogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<'a> MakeWriter<'a> for ReopeningFile {
    type Writer = LogLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if REOPEN.swap(false, Ordering::Relaxed) {
            match Self::append(&self.path) {
                Ok(f) => *file = f,
                // The old file goes on receiving lines; the next line
                // tries again.
                Err(_) => REOPEN.store(true, Ordering::Relaxed),
            }
        }
        LogLine(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_file_and_dir_combine_as_in_oslo_log() {
        let mut o = DefaultOptions::default();
        assert_eq!(log_path(&o, "ekko-api"), None);
        o.log_dir = Some("/var/log/ekko".into());
        assert_eq!(
            log_path(&o, "ekko-api"),
            Some("/var/log/ekko/ekko-api.log".into())
        );
        o.log_file = Some("api.log".into());
        assert_eq!(
            log_path(&o, "ekko-api"),
            Some("/var/log/ekko/api.log".into())
        );
        o.log_dir = None;
        assert_eq!(log_path(&o, "ekko-api"), Some("api.log".into()));
    }

    #[test]
    fn sighup_reopens_the_file_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ekko.log");
        let f = ReopeningFile::open(path.clone()).unwrap();
        use std::io::Write;
        writeln!(f.make_writer(), "before").unwrap();
        // logrotate moves the file away, then signals.
        std::fs::rename(&path, dir.path().join("ekko.log.1")).unwrap();
        REOPEN.store(true, Ordering::Relaxed);
        writeln!(f.make_writer(), "after").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ekko.log.1")).unwrap(),
            "before\n"
        );
    }

    #[tokio::test]
    async fn the_request_id_follows_the_task() {
        assert_eq!(current_request_id(), None);
        let seen = with_request_id(Some("req-1".into()), async { current_request_id() }).await;
        assert_eq!(seen.as_deref(), Some("req-1"));
    }
}
