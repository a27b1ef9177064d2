//! Ekko's own Keystone session: the service user of `[keystone_authtoken]`
//! authenticates once, and its token (with the service catalog) is cached
//! and renewed a minute before it expires. Token validation ([`crate::auth`])
//! and the Swift store ([`crate::store::swift`]) both act through it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::config::KeystoneAuthtokenOptions;

/// Keystone could not give Ekko's service user a token (down, or refusing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeystoneUnavailable(pub String);

/// A token of the service user and what came with it.
#[derive(Debug, Clone)]
pub struct ServiceToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// The service user's project (the owner of the Swift account).
    pub project_id: String,
    catalog: Vec<CatalogService>,
}

#[derive(Debug, Clone, Deserialize)]
struct CatalogService {
    #[serde(rename = "type")]
    service_type: String,
    #[serde(default)]
    endpoints: Vec<CatalogEndpoint>,
}

#[derive(Debug, Clone, Deserialize)]
struct CatalogEndpoint {
    interface: String,
    url: String,
    #[serde(default)]
    region_id: Option<String>,
    #[serde(default)]
    region: Option<String>,
}

impl ServiceToken {
    /// The catalog's URL for `service_type` on `interface`, in `region`
    /// when one is given.
    pub fn endpoint(
        &self,
        service_type: &str,
        interface: &str,
        region: Option<&str>,
    ) -> Option<String> {
        self.catalog
            .iter()
            .filter(|s| s.service_type == service_type)
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.interface == interface)
            .find(|e| {
                region.is_none_or(|r| {
                    e.region_id.as_deref() == Some(r) || e.region.as_deref() == Some(r)
                })
            })
            .map(|e| e.url.clone())
    }
}

#[derive(Deserialize)]
struct IssuedBody {
    token: Issued,
}

#[derive(Deserialize)]
struct Issued {
    expires_at: DateTime<Utc>,
    #[serde(default)]
    project: Option<IdOnly>,
    #[serde(default)]
    catalog: Vec<CatalogService>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

/// An HTTP client and the service user's cached token.
pub struct ServiceSession {
    http: reqwest::Client,
    /// `…/v3`.
    identity_url: String,
    opts: KeystoneAuthtokenOptions,
    token: tokio::sync::Mutex<Option<ServiceToken>>,
}

impl ServiceSession {
    /// A session for the service user of `opts`; `timeout` bounds every
    /// request made with [`ServiceSession::http`].
    pub fn new(opts: &KeystoneAuthtokenOptions, timeout: Duration) -> anyhow::Result<Self> {
        let auth_url = opts
            .auth_url
            .clone()
            .ok_or_else(|| anyhow::anyhow!("[keystone_authtoken] auth_url is required"))?;
        anyhow::ensure!(
            opts.username.is_some(),
            "[keystone_authtoken] username is required"
        );
        let base = auth_url.trim_end_matches('/');
        let identity_url = if base.ends_with("/v3") {
            base.to_string()
        } else {
            format!("{base}/v3")
        };
        crate::tls::install_crypto_provider();
        let mut http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(opts.http_connect_timeout.max(1)))
            .danger_accept_invalid_certs(opts.insecure);
        if let Some(ca) = &opts.cafile {
            let pem =
                std::fs::read(ca).map_err(|e| anyhow::anyhow!("cannot read cafile {ca}: {e}"))?;
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        Ok(ServiceSession {
            http: http.build()?,
            identity_url,
            opts: opts.clone(),
            token: tokio::sync::Mutex::new(None),
        })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Keystone's v3 URL.
    pub fn identity_url(&self) -> &str {
        &self.identity_url
    }

    pub fn options(&self) -> &KeystoneAuthtokenOptions {
        &self.opts
    }

    /// The service user's token, cached until a minute before it expires
    /// (or renewed now when `force_renew`: a service answered 401).
    pub async fn token(&self, force_renew: bool) -> Result<ServiceToken, KeystoneUnavailable> {
        let mut slot = self.token.lock().await;
        if let Some(t) = slot.as_ref() {
            if !force_renew && t.expires_at - chrono::Duration::seconds(60) > Utc::now() {
                return Ok(t.clone());
            }
        }
        let o = &self.opts;
        let body = serde_json::json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": o.username.clone().unwrap_or_default(),
                "domain": {"name": o.user_domain_name},
                "password": o.password.expose(),
            }}},
            "scope": {"project": {"name": o.project_name, "domain": {"name": o.project_domain_name}}},
        }});
        let resp = self
            .http
            .post(format!("{}/auth/tokens", self.identity_url))
            .json(&body)
            .send()
            .await
            .map_err(|e| KeystoneUnavailable(format!("cannot reach Keystone: {e}")))?;
        if !resp.status().is_success() {
            let status = resp.status();
            tracing::error!(%status, "Ekko's service user cannot authenticate; check [keystone_authtoken]");
            return Err(KeystoneUnavailable(format!(
                "the service user cannot authenticate (Keystone answered {status})"
            )));
        }
        let token = resp
            .headers()
            .get("X-Subject-Token")
            .and_then(|v| v.to_str().ok())
            .map(String::from)
            .ok_or_else(|| KeystoneUnavailable("Keystone sent no X-Subject-Token".into()))?;
        let body: IssuedBody = resp
            .json()
            .await
            .map_err(|e| KeystoneUnavailable(format!("unreadable token body: {e}")))?;
        let issued = ServiceToken {
            token,
            expires_at: body.token.expires_at,
            project_id: body.token.project.map(|p| p.id).unwrap_or_default(),
            catalog: body.token.catalog,
        };
        tracing::debug!(expires_at = %issued.expires_at, "service token issued");
        *slot = Some(issued.clone());
        Ok(issued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_endpoint_by_interface_and_region() {
        let body: IssuedBody = serde_json::from_value(serde_json::json!({"token": {
            "expires_at": "2030-01-01T00:00:00Z",
            "project": {"id": "svc"},
            "catalog": [
                {"type": "identity", "endpoints": [{"interface": "public", "url": "http://k/v3", "region_id": "R1"}]},
                {"type": "object-store", "endpoints": [
                    {"interface": "public", "url": "http://pub/v1/AUTH_svc", "region_id": "R1"},
                    {"interface": "internal", "url": "http://int1/v1/AUTH_svc", "region_id": "R1"},
                    {"interface": "internal", "url": "http://int2/v1/AUTH_svc", "region_id": "R2"}
                ]}
            ]
        }}))
        .unwrap();
        let t = ServiceToken {
            token: "t".into(),
            expires_at: body.token.expires_at,
            project_id: "svc".into(),
            catalog: body.token.catalog,
        };
        assert_eq!(
            t.endpoint("object-store", "internal", Some("R2"))
                .as_deref(),
            Some("http://int2/v1/AUTH_svc")
        );
        assert_eq!(
            t.endpoint("object-store", "internal", None).as_deref(),
            Some("http://int1/v1/AUTH_svc")
        );
        assert_eq!(t.endpoint("object-store", "admin", None), None);
        assert_eq!(t.endpoint("volumev3", "public", None), None);
    }
}
