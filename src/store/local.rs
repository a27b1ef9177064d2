//! A directory as object store: `<root>/<container>/<name>`. Writes go to a
//! temporary file in the same directory, are fsynced, then renamed into
//! place (and the directory fsynced), so a crash leaves either the whole
//! object or nothing visible; stray temporaries are ignored by listings.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::{
    check_name, check_object, ByteStream, ObjectMeta, ObjectStore, StoreError, StoreResult,
};

const TMP_PREFIX: &str = ".tmp-";
const READ_PART: usize = 4 << 20;

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    fsync: bool,
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.to_string();
    move |source| StoreError::Io { what, source }
}

impl LocalStore {
    pub fn new(root: impl AsRef<Path>, fsync: bool) -> StoreResult<LocalStore> {
        let root = root.as_ref().to_path_buf();
        fs::create_dir_all(&root).map_err(io(root.display()))?;
        Ok(LocalStore { root, fsync })
    }

    fn path(&self, container: &str, name: &str) -> StoreResult<PathBuf> {
        check_object(container, name)?;
        Ok(self.root.join(container).join(name))
    }

    fn not_found(container: &str, name: &str) -> StoreError {
        StoreError::NotFound {
            container: container.to_string(),
            name: name.to_string(),
        }
    }

    fn open_read(&self, container: &str, name: &str) -> StoreResult<(File, u64)> {
        let path = self.path(container, name)?;
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Self::not_found(container, name),
            _ => StoreError::Io {
                what: path.display().to_string(),
                source: e,
            },
        })?;
        let size = file.metadata().map_err(io(path.display()))?.len();
        Ok((file, size))
    }

    /// Write an object from an iterator of parts, atomically.
    fn write_atomic(
        &self,
        container: &str,
        name: &str,
        parts: impl IntoIterator<Item = StoreResult<Bytes>>,
    ) -> StoreResult<u64> {
        let path = self.path(container, name)?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        fs::create_dir_all(&dir).map_err(io(dir.display()))?;
        let tmp = dir.join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4()));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io(tmp.display()))?;
            let mut size = 0u64;
            for part in parts {
                let part = part?;
                f.write_all(&part).map_err(io(tmp.display()))?;
                size += part.len() as u64;
            }
            if self.fsync {
                f.sync_all().map_err(io(tmp.display()))?;
            }
            fs::rename(&tmp, &path).map_err(io(path.display()))?;
            if self.fsync {
                File::open(&dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io(dir.display()))?;
            }
            Ok(size)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn meta(name: String, md: &fs::Metadata) -> ObjectMeta {
        let modified: DateTime<Utc> = md
            .modified()
            .map(DateTime::<Utc>::from)
            .unwrap_or_else(|_| Utc::now());
        ObjectMeta {
            name,
            size: md.len(),
            last_modified: modified,
        }
    }

    fn walk(dir: &Path, rel: &str, prefix: &str, out: &mut Vec<ObjectMeta>) -> StoreResult<()> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(dir.display())(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io(dir.display()))?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if file_name.starts_with(TMP_PREFIX) {
                continue;
            }
            let name = if rel.is_empty() {
                file_name
            } else {
                format!("{rel}/{file_name}")
            };
            let md = entry.metadata().map_err(io(entry.path().display()))?;
            if md.is_dir() {
                // Descend only where names under it can still match the prefix.
                let dir_prefix = format!("{name}/");
                if prefix.starts_with(&dir_prefix) || dir_prefix.starts_with(prefix) {
                    Self::walk(&entry.path(), &name, prefix, out)?;
                }
            } else if name.starts_with(prefix) {
                out.push(Self::meta(name, &md));
            }
        }
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> StoreResult<T> + Send + 'static,
) -> StoreResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put(&self, container: &str, name: &str, body: Bytes) -> StoreResult<()> {
        let (this, c, n) = (self.clone(), container.to_string(), name.to_string());
        blocking(move || this.write_atomic(&c, &n, [Ok(body)]).map(|_| ())).await
    }

    async fn put_stream(
        &self,
        container: &str,
        name: &str,
        mut body: ByteStream,
    ) -> StoreResult<u64> {
        // Bridge the async stream to the blocking writer through a bounded
        // channel, so memory stays flat whatever the object size.
        let (tx, rx) = std::sync::mpsc::sync_channel::<StoreResult<Bytes>>(4);
        let (this, c, n) = (self.clone(), container.to_string(), name.to_string());
        let writer = tokio::task::spawn_blocking(move || this.write_atomic(&c, &n, rx));
        while let Some(part) = body.next().await {
            let failed = part.is_err();
            if tx.send(part).is_err() || failed {
                break;
            }
        }
        drop(tx);
        writer
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }

    async fn get(&self, container: &str, name: &str) -> StoreResult<Bytes> {
        let (this, c, n) = (self.clone(), container.to_string(), name.to_string());
        blocking(move || {
            let (mut f, size) = this.open_read(&c, &n)?;
            let mut buf = Vec::with_capacity(size as usize);
            f.read_to_end(&mut buf).map_err(io(format!("{c}/{n}")))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn get_range(
        &self,
        container: &str,
        name: &str,
        offset: u64,
        length: u64,
    ) -> StoreResult<Bytes> {
        let (this, c, n) = (self.clone(), container.to_string(), name.to_string());
        blocking(move || {
            let (mut f, size) = this.open_read(&c, &n)?;
            if offset.checked_add(length).is_none_or(|end| end > size) {
                return Err(StoreError::BadRange {
                    container: c,
                    name: n,
                    offset,
                    length,
                    size,
                });
            }
            f.seek(SeekFrom::Start(offset))
                .map_err(io(format!("{c}/{n}")))?;
            let mut buf = vec![0u8; length as usize];
            f.read_exact(&mut buf).map_err(io(format!("{c}/{n}")))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn get_stream(&self, container: &str, name: &str) -> StoreResult<ByteStream> {
        let (this, c, n) = (self.clone(), container.to_string(), name.to_string());
        let (file, _) = blocking(move || this.open_read(&c, &n)).await?;
        let what = format!("{container}/{name}");
        let stream = futures::stream::unfold(Some(file), move |state| {
            let what = what.clone();
            async move {
                let mut file = state?;
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; READ_PART];
                    let n = file.read(&mut buf)?;
                    buf.truncate(n);
                    Ok::<_, std::io::Error>((file, buf))
                })
                .await;
                match read {
                    Ok(Ok((_, buf))) if buf.is_empty() => None,
                    Ok(Ok((file, buf))) => Some((Ok(Bytes::from(buf)), Some(file))),
                    Ok(Err(e)) => Some((Err(io(&what)(e)), None)),
                    Err(e) => Some((Err(StoreError::Unavailable(e.to_string())), None)),
                }
            }
        });
        Ok(stream.boxed())
    }

    async fn head(&self, container: &str, name: &str) -> StoreResult<ObjectMeta> {
        let (this, c, n) = (self.clone(), container.to_string(), name.to_string());
        blocking(move || {
            let (f, _) = this.open_read(&c, &n)?;
            let md = f.metadata().map_err(io(format!("{c}/{n}")))?;
            Ok(Self::meta(n, &md))
        })
        .await
    }

    async fn list(&self, container: &str, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        check_name(container)?;
        let (dir, p) = (self.root.join(container), prefix.to_string());
        blocking(move || {
            let mut out = Vec::new();
            Self::walk(&dir, "", &p, &mut out)?;
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, container: &str, name: &str) -> StoreResult<()> {
        let path = self.path(container, name)?;
        let (c, n) = (container.to_string(), name.to_string());
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Self::not_found(&c, &n)),
            Err(e) => Err(io(path.display())(e)),
        })
        .await
    }

    async fn containers(&self, prefix: &str) -> StoreResult<Vec<String>> {
        let (root, p) = (self.root.clone(), prefix.to_string());
        blocking(move || {
            let mut out = Vec::new();
            for e in fs::read_dir(&root).map_err(io(root.display()))? {
                let e = e.map_err(io(root.display()))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let is_dir = e.file_type().map_err(io(e.path().display()))?.is_dir();
                if is_dir && name.starts_with(&p) && check_name(&name).is_ok() {
                    out.push(name);
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }
}
