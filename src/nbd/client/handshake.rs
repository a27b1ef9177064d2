//! The fixed newstyle handshake: options, meta contexts, `NBD_OPT_GO`.

use std::collections::HashMap;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{ExportInfo, NbdError};
use crate::nbd::protocol::*;

pub(super) async fn read_exact<R: AsyncRead + Unpin>(
    r: &mut R,
    n: usize,
) -> Result<Vec<u8>, NbdError> {
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
pub(super) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
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
