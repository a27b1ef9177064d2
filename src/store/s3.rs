//! An S3-compatible object store (Ceph RGW, MinIO, AWS S3, Swift's s3api),
//! through reqwest and `rusty-s3` (sans-IO: it signs URLs and parses the
//! XML answers; README "The S3 store" says why not `aws-sdk-s3`).
//!
//! * **Buckets.** Ekko's container `<[swift] container_prefix><project id>`
//!   is a bucket of the same name, created on first write. S3 bucket names
//!   are stricter than container names (3 to 63 characters of `a-z`, `0-9`,
//!   `-` and `.`, starting and ending with a letter or digit): a container
//!   that breaks them is refused as `InvalidName`, never renamed, so that
//!   `containers()` gives back exactly the names that were written.
//! * **Signing.** Every request carries a SigV4 query signature made just
//!   before it is sent (valid [`SIGNATURE_TTL`]), and `UNSIGNED-PAYLOAD`:
//!   no request checksum is sent, which every S3 implementation accepts.
//!   Signed URLs are credentials: errors print them without the URL.
//! * **Retries.** Connection errors, timeouts, 5xx, 429 and answers whose
//!   body broke off are retried with exponential back-off and jitter
//!   (`[s3] max_retries`); each retry is signed again.
//! * **Writes.** An object up to `[s3] multipart_threshold` is one PUT (S3
//!   makes it visible only once complete); a larger one is a multipart
//!   upload of `multipart_part_size` parts, each retried on its own, made
//!   visible by CompleteMultipartUpload and aborted on any failure, so a
//!   partial object never appears. `put_stream` holds at most the threshold
//!   (then one part) in memory.
//! * **Deletes.** S3 answers 204 for a missing key; the trait's `NotFound`
//!   comes from a HEAD first.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::{
    check_container, check_object, content_length, content_range_size, empty_range, http_date,
    not_found, ranged_body, retry_delay, retryable, unavailable, unsatisfiable, ByteStream,
    ObjectMeta, ObjectStore, StoreError, StoreResult,
};
use crate::config::{S3Options, S3UrlStyle};

/// How long a signature stays valid: requests are signed just before they
/// are sent, so this covers clock skew, not the transfer.
const SIGNATURE_TTL: Duration = Duration::from_secs(300);
/// S3's smallest part (all but the last) and most parts per upload.
const MIN_PART: u64 = 5 << 20;
const MAX_PARTS: usize = 10_000;

pub struct S3Store {
    http: reqwest::Client,
    endpoint: url::Url,
    style: UrlStyle,
    region: String,
    credentials: Credentials,
    multipart_threshold: usize,
    part_size: usize,
    max_retries: u32,
    /// Buckets known to exist, so a PUT does not first ask.
    buckets: Mutex<HashSet<String>>,
}

/// A whole answer: its status, headers and body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    /// "S3 answered 403 (SignatureDoesNotMatch)".
    fn describe(&self) -> String {
        match error_code(&self.body) {
            Some(code) => format!("S3 answered {} ({code})", self.status),
            None => format!("S3 answered {}", self.status),
        }
    }
}

/// The `<Code>` of an S3 error document.
fn error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let doc = roxmltree::Document::parse(text).ok()?;
    let root = doc.root_element();
    if root.tag_name().name() != "Error" {
        return None;
    }
    root.children()
        .find(|n| n.tag_name().name() == "Code")
        .and_then(|n| n.text())
        .map(str::to_string)
}

/// A container name S3 accepts as a bucket name (the rules of
/// docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html that
/// every S3 implementation enforces).
pub fn check_bucket(container: &str) -> StoreResult<()> {
    check_container(container)?;
    let bytes = container.as_bytes();
    let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ok = (3..=63).contains(&bytes.len())
        && edge_ok(bytes[0])
        && edge_ok(bytes[bytes.len() - 1])
        && bytes.iter().all(|&b| edge_ok(b) || b == b'-' || b == b'.')
        && !container.contains("..")
        && container.parse::<std::net::Ipv4Addr>().is_err();
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName(format!(
            "{container} (not a valid S3 bucket name: 3 to 63 of a-z, 0-9, '-', '.')"
        )))
    }
}

/// A transport error with its causes (TLS, DNS, connection) and without
/// its URL (a signed URL is a credential).
fn transport(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        out = format!("{out}: {c}");
        cause = c.source();
    }
    out
}

impl S3Store {
    pub fn new(opts: &S3Options) -> StoreResult<S3Store> {
        let bad = |what: String| unavailable(format!("[s3] {what}"));
        let mut endpoint = url::Url::parse(opts.endpoint.trim())
            .map_err(|e| bad(format!("endpoint {:?}: {e}", opts.endpoint)))?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host_str().is_none() {
            return Err(bad(format!(
                "endpoint {:?} is not an http(s) URL",
                opts.endpoint
            )));
        }
        // The service's root, not a bucket's URL: under a bucket's path,
        // "create bucket" would write an object into it and every project
        // would share that one bucket.
        if !matches!(endpoint.path(), "" | "/") || endpoint.query().is_some() {
            return Err(bad(format!(
                "endpoint {:?} must be the S3 service's root URL (no path: buckets are named by Ekko)",
                opts.endpoint
            )));
        }
        endpoint.set_path("/");
        if opts.access_key.is_empty() || opts.secret_key.expose().is_empty() {
            return Err(bad("access_key and secret_key are required".into()));
        }
        let part_size = opts.multipart_part_size.bytes();
        if part_size < MIN_PART {
            return Err(bad(format!(
                "multipart_part_size {part_size} is below S3's 5M minimum"
            )));
        }
        crate::tls::install_crypto_provider();
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(opts.timeout.clamp(1, 10)))
            .read_timeout(Duration::from_secs(opts.timeout.max(1)));
        if !opts.cafile.is_empty() {
            let pem = std::fs::read(&opts.cafile)
                .map_err(|e| bad(format!("cannot read cafile {}: {e}", opts.cafile)))?;
            // Parsed now: a file without a certificate is an error here,
            // not a silently ignored trust anchor.
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| bad(format!("cafile {}: {e}", opts.cafile)))?;
            if certs.is_empty() {
                return Err(bad(format!(
                    "cafile {}: no PEM certificate in it",
                    opts.cafile
                )));
            }
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        Ok(S3Store {
            http: http.build().map_err(|e| bad(format!("HTTP client: {e}")))?,
            endpoint,
            style: match opts.url_style {
                S3UrlStyle::Path => UrlStyle::Path,
                S3UrlStyle::VirtualHost => UrlStyle::VirtualHost,
            },
            region: opts.region.clone(),
            credentials: Credentials::new(opts.access_key.clone(), opts.secret_key.expose()),
            multipart_threshold: usize::try_from(opts.multipart_threshold.bytes().max(MIN_PART))
                .unwrap_or(usize::MAX),
            part_size: usize::try_from(part_size).unwrap_or(usize::MAX),
            max_retries: opts.max_retries,
            buckets: Mutex::new(HashSet::new()),
        })
    }

    fn bucket(&self, container: &str) -> StoreResult<Bucket> {
        check_bucket(container)?;
        Bucket::new(
            self.endpoint.clone(),
            self.style,
            container.to_string(),
            self.region.clone(),
        )
        .map_err(|e| unavailable(format!("bucket {container}: {e}")))
    }

    /// Send a request (built and signed anew for every attempt), retrying
    /// what may succeed on a second try. Returns the first answer that is
    /// not retryable, its body not yet read, or the last error.
    async fn send(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> StoreResult<reqwest::Response> {
        let mut attempt = 0u32;
        loop {
            let why = match build().send().await {
                Ok(resp) if !retryable(resp.status()) => return Ok(resp),
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.bytes().await.unwrap_or_default();
                    Answer {
                        status,
                        headers: HeaderMap::new(),
                        body,
                    }
                    .describe()
                }
                Err(e) => transport(e),
            };
            attempt += 1;
            if attempt > self.max_retries {
                return Err(unavailable(format!(
                    "{what}: {why} (after {attempt} attempts)"
                )));
            }
            tracing::debug!(what, why, attempt, "retrying an S3 request");
            tokio::time::sleep(retry_delay(attempt)).await;
        }
    }

    /// [`Self::send`], and the whole body read; a body that breaks off is
    /// asked for again.
    async fn call(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> StoreResult<Answer> {
        let mut attempt = 0u32;
        loop {
            let resp = self.send(what, &build).await?;
            let (status, headers) = (resp.status(), resp.headers().clone());
            match resp.bytes().await {
                Ok(body) => {
                    return Ok(Answer {
                        status,
                        headers,
                        body,
                    })
                }
                Err(e) if attempt < self.max_retries => {
                    attempt += 1;
                    tracing::debug!(what, why = transport(e), attempt, "answer broke off");
                    tokio::time::sleep(retry_delay(attempt)).await;
                }
                Err(e) => return Err(unavailable(format!("{what}: {}", transport(e)))),
            }
        }
    }

    async fn ensure_bucket(&self, bucket: &Bucket) -> StoreResult<()> {
        let name = bucket.name();
        let known = self
            .buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name);
        if known {
            return Ok(());
        }
        // Asked first: keys without CreateBucket (buckets made beforehand)
        // work, and an existing bucket's settings are never touched.
        let what = format!("HEAD bucket {name}");
        let head = self
            .call(&what, || {
                self.http.head(
                    bucket
                        .head_bucket(Some(&self.credentials))
                        .sign(SIGNATURE_TTL),
                )
            })
            .await?;
        match head.status {
            s if s.is_success() => {
                self.remember_bucket(name);
                return Ok(());
            }
            StatusCode::NOT_FOUND => {}
            _ => return Err(unavailable(format!("{what}: {}", head.describe()))),
        }
        // Outside us-east-1 S3 wants the region named in the body.
        let body = if self.region == "us-east-1" || self.region.is_empty() {
            String::new()
        } else {
            format!(
                "<CreateBucketConfiguration><LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                self.region
            )
        };
        let what = format!("create bucket {name}");
        let answer = self
            .call(&what, || {
                let url = bucket.create_bucket(&self.credentials).sign(SIGNATURE_TTL);
                self.http.put(url).body(body.clone())
            })
            .await?;
        let ours = answer.status == StatusCode::CONFLICT
            && error_code(&answer.body).as_deref() == Some("BucketAlreadyOwnedByYou");
        if !answer.status.is_success() && !ours {
            return Err(unavailable(format!("{what}: {}", answer.describe())));
        }
        tracing::debug!(bucket = name, "bucket ready");
        self.remember_bucket(name);
        Ok(())
    }

    fn remember_bucket(&self, name: &str) {
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string());
    }

    fn forget_bucket(&self, name: &str) {
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// PUT one whole object, creating its bucket on the way (again, once,
    /// if it went away meanwhile).
    async fn put_single(&self, bucket: &Bucket, name: &str, body: Bytes) -> StoreResult<()> {
        let what = format!("PUT {}/{name}", bucket.name());
        for first in [true, false] {
            self.ensure_bucket(bucket).await?;
            let answer = self
                .call(&what, || {
                    let url = bucket
                        .put_object(Some(&self.credentials), name)
                        .sign(SIGNATURE_TTL);
                    self.http
                        .put(url)
                        .header("Content-Type", "application/octet-stream")
                        .body(body.clone())
                })
                .await?;
            match answer.status {
                s if s.is_success() => return Ok(()),
                StatusCode::NOT_FOUND if first => self.forget_bucket(bucket.name()),
                _ => return Err(unavailable(format!("{what}: {}", answer.describe()))),
            }
        }
        Err(unavailable(format!(
            "{what}: the bucket keeps disappearing"
        )))
    }

    /// GET an object or a range of it, the body read whole.
    async fn fetch(
        &self,
        container: &str,
        name: &str,
        range: Option<(u64, u64)>,
    ) -> StoreResult<Answer> {
        check_object(container, name)?;
        let bucket = self.bucket(container)?;
        let what = format!("GET {container}/{name}");
        let answer = self
            .call(&what, || {
                let url = bucket
                    .get_object(Some(&self.credentials), name)
                    .sign(SIGNATURE_TTL);
                let mut r = self.http.get(url);
                if let Some((off, len)) = range {
                    r = r.header("Range", format!("bytes={off}-{}", off + len - 1));
                }
                r
            })
            .await?;
        match answer.status {
            s if s.is_success() => Ok(answer),
            StatusCode::NOT_FOUND => Err(not_found(container, name)),
            StatusCode::RANGE_NOT_SATISFIABLE => {
                Err(unsatisfiable(self, container, name, range.unwrap_or((0, 0))).await)
            }
            _ => Err(unavailable(format!("{what}: {}", answer.describe()))),
        }
    }
}

mod listing;
mod multipart;

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, container: &str, name: &str, body: Bytes) -> StoreResult<()> {
        check_object(container, name)?;
        let bucket = self.bucket(container)?;
        if body.len() <= self.multipart_threshold {
            return self.put_single(&bucket, name, body).await;
        }
        let parts = body.len().div_ceil(self.part_size);
        let mut upload = self.start_upload(&bucket, name, parts).await?;
        let mut offset = 0;
        while offset < body.len() {
            let end = (offset + self.part_size).min(body.len());
            if let Err(e) = self.upload_part(&mut upload, body.slice(offset..end)).await {
                self.abort_upload(&upload).await;
                return Err(e);
            }
            offset = end;
        }
        self.complete_upload(&upload, body.len() as u64).await
    }

    async fn put_stream(
        &self,
        container: &str,
        name: &str,
        mut body: ByteStream,
    ) -> StoreResult<u64> {
        check_object(container, name)?;
        let bucket = self.bucket(container)?;
        let mut buf = BytesMut::new();
        let mut size = 0u64;
        let mut upload = None;
        while let Some(part) = body.next().await {
            let part = match part {
                Ok(part) => part,
                Err(e) => {
                    if let Some(upload) = &upload {
                        self.abort_upload(upload).await;
                    }
                    return Err(e);
                }
            };
            size += part.len() as u64;
            buf.extend_from_slice(&part);
            if upload.is_none() && buf.len() > self.multipart_threshold {
                upload = Some(self.start_upload(&bucket, name, MAX_PARTS).await?);
            }
            if let Some(up) = upload.as_mut() {
                while buf.len() >= self.part_size {
                    let chunk = buf.split_to(self.part_size).freeze();
                    if let Err(e) = self.upload_part(up, chunk).await {
                        self.abort_upload(up).await;
                        return Err(e);
                    }
                }
            }
        }
        match upload {
            None => self.put_single(&bucket, name, buf.freeze()).await?,
            Some(mut up) => {
                if !buf.is_empty() {
                    if let Err(e) = self.upload_part(&mut up, buf.freeze()).await {
                        self.abort_upload(&up).await;
                        return Err(e);
                    }
                }
                self.complete_upload(&up, size).await?;
            }
        }
        Ok(size)
    }

    async fn get(&self, container: &str, name: &str) -> StoreResult<Bytes> {
        Ok(self.fetch(container, name, None).await?.body)
    }

    async fn get_range(
        &self,
        container: &str,
        name: &str,
        offset: u64,
        length: u64,
    ) -> StoreResult<Bytes> {
        if length == 0 {
            return empty_range(self, container, name, offset).await;
        }
        let answer = self.fetch(container, name, Some((offset, length))).await?;
        let partial = answer.status == StatusCode::PARTIAL_CONTENT;
        let size = content_range_size(&answer.headers);
        ranged_body(
            (container, name),
            (offset, length),
            partial,
            size,
            answer.body,
        )
    }

    async fn get_stream(&self, container: &str, name: &str) -> StoreResult<ByteStream> {
        check_object(container, name)?;
        let bucket = self.bucket(container)?;
        let what = format!("GET {container}/{name}");
        let resp = self
            .send(&what, || {
                let url = bucket
                    .get_object(Some(&self.credentials), name)
                    .sign(SIGNATURE_TTL);
                self.http.get(url)
            })
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(resp
                .bytes_stream()
                .map_err(move |e| unavailable(format!("{what}: {}", transport(e))))
                .boxed()),
            StatusCode::NOT_FOUND => Err(not_found(container, name)),
            s => Err(unavailable(format!("{what}: S3 answered {s}"))),
        }
    }

    async fn head(&self, container: &str, name: &str) -> StoreResult<ObjectMeta> {
        check_object(container, name)?;
        let bucket = self.bucket(container)?;
        let what = format!("HEAD {container}/{name}");
        let answer = self
            .call(&what, || {
                let url = bucket
                    .head_object(Some(&self.credentials), name)
                    .sign(SIGNATURE_TTL);
                self.http.head(url)
            })
            .await?;
        match answer.status {
            s if s.is_success() => Ok(ObjectMeta {
                name: name.to_string(),
                size: content_length(&answer.headers, &what)?,
                last_modified: http_date(&answer.headers, "Last-Modified"),
            }),
            StatusCode::NOT_FOUND => Err(not_found(container, name)),
            _ => Err(unavailable(format!("{what}: {}", answer.describe()))),
        }
    }

    async fn list(&self, container: &str, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        let bucket = self.bucket(container)?;
        self.list_objects(&bucket, prefix).await
    }

    async fn delete(&self, container: &str, name: &str) -> StoreResult<()> {
        // S3 deletes a missing key without complaint: ask first.
        self.head(container, name).await?;
        let bucket = self.bucket(container)?;
        let what = format!("DELETE {container}/{name}");
        let answer = self
            .call(&what, || {
                let url = bucket
                    .delete_object(Some(&self.credentials), name)
                    .sign(SIGNATURE_TTL);
                self.http.delete(url)
            })
            .await?;
        match answer.status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(not_found(container, name)),
            _ => Err(unavailable(format!("{what}: {}", answer.describe()))),
        }
    }

    async fn containers(&self, prefix: &str) -> StoreResult<Vec<String>> {
        self.list_buckets(prefix).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        for ok in [
            "ekko-0123abcd",
            "abc",
            "a.b-c",
            &format!("x{}", "0".repeat(62)),
        ] {
            assert!(check_bucket(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "Ekko-x",
            "ekko_x",
            "-ekko",
            "ekko-",
            "a..b",
            "192.168.1.2",
            "ekko-x+segments",
            &"a".repeat(64),
        ] {
            assert!(check_bucket(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_codes_and_addressing() {
        let body =
            b"<?xml version='1.0'?><Error><Code>NoSuchBucket</Code><Message>x</Message></Error>";
        assert_eq!(error_code(body).as_deref(), Some("NoSuchBucket"));
        assert_eq!(error_code(b"<ListBucketResult/>"), None);
        assert_eq!(error_code(b"not xml"), None);

        let mut opts = S3Options {
            endpoint: "http://127.0.0.1:8080/mybucket".into(),
            access_key: "AK".into(),
            secret_key: crate::config::Secret("SK".into()),
            ..S3Options::default()
        };
        // A bucket's URL is not a service's: every project would share it.
        let refused = S3Store::new(&opts).err().expect("a path is refused");
        assert!(refused.to_string().contains("root URL"), "{refused}");
        opts.endpoint = "http://127.0.0.1:8080".into();
        let store = S3Store::new(&opts).unwrap();
        let url = store
            .bucket("ekko-p1")
            .unwrap()
            .object_url("segments/00/a")
            .unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/ekko-p1/segments/00/a");
        opts.cafile = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml").into();
        let refused = S3Store::new(&opts).err().expect("no certificate");
        assert!(refused.to_string().contains("cafile"), "{refused}");
        opts.cafile = String::new();
        opts.endpoint = "https://s3.example.net".into();
        opts.url_style = S3UrlStyle::VirtualHost;
        let store = S3Store::new(&opts).unwrap();
        let url = store.bucket("ekko-p1").unwrap().object_url("m").unwrap();
        assert_eq!(url.as_str(), "https://ekko-p1.s3.example.net/m");
        // The secret never shows.
        assert!(!format!("{opts:?}").contains("SK\""));
        opts.multipart_part_size = crate::config::ByteSize::mib(1);
        assert!(S3Store::new(&opts).is_err());
    }
}
