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
