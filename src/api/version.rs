//! Version discovery and microversions, as the API-SIG specifies them:
//! `OpenStack-API-Version: instance-backup <X.Y>` (absent or for another
//! service → the minimum; `latest` → the maximum; out of range → 406;
//! malformed → 400), echoed on every response with `Vary`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::{base_url, SERVICE_TYPE};

/// A microversion `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Microversion(pub u32, pub u32);

impl std::fmt::Display for Microversion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

pub const MIN_VERSION: Microversion = Microversion(1, 0);
/// The newest microversion (`api-ref` lists what each one added).
pub const MAX_VERSION: Microversion = Microversion(1, 0);

pub const HEADER: &str = "OpenStack-API-Version";

/// The version a request asks for, from its `OpenStack-API-Version` headers.
pub fn negotiate<'a>(values: impl Iterator<Item = &'a str>) -> Result<Microversion, ApiError> {
    let mut wanted = None;
    for entry in values.flat_map(|v| v.split(',')) {
        let mut parts = entry.split_whitespace();
        let (Some(service), Some(version), None) = (parts.next(), parts.next(), parts.next())
        else {
            continue; // not ours to judge
        };
        if service.eq_ignore_ascii_case(SERVICE_TYPE) {
            wanted = Some(version.to_string());
        }
    }
    let Some(v) = wanted else {
        return Ok(MIN_VERSION);
    };
    if v.eq_ignore_ascii_case("latest") {
        return Ok(MAX_VERSION);
    }
    let parsed = parse(&v).ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid microversion {v:?}: expected MAJOR.MINOR, e.g. {MIN_VERSION}"
        ))
    })?;
    if parsed < MIN_VERSION || parsed > MAX_VERSION {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "version_not_supported",
            format!(
                "microversion {parsed} is not supported; this API serves {MIN_VERSION} to {MAX_VERSION}"
            ),
        )
        .with("min_version", MIN_VERSION.to_string())
        .with("max_version", MAX_VERSION.to_string()));
    }
    Ok(parsed)
}

/// `^([1-9]\d*)\.([1-9]\d*|0)$`
fn parse(v: &str) -> Option<Microversion> {
    let (maj, min) = v.split_once('.')?;
    let number = |s: &str, zero_ok: bool| -> Option<u32> {
        let ok = !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && (!s.starts_with('0') || (zero_ok && s == "0"));
        if ok {
            s.parse().ok()
        } else {
            None
        }
    };
    Some(Microversion(number(maj, false)?, number(min, true)?))
}

fn version_object(base: &str) -> serde_json::Value {
    json!({
        "id": "v1",
        "status": "CURRENT",
        "version": MAX_VERSION.to_string(),
        "min_version": MIN_VERSION.to_string(),
        "max_version": MAX_VERSION.to_string(),
        "updated": "2026-11-26T00:00:00Z",
        "links": [{"rel": "self", "href": format!("{base}/v1/")}],
        "media-types": [{"base": "application/json",
                         "type": format!("application/vnd.openstack.{SERVICE_TYPE}+json;version=1")}],
    })
}

/// `GET /`: the versions this service offers.
pub async fn versions(req: HttpRequest, state: web::Data<super::ApiState>) -> HttpResponse {
    let base = base_url(&req, &state);
    HttpResponse::Ok().json(json!({ "versions": [version_object(&base)] }))
}

/// `GET /v1`: this version.
pub async fn v1(req: HttpRequest, state: web::Data<super::ApiState>) -> HttpResponse {
    let base = base_url(&req, &state);
    HttpResponse::Ok().json(json!({ "version": version_object(&base) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_api_sig() {
        let n = |v: &[&str]| negotiate(v.iter().copied());
        assert_eq!(n(&[]), Ok(MIN_VERSION));
        assert_eq!(n(&["compute 2.1"]), Ok(MIN_VERSION));
        assert_eq!(n(&["instance-backup latest"]), Ok(MAX_VERSION));
        assert_eq!(
            n(&["compute 2.1, instance-backup 1.0"]),
            Ok(Microversion(1, 0))
        );
        assert_eq!(n(&["Instance-Backup 1.0"]), Ok(Microversion(1, 0)));
        for bad in ["1", "01.0", "1.01", "1.x", "v1.0", "-1.0"] {
            let e = n(&[&format!("instance-backup {bad}")]).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        for out in ["2.0", "1.99"] {
            let e = n(&[&format!("instance-backup {out}")]).unwrap_err();
            assert_eq!(e.status, StatusCode::NOT_ACCEPTABLE, "{out}");
            assert!(e.extra.iter().any(|(k, _)| *k == "max_version"));
        }
    }
}
