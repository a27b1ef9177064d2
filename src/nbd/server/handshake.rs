//! The server's side of the fixed newstyle handshake: options until
//! `NBD_OPT_GO` (or the old `NBD_OPT_EXPORT_NAME`), each answered or
//! refused with the error the protocol names, never by closing on a
//! well-formed request.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Export;
use crate::nbd::protocol::*;

/// Option data larger than this is refused unread (the longest
/// legitimate option is a few names).
const MAX_OPTION: u32 = 64 << 10;
/// The only meta context served, and the id it gets.
pub(super) const ALLOCATION_ID: u32 = 1;

/// What the client chose.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Negotiated {
    pub structured: bool,
    pub allocation: bool,
}

fn option_reply(opt: u32, typ: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&opt.to_be_bytes());
    out.extend_from_slice(&typ.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Reads length-prefixed fields of option data; `None` once it runs short.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(be_u16)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(be_u32)
    }
    fn string(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// `NBD_OPT_INFO`/`GO` data: the export name and the info types asked for.
fn parse_go(data: &[u8]) -> Option<&[u8]> {
    let mut f = Fields(data);
    let name = f.string()?;
    let n = f.u16()?;
    for _ in 0..n {
        f.u16()?;
    }
    f.done().then_some(name)
}

/// Meta context option data: the export name and the queries.
fn parse_meta(data: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    let mut f = Fields(data);
    let name = f.string()?;
    let n = f.u32()?;
    let mut queries = Vec::new();
    for _ in 0..n {
        queries.push(f.string()?);
    }
    f.done().then_some((name, queries))
}

/// Where a connection stands with TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tls {
    /// The export offers none.
    Off,
    /// The export requires it and the client has not upgraded yet: only
    /// `NBD_OPT_STARTTLS` and `NBD_OPT_ABORT` are answered.
    Required,
    /// The connection is upgraded.
    Done,
}

/// How option haggling ended.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Transmission starts.
    Go(Negotiated),
    /// The client asked for TLS and got the ack: upgrade, then haggle on.
    StartTls,
    /// The client aborted or broke the protocol: close.
    Close,
}

/// The server's greeting and the client's flags; `Ok(None)` when the
/// client sent flags the server does not know (then it closes), else
/// whether the client dropped the zero padding.
pub(super) async fn hello<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
) -> std::io::Result<Option<bool>> {
    let mut hello = NBDMAGIC.to_vec();
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello).await?;
    let client = s.read_u32().await?;
    // The protocol: a server that does not know a client flag closes.
    if client & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        tracing::debug!(flags = client, "unknown client flags");
        return Ok(None);
    }
    Ok(Some(client & CLIENT_NO_ZEROES != 0))
}

/// Answer options until the client chooses the export, asks for TLS or
/// leaves.
pub(super) async fn options<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    export: &Export,
    no_zeroes: bool,
    tls: Tls,
) -> std::io::Result<Outcome> {
    let mut state = Negotiated::default();
    loop {
        if s.read_u64().await? != IHAVEOPT {
            return Ok(Outcome::Close);
        }
        let opt = s.read_u32().await?;
        let len = s.read_u32().await?;
        if len > MAX_OPTION {
            tokio::io::copy(&mut (&mut *s).take(len as u64), &mut tokio::io::sink()).await?;
            s.write_all(&option_reply(opt, REP_ERR_TOO_BIG, b"option too long"))
                .await?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).await?;
        // Before the upgrade nothing about the export is told (the spec's
        // "TLS-only" mode); the old export-name option cannot be refused
        // with a reply, so the connection closes.
        if tls == Tls::Required && !matches!(opt, OPT_STARTTLS | OPT_ABORT) {
            if opt == OPT_EXPORT_NAME {
                return Ok(Outcome::Close);
            }
            s.write_all(&option_reply(
                opt,
                REP_ERR_TLS_REQD,
                b"TLS required: send NBD_OPT_STARTTLS first",
            ))
            .await?;
            continue;
        }
        let reply = match opt {
            OPT_EXPORT_NAME => {
                if !export.answers_to(&data) {
                    return Ok(Outcome::Close);
                }
                let mut out = export.source.size().to_be_bytes().to_vec();
                out.extend_from_slice(&export.flags(state.structured).to_be_bytes());
                if !no_zeroes {
                    out.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&out).await?;
                return Ok(Outcome::Go(state));
            }
            OPT_ABORT => {
                // The client may close without reading the ack.
                let _ = s.write_all(&option_reply(opt, REP_ACK, &[])).await;
                return Ok(Outcome::Close);
            }
            OPT_STARTTLS => match tls {
                Tls::Off => option_reply(opt, REP_ERR_UNSUP, b"this export offers no TLS"),
                Tls::Done => option_reply(opt, REP_ERR_INVALID, b"TLS is already on"),
                Tls::Required if len != 0 => {
                    option_reply(opt, REP_ERR_INVALID, b"no data expected")
                }
                Tls::Required => {
                    s.write_all(&option_reply(opt, REP_ACK, &[])).await?;
                    return Ok(Outcome::StartTls);
                }
            },
            OPT_LIST if len != 0 => option_reply(opt, REP_ERR_INVALID, b"no data expected"),
            // A secret name is not told: the client must know it.
            OPT_LIST if export.secret_name => {
                option_reply(opt, REP_ERR_UNSUP, b"exports are not listed")
            }
            OPT_LIST => {
                let mut name = (export.name.len() as u32).to_be_bytes().to_vec();
                name.extend_from_slice(export.name.as_bytes());
                let mut out = option_reply(opt, REP_SERVER, &name);
                out.extend(option_reply(opt, REP_ACK, &[]));
                out
            }
            OPT_INFO | OPT_GO => match parse_go(&data) {
                None => option_reply(opt, REP_ERR_INVALID, b"malformed request"),
                Some(name) if !export.answers_to(name) => {
                    option_reply(opt, REP_ERR_UNKNOWN, b"no such export")
                }
                Some(_) => {
                    let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                    info.extend_from_slice(&export.source.size().to_be_bytes());
                    info.extend_from_slice(&export.flags(state.structured).to_be_bytes());
                    let mut out = option_reply(opt, REP_INFO, &info);
                    let (min, preferred, max) = export.block_sizes();
                    let mut sizes = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    for v in [min, preferred, max] {
                        sizes.extend_from_slice(&v.to_be_bytes());
                    }
                    out.extend(option_reply(opt, REP_INFO, &sizes));
                    out.extend(option_reply(opt, REP_ACK, &[]));
                    if opt == OPT_GO {
                        s.write_all(&out).await?;
                        return Ok(Outcome::Go(state));
                    }
                    out
                }
            },
            OPT_STRUCTURED_REPLY if len != 0 => {
                option_reply(opt, REP_ERR_INVALID, b"no data expected")
            }
            OPT_STRUCTURED_REPLY => {
                state.structured = true;
                option_reply(opt, REP_ACK, &[])
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                meta_context(opt, &data, export, &mut state)
            }
            _ => option_reply(opt, REP_ERR_UNSUP, b"option not supported"),
        };
        s.write_all(&reply).await?;
    }
}

/// List or select meta contexts: `base:allocation` is the only one.
fn meta_context(opt: u32, data: &[u8], export: &Export, state: &mut Negotiated) -> Vec<u8> {
    let set = opt == OPT_SET_META_CONTEXT;
    if set && !state.structured {
        return option_reply(opt, REP_ERR_INVALID, b"structured replies first");
    }
    let Some((name, queries)) = parse_meta(data) else {
        return option_reply(opt, REP_ERR_INVALID, b"malformed request");
    };
    if !export.answers_to(name) {
        return option_reply(opt, REP_ERR_UNKNOWN, b"no such export");
    }
    let matched = (!set && queries.is_empty())
        || queries
            .iter()
            .any(|q| *q == BASE_ALLOCATION.as_bytes() || (!set && *q == b"base:"));
    if set {
        state.allocation = matched;
    }
    let mut out = Vec::new();
    if matched {
        let mut ctx = ALLOCATION_ID.to_be_bytes().to_vec();
        ctx.extend_from_slice(BASE_ALLOCATION.as_bytes());
        out.extend(option_reply(opt, REP_META_CONTEXT, &ctx));
    }
    out.extend(option_reply(opt, REP_ACK, &[]));
    out
}
