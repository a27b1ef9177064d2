//! Errors in the API-SIG shape: `{"errors": [{"request_id", "code",
//! "status", "title", "detail", "links"}]}` with codes
//! `instance-backup.<code>`. The request id is filled in by the middleware,
//! which knows it.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use super::SERVICE_TYPE;
use crate::policy::Denied;
use crate::service::ServiceError;

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

/// Every way a use case can fail, mapped to a status and an error code in
/// this one place.
impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        match e {
            ServiceError::Denied(d) => ApiError::from(d),
            ServiceError::Invalid(why) => ApiError::bad_request(why),
            ServiceError::NotFound(what) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} could not be found"),
            ),
            ServiceError::Conflict(why) => ApiError::conflict(why),
            // API-SIG: over quota is 403, not 413.
            ServiceError::LimitExceeded(why) => {
                ApiError::new(StatusCode::FORBIDDEN, "quota_exceeded", why)
            }
            ServiceError::Unavailable(why) => ApiError::unavailable(why),
            e @ (ServiceError::BadMessage(_)
            | ServiceError::Refused(_)
            | ServiceError::Internal(_)) => ApiError::internal(format!("{e:#}")),
        }
    }
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> ApiError {
        match d {
            Denied::Forbidden(action) => ApiError::forbidden(&action),
            Denied::NotFound { what, id } => ApiError::not_found(what, &id),
            Denied::ProjectScopeRequired => ApiError::new(
                StatusCode::FORBIDDEN,
                "project_scope_required",
                "this API needs a project-scoped token",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_services_are_503_and_defects_500() {
        let e = ApiError::from(ServiceError::Unavailable("no host key".into()));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        let e = ApiError::from(ServiceError::Internal(anyhow::anyhow!("/etc/ekko/secret")));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.detail.contains("/etc/ekko"), "details stay in the log");
        let e = ApiError::from(ServiceError::not_found("backup", "b-1"));
        assert_eq!(
            (e.status, e.detail.as_str()),
            (StatusCode::NOT_FOUND, "backup b-1 could not be found")
        );
    }
}
