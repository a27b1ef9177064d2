//! A restore into a Glance image: the disk is streamed to Glance in one
//! upload, in disk order, as it is read from the store. Nothing touches a
//! local disk: chunks fetched out of order wait in a bounded buffer
//! (`[glance] stream_buffer`; the walk admits a window only when the
//! stream has room for it, see [`RestoreTarget::admit`]), zero chunks are
//! sent as zeros (raw) or left unallocated (qcow2, laid out ahead from the
//! map's allocation by [`super::qcow2_stream`]).
//!
//! The image record is created and, when the restore fails, deleted by the
//! controller (it holds the tenant's token for that); this side only
//! uploads, and abandoning it drops the upload.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::qcow2_stream::{Allocation, Qcow2Layout};
use super::restore::{RestoreTarget, TargetFormat};
use super::EngineError;
use crate::glance::{Glance, GlanceError};
use crate::index::positions;

/// Where the data goes: one image of one Glance, and the token to use.
pub struct ImageUpload {
    pub glance: Arc<Glance>,
    pub url: String,
    pub image_id: String,
    pub user_token: String,
    /// Bytes per second the upload may send; 0: unlimited.
    pub rate_limit: u64,
    /// Glance not taking data for this long fails the upload.
    pub idle_timeout: std::time::Duration,
}

/// How the stream encodes the disk.
enum Encoding {
    /// Every byte of the disk; zero chunks as zeros.
    Raw(Allocation),
    /// Metadata first, then the data clusters of the allocated chunks.
    Qcow2(Arc<Qcow2Layout>),
}

impl Encoding {
    fn holds_data(&self, pos: u64) -> bool {
        match self {
            Encoding::Raw(a) => a.is_set(pos),
            Encoding::Qcow2(l) => l.stream_len(pos) > 0,
        }
    }
}

/// What the walk hands over and the stream takes, in disk order.
#[derive(Default)]
struct Handover {
    /// Restored chunks not yet sent, by position.
    chunks: BTreeMap<u64, Bytes>,
    /// Why the stream stopped early, if it did.
    failed: Option<String>,
}

struct Shared {
    handover: Mutex<Handover>,
    /// A chunk arrived (or the walk gave up).
    arrived: Notify,
    /// Bytes of the disk the stream has sent (a watch: `admit` waits on it).
    sent: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Handover> {
        self.handover.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A restore streaming into a Glance image; see the module.
pub struct ImageTarget {
    image_id: String,
    shared: Arc<Shared>,
    chunk_size: u64,
    buffer: u64,
    /// The upload's outcome.
    outcome: Mutex<Option<oneshot::Receiver<Result<(), String>>>>,
    upload: tokio::task::JoinHandle<()>,
    emitter: tokio::task::JoinHandle<()>,
}

/// Zeros sent for zero chunks of a raw image, a slice at a time.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

impl ImageTarget {
    /// Start the upload of a disk of `disk_size` bytes cut in `chunk_size`
    /// chunks, `allocation` saying which hold data. The stream waits for
    /// the walk's chunks; `buffer` bounds what it holds.
    pub fn start(
        upload: ImageUpload,
        format: TargetFormat,
        disk_size: u64,
        chunk_size: u64,
        allocation: Allocation,
        buffer: u64,
    ) -> Result<ImageTarget, EngineError> {
        let encoding = match format {
            TargetFormat::Raw => Encoding::Raw(allocation),
            TargetFormat::Qcow2 => Encoding::Qcow2(Arc::new(
                Qcow2Layout::new(disk_size, chunk_size, allocation)
                    .map_err(|e| EngineError::Other(format!("qcow2 layout: {e}")))?,
            )),
        };
        let size = match &encoding {
            Encoding::Raw(_) => disk_size,
            Encoding::Qcow2(l) => l.file_size(),
        };
        let shared = Arc::new(Shared {
            handover: Mutex::new(Handover::default()),
            arrived: Notify::new(),
            sent: watch::channel(0).0,
        });
        // A few blocks in flight between the emitter and the HTTP body.
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let paced = Paced {
            tx,
            idle: upload.idle_timeout,
            rate: upload.rate_limit,
            sent: 0,
            since: tokio::time::Instant::now(),
        };
        let emitter = tokio::spawn(emit(shared.clone(), encoding, disk_size, chunk_size, paced));
        let (done_tx, done_rx) = oneshot::channel();
        let body = reqwest::Body::wrap_stream(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
        let ImageUpload {
            glance,
            url,
            image_id,
            user_token,
            ..
        } = upload;
        let id = image_id.clone();
        let up_shared = shared.clone();
        let upload = tokio::spawn(async move {
            let result = glance
                .upload(&url, &user_token, &id, size, body)
                .await
                .map_err(|e| match e {
                    GlanceError::Refused { status: 413, message } => {
                        format!("the image service refused the data (over its size or quota limit): {message}")
                    }
                    other => other.to_string(),
                });
            if let Err(why) = &result {
                // The walk stops at its next chunk or window.
                up_shared.lock().failed.get_or_insert_with(|| why.clone());
                up_shared.arrived.notify_one();
                up_shared.sent.send_modify(|_| {});
            }
            let _ = done_tx.send(result);
        });
        tracing::info!(image = %image_id, size, format = %format.as_str(), "image upload started");
        Ok(ImageTarget {
            image_id,
            shared,
            chunk_size,
            // The walk admits whole map leaves: two fit, whatever is asked.
            buffer: buffer.max(2 * chunk_size * crate::format::INDEX_FANOUT as u64),
            outcome: Mutex::new(Some(done_rx)),
            upload,
            emitter,
        })
    }
}

/// Send the disk in order: the layout's metadata, then per position the
/// restored chunk (waiting for it) or, in a raw image, zeros.
async fn emit(
    shared: Arc<Shared>,
    encoding: Encoding,
    disk_size: u64,
    chunk_size: u64,
    mut tx: Paced,
) {
    let stop = |why: String| {
        shared.lock().failed.get_or_insert(why);
        shared.sent.send_modify(|_| {});
    };
    if let Encoding::Qcow2(layout) = &encoding {
        for block in layout.metadata() {
            if tx.send(Ok(Bytes::from(block))).await.is_err() {
                return stop("the upload stopped".into());
            }
        }
    }
    for pos in 0..positions(disk_size, chunk_size) {
        let len = chunk_size.min(disk_size - pos * chunk_size);
        if encoding.holds_data(pos) {
            let chunk = loop {
                let notified = shared.arrived.notified();
                let taken = {
                    let mut h = shared.lock();
                    match &h.failed {
                        Some(why) => Err(why.clone()),
                        None => Ok(h.chunks.remove(&pos)),
                    }
                };
                match taken {
                    Ok(Some(c)) => break c,
                    Ok(None) => notified.await,
                    Err(why) => {
                        let _ = tx.send(Err(std::io::Error::other(why))).await;
                        return;
                    }
                }
            };
            if chunk.len() as u64 != len {
                let why = format!(
                    "chunk {pos}: {} bytes restored, {len} expected",
                    chunk.len()
                );
                let _ = tx.send(Err(std::io::Error::other(why.clone()))).await;
                return stop(why);
            }
            if tx.send(Ok(chunk)).await.is_err() {
                return stop("the upload stopped".into());
            }
            // A qcow2's last cluster is whole.
            if let Encoding::Qcow2(layout) = &encoding {
                let pad = layout.stream_len(pos).saturating_sub(len);
                if pad > 0 && send_zeros(&mut tx, pad).await.is_err() {
                    return stop("the upload stopped".into());
                }
            }
        } else if matches!(encoding, Encoding::Raw(_)) && send_zeros(&mut tx, len).await.is_err() {
            return stop("the upload stopped".into());
        }
        shared.sent.send_replace(pos * chunk_size + len);
    }
}

/// The upload's side of the body, at most `rate` bytes a second.
struct Paced {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    idle: std::time::Duration,
    rate: u64,
    sent: u64,
    since: tokio::time::Instant,
}

impl Paced {
    async fn send(&mut self, item: Result<Bytes, std::io::Error>) -> Result<(), ()> {
        let n = item.as_ref().map_or(0, |b| b.len() as u64);
        // A Glance that stops reading (hung, not closed) ends the upload.
        match tokio::time::timeout(self.idle, self.tx.send(item)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return Err(()),
        }
        self.sent += n;
        if self.rate > 0 {
            let due = self.since
                + std::time::Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
            tokio::time::sleep_until(due).await;
        }
        Ok(())
    }
}

async fn send_zeros(tx: &mut Paced, mut n: u64) -> Result<(), ()> {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        tx.send(Ok(Bytes::from_static(&ZEROS[..k]))).await?;
        n -= k as u64;
    }
    Ok(())
}

#[async_trait::async_trait]
impl RestoreTarget for ImageTarget {
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut h = self.shared.lock();
        if let Some(why) = &h.failed {
            return Err(std::io::Error::other(why.clone()));
        }
        // Offsets are chunk starts (the walk writes whole chunks).
        h.chunks
            .insert(offset / self.chunk_size, Bytes::copy_from_slice(data));
        drop(h);
        self.shared.arrived.notify_one();
        Ok(())
    }

    fn stream_buffer(&self) -> Option<u64> {
        Some(self.buffer)
    }

    async fn admit(&self, end: u64) -> Result<(), EngineError> {
        let mut sent = self.shared.sent.subscribe();
        loop {
            if let Some(why) = self.shared.lock().failed.clone() {
                return Err(EngineError::Other(why));
            }
            if end <= sent.borrow_and_update().saturating_add(self.buffer) {
                return Ok(());
            }
            if sent.changed().await.is_err() {
                return Err(EngineError::Other("the image stream ended".into()));
            }
        }
    }

    async fn finish(&self) -> Result<(), EngineError> {
        let rx = self
            .outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(rx) = rx else {
            return Err(EngineError::Other("the upload was already awaited".into()));
        };
        match rx.await {
            Ok(Ok(())) => {
                tracing::info!(image = %self.image_id, "image uploaded");
                Ok(())
            }
            Ok(Err(why)) => Err(EngineError::Other(format!(
                "image {}: {why}",
                self.image_id
            ))),
            Err(_) => Err(EngineError::Other(format!(
                "image {}: the upload ended without an answer",
                self.image_id
            ))),
        }
    }

    fn discard(&self) {
        // Dropping the body ends the request: Glance gives up the data;
        // the controller deletes the image record.
        self.shared
            .lock()
            .failed
            .get_or_insert_with(|| "abandoned".into());
        self.shared.arrived.notify_one();
        self.emitter.abort();
        self.upload.abort();
    }

    fn describe(&self) -> String {
        format!("image {}", self.image_id)
    }
}
