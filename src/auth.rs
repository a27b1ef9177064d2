//! Who is calling: Keystone token validation as keystonemiddleware's
//! auth_token does it, and the `noauth` mode of the single-machine default.
//!
//! * The user token (`X-Auth-Token`) is validated with `GET /v3/auth/tokens`
//!   (`X-Subject-Token`), authenticated by Ekko's own service token from
//!   `[keystone_authtoken]`; that token is cached and renewed a minute
//!   before it expires.
//! * Results are cached for `token_cache_time` seconds (never beyond the
//!   token's expiry), keyed by the SHA-256 of the token so no token is kept
//!   in memory in the clear. Invalid tokens are cached as invalid, as
//!   keystonemiddleware does, so a flood of bad tokens does not reach
//!   Keystone. The cache is per process (`memcached_servers`, which deployment
//!   tools write, is ignored with a warning).
//! * A service token (`X-Service-Token`) is validated too and must carry
//!   one of `service_token_roles` when `service_token_roles_required`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::KeystoneAuthtokenOptions;
use crate::keystone::ServiceSession;

/// The caller, as the token (or the noauth headers) describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub user_id: String,
    pub user_name: String,
    /// `None` for domain- or system-scoped tokens.
    pub project_id: Option<String>,
    pub project_name: String,
    pub roles: Vec<String>,
    pub is_admin_project: bool,
    /// `Some("all")` for a system-scoped token.
    pub system_scope: Option<String>,
    /// Roles of a valid service token sent alongside (`X-Service-Token`).
    pub service_roles: Vec<String>,
}

impl Credentials {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("authentication required")]
    Missing,
    #[error("the token is invalid or expired")]
    Invalid,
    #[error("the service token is invalid or lacks a service role")]
    InvalidServiceToken,
    #[error("the identity service is unavailable: {0}")]
    Unavailable(String),
}

impl From<crate::keystone::KeystoneUnavailable> for AuthError {
    fn from(e: crate::keystone::KeystoneUnavailable) -> AuthError {
        AuthError::Unavailable(e.0)
    }
}

const CACHE_MAX_ENTRIES: usize = 100_000;

struct CacheEntry {
    result: Result<Credentials, AuthError>,
    until: Instant,
}

/// Validates tokens against Keystone.
pub struct KeystoneAuth {
    session: ServiceSession,
    cache: Mutex<HashMap<[u8; 32], CacheEntry>>,
    /// Tokens validated by a call to Keystone (not from the cache).
    validations: AtomicU64,
}

#[derive(Deserialize)]
struct TokenBody {
    token: Token,
}

#[derive(Deserialize)]
struct Token {
    expires_at: DateTime<Utc>,
    user: Named,
    #[serde(default)]
    project: Option<Named>,
    #[serde(default)]
    roles: Vec<Named>,
    #[serde(default)]
    is_admin_project: Option<bool>,
    #[serde(default)]
    system: Option<HashMap<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct Named {
    id: String,
    #[serde(default)]
    name: String,
}

impl KeystoneAuth {
    pub fn new(opts: &KeystoneAuthtokenOptions) -> anyhow::Result<KeystoneAuth> {
        anyhow::ensure!(
            opts.auth_url.is_some() && opts.username.is_some(),
            "[keystone_authtoken] auth_url and username are required with auth_strategy = keystone"
        );
        Ok(KeystoneAuth {
            session: ServiceSession::new(
                opts,
                Duration::from_secs(opts.http_connect_timeout.max(1)),
            )?,
            cache: Mutex::new(HashMap::new()),
            validations: AtomicU64::new(0),
        })
    }

    /// The Keystone URL clients are sent to in `WWW-Authenticate`.
    pub fn www_authenticate_uri(&self) -> String {
        self.session
            .options()
            .www_authenticate_uri
            .clone()
            .unwrap_or_else(|| {
                self.session
                    .identity_url()
                    .trim_end_matches("/v3")
                    .to_string()
            })
    }

    /// How many tokens were validated by asking Keystone.
    pub fn validations(&self) -> u64 {
        self.validations.load(Ordering::Relaxed)
    }

    /// Validate a request's user token and optional service token.
    pub async fn authenticate(
        &self,
        user_token: Option<&str>,
        service_token: Option<&str>,
    ) -> Result<Credentials, AuthError> {
        let token = user_token
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let mut creds = self.validate(token).await?;
        if let Some(st) = service_token.filter(|t| !t.is_empty()) {
            let service = self.validate(st).await.map_err(|e| match e {
                AuthError::Unavailable(_) => e,
                _ => AuthError::InvalidServiceToken,
            })?;
            let opts = self.session.options();
            let allowed = &opts.service_token_roles.0;
            if opts.service_token_roles_required
                && !service.roles.iter().any(|r| allowed.contains(r))
            {
                return Err(AuthError::InvalidServiceToken);
            }
            creds.service_roles = service.roles;
        }
        Ok(creds)
    }

    /// Validate one token, from the cache when possible.
    pub async fn validate(&self, token: &str) -> Result<Credentials, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let lookups = &crate::metrics::metrics().token_cache;
        if let Some(hit) = self.cached(&key) {
            lookups
                .get_or_create(&crate::metrics::labels(&[("result", "hit")]))
                .inc();
            return hit;
        }
        lookups
            .get_or_create(&crate::metrics::labels(&[("result", "miss")]))
            .inc();
        let result = self.fetch(token).await;
        let (result, expires) = match result {
            Ok((c, exp)) => (Ok(c), Some(exp)),
            Err(AuthError::Unavailable(why)) => return Err(AuthError::Unavailable(why)),
            Err(e) => (Err(e), None),
        };
        let cache_time = self.session.options().token_cache_time;
        if cache_time >= 0 {
            let mut ttl = Duration::from_secs(cache_time as u64);
            if let Some(exp) = expires {
                let left = (exp - Utc::now()).to_std().unwrap_or_default();
                ttl = ttl.min(left);
            }
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= CACHE_MAX_ENTRIES {
                let now = Instant::now();
                cache.retain(|_, e| e.until > now);
                if cache.len() >= CACHE_MAX_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(
                key,
                CacheEntry {
                    result: result.clone(),
                    until: Instant::now() + ttl,
                },
            );
        }
        result
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Result<Credentials, AuthError>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|e| e.until > Instant::now())
            .map(|e| e.result.clone())
    }

    /// Ask Keystone about `token`, retrying connection failures and 5xx.
    async fn fetch(&self, token: &str) -> Result<(Credentials, DateTime<Utc>), AuthError> {
        let mut attempt = 0;
        let mut renewed = false;
        loop {
            let service = self.session.token(renewed).await?;
            let sent = self
                .session
                .http()
                .get(format!(
                    "{}/auth/tokens?nocatalog",
                    self.session.identity_url()
                ))
                .header("X-Auth-Token", &service.token)
                .header("X-Subject-Token", token)
                .send()
                .await;
            let status = match &sent {
                Ok(r) => Some(r.status()),
                Err(_) => None,
            };
            match (sent, status) {
                (Ok(resp), Some(s)) if s.is_success() => {
                    self.validations.fetch_add(1, Ordering::Relaxed);
                    let body: TokenBody = resp.json().await.map_err(|e| {
                        AuthError::Unavailable(format!("unreadable token body: {e}"))
                    })?;
                    tracing::debug!(user = %body.token.user.id, "token validated by Keystone");
                    return Ok(credentials(body.token));
                }
                // Our own token was refused: renew it once.
                (Ok(_), Some(s)) if s == reqwest::StatusCode::UNAUTHORIZED && !renewed => {
                    renewed = true;
                }
                // Keystone's answer for an unknown, expired or revoked token.
                (Ok(_), Some(s)) if s == reqwest::StatusCode::NOT_FOUND => {
                    self.validations.fetch_add(1, Ordering::Relaxed);
                    return Err(AuthError::Invalid);
                }
                // Our own credentials are refused or may not validate tokens:
                // an operator problem, not the caller's.
                (Ok(_), Some(s))
                    if s == reqwest::StatusCode::UNAUTHORIZED
                        || s == reqwest::StatusCode::FORBIDDEN =>
                {
                    tracing::error!(%s, "Keystone refuses Ekko's service user to validate tokens; check [keystone_authtoken]");
                    return Err(AuthError::Unavailable(format!(
                        "the identity service refused to validate the token ({s})"
                    )));
                }
                // Rate limiting and timeouts say nothing about the token.
                (Ok(_), Some(s))
                    if s.is_client_error()
                        && s != reqwest::StatusCode::TOO_MANY_REQUESTS
                        && s != reqwest::StatusCode::REQUEST_TIMEOUT =>
                {
                    self.validations.fetch_add(1, Ordering::Relaxed);
                    return Err(AuthError::Invalid);
                }
                (sent, _) => {
                    let why = match sent {
                        Ok(r) => format!("Keystone answered {}", r.status()),
                        Err(e) => format!("cannot reach Keystone: {e}"),
                    };
                    attempt += 1;
                    if attempt > self.session.options().http_request_max_retries {
                        tracing::warn!(why, "token validation failed");
                        return Err(AuthError::Unavailable(why));
                    }
                    tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
                }
            }
        }
    }
}

fn credentials(t: Token) -> (Credentials, DateTime<Utc>) {
    let system_scope = t.system.as_ref().and_then(|s| {
        s.iter()
            .find(|(_, v)| v.as_bool() == Some(true))
            .map(|(k, _)| k.clone())
    });
    (
        Credentials {
            user_id: t.user.id,
            user_name: t.user.name,
            project_id: t.project.as_ref().map(|p| p.id.clone()),
            project_name: t.project.map(|p| p.name).unwrap_or_default(),
            roles: t.roles.into_iter().map(|r| r.name).collect(),
            is_admin_project: t.is_admin_project.unwrap_or(true),
            system_scope,
            service_roles: Vec::new(),
        },
        t.expires_at,
    )
}

/// The `noauth` mode of the single-machine default: the caller is who the
/// headers say (`X-Project-Id` required; `X-User-Id`, `X-Roles`).
pub fn noauth(
    project_id: Option<&str>,
    user_id: Option<&str>,
    roles: Option<&str>,
) -> Result<Credentials, AuthError> {
    let project = project_id
        .filter(|p| !p.is_empty())
        .ok_or(AuthError::Missing)?;
    let roles = roles
        .unwrap_or("member,reader")
        .split(',')
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .collect();
    Ok(Credentials {
        user_id: user_id.unwrap_or("noauth").to_string(),
        user_name: user_id.unwrap_or("noauth").to_string(),
        project_id: Some(project.to_string()),
        project_name: project.to_string(),
        roles,
        is_admin_project: true,
        system_scope: None,
        service_roles: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_body_maps_to_credentials() {
        let body: TokenBody = serde_json::from_value(serde_json::json!({"token": {
            "expires_at": "2030-01-01T00:00:00.000000Z",
            "user": {"id": "u1", "name": "demo", "domain": {"id": "default"}},
            "project": {"id": "p1", "name": "demo"},
            "roles": [{"id": "r1", "name": "member"}, {"id": "r2", "name": "reader"}],
            "is_admin_project": false,
            "methods": ["password"]
        }}))
        .unwrap();
        let (c, exp) = credentials(body.token);
        assert_eq!(c.project_id.as_deref(), Some("p1"));
        assert!(c.has_role("member") && c.has_role("reader") && !c.has_role("admin"));
        assert!(!c.is_admin_project);
        assert_eq!(exp.timestamp(), 1_893_456_000);

        let sys: TokenBody = serde_json::from_value(serde_json::json!({"token": {
            "expires_at": "2030-01-01T00:00:00Z",
            "user": {"id": "u2"}, "roles": [], "system": {"all": true}
        }}))
        .unwrap();
        let (c, _) = credentials(sys.token);
        assert_eq!(c.system_scope.as_deref(), Some("all"));
        assert_eq!(c.project_id, None);
    }

    #[test]
    fn noauth_needs_a_project() {
        assert_eq!(noauth(None, None, None), Err(AuthError::Missing));
        let c = noauth(Some("p"), None, Some("reader, admin")).unwrap();
        assert_eq!(c.roles, vec!["reader", "admin"]);
    }
}
