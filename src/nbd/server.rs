//! A read-only NBD server: one export over any [`ExportSource`], on a unix
//! socket or TCP, to several clients with several requests in flight each.
//!
//! Requests of one client are served concurrently (each its own task,
//! [`IN_FLIGHT`] at most) and their replies written whole under the
//! connection's write lock, so replies never interleave. Reads that fail
//! get an error reply (`EIO`) for that request only; the connection and
//! the other clients carry on. Writes, trims and write-zeroes get `EPERM`.
//! With structured replies a read answers zero runs with `OFFSET_HOLE`
//! chunks, and `base:allocation` block status reports them as holes that
//! read as zeroes, so `qemu-img convert` and `nbdcopy` skip them.

mod handshake;
mod replies;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;

use self::handshake::{hello, options, Negotiated, Outcome, Tls};
use self::replies::{block_status_reply, error_reply, read_reply, simple_or_done};
use crate::nbd::protocol::*;

/// Why a source could not serve a read.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// What an export serves: a fixed-size, read-only run of bytes that knows
/// which of its ranges read as zeroes.
#[async_trait::async_trait]
pub trait ExportSource: Send + Sync {
    fn size(&self) -> u64;
    /// The block size reads are best aligned to (a backup's chunk size).
    fn preferred_block(&self) -> u32;
    /// Exactly `length` bytes at `offset` (within the size), or an error:
    /// never other bytes.
    async fn read(&self, offset: u64, length: u32) -> Result<bytes::Bytes, SourceError>;
    /// `[offset, offset+length)` as runs of `(length, reads as zeroes)`,
    /// in order, covering the range.
    fn extents(&self, offset: u64, length: u64) -> Vec<(u64, bool)>;
}

/// Requests served at once per connection; beyond it the server stops
/// reading requests (memory stays bounded by this times [`MAX_REQUEST`]).
pub const IN_FLIGHT: usize = 16;
/// Clients served at once by one export (counted once they chose it:
/// connections still in their handshake are bounded apart).
pub const MAX_CLIENTS: usize = 16;
/// Connections in their handshake at once per export.
const MAX_HANDSHAKES: usize = 64;
/// Bytes of read replies in flight per export, all clients together: a
/// client that stops reading its replies holds at most this much.
const IN_FLIGHT_BYTES: u32 = 128 << 20;
/// A reply not written within this (a client that stopped reading) ends
/// its connection.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// The largest read a client may ask for (the block size the server
/// advertises as its maximum).
pub const MAX_REQUEST: u32 = 32 << 20;
/// A client that has not chosen the export (TLS included) within this is
/// dropped: a silent peer holds a handshake slot only this long.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Error messages in structured replies are cut to this.
const MAX_MESSAGE: usize = 4096;

/// A named export.
pub struct Export {
    pub name: String,
    pub source: Arc<dyn ExportSource>,
    /// Clients must upgrade to TLS (`NBD_OPT_STARTTLS`) before anything
    /// else.
    pub tls: Option<crate::tls::ServerTls>,
    /// The name is a secret: the export answers to it alone (not to the
    /// default name) and is not listed.
    pub secret_name: bool,
    clients: Arc<Semaphore>,
    in_flight: Arc<Semaphore>,
}

impl Export {
    pub fn new(name: &str, source: Arc<dyn ExportSource>) -> Export {
        Export {
            name: name.to_string(),
            source,
            tls: None,
            secret_name: false,
            clients: Arc::new(Semaphore::new(MAX_CLIENTS)),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT_BYTES as usize)),
        }
    }

    pub fn with_tls(mut self, tls: Option<crate::tls::ServerTls>) -> Export {
        self.tls = tls;
        self
    }

    /// Answer only to the exact name, list nothing (the name is the
    /// secret a client must know).
    pub fn with_secret_name(mut self) -> Export {
        self.secret_name = true;
        self
    }

    /// The export's own name, or the default (empty) one unless the name
    /// is a secret.
    fn answers_to(&self, name: &[u8]) -> bool {
        (name.is_empty() && !self.secret_name) || name == self.name.as_bytes()
    }

    fn flags(&self, structured: bool) -> u16 {
        let df = if structured { FLAG_SEND_DF } else { 0 };
        FLAG_HAS_FLAGS | FLAG_READ_ONLY | FLAG_CAN_MULTI_CONN | df
    }

    /// Minimum, preferred and maximum block sizes: any byte range reads,
    /// whole chunks read best.
    fn block_sizes(&self) -> (u32, u32, u32) {
        let preferred = self.source.preferred_block().clamp(512, MAX_REQUEST);
        (
            1,
            preferred.next_power_of_two().min(MAX_REQUEST),
            MAX_REQUEST,
        )
    }
}

// ---- listening ----

/// Where an export listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "nbd+unix:///?socket={}", p.display()),
            Endpoint::Tcp(a) => write!(f, "nbd://{a}/"),
        }
    }
}

/// A bound listener; a unix socket's file is removed when it is dropped.
pub enum Listener {
    Unix(tokio::net::UnixListener, PathBuf),
    Tcp(tokio::net::TcpListener),
}

impl Listener {
    /// Bind; an existing socket file is never replaced (another export
    /// may be serving on it). Without `tls`, TCP binds only loopback.
    pub async fn bind(at: &Endpoint, tls: bool) -> std::io::Result<Listener> {
        let with = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{at}: {e}"));
        match at {
            Endpoint::Unix(path) => {
                let l = tokio::net::UnixListener::bind(path).map_err(with)?;
                // Only this user may connect, whatever the umask.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(with)?;
                Ok(Listener::Unix(l, path.clone()))
            }
            Endpoint::Tcp(addr) => {
                // A backup's plain data leaves the machine only over TLS.
                let loopback = tokio::net::lookup_host(addr.as_str())
                    .await
                    .map_err(with)?
                    .all(|a| a.ip().is_loopback());
                if !loopback && !tls {
                    return Err(with(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        "an export without TLS may bind only a loopback address",
                    )));
                }
                Ok(Listener::Tcp(
                    tokio::net::TcpListener::bind(addr).await.map_err(with)?,
                ))
            }
        }
    }

    /// The TCP address bound (port 0 resolved).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            if let Err(e) = std::fs::remove_file(path.as_path()) {
                tracing::warn!(socket = %path.display(), error = %e, "export socket not removed");
            }
        }
    }
}

/// Serve `export` to every client that connects until `shutdown`
/// resolves; then the clients are cut off and the listener dropped (its
/// socket file removed).
pub async fn serve(
    export: Arc<Export>,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut clients = JoinSet::new();
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = clients.join_next(), if !clients.is_empty() => continue,
            a = accept(&listener) => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Connections in their handshake are bounded apart from
                // the clients served: silent peers cannot crowd them out.
                let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, max = MAX_HANDSHAKES, "NBD connection refused: too many handshakes");
                    continue;
                };
                let export = export.clone();
                clients.spawn(async move {
                    tracing::info!(%peer, "NBD client connected");
                    match serve_client_with(stream, export, Some(handshake)).await {
                        Ok(()) => tracing::info!(%peer, "NBD client left"),
                        Err(e) => tracing::info!(%peer, error = %e, "NBD client dropped"),
                    }
                });
            }
            // A failed accept (a client gone before it was taken, no file
            // descriptors left) must not end the export.
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    clients.abort_all();
    while clients.join_next().await.is_some() {}
    drop(listener);
    Ok(())
}

type Stream = Box<dyn AsyncStream>;
trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}

async fn accept(l: &Listener) -> std::io::Result<(Stream, String)> {
    match l {
        Listener::Unix(l, path) => {
            let (s, _) = l.accept().await?;
            Ok((Box::new(s), path.display().to_string()))
        }
        Listener::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            s.set_nodelay(true)?;
            Ok((Box::new(s), peer.to_string()))
        }
    }
}

// ---- one client ----

/// Handshake (TLS first where the export requires it), then serve
/// requests until the client disconnects.
pub async fn serve_client<S>(stream: S, export: Arc<Export>) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_client_with(stream, export, None).await
}

/// [`serve_client`], releasing `handshake` once the client chose the
/// export (or left).
async fn serve_client_with<S>(
    mut stream: S,
    export: Arc<Export>,
    handshake: Option<tokio::sync::OwnedSemaphorePermit>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timed_out = || {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no export chosen within the handshake timeout",
        )
    };
    let tls = match &export.tls {
        Some(_) => Tls::Required,
        None => Tls::Off,
    };
    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let Some(no_zeroes) = hello(&mut stream).await? else {
            return Ok((false, Outcome::Close));
        };
        Ok::<_, std::io::Error>((
            no_zeroes,
            options(&mut stream, &export, no_zeroes, tls).await?,
        ))
    });
    let (no_zeroes, outcome) = first.await.map_err(|_| timed_out())??;
    match (outcome, &export.tls) {
        (Outcome::Go(state), _) => transmit_on(stream, export, state, handshake).await,
        (Outcome::StartTls, Some(server)) => {
            let upgraded = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                let mut stream = server.acceptor.accept(stream).await?;
                let outcome = options(&mut stream, &export, no_zeroes, Tls::Done).await?;
                Ok::<_, std::io::Error>((stream, outcome))
            });
            match upgraded.await.map_err(|_| timed_out())?? {
                (stream, Outcome::Go(state)) => transmit_on(stream, export, state, handshake).await,
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

async fn transmit_on<S>(
    stream: S,
    export: Arc<Export>,
    state: Negotiated,
    handshake: Option<tokio::sync::OwnedSemaphorePermit>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    drop(handshake);
    // A bounded number of clients: each may hold IN_FLIGHT reads.
    let Ok(_client) = export.clients.clone().try_acquire_owned() else {
        return Err(std::io::Error::other(format!(
            "too many clients (at most {MAX_CLIENTS})"
        )));
    };
    let (r, w) = tokio::io::split(stream);
    transmit(BufReader::new(r), Arc::new(Mutex::new(w)), export, state).await
}

async fn transmit<R, W>(
    mut r: R,
    w: Arc<Mutex<W>>,
    export: Arc<Export>,
    st: Negotiated,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let size = export.source.size();
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = JoinSet::new();
    // Set by a reply that could not be written in time.
    let (stuck_tx, mut stuck) = tokio::sync::watch::channel(false);
    let stuck_tx = Arc::new(stuck_tx);
    let stalled = || {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client stopped reading replies",
        )
    };
    let result = loop {
        let mut h = [0u8; 28];
        let header = tokio::select! {
            h = r.read_exact(&mut h) => h,
            _ = stuck.wait_for(|s| *s) => break Err(stalled()),
        };
        match header {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break Ok(()),
            Err(e) => break Err(e),
        }
        if be_u32(&h) != REQUEST_MAGIC {
            break Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "bad request magic",
            ));
        }
        let (flags, cmd, cookie) = (be_u16(&h[4..]), be_u16(&h[6..]), be_u64(&h[8..]));
        let (offset, length) = (be_u64(&h[16..]), be_u32(&h[24..]));
        while tasks.try_join_next().is_some() {}
        let in_range = length > 0 && offset.checked_add(length as u64).is_some_and(|e| e <= size);
        let reply = match cmd {
            CMD_READ if in_range && length <= MAX_REQUEST => {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break Ok(());
                };
                // The export's byte budget, all clients together.
                let budget = tokio::select! {
                    b = export.in_flight.clone().acquire_many_owned(length) => b,
                    _ = stuck.wait_for(|s| *s) => break Err(stalled()),
                };
                let Ok(budget) = budget else {
                    break Ok(());
                };
                let (export, w, stuck_tx) = (export.clone(), w.clone(), stuck_tx.clone());
                tasks.spawn(async move {
                    let pieces = read_reply(&export, st, cookie, offset, length, flags).await;
                    let sent = tokio::time::timeout(REPLY_TIMEOUT, async {
                        let mut w = w.lock().await;
                        for piece in pieces {
                            w.write_all(&piece).await?;
                        }
                        Ok::<_, std::io::Error>(())
                    })
                    .await;
                    match sent {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::debug!(error = %e, "read reply not sent"),
                        Err(_) => {
                            tracing::info!("NBD client stopped reading replies: dropping it");
                            let _ = stuck_tx.send(true);
                        }
                    }
                    drop(budget);
                    drop(slot);
                });
                continue;
            }
            CMD_WRITE => {
                // The payload follows the header: read past it.
                if length > MAX_REQUEST {
                    break Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "write payload too large",
                    ));
                }
                tokio::io::copy(&mut (&mut r).take(length as u64), &mut tokio::io::sink()).await?;
                error_reply(st, cookie, EPERM, "read-only export")
            }
            CMD_TRIM | CMD_WRITE_ZEROES => error_reply(st, cookie, EPERM, "read-only export"),
            CMD_FLUSH => simple_or_done(st, cookie),
            CMD_BLOCK_STATUS if !st.allocation => {
                error_reply(st, cookie, EINVAL, "no meta context selected")
            }
            CMD_BLOCK_STATUS if in_range => {
                block_status_reply(&export, cookie, offset, length, flags)
            }
            CMD_DISC => break Ok(()),
            CMD_READ | CMD_BLOCK_STATUS => error_reply(st, cookie, EINVAL, "out of range"),
            _ => error_reply(st, cookie, EINVAL, "unknown command"),
        };
        match tokio::time::timeout(REPLY_TIMEOUT, async {
            w.lock().await.write_all(&reply).await
        })
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => break Err(e),
            Err(_) => break Err(stalled()),
        }
    };
    // Requests already taken are answered before the connection closes
    // (a stuck client's replies give up after the reply timeout).
    if matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::TimedOut) {
        tasks.abort_all();
    }
    while tasks.join_next().await.is_some() {}
    let _ = tokio::time::timeout(REPLY_TIMEOUT, async { w.lock().await.shutdown().await }).await;
    result
}

#[cfg(test)]
mod tests;
