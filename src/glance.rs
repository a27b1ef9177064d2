//! Glance v2, as much as a restore into an image needs: create the image
//! record, upload its data as one stream, look at it, delete it.
//!
//! Every call acts in the tenant's project with the tenant's token, never
//! with Ekko's own rights: `X-Auth-Token` is the tenant's token and
//! `X-Service-Token` a token of Ekko's service user (`[keystone_authtoken]`,
//! which holds the `service` role). Glance's keystonemiddleware then
//! accepts the tenant's token even once it expired (its allow-expired path,
//! up to Keystone's `[token] allow_expired_window`), which is what lets an
//! upload outlive the request that asked for it (the pattern Nova uses
//! towards Glance and Cinder, `[service_user] send_service_user_token`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::config::GlanceOptions;
use crate::keystone::ServiceSession;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlanceError {
    /// Glance (or Keystone, for the service token) cannot be reached or
    /// answered 5xx: worth retrying later.
    #[error("the image service is unavailable: {0}")]
    Unavailable(String),
    /// Glance refused the request (4xx), with what it said.
    #[error("the image service refused: {status} {message}")]
    Refused { status: u16, message: String },
    /// No image endpoint is configured or in the catalog.
    #[error("no image service: {0}")]
    NotConfigured(String),
}

impl GlanceError {
    /// Glance's HTTP status when it refused.
    pub fn status(&self) -> Option<u16> {
        match self {
            GlanceError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An image record to create.
#[derive(Debug, Clone)]
pub struct NewImage {
    pub name: String,
    pub disk_format: String,
    pub visibility: String,
    /// GiB, rounded up (Glance's `min_disk`).
    pub min_disk: u64,
    /// Extra properties (`hw_*`, `ekko_backup_id`, …), as strings.
    pub properties: BTreeMap<String, String>,
}

/// What Glance says about an image.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub virtual_size: Option<u64>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub disk_format: Option<String>,
    #[serde(default)]
    pub visibility: Option<String>,
}

/// A Glance client acting with tenants' tokens and Ekko's service token.
pub struct Glance {
    session: Arc<ServiceSession>,
    /// No overall timeout: an upload is bounded by its restore's deadline.
    http: reqwest::Client,
    opts: GlanceOptions,
}

impl Glance {
    pub fn new(session: Arc<ServiceSession>, opts: &GlanceOptions) -> anyhow::Result<Glance> {
        crate::tls::install_crypto_provider();
        let ks = session.options();
        // No overall timeout (an upload takes as long as it takes), but a
        // Glance that stops answering mid-request is given up.
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(ks.http_connect_timeout.max(1)))
            .read_timeout(Duration::from_secs(opts.timeout.max(1)))
            .danger_accept_invalid_certs(ks.insecure);
        if let Some(ca) = &ks.cafile {
            let pem =
                std::fs::read(ca).map_err(|e| anyhow::anyhow!("cannot read cafile {ca}: {e}"))?;
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        Ok(Glance {
            session,
            http: http.build()?,
            opts: opts.clone(),
        })
    }

    /// Glance's base URL (without `/v2`): `[glance] endpoint_override`, or
    /// the catalog's `image` endpoint.
    pub async fn url(&self) -> Result<String, GlanceError> {
        if let Some(url) = self
            .opts
            .endpoint_override
            .as_deref()
            .filter(|u| !u.is_empty())
        {
            return Ok(base(url));
        }
        let token = self.service_token(false).await?;
        let ks = self.session.options();
        token
            .endpoint("image", &ks.interface, ks.region_name.as_deref())
            .map(|u| base(&u))
            .ok_or_else(|| {
                GlanceError::NotConfigured(format!(
                    "no `image` endpoint on interface {} in the catalog; set [glance] endpoint_override",
                    ks.interface
                ))
            })
    }

    async fn service_token(
        &self,
        renew: bool,
    ) -> Result<crate::keystone::ServiceToken, GlanceError> {
        self.session
            .token(renew)
            .await
            .map_err(|e| GlanceError::Unavailable(format!("no service token: {e}")))
    }

    /// Send `build()` with both tokens; once more with a renewed service
    /// token when Glance answers 401 (the cached one may just have expired).
    async fn send(
        &self,
        user_token: &str,
        timeout: Option<Duration>,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, GlanceError> {
        let mut renew = false;
        loop {
            let service = self.service_token(renew).await?;
            let mut req = build(&self.http)
                .header("X-Auth-Token", user_token)
                .header("X-Service-Token", &service.token);
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| GlanceError::Unavailable(error_chain(&e.without_url())))?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED && !renew {
                renew = true;
                continue;
            }
            return checked(resp).await;
        }
    }

    fn control_timeout(&self) -> Option<Duration> {
        Some(Duration::from_secs(self.opts.timeout.max(1)))
    }

    /// Create an image record (status `queued`) in the token's project.
    pub async fn create(
        &self,
        url: &str,
        user_token: &str,
        image: &NewImage,
    ) -> Result<ImageInfo, GlanceError> {
        let mut body = serde_json::Map::new();
        for (k, v) in &image.properties {
            body.insert(k.clone(), serde_json::Value::String(v.clone()));
        }
        body.insert("name".into(), image.name.clone().into());
        body.insert("disk_format".into(), image.disk_format.clone().into());
        body.insert("container_format".into(), "bare".into());
        body.insert("visibility".into(), image.visibility.clone().into());
        body.insert("min_disk".into(), image.min_disk.into());
        let resp = self
            .send(user_token, self.control_timeout(), |h| {
                h.post(format!("{url}/v2/images")).json(&body)
            })
            .await?;
        resp.json()
            .await
            .map_err(|e| GlanceError::Unavailable(format!("unreadable image record: {e}")))
    }

    /// The image, or `None` when Glance does not know it (any more).
    pub async fn get(
        &self,
        url: &str,
        user_token: &str,
        image_id: &str,
    ) -> Result<Option<ImageInfo>, GlanceError> {
        let id = path_segment(image_id)?;
        match self
            .send(user_token, self.control_timeout(), |h| {
                h.get(format!("{url}/v2/images/{id}"))
            })
            .await
        {
            Ok(resp) => resp
                .json()
                .await
                .map(Some)
                .map_err(|e| GlanceError::Unavailable(format!("unreadable image record: {e}"))),
            Err(GlanceError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Delete the image; one that is gone already is deleted.
    pub async fn delete(
        &self,
        url: &str,
        user_token: &str,
        image_id: &str,
    ) -> Result<(), GlanceError> {
        self.delete_or_absent(url, user_token, image_id)
            .await
            .map(drop)
    }

    /// Delete the image: `true` when this deleted it, `false` when Glance
    /// did not know it.
    pub async fn delete_or_absent(
        &self,
        url: &str,
        user_token: &str,
        image_id: &str,
    ) -> Result<bool, GlanceError> {
        let id = path_segment(image_id)?;
        match self
            .send(user_token, self.control_timeout(), |h| {
                h.delete(format!("{url}/v2/images/{id}"))
            })
            .await
        {
            Ok(_) => Ok(true),
            Err(GlanceError::Refused { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Upload the image's data as one stream of `size` bytes (Glance's
    /// `PUT /v2/images/{id}/file`). One attempt: a stream cannot be sent
    /// twice (the service token is fresh from the cache).
    pub async fn upload(
        &self,
        url: &str,
        user_token: &str,
        image_id: &str,
        size: u64,
        body: reqwest::Body,
    ) -> Result<(), GlanceError> {
        let id = path_segment(image_id)?;
        let service = self.service_token(false).await?;
        let resp = self
            .http
            .put(format!("{url}/v2/images/{id}/file"))
            .header("X-Auth-Token", user_token)
            .header("X-Service-Token", &service.token)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(body)
            .send()
            .await
            .map_err(|e| GlanceError::Unavailable(error_chain(&e.without_url())))?;
        checked(resp).await.map(drop)
    }
}

/// `http://host:9292/` and `http://host:9292/v2` both mean `http://host:9292`.
fn base(url: &str) -> String {
    let u = url.trim_end_matches('/');
    u.strip_suffix("/v2").unwrap_or(u).to_string()
}

/// An image id goes into a URL path: Glance's ids are UUIDs.
fn path_segment(id: &str) -> Result<&str, GlanceError> {
    if uuid::Uuid::parse_str(id).is_ok() {
        Ok(id)
    } else {
        Err(GlanceError::Refused {
            status: 400,
            message: format!("{id:?} is no image id"),
        })
    }
}

/// A 2xx response as is; otherwise Glance's message (its error pages are
/// HTML or JSON: the text is kept, short).
async fn checked(resp: reqwest::Response) -> Result<reqwest::Response, GlanceError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let text = resp.text().await.unwrap_or_default();
    let message = readable(&text);
    if status.is_server_error() {
        Err(GlanceError::Unavailable(format!("{status} {message}")))
    } else {
        Err(GlanceError::Refused {
            status: status.as_u16(),
            message,
        })
    }
}

/// Glance's error text without markup, whitespace collapsed, at most 300
/// characters.
fn readable(body: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for ch in body.chars() {
        match ch {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(ch),
            _ => {}
        }
    }
    let words: Vec<&str> = out.split_whitespace().collect();
    let mut text = words.join(" ");
    if let Some((i, _)) = text.char_indices().nth(300) {
        text.truncate(i);
        text.push('…');
    }
    text
}

/// The error and its causes (reqwest's own message hides "connection
/// refused" in the source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glance_error_pages_become_one_short_line() {
        let page = "<html>\n <head>\n  <title>413 Request Entity Too Large</title>\n </head>\n <body>\n  <h1>413 Request Entity Too Large</h1>\n  Denying attempt to upload image because it exceeds the quota: The size of the data 5 will exceed the limit. 3 bytes remaining.<br /><br />\n\n\n\n </body>\n</html>";
        assert_eq!(
            readable(page),
            "413 Request Entity Too Large 413 Request Entity Too Large Denying attempt to upload image because it exceeds the quota: The size of the data 5 will exceed the limit. 3 bytes remaining."
        );
        assert!(readable(&"x ".repeat(1000)).chars().count() <= 301);
    }

    #[test]
    fn base_urls_and_ids() {
        assert_eq!(base("http://h:9292/v2/"), "http://h:9292");
        assert_eq!(base("http://h:9292"), "http://h:9292");
        assert!(path_segment("../../v3").is_err());
        assert!(path_segment("0b5b1bd5-6c6a-4b0b-9a5c-1f6f9b3f1e21").is_ok());
    }
}
