//! The QMP connection: commands with ids, replies routed to their callers,
//! events fanned out to subscribers, timeouts, and QEMU's error class and
//! description in every error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};

use super::protocol::{command_line, parse_line, Event, Message};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("QMP I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP connection closed")]
    Disconnected,
    #[error("QMP command {command} timed out after {seconds} s")]
    Timeout { command: String, seconds: u64 },
    #[error("QMP command {command} failed: {class}: {desc}")]
    Qemu {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP protocol: {0}")]
    Protocol(String),
    #[error("QMP reply to {command} not understood: {message}")]
    Decode { command: String, message: String },
    #[error("timed out after {seconds} s waiting for QMP event {what}")]
    EventTimeout { what: String, seconds: u64 },
}

impl QmpError {
    /// QEMU's description, for callers that branch on it.
    pub fn qemu_desc(&self) -> Option<&str> {
        match self {
            QmpError::Qemu { desc, .. } => Some(desc),
            _ => None,
        }
    }
}

type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Result<Value, QmpError>>>>>>;

/// One client on one QMP socket.
pub struct QmpClient {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    events: broadcast::Sender<Event>,
    next_id: AtomicU64,
    timeout: Duration,
    greeting: Value,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for QmpClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl QmpClient {
    /// Connect, read the greeting and negotiate capabilities. `timeout`
    /// bounds the connection and, by default, every command.
    pub async fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<QmpClient, QmpError> {
        let path = path.as_ref().to_path_buf();
        let stream = tokio::time::timeout(timeout, UnixStream::connect(&path))
            .await
            .map_err(|_| QmpError::Connect {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
            })?
            .map_err(|source| QmpError::Connect {
                path: path.clone(),
                source,
            })?;
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read);

        // The greeting comes first; a second client on a busy monitor gets
        // none, which the timeout turns into a clear error.
        let mut first = Vec::new();
        let n = tokio::time::timeout(timeout, lines.read_until(b'\n', &mut first))
            .await
            .map_err(|_| {
                QmpError::Protocol(format!(
                    "no greeting from {} (is another client connected?)",
                    path.display()
                ))
            })??;
        let greeting = match (n, parse_line(&first)) {
            (0, _) => return Err(QmpError::Disconnected),
            (_, Some(Message::Greeting(g))) => g,
            _ => {
                return Err(QmpError::Protocol(format!(
                    "unexpected greeting {:?}",
                    String::from_utf8_lossy(&first)
                )))
            }
        };

        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (events, _) = broadcast::channel(1024);
        let reader = tokio::spawn(read_loop(lines, pending.clone(), events.clone()));
        let client = QmpClient {
            writer: tokio::sync::Mutex::new(write),
            pending,
            events,
            next_id: AtomicU64::new(1),
            timeout,
            greeting,
            reader,
        };
        client.execute("qmp_capabilities", None).await?;
        Ok(client)
    }

    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Subscribe to events. Subscribe *before* sending the command whose
    /// events you wait for: they may precede its reply.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Run a command and return its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.execute_with_timeout(command, arguments, self.timeout)
            .await
    }

    pub async fn execute_with_timeout(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match lock(&self.pending).as_mut() {
            Some(map) => {
                map.insert(id, tx);
            }
            None => return Err(QmpError::Disconnected),
        }
        let line = command_line(id, command, arguments.as_ref());
        tracing::debug!(command, id, "QMP ->");
        let sent = async {
            let mut w = self.writer.lock().await;
            w.write_all(&line).await?;
            w.flush().await
        }
        .await;
        if let Err(e) = sent {
            self.forget(id);
            return Err(QmpError::Io(e));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(QmpError::Qemu { class, desc, .. }))) => Err(QmpError::Qemu {
                command: command.to_string(),
                class,
                desc,
            }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(QmpError::Disconnected),
            Err(_) => {
                self.forget(id);
                Err(QmpError::Timeout {
                    command: command.to_string(),
                    seconds: timeout.as_secs(),
                })
            }
        }
    }

    /// Run a command declared with `qapi`'s types and decode its reply.
    pub async fn run<C>(&self, command: C) -> Result<C::Ok, QmpError>
    where
        C: qapi::Command + serde::Serialize,
    {
        let args = serde_json::to_value(&command).map_err(|e| QmpError::Protocol(e.to_string()))?;
        let value = self.execute(C::NAME, Some(args)).await?;
        serde_json::from_value(value).map_err(|e| QmpError::Decode {
            command: C::NAME.to_string(),
            message: e.to_string(),
        })
    }

    fn forget(&self, id: u64) {
        if let Some(map) = lock(&self.pending).as_mut() {
            map.remove(&id);
        }
    }
}

/// Wait on `events` for the first event `pred` accepts.
pub async fn wait_for_event(
    events: &mut broadcast::Receiver<Event>,
    what: &str,
    timeout: Duration,
    mut pred: impl FnMut(&Event) -> bool,
) -> Result<Event, QmpError> {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(e) if pred(&e) => return Ok(e),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "QMP event subscriber lagged");
                }
                Err(broadcast::error::RecvError::Closed) => return Err(QmpError::Disconnected),
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| QmpError::EventTimeout {
            what: what.to_string(),
            seconds: timeout.as_secs(),
        })?
}

async fn read_loop(
    mut lines: BufReader<tokio::net::unix::OwnedReadHalf>,
    pending: Pending,
    events: broadcast::Sender<Event>,
) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.clear();
        match lines.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let trimmed = buf.trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        match parse_line(trimmed) {
            Some(Message::Event(e)) => {
                tracing::debug!(event = %e.name, "QMP event");
                let _ = events.send(e);
            }
            Some(Message::Return {
                id: Some(id),
                value,
            }) => reply(&pending, id, Ok(value)),
            Some(Message::Error {
                id: Some(id),
                class,
                desc,
            }) => reply(
                &pending,
                id,
                Err(QmpError::Qemu {
                    command: String::new(),
                    class,
                    desc,
                }),
            ),
            other => {
                tracing::warn!(line = %String::from_utf8_lossy(trimmed), parsed = ?other.is_some(), "ignoring QMP message")
            }
        }
    }
    // Fail everything still waiting, and refuse new commands.
    if let Some(map) = lock(&pending).take() {
        for (_, tx) in map {
            let _ = tx.send(Err(QmpError::Disconnected));
        }
    }
}

fn reply(pending: &Pending, id: u64, result: Result<Value, QmpError>) {
    let tx = lock(pending).as_mut().and_then(|m| m.remove(&id));
    match tx {
        Some(tx) => {
            let _ = tx.send(result);
        }
        None => tracing::debug!(id, "QMP reply for a command nobody waits for (timed out)"),
    }
}
