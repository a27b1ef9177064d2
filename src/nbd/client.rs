//! The NBD connection: handshake, then a reader task that routes reply
//! chunks to the requests in flight by cookie, so many reads can be in
//! flight at once (`read_ranges` keeps a window of them).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;

use super::protocol::*;

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("cannot connect to NBD server {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("NBD I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("NBD handshake: {0}")]
    Handshake(String),
    #[error("NBD server did not grant meta context {0:?}")]
    ContextRefused(String),
    #[error("NBD connection closed")]
    Disconnected,
    #[error("NBD {command} at {offset}+{length} failed: errno {errno}: {message}")]
    Server {
        command: &'static str,
        offset: u64,
        length: u64,
        errno: u32,
        message: String,
    },
    #[error("NBD protocol: {0}")]
    Protocol(String),
}

type Tx<T> = oneshot::Sender<Result<T, NbdError>>;

/// Reply headers are small; a buffer saves a system call per header (large
/// data reads bypass it).
const READ_BUFFER: usize = 256 << 10;
/// Reads are cut into pieces of this size: large enough to amortise the
/// per-request cost, small enough to keep memory flat with many in flight.
/// Measured against qemu-storage-daemon: 1 MiB pieces read 1.5-1.9x faster
/// than 2 or 4 MiB ones at the same bytes in flight (`benches/extract.rs`).
pub const READ_PIECE: u64 = 1 << 20;

fn read_piece() -> u64 {
    // EKKO_NBD_READ_PIECE (bytes) is for benchmarking other sizes.
    std::env::var("EKKO_NBD_READ_PIECE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(READ_PIECE)
}

enum Request {
    Read {
        offset: u64,
        buf: BytesMut,
        tx: Tx<Bytes>,
    },
    Status {
        start: u64,
        end: u64,
        found: HashMap<u32, Vec<Extent>>,
        tx: Tx<HashMap<u32, Vec<Extent>>>,
    },
    Plain {
        tx: Tx<()>,
    },
}

struct InFlight {
    command: &'static str,
    offset: u64,
    length: u64,
    request: Request,
    error: Option<(u32, String)>,
}

type Pending = Arc<Mutex<Option<HashMap<u64, InFlight>>>>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;
type Reader = Box<dyn AsyncRead + Send + Unpin>;

/// What the handshake established.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    pub size: u64,
    pub transmission_flags: u16,
    /// Minimum, preferred and maximum request sizes.
    pub block_size: (u32, u32, u32),
    /// Granted meta contexts: name → id.
    pub contexts: HashMap<String, u32>,
}

pub struct NbdClient {
    writer: tokio::sync::Mutex<Writer>,
    pending: Pending,
    next_cookie: AtomicU64,
    info: ExportInfo,
    bytes_read: Arc<AtomicU64>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn read_exact<R: AsyncRead + Unpin>(r: &mut R, n: usize) -> Result<Vec<u8>, NbdError> {
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => NbdError::Disconnected,
        _ => NbdError::Io(e),
    })?;
    Ok(buf)
}

/// Read one option reply: (type, data).
async fn option_reply<R: AsyncRead + Unpin>(
    r: &mut R,
    opt: u32,
) -> Result<(u32, Vec<u8>), NbdError> {
    let h = read_exact(r, 20).await?;
    if be_u64(&h) != OPT_REPLY_MAGIC || be_u32(&h[8..]) != opt {
        return Err(NbdError::Handshake(format!("bad reply to option {opt}")));
    }
    let typ = be_u32(&h[12..]);
    let len = be_u32(&h[16..]) as usize;
    if len > 64 << 20 {
        return Err(NbdError::Handshake(format!("option reply of {len} bytes")));
    }
    let data = if len > 0 {
        read_exact(r, len).await?
    } else {
        Vec::new()
    };
    Ok((typ, data))
}

fn refused(what: &str, typ: u32, data: &[u8]) -> NbdError {
    NbdError::Handshake(format!(
        "{what} refused (reply {typ:#x}): {}",
        String::from_utf8_lossy(data)
    ))
}

/// Fixed-newstyle handshake with structured replies, the given meta
/// contexts (all must be granted) and NBD_OPT_GO.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    export: &str,
    contexts: &[String],
) -> Result<ExportInfo, NbdError> {
    let h = read_exact(s, 18).await?;
    if &h[..8] != NBDMAGIC || be_u64(&h[8..]) != IHAVEOPT {
        return Err(NbdError::Handshake("not a newstyle NBD server".into()));
    }
    let server_flags = be_u16(&h[16..]);
    if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(NbdError::Handshake(
            "server does not speak fixed newstyle".into(),
        ));
    }
    let mut client_flags = CLIENT_FIXED_NEWSTYLE;
    if server_flags & FLAG_NO_ZEROES != 0 {
        client_flags |= CLIENT_NO_ZEROES;
    }
    s.write_all(&client_flags.to_be_bytes()).await?;

    s.write_all(&option(OPT_STRUCTURED_REPLY, &[])).await?;
    let (typ, data) = option_reply(s, OPT_STRUCTURED_REPLY).await?;
    if typ != REP_ACK {
        return Err(refused("structured replies", typ, &data));
    }

    let mut granted = HashMap::new();
    if !contexts.is_empty() {
        s.write_all(&option(
            OPT_SET_META_CONTEXT,
            &set_meta_context_data(export, contexts),
        ))
        .await?;
        loop {
            let (typ, data) = option_reply(s, OPT_SET_META_CONTEXT).await?;
            match typ {
                REP_META_CONTEXT if data.len() >= 4 => {
                    granted.insert(
                        String::from_utf8_lossy(&data[4..]).into_owned(),
                        be_u32(&data),
                    );
                }
                REP_ACK => break,
                _ => return Err(refused("meta contexts", typ, &data)),
            }
        }
        if let Some(missing) = contexts.iter().find(|c| !granted.contains_key(*c)) {
            return Err(NbdError::ContextRefused(missing.clone()));
        }
    }

    s.write_all(&option(OPT_GO, &go_data(export))).await?;
    let (mut size, mut tflags) = (None, 0u16);
    let mut block_size = (1, 4096, DEFAULT_MAX_REQUEST);
    loop {
        let (typ, data) = option_reply(s, OPT_GO).await?;
        match typ {
            REP_INFO if data.len() >= 2 => match be_u16(&data) {
                INFO_EXPORT if data.len() >= 12 => {
                    size = Some(be_u64(&data[2..]));
                    tflags = be_u16(&data[10..]);
                }
                INFO_BLOCK_SIZE if data.len() >= 14 => {
                    block_size = (be_u32(&data[2..]), be_u32(&data[6..]), be_u32(&data[10..]));
                }
                _ => {}
            },
            REP_ACK => break,
            _ if typ & REP_FLAG_ERROR != 0 => {
                return Err(refused(&format!("export {export:?}"), typ, &data));
            }
            _ => {}
        }
    }
    let size = size.ok_or_else(|| NbdError::Handshake("server sent no export size".into()))?;
    Ok(ExportInfo {
        size,
        transmission_flags: tflags,
        block_size,
        contexts: granted,
    })
}

impl NbdClient {
    pub async fn connect_unix(
        path: impl AsRef<Path>,
        export: &str,
        contexts: &[String],
    ) -> Result<NbdClient, NbdError> {
        let path = path.as_ref();
        let mut s = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|source| NbdError::Connect {
                target: path.display().to_string(),
                source,
            })?;
        let info = handshake(&mut s, export, contexts).await?;
        let (r, w) = s.into_split();
        Ok(Self::start(
            Box::new(BufReader::with_capacity(READ_BUFFER, r)),
            Box::new(w),
            info,
        ))
    }

    pub async fn connect_tcp(
        addr: &str,
        export: &str,
        contexts: &[String],
    ) -> Result<NbdClient, NbdError> {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| NbdError::Connect {
                target: addr.to_string(),
                source,
            })?;
        s.set_nodelay(true)?;
        let info = handshake(&mut s, export, contexts).await?;
        let (r, w) = s.into_split();
        Ok(Self::start(
            Box::new(BufReader::with_capacity(READ_BUFFER, r)),
            Box::new(w),
            info,
        ))
    }

    fn start(reader: Reader, writer: Writer, info: ExportInfo) -> NbdClient {
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let bytes_read = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(reply_loop(reader, pending.clone(), bytes_read.clone()));
        NbdClient {
            writer: tokio::sync::Mutex::new(writer),
            pending,
            next_cookie: AtomicU64::new(1),
            info,
            bytes_read,
            reader: task,
        }
    }

    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// Largest single request this client sends.
    pub fn max_request(&self) -> u64 {
        let max = if self.info.block_size.2 == 0 {
            DEFAULT_MAX_REQUEST
        } else {
            self.info.block_size.2
        };
        max.min(DEFAULT_MAX_REQUEST) as u64
    }

    /// Payload bytes received so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    async fn submit(
        &self,
        cmd: u16,
        command: &'static str,
        offset: u64,
        length: u64,
        request: Request,
        payload: Option<&[u8]>,
    ) -> Result<(), NbdError> {
        let len32 = u32::try_from(length)
            .map_err(|_| NbdError::Protocol(format!("{command} of {length} bytes is too large")))?;
        let cookie = self.next_cookie.fetch_add(1, Ordering::Relaxed);
        match lock(&self.pending).as_mut() {
            Some(map) => {
                map.insert(
                    cookie,
                    InFlight {
                        command,
                        offset,
                        length,
                        request,
                        error: None,
                    },
                );
            }
            None => return Err(NbdError::Disconnected),
        }
        // Reads ask for one data chunk when the server allows it: Ekko reads
        // only extents block status called data, so per-read hole detection
        // on the server is wasted work.
        let flags = if cmd == CMD_READ && self.info.transmission_flags & FLAG_SEND_DF != 0 {
            CMD_FLAG_DF
        } else {
            0
        };
        let header = super::protocol::request(cmd, flags, cookie, offset, len32);
        let result = async {
            let mut w = self.writer.lock().await;
            w.write_all(&header).await?;
            if let Some(p) = payload {
                w.write_all(p).await?;
            }
            w.flush().await
        }
        .await;
        if let Err(e) = result {
            if let Some(map) = lock(&self.pending).as_mut() {
                map.remove(&cookie);
            }
            return Err(NbdError::Io(e));
        }
        Ok(())
    }

    /// Read `length` bytes (at most `max_request`) at `offset`. Holes come
    /// back as zeros.
    pub async fn read(&self, offset: u64, length: u64) -> Result<Bytes, NbdError> {
        let (tx, rx) = oneshot::channel();
        // Filled in order as data arrives; zeros only where the server says
        // "hole" or leaves a gap (see `read_data_into` and `complete`).
        let buf = BytesMut::with_capacity(length as usize);
        self.submit(
            CMD_READ,
            "read",
            offset,
            length,
            Request::Read { offset, buf, tx },
            None,
        )
        .await?;
        rx.await.map_err(|_| NbdError::Disconnected)?
    }

    /// Read many ranges, `depth` requests in flight, yielding pieces of at
    /// most [`READ_PIECE`] bytes in order.
    pub fn read_ranges<'a>(
        &'a self,
        ranges: &[(u64, u64)],
        depth: usize,
    ) -> impl Stream<Item = Result<(u64, Bytes), NbdError>> + 'a {
        let max = self.max_request().min(read_piece());
        read_pieces(std::slice::from_ref(self), pieces_of(ranges, max), depth)
    }

    /// Whether the server allows several connections to one export
    /// (NBD_FLAG_CAN_MULTI_CONN), so reads can be spread over them.
    pub fn can_multi_conn(&self) -> bool {
        self.info.transmission_flags & FLAG_CAN_MULTI_CONN != 0
    }

    /// Block status of one granted context over `[offset, offset+length)`,
    /// merged into runs; asks again where the server answered short.
    pub async fn block_status(
        &self,
        context: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<Extent>, NbdError> {
        let id = *self
            .info
            .contexts
            .get(context)
            .ok_or_else(|| NbdError::ContextRefused(context.to_string()))?;
        let end = offset.saturating_add(length).min(self.info.size);
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let window = (end - pos).min(1 << 30);
            let (tx, rx) = oneshot::channel();
            let req = Request::Status {
                start: pos,
                end: pos + window,
                found: HashMap::new(),
                tx,
            };
            self.submit(CMD_BLOCK_STATUS, "block status", pos, window, req, None)
                .await?;
            let found = rx.await.map_err(|_| NbdError::Disconnected)??;
            let extents = found.get(&id).cloned().unwrap_or_default();
            let covered: u64 = extents.iter().map(|e| e.length).sum();
            if covered == 0 {
                return Err(NbdError::Protocol(format!(
                    "no {context} extents at offset {pos}"
                )));
            }
            merge_into(&mut out, extents);
            pos += covered;
        }
        Ok(out)
    }

    async fn plain(
        &self,
        cmd: u16,
        command: &'static str,
        offset: u64,
        length: u64,
        payload: Option<&[u8]>,
    ) -> Result<(), NbdError> {
        let (tx, rx) = oneshot::channel();
        self.submit(cmd, command, offset, length, Request::Plain { tx }, payload)
            .await?;
        rx.await.map_err(|_| NbdError::Disconnected)?
    }

    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<(), NbdError> {
        self.plain(CMD_WRITE, "write", offset, data.len() as u64, Some(data))
            .await
    }

    pub async fn write_zeroes(&self, offset: u64, length: u64) -> Result<(), NbdError> {
        self.plain(CMD_WRITE_ZEROES, "write zeroes", offset, length, None)
            .await
    }

    pub async fn trim(&self, offset: u64, length: u64) -> Result<(), NbdError> {
        self.plain(CMD_TRIM, "trim", offset, length, None).await
    }

    pub async fn flush(&self) -> Result<(), NbdError> {
        self.plain(CMD_FLUSH, "flush", 0, 0, None).await
    }

    /// Clean disconnect (NBD_CMD_DISC, then close).
    pub async fn disconnect(self) -> Result<(), NbdError> {
        let cookie = self.next_cookie.fetch_add(1, Ordering::Relaxed);
        let mut w = self.writer.lock().await;
        w.write_all(&request_header(CMD_DISC, cookie, 0, 0)).await?;
        w.flush().await?;
        w.shutdown().await?;
        Ok(())
    }
}

/// Cut ranges into pieces of at most [`READ_PIECE`] bytes.
fn pieces_of(ranges: &[(u64, u64)], max: u64) -> Vec<(u64, u64)> {
    let mut pieces = Vec::new();
    for &(mut off, mut len) in ranges {
        while len > 0 {
            let n = len.min(max);
            pieces.push((off, n));
            off += n;
            len -= n;
        }
    }
    pieces
}

/// Read pieces spread round-robin over several connections to the same
/// export, `depth` requests in flight on each, yielding them in order.
fn read_pieces(
    conns: &[NbdClient],
    pieces: Vec<(u64, u64)>,
    depth: usize,
) -> impl Stream<Item = Result<(u64, Bytes), NbdError>> + '_ {
    let n = conns.len().max(1);
    futures::stream::iter(pieces.into_iter().enumerate())
        .map(move |(i, (off, len))| async move { conns[i % n].read(off, len).await.map(|b| (off, b)) })
        .buffered(depth.max(1) * n)
}

/// [`NbdClient::read_ranges`] over several connections to one export.
pub fn read_ranges_multi<'a>(
    conns: &'a [NbdClient],
    ranges: &[(u64, u64)],
    depth: usize,
) -> impl Stream<Item = Result<(u64, Bytes), NbdError>> + 'a {
    let max = conns
        .iter()
        .map(|c| c.max_request())
        .min()
        .unwrap_or(DEFAULT_MAX_REQUEST as u64)
        .min(read_piece());
    read_pieces(conns, pieces_of(ranges, max), depth)
}

fn request_header(cmd: u16, cookie: u64, offset: u64, length: u32) -> [u8; 28] {
    request(cmd, 0, cookie, offset, length)
}

async fn reply_loop(mut r: Reader, pending: Pending, bytes_read: Arc<AtomicU64>) {
    let err = loop {
        if let Err(e) = handle_reply(&mut r, &pending, &bytes_read).await {
            break e;
        }
    };
    if !matches!(err, NbdError::Disconnected) {
        tracing::warn!(error = %err, "NBD connection failed");
    }
    if let Some(map) = lock(&pending).take() {
        for (_, f) in map {
            fail(f.request, NbdError::Disconnected);
        }
    }
}

fn fail(req: Request, e: NbdError) {
    match req {
        Request::Read { tx, .. } => {
            let _ = tx.send(Err(e));
        }
        Request::Status { tx, .. } => {
            let _ = tx.send(Err(e));
        }
        Request::Plain { tx } => {
            let _ = tx.send(Err(e));
        }
    }
}

fn complete(f: InFlight) {
    if let Some((errno, message)) = f.error {
        let e = NbdError::Server {
            command: f.command,
            offset: f.offset,
            length: f.length,
            errno,
            message,
        };
        return fail(f.request, e);
    }
    match f.request {
        Request::Read { mut buf, tx, .. } => {
            // Trailing holes (or a hole-only reply) read as zeros.
            buf.resize(f.length as usize, 0);
            let _ = tx.send(Ok(buf.freeze()));
        }
        Request::Status { found, tx, .. } => {
            let _ = tx.send(Ok(found));
        }
        Request::Plain { tx } => {
            let _ = tx.send(Ok(()));
        }
    }
}

async fn handle_reply(
    r: &mut Reader,
    pending: &Pending,
    bytes_read: &AtomicU64,
) -> Result<(), NbdError> {
    let magic = be_u32(&read_exact(r, 4).await?);
    match magic {
        SIMPLE_REPLY_MAGIC => {
            let h = read_exact(r, 12).await?;
            let (errno, cookie) = (be_u32(&h), be_u64(&h[4..]));
            let mut f = take(pending, cookie)?;
            if errno != 0 {
                f.error = Some((errno, String::new()));
            } else if let Request::Read { ref mut buf, .. } = f.request {
                // A simple reply to a read carries the data inline.
                let data = read_exact(r, f.length as usize).await?;
                bytes_read.fetch_add(data.len() as u64, Ordering::Relaxed);
                buf.clear();
                buf.extend_from_slice(&data);
            }
            complete(f);
            Ok(())
        }
        STRUCTURED_REPLY_MAGIC => {
            let h = read_exact(r, 16).await?;
            let (flags, typ, cookie, len) = (
                be_u16(&h),
                be_u16(&h[2..]),
                be_u64(&h[4..]),
                be_u32(&h[12..]) as usize,
            );
            if len > (64 << 20) + 64 {
                return Err(NbdError::Protocol(format!("reply chunk of {len} bytes")));
            }
            let done = flags & REPLY_FLAG_DONE != 0;
            if typ == REPLY_TYPE_OFFSET_DATA {
                // The hot path: read the data straight into the request's
                // buffer (no intermediate copy). The request leaves the map
                // while its data is read; only this task touches it.
                let mut f = take(pending, cookie)?;
                read_data_into(r, &mut f, len, bytes_read).await?;
                if done {
                    complete(f);
                } else if let Some(map) = lock(pending).as_mut() {
                    map.insert(cookie, f);
                }
                return Ok(());
            }
            let payload = if len > 0 {
                read_exact(r, len).await?
            } else {
                Vec::new()
            };
            let mut map = lock(pending);
            let map = map.as_mut().ok_or(NbdError::Disconnected)?;
            let f = map
                .get_mut(&cookie)
                .ok_or_else(|| NbdError::Protocol(format!("reply for unknown cookie {cookie}")))?;
            apply_chunk(f, typ, &payload)?;
            if done {
                if let Some(f) = map.remove(&cookie) {
                    complete(f);
                }
            }
            Ok(())
        }
        other => Err(NbdError::Protocol(format!("bad reply magic {other:#x}"))),
    }
}

/// An OFFSET_DATA chunk of `len` bytes (8 of offset, then data), read into
/// the request's buffer.
async fn read_data_into(
    r: &mut Reader,
    f: &mut InFlight,
    len: usize,
    bytes_read: &AtomicU64,
) -> Result<(), NbdError> {
    if len < 8 {
        return Err(NbdError::Protocol("short data chunk".into()));
    }
    let at = be_u64(&read_exact(r, 8).await?);
    let n = len - 8;
    let Request::Read { offset, buf, .. } = &mut f.request else {
        return Err(NbdError::Protocol(format!(
            "data chunk for a {} request",
            f.command
        )));
    };
    let start = at
        .checked_sub(*offset)
        .ok_or_else(|| NbdError::Protocol("data chunk before request".into()))?
        as usize;
    if start + n > f.length as usize {
        return Err(NbdError::Protocol("data chunk beyond request".into()));
    }
    let eof = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => NbdError::Disconnected,
        _ => NbdError::Io(e),
    };
    if start == buf.len() {
        // In order (the usual case): append without zeroing first.
        let target = start + n;
        while buf.len() < target {
            let want = (target - buf.len()) as u64;
            let mut limited = (&mut *r).take(want);
            if limited.read_buf(buf).await.map_err(eof)? == 0 {
                return Err(NbdError::Disconnected);
            }
        }
    } else {
        if buf.len() < start + n {
            buf.resize(start + n, 0);
        }
        r.read_exact(&mut buf[start..start + n])
            .await
            .map_err(eof)?;
    }
    bytes_read.fetch_add(n as u64, Ordering::Relaxed);
    Ok(())
}

fn take(pending: &Pending, cookie: u64) -> Result<InFlight, NbdError> {
    lock(pending)
        .as_mut()
        .ok_or(NbdError::Disconnected)?
        .remove(&cookie)
        .ok_or_else(|| NbdError::Protocol(format!("reply for unknown cookie {cookie}")))
}

fn apply_chunk(f: &mut InFlight, typ: u16, p: &[u8]) -> Result<(), NbdError> {
    if typ & REPLY_TYPE_ERROR_BIT != 0 {
        f.error = Some(parse_error_payload(p));
        return Ok(());
    }
    match (typ, &mut f.request) {
        (REPLY_TYPE_NONE, _) => {}
        (REPLY_TYPE_OFFSET_HOLE, Request::Read { .. }) => {} // already zeros
        (
            REPLY_TYPE_BLOCK_STATUS,
            Request::Status {
                start, end, found, ..
            },
        ) => {
            let (id, ext) = parse_block_status(p, *start, *end)
                .ok_or_else(|| NbdError::Protocol("bad block status chunk".into()))?;
            merge_into(found.entry(id).or_default(), ext);
        }
        (t, _) => {
            return Err(NbdError::Protocol(format!(
                "unexpected reply chunk type {t} for {}",
                f.command
            )))
        }
    }
    Ok(())
}
