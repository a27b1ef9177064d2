//! Errors in the API-SIG shape: `{"errors": [{"request_id", "code",
//! "status", "title", "detail", "links"}]}` with codes
//! `instance-backup.<code>`. The request id is filled in by the middleware,
//! which knows it.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use super::SERVICE_TYPE;

/// Where an error code is explained.
const HELP: &str = "https://opendev.org/x/ekko/src/branch/main/api-ref";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Without the service-type prefix, e.g. `backup_not_found`.
    pub code: &'static str,
    pub detail: String,
    /// Extra members of the error object (e.g. `min_version`).
    pub extra: Vec<(&'static str, String)>,
    /// Extra response headers (e.g. `WWW-Authenticate`).
    pub headers: Vec<(&'static str, String)>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
            extra: Vec::new(),
            headers: Vec::new(),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }

    pub fn not_found(what: &str, id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} {id} could not be found"),
        )
    }

    pub fn forbidden(action: &str) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("policy does not allow {action} to be performed"),
        )
    }

    pub fn conflict(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            detail,
        )
    }

    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        // The detail goes to the log; the client gets the request id.
        tracing::error!(error = %detail, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an internal error occurred; the request id identifies it in the service logs",
        )
    }

    pub fn with(mut self, key: &'static str, value: impl Into<String>) -> ApiError {
        self.extra.push((key, value.into()));
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> ApiError {
        self.headers.push((name, value.into()));
        self
    }

    /// The error response, carrying `request_id`.
    pub fn response(&self, request_id: &str) -> HttpResponse {
        let mut obj = json!({
            "request_id": request_id,
            "code": format!("{SERVICE_TYPE}.{}", self.code),
            "status": self.status.as_u16(),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "detail": self.detail,
            "links": [{"rel": "help", "href": HELP}],
        });
        for (k, v) in &self.extra {
            obj[*k] = json!(v);
        }
        let mut resp = HttpResponse::build(self.status);
        for (k, v) in &self.headers {
            resp.insert_header((*k, v.as_str()));
        }
        resp.json(json!({ "errors": [obj] }))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        // Rebuilt with the request id by the middleware.
        self.response("")
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> ApiError {
        match e {
            crate::db::DbError::NotFound(what) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} could not be found"),
            ),
            crate::db::DbError::Conflict(why) => ApiError::conflict(why),
            // API-SIG: over quota is 403, not 413.
            crate::db::DbError::LimitExceeded(why) => {
                ApiError::new(StatusCode::FORBIDDEN, "quota_exceeded", why)
            }
            crate::db::DbError::Pool(e) => {
                ApiError::unavailable(format!("the catalog is unavailable: {e}"))
            }
            crate::db::DbError::Unavailable(why) => ApiError::unavailable(why),
            other => ApiError::internal(other),
        }
    }
}

impl From<crate::conductor::ConductorError> for ApiError {
    fn from(e: crate::conductor::ConductorError) -> ApiError {
        use crate::conductor::ConductorError as C;
        match e {
            C::Db(db) => ApiError::from(db),
            C::Queue(q) => ApiError::unavailable(format!("the message bus is unavailable: {q}")),
            // A host the controller has no host key for cannot take this
            // project's backups until the operator adds one: unavailable,
            // without the key's path (that goes to the log).
            C::Keys(
                k @ (crate::keyring::KeyringError::NoKeyForHost { .. }
                | crate::keyring::KeyringError::NoHostKey(_)),
            ) => {
                tracing::error!(error = %k, "no host key for a backup job");
                ApiError::unavailable(
                    "the instance's host cannot take encrypted backups now (no host key is configured for it); ask the operator",
                )
            }
            C::Keys(k) => ApiError::internal(k),
            C::Invalid(why) => ApiError::bad_request(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conductor::ConductorError;
    use crate::keyring::KeyringError;

    #[test]
    fn a_host_without_a_host_key_is_unavailable_and_its_path_stays_in_the_log() {
        let e = ApiError::from(ConductorError::Keys(KeyringError::NoKeyForHost {
            host: "compute-9".into(),
            path: "/etc/ekko/host-keys/compute-9.key".into(),
            reason: "No such file or directory".into(),
        }));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!e.detail.contains("/etc/ekko"), "{}", e.detail);
        let other = ApiError::from(ConductorError::Keys(KeyringError::NoMasterKeyFile));
        assert_eq!(other.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
