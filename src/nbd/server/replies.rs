//! Replies, each built whole before it is written (so one write under
//! the connection's lock sends it): simple or structured, data with holes
//! for zero runs, block status, errors.

use super::handshake::{Negotiated, ALLOCATION_ID};
use super::{Export, MAX_MESSAGE};
use crate::nbd::protocol::*;
use bytes::Bytes;

fn simple_header(errno: u32, cookie: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&errno.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out
}

fn chunk_header(out: &mut Vec<u8>, flags: u16, typ: u16, cookie: u64, length: u32) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&typ.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
}

/// Success without data: a simple reply, or a lone `NONE` chunk.
pub(super) fn simple_or_done(st: Negotiated, cookie: u64) -> Vec<u8> {
    if st.structured {
        let mut out = Vec::with_capacity(20);
        chunk_header(&mut out, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0);
        out
    } else {
        simple_header(0, cookie)
    }
}

pub(super) fn error_reply(st: Negotiated, cookie: u64, errno: u32, message: &str) -> Vec<u8> {
    if !st.structured {
        return simple_header(errno, cookie);
    }
    let mut end = message.len().min(MAX_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let msg = &message.as_bytes()[..end];
    let mut out = Vec::with_capacity(26 + msg.len());
    chunk_header(
        &mut out,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        6 + msg.len() as u32,
    );
    out.extend_from_slice(&errno.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// The whole reply to a read: the data, or an error and no data. In
/// pieces written one after the other under the connection's lock, so the
/// data is never copied into a reply buffer.
pub(super) async fn read_reply(
    export: &Export,
    st: Negotiated,
    cookie: u64,
    offset: u64,
    length: u32,
    flags: u16,
) -> Vec<Bytes> {
    let data = match export.source.read(offset, length).await {
        Ok(d) if d.len() == length as usize => d,
        Ok(d) => {
            tracing::error!(offset, length, got = d.len(), "export source read short");
            return vec![error_reply(st, cookie, EIO, "short read").into()];
        }
        Err(e) => {
            tracing::warn!(offset, length, error = %e, "export read failed");
            return vec![error_reply(st, cookie, EIO, &e.to_string()).into()];
        }
    };
    if !st.structured {
        return vec![simple_header(0, cookie).into(), data];
    }
    let runs = if flags & CMD_FLAG_DF != 0 {
        vec![(length as u64, false)]
    } else {
        merged(export.source.extents(offset, length as u64))
    };
    let mut pieces = Vec::with_capacity(2 * runs.len() + 1);
    // Chunk headers (and whole hole chunks) gathered between data pieces.
    let mut frame = Vec::new();
    let mut at = 0u64;
    for (len, zero) in runs {
        let len = len.min(length as u64 - at);
        if len == 0 {
            break;
        }
        let last = at + len == length as u64;
        let done = if last { REPLY_FLAG_DONE } else { 0 };
        if zero {
            chunk_header(&mut frame, done, REPLY_TYPE_OFFSET_HOLE, cookie, 12);
            frame.extend_from_slice(&(offset + at).to_be_bytes());
            frame.extend_from_slice(&(len as u32).to_be_bytes());
        } else {
            chunk_header(
                &mut frame,
                done,
                REPLY_TYPE_OFFSET_DATA,
                cookie,
                8 + len as u32,
            );
            frame.extend_from_slice(&(offset + at).to_be_bytes());
            pieces.push(Bytes::from(std::mem::take(&mut frame)));
            pieces.push(data.slice(at as usize..(at + len) as usize));
        }
        at += len;
        if last {
            break;
        }
    }
    if at < length as u64 {
        // A source whose extents fall short of the range: the rest as data.
        let rest = length as u64 - at;
        chunk_header(
            &mut frame,
            REPLY_FLAG_DONE,
            REPLY_TYPE_OFFSET_DATA,
            cookie,
            8 + rest as u32,
        );
        frame.extend_from_slice(&(offset + at).to_be_bytes());
        pieces.push(Bytes::from(std::mem::take(&mut frame)));
        pieces.push(data.slice(at as usize..));
    }
    if !frame.is_empty() {
        pieces.push(Bytes::from(frame));
    }
    pieces
}

/// Adjacent runs of the same kind joined.
fn merged(runs: Vec<(u64, bool)>) -> Vec<(u64, bool)> {
    let mut out: Vec<(u64, bool)> = Vec::with_capacity(runs.len());
    for (len, zero) in runs {
        match out.last_mut() {
            Some((l, z)) if *z == zero => *l += len,
            _ if len > 0 => out.push((len, zero)),
            _ => {}
        }
    }
    out
}

pub(super) fn block_status_reply(
    export: &Export,
    cookie: u64,
    offset: u64,
    length: u32,
    flags: u16,
) -> Vec<u8> {
    let mut runs = merged(export.source.extents(offset, length as u64));
    if flags & CMD_FLAG_REQ_ONE != 0 {
        runs.truncate(1);
    }
    let mut payload = ALLOCATION_ID.to_be_bytes().to_vec();
    let mut at = 0u64;
    for (len, zero) in runs {
        let len = len.min(length as u64 - at);
        if len == 0 {
            break;
        }
        let state = if zero { STATE_HOLE | STATE_ZERO } else { 0 };
        payload.extend_from_slice(&(len as u32).to_be_bytes());
        payload.extend_from_slice(&state.to_be_bytes());
        at += len;
    }
    if at == 0 {
        // Never an empty answer: the whole range as data.
        payload.extend_from_slice(&length.to_be_bytes());
        payload.extend_from_slice(&0u32.to_be_bytes());
    }
    let mut out = Vec::with_capacity(20 + payload.len());
    chunk_header(
        &mut out,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        cookie,
        payload.len() as u32,
    );
    out.extend_from_slice(&payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_and_empty_runs_go() {
        assert_eq!(
            merged(vec![(1, true), (0, false), (2, true), (3, false)]),
            vec![(3, true), (3, false)]
        );
    }
}
