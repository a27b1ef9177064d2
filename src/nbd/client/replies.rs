//! The reader task: reply chunks routed to the requests in flight by
//! cookie (simple and structured replies, data, holes, block status,
//! errors).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::AsyncReadExt;

use super::handshake::read_exact;
use super::{lock, InFlight, NbdError, Pending, Reader, Request};
use crate::nbd::protocol::*;

pub(super) async fn reply_loop(mut r: Reader, pending: Pending, bytes_read: Arc<AtomicU64>) {
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
