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
mod tests {
    use super::*;
    use crate::nbd::client::{NbdClient, NbdError};

    const BLOCK: u64 = 64 << 10;

    /// Blocks of bytes in memory; all-zero blocks read as holes; reads
    /// touching `bad` fail.
    struct Memory {
        data: Vec<u8>,
        bad: Option<(u64, u64)>,
    }

    #[async_trait::async_trait]
    impl ExportSource for Memory {
        fn size(&self) -> u64 {
            self.data.len() as u64
        }
        fn preferred_block(&self) -> u32 {
            BLOCK as u32
        }
        async fn read(&self, offset: u64, length: u32) -> Result<bytes::Bytes, SourceError> {
            let end = offset + length as u64;
            if let Some((s, e)) = self.bad {
                if offset < e && s < end {
                    return Err("chunk damaged".into());
                }
            }
            tokio::task::yield_now().await;
            Ok(bytes::Bytes::copy_from_slice(
                &self.data[offset as usize..end as usize],
            ))
        }
        fn extents(&self, offset: u64, length: u64) -> Vec<(u64, bool)> {
            let mut out = Vec::new();
            let end = offset + length;
            let mut at = offset;
            while at < end {
                let next = ((at / BLOCK + 1) * BLOCK).min(end);
                let b = at / BLOCK * BLOCK;
                let block = &self.data[b as usize..((b + BLOCK) as usize).min(self.data.len())];
                out.push((next - at, block.iter().all(|&x| x == 0)));
                at = next;
            }
            out
        }
    }

    /// 1 MiB: data, a zero block every third block.
    fn memory(bad: Option<(u64, u64)>) -> Arc<Memory> {
        let mut data = vec![0u8; 1 << 20];
        for (i, b) in data.iter_mut().enumerate() {
            if (i as u64 / BLOCK) % 3 != 1 {
                *b = (i % 251) as u8 + 1;
            }
        }
        Arc::new(Memory { data, bad })
    }

    struct Running {
        _dir: tempfile::TempDir,
        socket: PathBuf,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    async fn start(source: Arc<Memory>) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nbd.sock");
        let listener = Listener::bind(&Endpoint::Unix(socket.clone()), false)
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let export = Arc::new(Export::new("backup", source));
        let task = tokio::spawn(serve(export, listener, async {
            let _ = rx.await;
        }));
        Running {
            _dir: dir,
            socket,
            stop: Some(tx),
            task,
        }
    }

    fn allocation() -> Vec<String> {
        vec![BASE_ALLOCATION.to_string()]
    }

    #[tokio::test]
    async fn reads_holes_and_block_status_over_structured_replies() {
        let mem = memory(None);
        let mut run = start(mem.clone()).await;
        let c = NbdClient::connect_unix(&run.socket, "backup", &allocation())
            .await
            .unwrap();
        assert_eq!(c.size(), 1 << 20);
        assert_eq!(c.info().block_size, (1, BLOCK as u32, MAX_REQUEST));
        assert_ne!(c.info().transmission_flags & FLAG_READ_ONLY, 0);
        assert!(c.can_multi_conn());
        let all = c.read(0, 1 << 20).await.unwrap();
        assert!(all[..] == mem.data[..], "whole export reads back");
        let odd = c.read(BLOCK - 7, 3 * BLOCK + 11).await.unwrap();
        assert!(odd[..] == mem.data[(BLOCK - 7) as usize..(4 * BLOCK + 4) as usize]);

        let ext = c.block_status(BASE_ALLOCATION, 0, 1 << 20).await.unwrap();
        let holes = ranges_where(&ext, |f| f == STATE_HOLE | STATE_ZERO);
        let expected: Vec<(u64, u64)> = (0..16)
            .filter(|b| b % 3 == 1)
            .map(|b| (b * BLOCK, BLOCK))
            .collect();
        assert_eq!(holes, expected);

        for refused in [
            c.write(0, b"no").await,
            c.trim(0, 4096).await,
            c.write_zeroes(0, 4096).await,
        ] {
            match refused {
                Err(NbdError::Server { errno, .. }) => assert_eq!(errno, EPERM),
                other => panic!("a write must be refused: {other:?}"),
            }
        }
        // Still serving after the refusals.
        assert!(c.read(0, 4096).await.unwrap()[..] == mem.data[..4096]);
        match c.read((1 << 20) - 10, 20).await {
            Err(NbdError::Server { errno, .. }) => assert_eq!(errno, EINVAL),
            other => panic!("past the end: {other:?}"),
        }
        c.disconnect().await.unwrap();
        let _ = run.stop.take().unwrap().send(());
        run.task.await.unwrap().unwrap();
        assert!(!run.socket.exists(), "socket removed on shutdown");
    }

    #[tokio::test]
    async fn a_failed_read_fails_alone_and_many_clients_read_at_once() {
        let mem = memory(Some((5 * BLOCK, 6 * BLOCK)));
        let run = start(mem.clone()).await;
        let c = NbdClient::connect_unix(&run.socket, "", &allocation())
            .await
            .unwrap();
        match c.read(4 * BLOCK, 2 * BLOCK).await {
            Err(NbdError::Server { errno, message, .. }) => {
                assert_eq!(errno, EIO);
                assert!(message.contains("damaged"), "{message}");
            }
            other => panic!("a damaged range must fail: {other:?}"),
        }
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(
                NbdClient::connect_unix(&run.socket, "backup", &[])
                    .await
                    .unwrap(),
            );
        }
        let reads = clients.iter().flat_map(|c| {
            (0..16u64)
                .filter(|b| *b != 5)
                .map(move |b| async move { (b, c.read(b * BLOCK, BLOCK).await) })
        });
        for (b, got) in futures::future::join_all(reads).await {
            let got = got.unwrap();
            assert!(got[..] == mem.data[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize]);
        }
        // The first client still works after its error.
        assert!(c.read(0, 10).await.unwrap()[..] == mem.data[..10]);
    }

    /// An export with a secret name lists nothing and answers to that
    /// name alone: not to the default name, not to a guess.
    #[tokio::test]
    async fn a_secret_name_is_never_told_nor_defaulted() {
        let mem = memory(None);
        let export = Export::new("s3cr3t", mem as Arc<dyn ExportSource>).with_secret_name();
        let (mut c, s) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(serve_client(s, Arc::new(export)));
        let mut hello = [0u8; 18];
        c.read_exact(&mut hello).await.unwrap();
        c.write_all(&CLIENT_FIXED_NEWSTYLE.to_be_bytes())
            .await
            .unwrap();
        let reply = async |c: &mut tokio::io::DuplexStream| {
            let mut h = [0u8; 20];
            c.read_exact(&mut h).await.unwrap();
            let mut data = vec![0u8; be_u32(&h[16..]) as usize];
            c.read_exact(&mut data).await.unwrap();
            be_u32(&h[12..])
        };
        c.write_all(&option(OPT_LIST, &[])).await.unwrap();
        assert_eq!(reply(&mut c).await, REP_ERR_UNSUP);
        for guess in ["", "guess", "s3cr3"] {
            c.write_all(&option(OPT_GO, &go_data(guess))).await.unwrap();
            assert_eq!(reply(&mut c).await, REP_ERR_UNKNOWN, "{guess:?}");
        }
        c.write_all(&option(OPT_GO, &go_data("s3cr3t")))
            .await
            .unwrap();
        assert_eq!(reply(&mut c).await, REP_INFO);
        drop(c);
        let _ = server.await;
    }

    /// A client without structured replies: LIST, INFO, GO, simple
    /// replies, an unknown option refused, DISC.
    #[tokio::test]
    async fn plain_handshake_and_simple_replies() {
        let mem = memory(None);
        let export = Arc::new(Export::new("backup", mem.clone() as Arc<dyn ExportSource>));
        let (mut c, s) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(serve_client(s, export));
        let mut hello = [0u8; 18];
        c.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello[..8], NBDMAGIC);
        assert_eq!(be_u16(&hello[16..]), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        c.write_all(&(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES).to_be_bytes())
            .await
            .unwrap();
        async fn reply(c: &mut tokio::io::DuplexStream) -> (u32, u32, Vec<u8>) {
            let mut h = [0u8; 20];
            c.read_exact(&mut h).await.unwrap();
            assert_eq!(be_u64(&h), OPT_REPLY_MAGIC);
            let mut data = vec![0u8; be_u32(&h[16..]) as usize];
            c.read_exact(&mut data).await.unwrap();
            (be_u32(&h[8..]), be_u32(&h[12..]), data)
        }
        c.write_all(&option(OPT_LIST, &[])).await.unwrap();
        let (opt, typ, data) = reply(&mut c).await;
        assert_eq!((opt, typ), (OPT_LIST, REP_SERVER));
        assert_eq!(&data[4..], b"backup");
        assert_eq!(reply(&mut c).await.1, REP_ACK);
        c.write_all(&option(99, &[])).await.unwrap();
        assert_eq!(reply(&mut c).await.1, REP_ERR_UNSUP);
        // Meta contexts need structured replies first.
        c.write_all(&option(
            OPT_SET_META_CONTEXT,
            &set_meta_context_data("backup", &allocation()),
        ))
        .await
        .unwrap();
        assert_eq!(reply(&mut c).await.1, REP_ERR_INVALID);
        c.write_all(&option(
            OPT_LIST_META_CONTEXT,
            &set_meta_context_data("backup", &[]),
        ))
        .await
        .unwrap();
        let (_, typ, data) = reply(&mut c).await;
        assert_eq!(typ, REP_META_CONTEXT);
        assert_eq!(&data[4..], BASE_ALLOCATION.as_bytes());
        assert_eq!(reply(&mut c).await.1, REP_ACK);
        c.write_all(&option(OPT_INFO, &go_data("other")))
            .await
            .unwrap();
        assert_eq!(reply(&mut c).await.1, REP_ERR_UNKNOWN);
        c.write_all(&option(OPT_INFO, &go_data("backup")))
            .await
            .unwrap();
        let (_, typ, data) = reply(&mut c).await;
        assert_eq!((typ, be_u16(&data)), (REP_INFO, INFO_EXPORT));
        assert_eq!(be_u64(&data[2..]), 1 << 20);
        let (_, typ, data) = reply(&mut c).await;
        assert_eq!((typ, be_u16(&data)), (REP_INFO, INFO_BLOCK_SIZE));
        assert_eq!(reply(&mut c).await.1, REP_ACK);
        c.write_all(&option(OPT_GO, &go_data(""))).await.unwrap();
        for _ in 0..2 {
            assert_eq!(reply(&mut c).await.1, REP_INFO);
        }
        assert_eq!(reply(&mut c).await.1, REP_ACK);

        c.write_all(&request(CMD_READ, 0, 7, 100, 1000))
            .await
            .unwrap();
        let mut h = [0u8; 16];
        c.read_exact(&mut h).await.unwrap();
        assert_eq!(
            (be_u32(&h), be_u32(&h[4..]), be_u64(&h[8..])),
            (SIMPLE_REPLY_MAGIC, 0, 7)
        );
        let mut data = vec![0u8; 1000];
        c.read_exact(&mut data).await.unwrap();
        assert!(data[..] == mem.data[100..1100]);
        c.write_all(&request(CMD_BLOCK_STATUS, 0, 8, 0, 4096))
            .await
            .unwrap();
        c.read_exact(&mut h).await.unwrap();
        assert_eq!(be_u32(&h[4..]), EINVAL, "no context selected");
        c.write_all(&request(CMD_DISC, 0, 9, 0, 0)).await.unwrap();
        server.await.unwrap().unwrap();
    }
}
