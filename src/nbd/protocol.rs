//! NBD wire format (no I/O): constants, option and request encoding, reply
//! headers and block-status payloads. Big-endian throughout.

pub const NBDMAGIC: &[u8; 8] = b"NBDMAGIC";
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub const FLAG_NO_ZEROES: u16 = 2;
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1;
pub const CLIENT_NO_ZEROES: u32 = 2;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_FLAG_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

/// Transmission flags: the flags field is meaningful; the export is
/// read-only.
pub const FLAG_HAS_FLAGS: u16 = 1;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
/// Request flag of `NBD_CMD_BLOCK_STATUS`: one extent is enough.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

/// Errors a server puts in replies (the protocol's own numbering, which
/// is Linux's).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;

/// The meta context of holes and zeroes.
pub const BASE_ALLOCATION: &str = "base:allocation";

pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Request flag: reply to a read with one data chunk (no hole detection on
/// the server; the client already knows where the data is).
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// Transmission flag: the server honours `CMD_FLAG_DF`.
pub const FLAG_SEND_DF: u16 = 1 << 7;
/// Transmission flag: several connections may serve one export.
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

pub const REPLY_FLAG_DONE: u16 = 1;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;
pub const REPLY_TYPE_ERROR: u16 = REPLY_TYPE_ERROR_BIT | 1;

/// `base:allocation` flags.
pub const STATE_HOLE: u32 = 1;
pub const STATE_ZERO: u32 = 2;
/// `qemu:dirty-bitmap:*` flag.
pub const STATE_DIRTY: u32 = 1;

/// Largest request the client sends when the server names no limit.
pub const DEFAULT_MAX_REQUEST: u32 = 32 << 20;

/// A run of bytes with the same status flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub flags: u32,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// An option request: IHAVEOPT, option, length, data.
pub fn option(opt: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + data.len());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&opt.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// NBD_OPT_SET_META_CONTEXT data: export name and queries.
pub fn set_meta_context_data(export: &str, queries: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    push_str(&mut out, export);
    out.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        push_str(&mut out, q);
    }
    out
}

/// NBD_OPT_GO data: export name and the info requests (block size).
pub fn go_data(export: &str) -> Vec<u8> {
    let mut out = Vec::new();
    push_str(&mut out, export);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    out
}

/// A transmission request header (28 bytes), followed by `payload` for writes.
pub fn request(cmd: u16, flags: u16, cookie: u64, offset: u64, length: u32) -> [u8; 28] {
    let mut out = [0u8; 28];
    out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&cmd.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..24].copy_from_slice(&offset.to_be_bytes());
    out[24..28].copy_from_slice(&length.to_be_bytes());
    out
}

pub fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
pub fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
pub fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// The payload of an error chunk: errno and message.
pub fn parse_error_payload(p: &[u8]) -> (u32, String) {
    if p.len() < 6 {
        return (0, String::new());
    }
    let errno = be_u32(p);
    let len = be_u16(&p[4..]) as usize;
    let msg = p
        .get(6..6 + len)
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_default();
    (errno, msg)
}

/// A block-status chunk: context id and the extents from `start`, clipped
/// to `end`.
pub fn parse_block_status(p: &[u8], start: u64, end: u64) -> Option<(u32, Vec<Extent>)> {
    if p.len() < 4 || (p.len() - 4) % 8 != 0 {
        return None;
    }
    let id = be_u32(p);
    let mut at = start;
    let mut out = Vec::new();
    for pair in p[4..].chunks_exact(8) {
        if at >= end {
            break;
        }
        let len = (be_u32(pair) as u64).min(end - at);
        if len == 0 {
            break;
        }
        out.push(Extent {
            offset: at,
            length: len,
            flags: be_u32(&pair[4..]),
        });
        at += len;
    }
    Some((id, out))
}

/// Append extents, merging runs with equal flags.
pub fn merge_into(out: &mut Vec<Extent>, extents: impl IntoIterator<Item = Extent>) {
    for e in extents {
        match out.last_mut() {
            Some(last) if last.flags == e.flags && last.end() == e.offset => {
                last.length += e.length
            }
            _ => out.push(e),
        }
    }
}

/// The ranges of `extents` whose flags satisfy `pred`, coalesced.
pub fn ranges_where(extents: &[Extent], pred: impl Fn(u32) -> bool) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for e in extents.iter().filter(|e| pred(e.flags)) {
        match out.last_mut() {
            Some((o, l)) if *o + *l == e.offset => *l += e.length,
            _ => out.push((e.offset, e.length)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let r = request(CMD_READ, 0, 0x0102, 4096, 65536);
        assert_eq!(be_u32(&r), REQUEST_MAGIC);
        assert_eq!(be_u16(&r[6..]), CMD_READ);
        assert_eq!(be_u64(&r[8..]), 0x0102);
        assert_eq!(be_u64(&r[16..]), 4096);
        assert_eq!(be_u32(&r[24..]), 65536);
    }

    #[test]
    fn block_status_is_clipped_and_merged() {
        let mut p = 9u32.to_be_bytes().to_vec();
        for (len, flags) in [(65536u32, 1u32), (131072, 0), (1 << 20, 1)] {
            p.extend_from_slice(&len.to_be_bytes());
            p.extend_from_slice(&flags.to_be_bytes());
        }
        let (id, ext) = parse_block_status(&p, 0, 100_000).unwrap();
        assert_eq!(id, 9);
        assert_eq!(ext.len(), 2);
        assert_eq!(
            ext[1],
            Extent {
                offset: 65536,
                length: 100_000 - 65536,
                flags: 0
            }
        );
        let mut merged = vec![Extent {
            offset: 0,
            length: 10,
            flags: 1,
        }];
        merge_into(
            &mut merged,
            [
                Extent {
                    offset: 10,
                    length: 5,
                    flags: 1,
                },
                Extent {
                    offset: 15,
                    length: 5,
                    flags: 0,
                },
            ],
        );
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].length, 15);
        assert!(parse_block_status(&[0, 0, 0], 0, 1).is_none());
    }

    #[test]
    fn ranges_coalesce() {
        let e = [
            Extent {
                offset: 0,
                length: 4,
                flags: 1,
            },
            Extent {
                offset: 4,
                length: 4,
                flags: 3,
            },
            Extent {
                offset: 8,
                length: 4,
                flags: 0,
            },
            Extent {
                offset: 12,
                length: 4,
                flags: 1,
            },
        ];
        assert_eq!(ranges_where(&e, |f| f & 1 != 0), vec![(0, 8), (12, 4)]);
    }

    #[test]
    fn option_encoding() {
        let o = option(OPT_GO, &go_data("disk"));
        assert_eq!(be_u64(&o), IHAVEOPT);
        assert_eq!(be_u32(&o[8..]), OPT_GO);
        assert_eq!(be_u32(&o[12..]) as usize, o.len() - 16);
        let m = set_meta_context_data("e", &["base:allocation".into()]);
        assert_eq!(be_u32(&m), 1);
        assert_eq!(be_u32(&m[5..]), 1);
    }
}
