//! OpenStack Swift as object store, through a thin reqwest client of our own
//! (the `openstack` crate is unmaintained, pulls a second reqwest and has
//! no Range GET; README "Why our own Swift client").
//!
//! * The account is the Ekko service user's (`AUTH_<service project>`):
//!   tenants hold no credentials to it, so they cannot touch backup data.
//!   Each project's data lives in its own container, created on first write
//!   with `[swift] storage_policy`.
//! * The service token comes from the shared [`ServiceSession`] (cached,
//!   renewed a minute before expiry, renewed at once on a 401).
//! * Every request is retried with exponential back-off and jitter on
//!   connection errors, timeouts, 5xx and 429 (`[swift] max_retries`).
//!   Writes are whole objects (segments and manifests are tens of MiB at
//!   most), so a retried PUT re-sends the same bytes and a partial write
//!   never becomes visible: Swift commits an object only once complete.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::{
    check_container, check_object, content_length, content_range_size, empty_range, http_date,
    not_found, ranged_body, retry_delay, retryable, unavailable, unsatisfiable, ByteStream,
    ObjectMeta, ObjectStore, StoreResult,
};
use crate::config::EkkoConfig;
use crate::keystone::ServiceSession;

/// Largest object `put_stream` buffers (Swift's single-object limit).
const MAX_OBJECT: usize = 5 << 30;
/// Names per listing page (Swift's default maximum).
const LIST_PAGE: usize = 10_000;

pub struct SwiftStore {
    session: Arc<ServiceSession>,
    endpoint_override: Option<String>,
    interface: String,
    region: Option<String>,
    storage_policy: Option<String>,
    max_retries: u32,
    /// Containers known to exist, so a PUT does not first ask.
    containers: Mutex<HashSet<String>>,
}

#[derive(Deserialize)]
struct Listed {
    name: String,
    #[serde(default)]
    bytes: u64,
    #[serde(default)]
    last_modified: Option<String>,
}

/// Swift's listing timestamps have no zone and are UTC.
fn parse_listed_time(s: Option<&str>) -> DateTime<Utc> {
    s.and_then(|s| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").ok())
        .map(|n| n.and_utc())
        .unwrap_or_default()
}

impl SwiftStore {
    pub fn new(config: &EkkoConfig) -> StoreResult<SwiftStore> {
        let ks = &config.keystone_authtoken;
        let session = ServiceSession::new(ks, Duration::from_secs(config.swift.timeout.max(1)))
            .map_err(|e| unavailable(format!("[swift] needs the service user: {e:#}")))?;
        Ok(SwiftStore {
            session: Arc::new(session),
            endpoint_override: config
                .swift
                .endpoint_override
                .clone()
                .filter(|s| !s.is_empty()),
            interface: ks.interface.clone(),
            region: ks.region_name.clone(),
            storage_policy: config
                .swift
                .storage_policy
                .clone()
                .filter(|s| !s.is_empty()),
            max_retries: config.swift.max_retries,
            containers: Mutex::new(HashSet::new()),
        })
    }

    /// Send a request built for (account URL, token), retrying what may
    /// succeed on a second try. Returns the first response that is not
    /// retryable (the caller reads its status) or the last error.
    async fn send(
        &self,
        what: &str,
        build: impl Fn(&str, &str) -> reqwest::RequestBuilder,
    ) -> StoreResult<reqwest::Response> {
        let mut attempt = 0u32;
        let mut renewed = false;
        loop {
            let token = self
                .session
                .token(false)
                .await
                .map_err(|e| unavailable(format!("{what}: {e}")))?;
            let account = match &self.endpoint_override {
                Some(url) => url.clone(),
                None => token
                    .endpoint("object-store", &self.interface, self.region.as_deref())
                    .ok_or_else(|| {
                        unavailable(format!(
                            "no {} object-store endpoint in the service catalog",
                            self.interface
                        ))
                    })?,
            };
            let account = account.trim_end_matches('/').to_string();
            let why = match build(&account, &token.token).send().await {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !renewed => {
                    // The token was revoked or expired early: renew once.
                    renewed = true;
                    self.session
                        .token(true)
                        .await
                        .map_err(|e| unavailable(format!("{what}: {e}")))?;
                    continue;
                }
                Ok(resp) if !retryable(resp.status()) => return Ok(resp),
                Ok(resp) => format!("Swift answered {}", resp.status()),
                Err(e) => format!("{e}"),
            };
            attempt += 1;
            if attempt > self.max_retries {
                return Err(unavailable(format!(
                    "{what}: {why} (after {} attempts)",
                    attempt
                )));
            }
            tracing::debug!(what, why, attempt, "retrying a Swift request");
            tokio::time::sleep(retry_delay(attempt)).await;
        }
    }

    fn object_url(account: &str, container: &str, name: &str) -> String {
        format!("{account}/{container}/{name}")
    }

    async fn ensure_container(&self, container: &str) -> StoreResult<()> {
        let known = self
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(container);
        if known {
            return Ok(());
        }
        let policy = self.storage_policy.clone();
        let resp = self
            .send(&format!("create container {container}"), |acct, tok| {
                let mut r = self
                    .session
                    .http()
                    .put(format!("{acct}/{container}"))
                    .header("X-Auth-Token", tok)
                    .header("Content-Length", "0");
                if let Some(p) = &policy {
                    r = r.header("X-Storage-Policy", p);
                }
                r
            })
            .await?;
        // 202: it already existed (possibly with another policy: Swift keeps
        // the first one, which is what we want for existing data).
        if !resp.status().is_success() {
            return Err(unavailable(format!(
                "create container {container}: Swift answered {}",
                resp.status()
            )));
        }
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(container.to_string());
        Ok(())
    }

    /// Fetch an object or a range of it.
    async fn fetch(
        &self,
        container: &str,
        name: &str,
        range: Option<(u64, u64)>,
    ) -> StoreResult<reqwest::Response> {
        check_object(container, name)?;
        let resp = self
            .send(&format!("GET {container}/{name}"), |acct, tok| {
                let mut r = self
                    .session
                    .http()
                    .get(Self::object_url(acct, container, name))
                    .header("X-Auth-Token", tok);
                if let Some((off, len)) = range {
                    r = r.header("Range", format!("bytes={off}-{}", off + len - 1));
                }
                r
            })
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(resp),
            StatusCode::NOT_FOUND => Err(not_found(container, name)),
            StatusCode::RANGE_NOT_SATISFIABLE => {
                Err(unsatisfiable(self, container, name, range.unwrap_or((0, 0))).await)
            }
            s => Err(unavailable(format!(
                "GET {container}/{name}: Swift answered {s}"
            ))),
        }
    }

    /// Every entry of a container (or of the account when `None`) whose
    /// name starts with `prefix`, page by page; a missing container is empty.
    async fn listing(&self, container: Option<&str>, prefix: &str) -> StoreResult<Vec<Listed>> {
        let what = match container {
            Some(c) => format!("list {c}"),
            None => "list containers".to_string(),
        };
        let mut out: Vec<Listed> = Vec::new();
        loop {
            let marker = out.last().map(|l| l.name.clone());
            let resp = self
                .send(&what, |acct, tok| {
                    let mut q: Vec<(&str, &str)> = vec![("format", "json"), ("prefix", prefix)];
                    if let Some(m) = &marker {
                        q.push(("marker", m));
                    }
                    let base = match container {
                        Some(c) => format!("{acct}/{c}"),
                        None => acct.to_string(),
                    };
                    let url = url::Url::parse_with_params(&base, &q)
                        .map(String::from)
                        .unwrap_or(base);
                    self.session.http().get(url).header("X-Auth-Token", tok)
                })
                .await?;
            match resp.status() {
                StatusCode::NO_CONTENT | StatusCode::NOT_FOUND => return Ok(out),
                s if s.is_success() => {}
                s => return Err(unavailable(format!("{what}: Swift answered {s}"))),
            }
            let page: Vec<Listed> = resp
                .json()
                .await
                .map_err(|e| unavailable(format!("{what}: {e}")))?;
            let n = page.len();
            out.extend(page);
            if n < LIST_PAGE {
                return Ok(out);
            }
        }
    }

    async fn read_body(resp: reqwest::Response, what: &str) -> StoreResult<Bytes> {
        resp.bytes()
            .await
            .map_err(|e| unavailable(format!("{what}: {e}")))
    }
}

#[async_trait]
impl ObjectStore for SwiftStore {
    async fn put(&self, container: &str, name: &str, body: Bytes) -> StoreResult<()> {
        check_object(container, name)?;
        for first in [true, false] {
            self.ensure_container(container).await?;
            let resp = self
                .send(&format!("PUT {container}/{name}"), |acct, tok| {
                    self.session
                        .http()
                        .put(Self::object_url(acct, container, name))
                        .header("X-Auth-Token", tok)
                        .header("Content-Type", "application/octet-stream")
                        .body(body.clone())
                })
                .await?;
            match resp.status() {
                s if s.is_success() => return Ok(()),
                // The container went away (deleted by an operator): forget
                // it and create it again, once.
                StatusCode::NOT_FOUND if first => {
                    self.containers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(container);
                }
                s => {
                    return Err(unavailable(format!(
                        "PUT {container}/{name}: Swift answered {s}"
                    )))
                }
            }
        }
        Err(unavailable(format!(
            "PUT {container}/{name}: the container keeps disappearing"
        )))
    }

    async fn put_stream(
        &self,
        container: &str,
        name: &str,
        mut body: ByteStream,
    ) -> StoreResult<u64> {
        // Buffered so that a retried PUT can send the bytes again.
        let mut buf = bytes::BytesMut::new();
        while let Some(part) = body.next().await {
            let part = part?;
            if buf.len() + part.len() > MAX_OBJECT {
                return Err(unavailable(format!(
                    "PUT {container}/{name}: larger than Swift's 5 GiB object limit"
                )));
            }
            buf.extend_from_slice(&part);
        }
        let size = buf.len() as u64;
        self.put(container, name, buf.freeze()).await?;
        Ok(size)
    }

    async fn get(&self, container: &str, name: &str) -> StoreResult<Bytes> {
        let resp = self.fetch(container, name, None).await?;
        Self::read_body(resp, &format!("GET {container}/{name}")).await
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
        let resp = self.fetch(container, name, Some((offset, length))).await?;
        let partial = resp.status() == StatusCode::PARTIAL_CONTENT;
        let size = content_range_size(resp.headers());
        let data = Self::read_body(resp, &format!("GET {container}/{name}")).await?;
        ranged_body((container, name), (offset, length), partial, size, data)
    }

    async fn get_stream(&self, container: &str, name: &str) -> StoreResult<ByteStream> {
        let resp = self.fetch(container, name, None).await?;
        let what = format!("GET {container}/{name}");
        Ok(resp
            .bytes_stream()
            .map_err(move |e| unavailable(format!("{what}: {e}")))
            .boxed())
    }

    async fn head(&self, container: &str, name: &str) -> StoreResult<ObjectMeta> {
        check_object(container, name)?;
        let resp = self
            .send(&format!("HEAD {container}/{name}"), |acct, tok| {
                self.session
                    .http()
                    .head(Self::object_url(acct, container, name))
                    .header("X-Auth-Token", tok)
            })
            .await?;
        match resp.status() {
            s if s.is_success() => {
                let h = resp.headers();
                Ok(ObjectMeta {
                    name: name.to_string(),
                    size: content_length(h, &format!("HEAD {container}/{name}"))?,
                    last_modified: http_date(h, "Last-Modified"),
                })
            }
            StatusCode::NOT_FOUND => Err(not_found(container, name)),
            s => Err(unavailable(format!(
                "HEAD {container}/{name}: Swift answered {s}"
            ))),
        }
    }

    async fn list(&self, container: &str, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        check_container(container)?;
        Ok(self
            .listing(Some(container), prefix)
            .await?
            .into_iter()
            .map(|l| ObjectMeta {
                last_modified: parse_listed_time(l.last_modified.as_deref()),
                name: l.name,
                size: l.bytes,
            })
            .collect())
    }

    async fn delete(&self, container: &str, name: &str) -> StoreResult<()> {
        check_object(container, name)?;
        let resp = self
            .send(&format!("DELETE {container}/{name}"), |acct, tok| {
                self.session
                    .http()
                    .request(Method::DELETE, Self::object_url(acct, container, name))
                    .header("X-Auth-Token", tok)
            })
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(not_found(container, name)),
            s => Err(unavailable(format!(
                "DELETE {container}/{name}: Swift answered {s}"
            ))),
        }
    }

    async fn containers(&self, prefix: &str) -> StoreResult<Vec<String>> {
        Ok(self
            .listing(None, prefix)
            .await?
            .into_iter()
            .map(|l| l.name)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_times_are_utc() {
        let t = parse_listed_time(Some("2026-11-26T12:34:56.123450"));
        assert_eq!(t.to_rfc3339(), "2026-11-26T12:34:56.123450+00:00");
        assert_eq!(parse_listed_time(None), DateTime::<Utc>::default());
        assert!(retryable(StatusCode::SERVICE_UNAVAILABLE));
        assert!(retryable(StatusCode::TOO_MANY_REQUESTS));
        assert!(!retryable(StatusCode::NOT_FOUND));
        assert!(retry_delay(1) >= Duration::from_millis(200));
        assert!(retry_delay(30) < Duration::from_millis(5_100));
    }
}
